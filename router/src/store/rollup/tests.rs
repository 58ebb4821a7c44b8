//! The rollups as the statistics read them, when several writers add to the same rows.

use chrono::TimeZone;

use super::*;
use crate::store::{HistoryFilter, LockWait};

const HOUR: i64 = 1_700_002_800;
const KEY: i64 = 7;

/// Record `i`, in the hour `HOUR`, of client key `KEY` and model "m", on `node`.
fn record(i: u64, node: i64) -> RequestResponseRecord {
    let at = Utc.timestamp_opt(HOUR + i as i64, 0).unwrap();
    let status = [RequestStatus::Success, RequestStatus::Error, RequestStatus::Cancelled][i as usize % 3];
    RequestResponseRecord {
        timestamp: at,
        completed_at: at,
        node_id: Some(node),
        node_name: Some(format!("n{node}")),
        api_key_id: Some(KEY),
        api_key_name: Some("k".into()),
        status,
        duration_ms: i % 50,
        input_tokens: i,
        output_tokens: 2 * i,
        total_tokens: 3 * i,
        token_source: if i.is_multiple_of(4) {
            TokenSource::Estimated
        } else {
            TokenSource::Reported
        },
        ..crate::store::testing::record()
    }
}

fn sum_of<'r>(records: impl IntoIterator<Item = &'r RequestResponseRecord>) -> RollupTotals {
    let mut t = RollupTotals::default();
    for r in records {
        t.add(&RollupTotals::of(r));
    }
    t
}

#[tokio::test]
async fn two_writers_on_the_same_rollup_rows_add_up_in_every_statistic() {
    let dir = tempfile::tempdir().unwrap();
    for (engine, store) in crate::store::testing::stores(&dir).await {
        eprintln!("engine: {engine}");
        two_writers_add_up(&store).await;
    }
}

