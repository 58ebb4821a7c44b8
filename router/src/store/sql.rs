//! Running a statement on whichever engine is open.
//!
//! Every query of the store is written once, with `$1`, `$2`… placeholders (both
//! SQLite and PostgreSQL accept them), its arguments as [`Arg`] values and its rows
//! read through [`StoreRow`]; the few constructs the engines spell differently come
//! from [`Dialect`]. Integer columns are 64-bit on both engines (booleans are 0/1), so
//! a row decodes identically whichever engine wrote it.

use std::fmt::Write;

use sqlx::Row;

use super::{Dialect, Engine, Store, StoreResult};

/// One argument of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
    OptBytes(Option<&'a [u8]>),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}

impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Int(v as i64)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v)
    }
}

impl<'a> From<&'a [u8]> for Arg<'a> {
    fn from(v: &'a [u8]) -> Self {
        Arg::Bytes(v)
    }
}

/// `[Arg::from(a), Arg::from(b), …]`.
macro_rules! args {
    ($($a:expr),* $(,)?) => { [$($crate::store::sql::Arg::from($a)),*] };
}
pub(crate) use args;

/// A statement built piece by piece, numbering its placeholders.
#[derive(Debug, Default)]
pub(crate) struct Sql<'a> {
    pub text: String,
    pub args: Vec<Arg<'a>>,
}

