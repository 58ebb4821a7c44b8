//! `migrate-store` between the engines: every figure and page the same after.

use chrono::{TimeZone, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, StoredBody, TokenSource};

use super::*;
use crate::store::testing::postgres_database;
use crate::store::{GroupBy, HistoryFilter, KeyLimits, LockWait, NewKey, NewNode, RollupFilter, ANONYMOUS};

fn node(i: u64) -> NewNode {
    NewNode {
        name: format!("node-{i}"),
        base_url: format!("http://gpu-{i}:8000"),
        api_key: (i == 2).then(|| "node-secret".to_string()),
        include_usage: true,
        source: "api",
        kind: "vllm",
        kind_explicit: i == 1,
        tls_insecure: false,
        max_concurrent: Some(i * 4),
        weight: i,
    }
}

fn key(i: u8) -> NewKey {
    NewKey {
        name: format!("key-{i}"),
        prefix: format!("sk-{i}"),
        secret_hash: [i; 32],
        limits: KeyLimits {
            allowed_models: (i == 1).then(|| vec!["m0".to_string()]),
            rpm_limit: Some(60),
            budget_tz: "UTC".into(),
            priority: i as i64,
            ..KeyLimits::default()
        },
    }
}

/// Record `i` of 90 days of traffic: over 3 nodes, 3 models, 2 keys and none.
fn record(i: u64, nodes: &[i64], keys: &[(i64, String)]) -> RequestResponseRecord {
    let mut seed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x2545_f491;
    seed ^= seed >> 29;
    let at = Utc.timestamp_opt(1_700_000_000, 0).unwrap()
        + chrono::Duration::seconds((i * 90 * 86_400 / 3000) as i64 + (seed % 600) as i64);
    let status = match seed % 10 {
        0 => RequestStatus::Error,
        1 => RequestStatus::Cancelled,
        _ => RequestStatus::Success,
    };
    let node_id = nodes[(seed % 3) as usize];
    let key = match (seed >> 8) % 3 {
        0 => None,
        k => Some(&keys[k as usize - 1]),
    };
    let input = seed % 500;
    let output = (seed >> 16) % 300;
    RequestResponseRecord {
        id: 0,
        timestamp: at,
        completed_at: at + chrono::Duration::milliseconds((seed % 5000) as i64),
        request_type: RequestType::ChatCompletions,
        model: format!("m{}", (seed >> 4) % 3),
        node_id: Some(node_id),
        node_name: Some(format!("node-{node_id}")),
        client_ip: Some("10.0.0.1".into()),
        api_key_id: key.map(|k| k.0),
        api_key_name: key.map(|k| k.1.clone()),
        stream: seed.is_multiple_of(2),
        status,
        http_status: if status == RequestStatus::Error { 502 } else { 200 },
        error_message: (status == RequestStatus::Error).then(|| "upstream failed".into()),
        duration_ms: seed % 5000,
        time_to_first_token_ms: (status == RequestStatus::Success).then_some(seed % 700),
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        token_source: if seed.is_multiple_of(7) {
            TokenSource::Estimated
        } else {
            TokenSource::Reported
        },
        // Bodies on one record in 37 (82 rows: more than one batch); every other
        // one's answer cut, some with a request and no answer.
        request_body: i.is_multiple_of(37).then(|| StoredBody {
            text: format!("{{\"n\": {i}, \"text\": \"é€𝄞\"}}"),
            truncated: false,
        }),
        response_body: (i.is_multiple_of(37) && !i.is_multiple_of(111)).then(|| StoredBody {
            text: format!("data: {i}\n\n"),
            truncated: i.is_multiple_of(74),
        }),
    }
}

/// Every record the seed gave bodies, with them, as the store reads it back.
async fn records_with_bodies(store: &Store) -> Vec<String> {
    let ids = store
        .db()
        .fetch_all("SELECT id FROM request_bodies ORDER BY id", &[], |r| r.int("id"))
        .await
        .unwrap();
    let mut out = Vec::new();
    for id in ids {
        let r = store.history_record(id).await.unwrap().unwrap();
        assert!(r.request_body.is_some(), "record {id} has its body");
        out.push(format!("{r:?}"));
    }
    out
}

/// Every page of `filter`, to the end, with the cursors.
async fn all_pages(store: &Store, mut filter: HistoryFilter) -> Vec<Vec<RequestResponseRecord>> {
    let mut pages = Vec::new();
    loop {
        let page = store.history_page(&filter).await.unwrap();
        filter.before_id = page.records.last().map(|r| r.id);
        let more = page.has_more;
        pages.push(page.records);
        if !more {
            return pages;
        }
    }
}