async fn two_writers_add_up(store: &Store) {
    // Two replicas' writers (on PostgreSQL, of two shards) take turns committing
    // records of the same hour x node x model x key; the second also serves node 2.
    let mut writers = [store.writer().unwrap(), store.writer().unwrap()];
    let mut records = Vec::new();
    for batch in 0..12u64 {
        let w = (batch % 2) as usize;
        let node = |i: u64| if w == 1 && i.is_multiple_of(3) { 2 } else { 1 };
        let recs: Vec<_> = (0..5).map(|i| record(batch * 5 + i, node(i))).collect();
        writers[w].commit(&recs, LockWait::Patient).unwrap();
        records.extend(recs);
    }
    drop(writers);
    let on = |node: i64| sum_of(records.iter().filter(|r| r.node_id == Some(node)));
    let all = sum_of(&records);
    let (node_1, node_2) = (on(1), on(2));
    let by_node = |n: i64| RollupKey {
        node_id: Some(n),
        ..RollupKey::default()
    };

    // On PostgreSQL each writer has rows of its own; on SQLite there is one.
    let rows = store
        .db()
        .fetch_optional(
            "SELECT COUNT(*) AS n FROM token_stats_hourly_key WHERE node_id = 1",
            &[],
            |r| r.int("n"),
        )
        .await
        .unwrap();
    let expected_rows = if store.dialect() == Dialect::Postgres { 2 } else { 1 };
    assert_eq!(rows, Some(expected_rows));

    let everything = RollupFilter::default();
    let hour = RollupFilter {
        from_hour: Some(HOUR),
        to_hour: Some(HOUR + 3600),
        ..RollupFilter::default()
    };
    let key = RollupFilter {
        key_id: Some(KEY),
        ..RollupFilter::default()
    };
    let node = RollupFilter {
        node_id: Some(1),
        ..hour.clone()
    };
    let one = |totals| vec![(RollupKey::default(), totals)];
    let key_all = RollupKey {
        key_id: Some(KEY),
        ..RollupKey::default()
    };
    let model = |m: &str| RollupKey {
        model: Some(m.into()),
        ..RollupKey::default()
    };
    let node_model = |n: i64| RollupKey {
        model: Some("m".into()),
        ..by_node(n)
    };
    let cases: Vec<(GroupBy, &RollupFilter, RollupRows)> = vec![
        (GroupBy::Nothing, &everything, one(all)),
        (GroupBy::Nothing, &hour, one(all)),
        (GroupBy::Nothing, &node, one(node_1)),
        (GroupBy::Nothing, &key, one(all)),
        (
            GroupBy::Node,
            &everything,
            vec![(by_node(1), node_1), (by_node(2), node_2)],
        ),
        (GroupBy::Node, &hour, vec![(by_node(1), node_1), (by_node(2), node_2)]),
        (GroupBy::Node, &key, vec![(by_node(1), node_1), (by_node(2), node_2)]),
        (GroupBy::Model, &hour, vec![(model("m"), all)]),
        (GroupBy::Model, &key, vec![(model("m"), all)]),
        (
            GroupBy::NodeAndModel,
            &hour,
            vec![(node_model(1), node_1), (node_model(2), node_2)],
        ),
        (GroupBy::Key, &everything, vec![(key_all.clone(), all)]),
        (GroupBy::Key, &hour, vec![(key_all, all)]),
        (
            GroupBy::Hour,
            &node,
            vec![(
                RollupKey {
                    hour_start: Some(HOUR),
                    ..RollupKey::default()
                },
                node_1,
            )],
        ),
        (
            GroupBy::LocalDay { utc_offset_secs: 3600 },
            &hour,
            vec![(
                RollupKey {
                    local_day: Some((HOUR + 3600) / 86400),
                    ..RollupKey::default()
                },
                all,
            )],
        ),
    ];
    for (group, filter, expected) in cases {
        let rows = store.rollup_totals(group, filter).await.unwrap();
        assert_eq!(rows, expected, "{group:?} {filter:?}");
    }
    let together = store
        .rollup_totals_together(&[GroupBy::Nothing, GroupBy::Node], &hour)
        .await
        .unwrap();
    assert_eq!(together[0], one(all));

    let export = store.export_rows(HOUR, HOUR + 3600, 0).await.unwrap();
    let exported: Vec<(i64, i64, RollupTotals)> = export.iter().map(|r| (r.key_id, r.node_id, r.totals)).collect();
    assert_eq!(exported, [(KEY, 1, node_1), (KEY, 2, node_2)]);
    assert!(export.iter().all(|r| r.local_day == HOUR / 86400 && r.model == "m"));
    let spent = store.key_tokens_since(&[KEY], HOUR).await.unwrap();
    assert_eq!(spent, [(KEY, all.total_tokens)]);

    // The node filter reads both writers' id ranges of the hour, interleaved.
    let newest_first: Vec<i64> = store
        .history_page(&HistoryFilter {
            limit: 1000,
            ..HistoryFilter::default()
        })
        .await
        .unwrap()
        .records
        .iter()
        .filter(|r| r.node_id == Some(1))
        .map(|r| r.id)
        .collect();
    assert_eq!(newest_first.len() as u64, node_1.request_count);
    let mut filter = HistoryFilter {
        node_id: Some(1),
        limit: 7,
        ..HistoryFilter::default()
    };
    let mut paged = Vec::new();
    loop {
        let page = store.history_page(&filter).await.unwrap();
        paged.extend(page.records.iter().map(|r| r.id));
        filter.before_id = paged.last().copied();
        if !page.has_more {
            break;
        }
    }
    assert_eq!(paged, newest_first);
}

#[test]
fn postgres_upserts_number_every_array_once_after_the_shard() {
    let sql = upsert_all_sql_postgres();
    let columns: usize = TABLES
        .iter()
        .map(|t| t.key_columns().len() + VALUE_COLUMNS.len() + if t.id_range { 2 } else { 0 })
        .sum();
    for n in 1..=columns + 1 {
        let cast = if n == 1 { "::bigint " } else { "::" };
        assert_eq!(
            sql.matches(&format!("${n}{cast}")).count(),
            if n == 1 { TABLES.len() } else { 1 },
            "${n}"
        );
    }
    assert!(!sql.contains(&format!("${}:", columns + 2)));
    assert_eq!(sql.matches("INSERT INTO token_stats_").count(), TABLES.len());
}
