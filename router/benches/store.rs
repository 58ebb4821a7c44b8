//! Store benchmarks (not a test): recorder throughput, and the latency of each
//! aggregation query as the history grows to 1 and 10 million rows; on SQLite, or on
//! PostgreSQL when `BENCH_DATABASE` names a server (see `databases`).
//!
//! Run: `cargo bench -p llm-router --bench store` (BENCH_ROWS=10000000 by default;
//! BENCH_RECORDS=200000 records for the recorder part); `bench/store-pg.sh` runs it on
//! a throwaway PostgreSQL server.

#[path = "store/databases.rs"]
mod databases;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};
use llm_router::clock::Clock;
use llm_router::keys::KeyRing;
use llm_router::metrics::Metrics;
use llm_router::nodes::NodeRegistry;
use llm_router::recorder::{Durability, Recorder};
use llm_router::stats::{self, DailyQuery, MonthlyQuery};
use llm_router::store::{GroupBy, HistoryFilter, RollupFilter, Store};

use databases::Databases;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn record(i: u64) -> RequestResponseRecord {
    let now = Utc::now();
    RequestResponseRecord {
        id: 0,
        timestamp: now,
        completed_at: now,
        request_type: RequestType::ChatCompletions,
        model: format!("model-{}", i % 3),
        node_id: Some((i % 8) as i64 + 1),
        node_name: Some("bench".into()),
        client_ip: Some("127.0.0.1".into()),
        api_key_id: None,
        api_key_name: None,
        stream: i.is_multiple_of(2),
        status: RequestStatus::Success,
        http_status: 200,
        error_message: None,
        duration_ms: 20,
        time_to_first_token_ms: None,
        input_tokens: 40,
        output_tokens: 200,
        total_tokens: 240,
        token_source: TokenSource::Reported,
        request_body: None,
        response_body: None,
    }
}

