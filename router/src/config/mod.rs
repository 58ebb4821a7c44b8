//! Configuration: the command line (clap; every flag has an `LLM_ROUTER_*`
//! environment fallback) over the configuration file (`--config`, [`file`]).
//!
//! [`parse_from`] reads the command line once to find the file, then again with the
//! file's settings added as flags for every setting that neither a flag nor the
//! environment gave: so flags and env override the file, and the file's values go
//! through the same parsers and checks as flags.

pub mod file;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::keys::ClientAuth;
use crate::recorder::Durability;

#[derive(Parser, Debug)]
#[command(
    name = "llm-router",
    version,
    about = "One OpenAI-compatible endpoint over many inference nodes, with exact token accounting"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the router (the default).
    Serve(ServeArgs),
    /// Run the router with two mock nodes and light synthetic traffic.
    Demo(ServeArgs),
    /// Copy every node, key, history record and rollup of one database into another
    /// (e.g. SQLite into PostgreSQL), ids included. The router must not be running.
    MigrateStore(MigrateStoreArgs),
}

#[derive(Args, Debug, Clone)]
pub struct MigrateStoreArgs {
    /// The database to copy from, e.g. `sqlite:///var/lib/llm-router/router.db`.
    #[arg(long)]
    pub from: String,
    /// The database to copy into, e.g. `postgres://router@db/router`.
    #[arg(long)]
    pub to: String,
    /// Empty the target first when it holds any row (otherwise it is refused).
    #[arg(long)]
    pub force: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// `serve` (`false`) or `demo` (`true`).
    Router(Box<ServeArgs>, bool),
    MigrateStore(MigrateStoreArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsAccess {
    /// `/metrics` needs no key (for a Prometheus scraper on a trusted network).
    Open,
    /// `/metrics` needs the admin key like `/api/*`.
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LLM_ROUTER_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "LLM_ROUTER_PORT", default_value_t = 32768)]
    pub port: u16,
    /// Directory of the database and the generated admin key [default: ~/.llm-router].
    #[arg(long, env = "LLM_ROUTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL [default: sqlite://<data-dir>/router.db].
    #[arg(long, env = "LLM_ROUTER_DATABASE_URL")]
    pub database_url: Option<String>,
    /// A static node: `URL` or `KIND=URL` to set its kind, e.g. `ollama=http://gpu-1:11434`
    /// (repeatable; the env var takes a comma-separated list).
    #[arg(long = "node", env = "LLM_ROUTER_NODES", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// The key of the admin API and dashboard [default: generated once, stored in the data dir].
    #[arg(long, env = "LLM_ROUTER_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Milliseconds between two health probes of a node.
    #[arg(long, env = "LLM_ROUTER_HEALTH_INTERVAL_MS", default_value_t = 10_000)]
    pub health_interval_ms: u64,
    /// Timeout of one health probe, in milliseconds.
    #[arg(long, env = "LLM_ROUTER_HEALTH_TIMEOUT_MS", default_value_t = 2000)]
    pub health_timeout_ms: u64,
    /// Failed probes in a row before a node is marked offline.
    #[arg(long, env = "LLM_ROUTER_HEALTH_FAILURES", default_value_t = 2)]
    pub health_failures: u32,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LLM_ROUTER_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Timeout of a TCP connection to a node, in milliseconds.
    #[arg(long, env = "LLM_ROUTER_CONNECT_TIMEOUT_MS", default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Longest time a connection to a node stays open unused in the router's pool, in
    /// milliseconds; then it is closed.
    #[arg(long, env = "LLM_ROUTER_NODE_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub node_keep_alive_timeout_ms: u64,
    /// Longest wait for a node's response head (prompt processing), in seconds.
    #[arg(long, env = "LLM_ROUTER_FIRST_BYTE_TIMEOUT_SECS", default_value_t = 300)]
    pub first_byte_timeout_secs: u64,
    /// Longest silence between two chunks of a node's answer, in seconds.
    #[arg(long, env = "LLM_ROUTER_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// `durable`: a response completes only after its record is committed.
    #[arg(long, env = "LLM_ROUTER_DURABILITY", value_enum, default_value_t = Durability::Durable)]
    pub durability: Durability,
    /// Longest wait for a commit before a response is released anyway, in milliseconds.
    #[arg(long, env = "LLM_ROUTER_COMMIT_WAIT_MS", default_value_t = 5000)]
    pub commit_wait_ms: u64,
    /// Most records kept in memory while the store is unavailable; beyond it, inference
    /// requests are refused (503) rather than served unaccounted.
    #[arg(long, env = "LLM_ROUTER_MAX_BACKLOG", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_backlog: u64,
    /// Days of request history kept (token statistics are kept forever).
    #[arg(long, env = "LLM_ROUTER_HISTORY_RETENTION_DAYS", default_value_t = 30)]
    pub history_retention_days: u32,
    /// Keep each request's body and its node's answer with its record (shown in the
    /// request's detail, pruned with the history). Off by default: bodies may hold
    /// what clients would not want stored.
    #[arg(long, env = "LLM_ROUTER_STORE_BODIES", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub store_bodies: bool,
    /// The most bytes of each body stored, at most 4 MiB (the rest is cut, and the
    /// record says so).
    #[arg(long, env = "LLM_ROUTER_STORED_BODY_MAX_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=4 * 1024 * 1024))]
    pub stored_body_max_bytes: u64,
    /// Who may read `/metrics`.
    #[arg(long, env = "LLM_ROUTER_METRICS", value_enum, default_value_t = MetricsAccess::Open)]
    pub metrics: MetricsAccess,
    /// Longest wait for in-flight requests at shutdown, in seconds.
    #[arg(long, env = "LLM_ROUTER_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    #[arg(long, env = "LLM_ROUTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// `required`: every inference request needs a client key; `open`: requests without
    /// one (or with an unknown one) are served as anonymous.
    #[arg(long, env = "LLM_ROUTER_CLIENT_AUTH", value_enum, default_value_t = ClientAuth::Open)]
    pub client_auth: ClientAuth,
    /// With a PostgreSQL store shared by several replicas: how often this replica
    /// takes in the others' changes of nodes and keys, publishes its requests in flight
    /// and reads the keys' spending, in milliseconds.
    #[arg(long, env = "LLM_ROUTER_REPLICA_SYNC_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub replica_sync_ms: u64,
    /// Shifts the router's clock (tests of day boundaries; not for production).
    #[arg(
        long,
        env = "LLM_ROUTER_CLOCK_OFFSET_SECS",
        default_value_t = 0,
        hide = true,
        allow_negative_numbers = true
    )]
    pub clock_offset_secs: i64,
    /// A PEM file of CA certificates trusted for `https://` nodes besides the system's
    /// roots (repeatable; the env var takes a comma-separated list).
    #[arg(long = "ca-file", env = "LLM_ROUTER_CA_FILES", value_delimiter = ',')]
    pub ca_files: Vec<PathBuf>,
    /// Threads that run the proxy [default: the cores this process may use].
    #[arg(long, env = "LLM_ROUTER_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Longest time for a client to send a whole request head, from its connection or
    /// from the head's first byte, in milliseconds; then the connection is closed.
    #[arg(long, env = "LLM_ROUTER_REQUEST_HEAD_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_head_timeout_ms: u64,
    /// Longest time for a client to send a whole request body, from the end of its head,
    /// in milliseconds; then the request gets 408 and the connection is closed.
    #[arg(long, env = "LLM_ROUTER_REQUEST_BODY_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_body_timeout_ms: u64,
    /// Longest silence of a client connection between two requests, in milliseconds.
    #[arg(long, env = "LLM_ROUTER_KEEP_ALIVE_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_timeout_ms: u64,
    /// Longest time a client may leave a response unread (the router's writes to its
    /// socket blocked), in milliseconds; then the connection is closed and the request
    /// recorded as cancelled, which frees its node's slot.
    #[arg(long, env = "LLM_ROUTER_SEND_TIMEOUT_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout_ms: u64,
    /// Most client connections open at once; beyond it an idle one is closed to make room,
    /// or the new one gets 503 [default: half the open-file limit, less a reserve].
    #[arg(long, env = "LLM_ROUTER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Most requests waiting for a node slot at once when every node serving their model
    /// is full (0: refuse at once).
    #[arg(long, env = "LLM_ROUTER_QUEUE_SIZE", default_value_t = 100)]
    pub queue_size: usize,
    /// Longest wait in the queue, in seconds (then 503 `queue_timeout`).
    #[arg(long, env = "LLM_ROUTER_QUEUE_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub queue_timeout_secs: u64,
    /// Requests in flight a conversation's node may have beyond the least busy node and
    /// still take the conversation's next request (affinity).
    #[arg(long, env = "LLM_ROUTER_AFFINITY_MARGIN", default_value_t = 2)]
    pub affinity_margin: u64,
    /// Send a request that a node refused with 429 or 503 to the next node.
    #[arg(long, env = "LLM_ROUTER_RETRY_REFUSED", default_value_t = true, action = ArgAction::Set)]
    pub retry_refused: bool,
    /// A TOML file of nodes (`[[nodes]]`) and settings (`queue_size = 100`); flags and
    /// env override its settings.
    #[arg(long, env = "LLM_ROUTER_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ServeArgs {
    /// Defaults for tests and embedding: loopback, a free port, the given data dir.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let cli = Cli::parse_from(["llm-router", "--host", "127.0.0.1", "--port", "0"]);
        ServeArgs {
            data_dir: Some(data_dir.into()),
            ..cli.serve
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".llm-router")
        })
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir().join("router.db").display()))
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms.max(50))
    }

    pub fn admission(&self) -> crate::balancer::AdmissionSettings {
        crate::balancer::AdmissionSettings {
            queue_size: self.queue_size,
            queue_timeout: Duration::from_secs(self.queue_timeout_secs),
            affinity_margin: self.affinity_margin,
        }
    }

    /// Proxy threads: as asked, else one per core this process may run on
    /// (`available_parallelism` follows CPU affinity and cgroup quotas).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
            .map(usize::from)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag, or `--help` / `--version` (print it with `exit`).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    #[error(transparent)]
    File(#[from] file::FileError),
}