/// Everything the router reads from a store: statistics, history pages, nodes, keys.
async fn figures(store: &Store, nodes: &[i64], keys: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    for group in [
        GroupBy::Nothing,
        GroupBy::Node,
        GroupBy::Model,
        GroupBy::Key,
        GroupBy::NodeAndModel,
        GroupBy::Hour,
    ] {
        let mut rows = store.rollup_totals(group, &RollupFilter::default()).await.unwrap();
        rows.sort_by_key(|(k, _)| format!("{k:?}"));
        out.push(format!("{group:?}: {rows:?}"));
    }
    let mut filters = vec![HistoryFilter::default()];
    filters.extend(nodes.iter().map(|&n| HistoryFilter {
        node_id: Some(n),
        ..HistoryFilter::default()
    }));
    filters.extend(keys.iter().chain([&ANONYMOUS]).map(|&k| HistoryFilter {
        key_id: Some(k),
        ..HistoryFilter::default()
    }));
    for status in [RequestStatus::Success, RequestStatus::Error, RequestStatus::Cancelled] {
        filters.push(HistoryFilter {
            status: Some(status),
            ..HistoryFilter::default()
        });
    }
    for mut filter in filters {
        filter.limit = 100;
        let pages = all_pages(store, filter.clone()).await;
        out.push(format!("{filter:?}: {pages:?}"));
    }
    out.push(format!("{:?}", store.all_nodes().await.unwrap()));
    out.push(format!("{:?}", store.all_keys().await.unwrap()));
    out.extend(records_with_bodies(store).await);
    out
}

/// Three nodes and two keys in `store`: their ids, and the keys' names.
async fn nodes_and_keys(store: &Store) -> (Vec<i64>, Vec<(i64, String)>) {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        nodes.push(store.insert_node(&node(i)).await.unwrap().id);
    }
    let mut keys = Vec::new();
    for i in 1..=2 {
        let k = store.insert_key(&key(i)).await.unwrap();
        keys.push((k.id, k.name));
    }
    (nodes, keys)
}

#[tokio::test]
async fn sqlite_to_postgres_keeps_every_figure_and_page() {
    let pg_url = postgres_database().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}/router.db", dir.path().display());
    let source = Store::open(&sqlite_url).await.unwrap();
    let (nodes, keys) = nodes_and_keys(&source).await;
    let mut writer = source.writer().unwrap();
    let records: Vec<_> = (0..3000).map(|i| record(i, &nodes, &keys)).collect();
    for batch in records.chunks(64) {
        writer.commit(batch, LockWait::Patient).unwrap();
    }
    drop(writer);
    source.delete_node(nodes[1]).await.unwrap();
    source.revoke_key(keys[1].0).await.unwrap();
    let key_ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let expected = figures(&source, &nodes, &key_ids).await;
    source.close().await;

    let report = migrate_store(&sqlite_url, &pg_url, false).await.unwrap();
    assert!(report.tables.contains(&("request_history", 3000)), "{report:?}");
    assert!(report.tables.contains(&("request_bodies", 82)), "{report:?}");
    let target = Store::open(&pg_url).await.unwrap();
    assert_eq!(figures(&target, &nodes, &key_ids).await, expected);

    // A record written after the copy gets an id past the copied ones.
    let mut writer = target.writer().unwrap();
    let late = record(3000, &nodes, &keys);
    let after = tokio::task::spawn_blocking(move || writer.commit(&[late], LockWait::Patient));
    after.await.unwrap().unwrap();
    let newest = target
        .history_page(&HistoryFilter {
            limit: 1,
            ..HistoryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(newest.records[0].id, 3001);
    target.close().await;

    // Not empty now: refused without force; with force, the same figures again.
    let refused = migrate_store(&sqlite_url, &pg_url, false).await.unwrap_err();
    assert!(matches!(refused, StoreError::TargetNotEmpty(_)), "{refused}");
    migrate_store(&sqlite_url, &pg_url, true).await.unwrap();
    let target = Store::open(&pg_url).await.unwrap();
    assert_eq!(figures(&target, &nodes, &key_ids).await, expected);
    target.close().await;
}

#[tokio::test]
async fn postgres_rows_of_several_writers_are_summed_into_sqlite_and_back() {
    let pg_url = postgres_database().await;
    let source = Store::open(&pg_url).await.unwrap();
    let (nodes, keys) = nodes_and_keys(&source).await;
    // Two replicas' writers take turns: each adds to the rollup rows of its shard.
    let mut writers = [source.writer().unwrap(), source.writer().unwrap()];
    let records: Vec<_> = (0..3000).map(|i| record(i, &nodes, &keys)).collect();
    for (i, batch) in records.chunks(64).enumerate() {
        writers[i % 2].commit(batch, LockWait::Patient).unwrap();
    }
    drop(writers);
    let shards = source
        .db()
        .fetch_optional("SELECT COUNT(DISTINCT shard) AS n FROM token_stats_hourly", &[], |r| {
            r.int("n")
        })
        .await
        .unwrap();
    assert_eq!(shards, Some(2));
    let key_ids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let expected = figures(&source, &nodes, &key_ids).await;
    source.close().await;

    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}/router.db", dir.path().display());
    let report = migrate_store(&pg_url, &sqlite_url, false).await.unwrap();
    assert!(report.tables.contains(&("request_history", 3000)), "{report:?}");
    assert!(report.tables.contains(&("request_bodies", 82)), "{report:?}");
    let copy = Store::open(&sqlite_url).await.unwrap();
    assert_eq!(figures(&copy, &nodes, &key_ids).await, expected);
    copy.close().await;

    // Back into an empty PostgreSQL database: one row per key, the same figures.
    let pg_again = postgres_database().await;
    migrate_store(&sqlite_url, &pg_again, false).await.unwrap();
    let target = Store::open(&pg_again).await.unwrap();
    assert_eq!(figures(&target, &nodes, &key_ids).await, expected);
    target.close().await;
}