async fn recorder_throughput(databases: &Databases, records: u64) {
    for (durability, concurrency) in [
        (Durability::Durable, 64u64),
        (Durability::Durable, 512),
        (Durability::Async, 1),
    ] {
        let url = databases.fresh(&format!("recorder-{durability:?}-{concurrency}")).await;
        let store = Store::open(&url).await.unwrap();
        let recorder = Recorder::start(store.clone(), durability).unwrap();
        let start = Instant::now();
        let per_task = records / concurrency;
        let tasks: Vec<_> = (0..concurrency)
            .map(|t| {
                let recorder = recorder.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        // Like a request handler: wait for the commit before the next one.
                        recorder
                            .record(record(t * per_task + i), 0)
                            .wait(Duration::from_secs(30))
                            .await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        recorder.shutdown(Duration::from_secs(120)).await;
        let elapsed = start.elapsed();
        let committed = store.history_count().await.unwrap();
        assert_eq!(committed, per_task * concurrency);
        println!(
            "recorder {durability:?}, {concurrency} concurrent writers: {committed} records in {:.2} s = {:.0} records/s",
            elapsed.as_secs_f64(),
            committed as f64 / elapsed.as_secs_f64()
        );
    }
}

/// The wait a lone client pays in durable mode: one record at a time through the
/// recorder, each waited for like a request handler does.
async fn lone_writer_latency(databases: &Databases, records: u64) {
    let url = databases.fresh("lone").await;
    let store = Store::open(&url).await.unwrap();
    let recorder = Recorder::start(store.clone(), Durability::Durable).unwrap();
    let mut waits = Vec::new();
    for i in 0..records {
        let t = Instant::now();
        recorder.record(record(i), 0).wait(Duration::from_secs(30)).await;
        waits.push(t.elapsed());
    }
    recorder.shutdown(Duration::from_secs(30)).await;
    assert_eq!(store.history_count().await.unwrap(), records);
    waits.sort();
    let q = |p: f64| waits[((waits.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    println!(
        "recorder Durable, 1 writer: {records} records, commit wait p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        q(0.5),
        q(0.99),
        q(0.999)
    );
}

async fn median_ms<F, Fut>(mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    f().await;
    let mut times: Vec<f64> = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        f().await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

async fn query_latencies(store: &Store) -> Vec<(&'static str, f64)> {
    let registry = Arc::new(NodeRegistry::new(store.clone(), Vec::new()));
    let keys = KeyRing::load(store.clone(), Arc::new(Metrics::new()), Clock::default())
        .await
        .unwrap();
    let mut out = Vec::new();
    out.push((
        "node totals at start-up",
        median_ms(|| async {
            store
                .rollup_totals(GroupBy::Node, &RollupFilter::default())
                .await
                .unwrap();
        })
        .await,
    ));
    out.push((
        "/stats/tokens (by node, model and key)",
        median_ms(|| async {
            stats::token_stats(store, &registry, &keys, &RollupFilter::default())
                .await
                .unwrap();
        })
        .await,
    ));
    let daily = |days: u32, tz: &str, node: Option<i64>| DailyQuery {
        days: Some(days),
        tz: Some(tz.into()),
        node_id: node,
        ..Default::default()
    };
    for (name, q) in [
        ("/daily 30 days UTC", daily(30, "UTC", None)),
        ("/daily 365 days Europe/Paris", daily(365, "Europe/Paris", None)),
        ("/daily 30 days, node filter", daily(30, "Asia/Tokyo", Some(3))),
        ("/daily 365 days, node filter", daily(365, "UTC", Some(5))),
    ] {
        out.push((
            name,
            median_ms(|| async {
                stats::daily(store, q.clone()).await.unwrap();
            })
            .await,
        ));
    }
    let monthly = MonthlyQuery {
        months: Some(12),
        tz: Some("America/New_York".into()),
        ..Default::default()
    };
    out.push((
        "/monthly 12 months America/New_York",
        median_ms(|| async {
            stats::monthly(store, monthly.clone()).await.unwrap();
        })
        .await,
    ));
    let by_model = MonthlyQuery {
        months: Some(12),
        model: Some("model-1".into()),
        ..Default::default()
    };
    let by_both = MonthlyQuery {
        months: Some(12),
        model: Some("model-2".into()),
        node_id: Some(2),
        ..Default::default()
    };
    out.push((
        "/monthly 12 months, model filter",
        median_ms(|| async {
            stats::monthly(store, by_model.clone()).await.unwrap();
        })
        .await,
    ));
    out.push((
        "/monthly 12 months, node + model filter",
        median_ms(|| async {
            stats::monthly(store, by_both.clone()).await.unwrap();
        })
        .await,
    ));
    let pages = [
        ("history page (50), node filter", Some(5), None),
        ("history page (50), status=error", None, Some(RequestStatus::Error)),
    ];
    for (name, node_id, status) in pages {
        let filter = HistoryFilter {
            node_id,
            status,
            limit: 50,
            ..Default::default()
        };
        out.push((
            name,
            median_ms(|| async {
                assert_eq!(store.history_page(&filter).await.unwrap().records.len(), 50);
            })
            .await,
        ));
    }
    out
}

#[tokio::main]
async fn main() {
    let rows = env("BENCH_ROWS", 10_000_000);
    let records = env("BENCH_RECORDS", 200_000);
    let databases = Databases::from_env();
    println!("== recorder throughput (group commit into {}) ==", databases.engine());
    lone_writer_latency(&databases, env("BENCH_LONE", 20_000)).await;
    recorder_throughput(&databases, records).await;

    println!("== aggregation queries, median of 31 runs ==");
    let url = databases.fresh("history").await;
    let store = Store::open(&url).await.unwrap();
    let mut table: Vec<(u64, Vec<(&'static str, f64)>)> = Vec::new();
    let mut loaded = 0;
    for size in [rows / 10, rows] {
        databases.load_history(&url, loaded, size, rows).await;
        loaded = size;
        println!("history rows: {}", store.history_count().await.unwrap());
        table.push((size, query_latencies(&store).await));
    }
    print!("{:<40}", "query");
    for (size, _) in &table {
        print!("{:>14}", format!("{size} rows"));
    }
    println!();
    for i in 0..table[0].1.len() {
        print!("{:<40}", table[0].1[i].0);
        for (_, results) in &table {
            print!("{:>11.2} ms", results[i].1);
        }
        println!();
    }
}