impl<'a> Sql<'a> {
    pub fn new(text: &str) -> Self {
        Sql {
            text: text.to_string(),
            args: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `arg`.
    pub fn bind(&mut self, arg: impl Into<Arg<'a>>) -> &mut Self {
        self.args.push(arg.into());
        let _ = write!(self.text, "${}", self.args.len());
        self
    }
}

/// A row of either engine, read by column name.
pub(crate) trait StoreRow {
    fn int(&self, col: &str) -> i64;
    fn opt_int(&self, col: &str) -> Option<i64>;
    fn text(&self, col: &str) -> String;
    fn opt_text(&self, col: &str) -> Option<String>;
    fn bytes(&self, col: &str) -> Vec<u8>;
    fn opt_bytes(&self, col: &str) -> Option<Vec<u8>>;
}

macro_rules! store_row {
    ($row:ty) => {
        impl StoreRow for $row {
            fn int(&self, col: &str) -> i64 {
                self.get(col)
            }
            fn opt_int(&self, col: &str) -> Option<i64> {
                self.get(col)
            }
            fn text(&self, col: &str) -> String {
                self.get(col)
            }
            fn opt_text(&self, col: &str) -> Option<String> {
                self.get(col)
            }
            fn bytes(&self, col: &str) -> Vec<u8> {
                self.get(col)
            }
            fn opt_bytes(&self, col: &str) -> Option<Vec<u8>> {
                self.get(col)
            }
        }
    };
}
store_row!(sqlx::sqlite::SqliteRow);
store_row!(sqlx::postgres::PgRow);

/// `sqlx::query(sql)` with `args` bound (the same code for both engines).
macro_rules! query {
    ($sql:expr, $args:expr) => {{
        let mut q = sqlx::query($sql);
        for a in $args.iter().copied() {
            q = match a {
                Arg::Int(v) => q.bind(v),
                Arg::OptInt(v) => q.bind(v),
                Arg::Text(v) => q.bind(v),
                Arg::OptText(v) => q.bind(v),
                Arg::Bytes(v) => q.bind(v),
                Arg::OptBytes(v) => q.bind(v),
            };
        }
        q
    }};
}

/// A transaction on either engine: the reads inside it see one snapshot.
pub(crate) enum StoreTx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

/// The statement runners, the same on a [`Pooled`] store (any pooled connection) and in
/// a [`StoreTx`]: the two patterns pick the engine, the expressions after them are its
/// executor.
macro_rules! runners {
    ($ty:ty, $self:ident => $sqlite:pat => $se:expr, $postgres:pat => $pe:expr) => {
        // Not every runner is used on both.
        #[allow(dead_code)]
        impl $ty {
            pub(crate) async fn fetch_all<T>(
                &mut $self,
                sql: &str,
                args: &[Arg<'_>],
                decode: impl Fn(&dyn StoreRow) -> T,
            ) -> StoreResult<Vec<T>> {
                Ok(match $self {
                    $sqlite => query!(sql, args).fetch_all($se).await?.iter().map(|r| decode(r)).collect(),
                    $postgres => query!(sql, args).fetch_all($pe).await?.iter().map(|r| decode(r)).collect(),
                })
            }

            pub(crate) async fn fetch_optional<T>(
                &mut $self,
                sql: &str,
                args: &[Arg<'_>],
                decode: impl Fn(&dyn StoreRow) -> T,
            ) -> StoreResult<Option<T>> {
                Ok(match $self {
                    $sqlite => query!(sql, args).fetch_optional($se).await?.as_ref().map(|r| decode(r)),
                    $postgres => query!(sql, args).fetch_optional($pe).await?.as_ref().map(|r| decode(r)),
                })
            }

            /// Runs a statement; returns the rows it changed.
            pub(crate) async fn execute(&mut $self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
                Ok(match $self {
                    $sqlite => query!(sql, args).execute($se).await?.rows_affected(),
                    $postgres => query!(sql, args).execute($pe).await?.rows_affected(),
                })
            }
        }
    };
}

/// Pooled statements: `&mut` only to share the runners' code with [`StoreTx`].
pub(crate) struct Pooled<'s>(&'s Engine);

runners!(Pooled<'_>, self => Pooled(Engine::Sqlite(e)) => &e.pool, Pooled(Engine::Postgres(e)) => &e.pool);
runners!(StoreTx, self => StoreTx::Sqlite(tx) => &mut **tx, StoreTx::Postgres(tx) => &mut **tx);

impl Store {
    /// Statements on any pooled connection.
    pub(crate) fn db(&self) -> Pooled<'_> {
        Pooled(&self.engine)
    }

    pub(crate) async fn begin(&self) -> StoreResult<StoreTx> {
        Ok(match &self.engine {
            Engine::Sqlite(e) => StoreTx::Sqlite(e.pool.begin().await?),
            Engine::Postgres(e) => StoreTx::Postgres(e.pool.begin().await?),
        })
    }

    /// A read-only transaction whose reads all see one snapshot. A SQLite
    /// transaction does; PostgreSQL's default (READ COMMITTED) takes a snapshot per
    /// statement, so sums read one after the other could disagree under writes.
    pub(crate) async fn snapshot(&self) -> StoreResult<StoreTx> {
        let mut tx = self.begin().await?;
        if let StoreTx::Postgres(_) = tx {
            tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", &[])
                .await?;
        }
        Ok(tx)
    }
}

impl StoreTx {
    pub(crate) async fn commit(self) -> StoreResult<()> {
        match self {
            StoreTx::Sqlite(tx) => tx.commit().await?,
            StoreTx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

impl Dialect {
    /// The larger of two values (`MAX(a, b)` in SQLite, an aggregate in PostgreSQL).
    pub fn greatest(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("MAX({a}, {b})"),
            Dialect::Postgres => format!("GREATEST({a}, {b})"),
        }
    }

    pub fn least(self, a: &str, b: &str) -> String {
        match self {
            Dialect::Sqlite => format!("MIN({a}, {b})"),
            Dialect::Postgres => format!("LEAST({a}, {b})"),
        }
    }

    /// The rows of `values` (comma-separated SQL expressions) as one JSON array of
    /// arrays, as text (`[]` for no rows).
    pub fn json_rows(self, values: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_group_array(json_array({values}))"),
            Dialect::Postgres => format!("COALESCE(json_agg(json_build_array({values}))::text, '[]')"),
        }
    }
}