/// The command asked for by `argv` (the program name first): `migrate-store` with its
/// arguments, or the router's settings as [`parse_from`] reads them.
pub fn parse_invocation<I, T>(argv: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    if let Some(("migrate-store", sub)) = matches.subcommand() {
        return Ok(Invocation::MigrateStore(MigrateStoreArgs::from_arg_matches(sub)?));
    }
    let (args, demo) = parse_from(argv)?;
    Ok(Invocation::Router(Box::new(args), demo))
}

/// The command's settings and whether it is `demo`, from `argv` (the program name
/// first), the environment and the configuration file.
pub fn parse_from<I, T>(argv: I) -> Result<(ServeArgs, bool), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&argv)?;
    let (args, demo) = serve_args(&matches)?;
    let Some(path) = args.config.clone() else {
        return Ok((args, demo));
    };
    let config = file::ConfigFile::read(&path)?;
    let given = serve_matches(&matches);
    let mut argv = argv;
    for setting in &config.settings {
        let from_default = matches!(given.value_source(&setting.id), None | Some(ValueSource::DefaultValue));
        if from_default {
            argv.extend(setting.flags().map(OsString::from));
        }
    }
    let matches = Cli::command().try_get_matches_from(&argv)?;
    Ok(serve_args(&matches)?)
}

/// The matches of the `ServeArgs` in use: the subcommand's, or the top level's.
fn serve_matches(m: &ArgMatches) -> &ArgMatches {
    match m.subcommand() {
        Some((_, sub)) => sub,
        None => m,
    }
}

fn serve_args(m: &ArgMatches) -> Result<(ServeArgs, bool), clap::Error> {
    let cli = Cli::from_arg_matches(m)?;
    Ok(match cli.command {
        None => (cli.serve, false),
        Some(Command::Serve(a)) => (a, false),
        Some(Command::Demo(a)) => (a, true),
        Some(Command::MigrateStore(_)) => {
            return Err(clap::Error::raw(
                clap::error::ErrorKind::InvalidSubcommand,
                "migrate-store does not run the router (see parse_invocation)\n",
            ))
        }
    })
}
