//! Admission and placement under a bursty load (not a test): two mock nodes of unequal
//! speed and capacity, each serving a bounded number of requests at a time and queueing
//! the rest inside itself (as llama-server does with its slots), behind the router
//! routed two ways:
//!
//! - `least-busy`: the router does not know the capacities: least in-flight requests
//!   first (the routing before issue 15). A burst is split evenly, so the slow node
//!   piles up requests that wait inside it while the fast one idles.
//! - `admission`: each node's `max_concurrent` is its slots: placement by in-flight
//!   relative to capacity, the rest waits in the router's queue and goes to the first
//!   node that frees a slot.
//!
//! Load: `BENCH_BURSTS` bursts (default 12) of `BENCH_BURST` streamed requests
//! (default 24) sent at once, one burst every `BENCH_GAP_MS` (default 1000). Figures:
//! each request's latency (send to the end of the stream), p50/p99/max, errors, and
//! the share each node served. Everything runs in this process on a two-thread runtime.
//!
//! Run: `bench/admission.sh` (or `cargo bench -p llm-router --bench admission`).

use std::time::{Duration, Instant};

use llm_router::app;
use llm_router::config::ServeArgs;
use llm_router::store::NodeChanges;
use mock_node::{MockConfig, MockNode};

/// A node: its name, slots, and the delay between its streamed chunks.
struct NodeSpec {
    name: &'static str,
    slots: usize,
    chunk_delay_ms: u64,
}

const NODES: [NodeSpec; 2] = [
    NodeSpec {
        name: "fast",
        slots: 4,
        chunk_delay_ms: 10,
    },
    NodeSpec {
        name: "slow",
        slots: 2,
        chunk_delay_ms: 30,
    },
];
/// Content chunks per answer: 80 ms on the fast node, 240 ms on the slow one.
const CHUNKS: usize = 8;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Debug)]
struct Figures {
    latencies: Vec<Duration>,
    errors: usize,
    served: Vec<(String, usize)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

async fn run(admission: bool, bursts: u64, burst: u64, gap: Duration) -> Figures {
    let mut nodes = Vec::new();
    for spec in &NODES {
        let config = MockConfig {
            name: spec.name.into(),
            models: vec!["m".into()],
            chunks: CHUNKS,
            chunk_delay: Duration::from_millis(spec.chunk_delay_ms),
            slots: Some(spec.slots),
            ..MockConfig::default()
        };
        nodes.push(MockNode::start(config).await.unwrap());
    }
    let dir = tempfile::TempDir::new().unwrap();
    let mut args = ServeArgs::for_data_dir(dir.path());
    args.admin_key = Some("bench".into());
    args.nodes = nodes.iter().map(MockNode::base_url).collect();
    args.queue_size = 10_000;
    args.queue_timeout_secs = 120;
    let router = app::start(args).await.unwrap();
    if admission {
        let registry = router.state.balancer.registry();
        for (node, spec) in registry.live().iter().zip(&NODES) {
            let changes = NodeChanges {
                max_concurrent: Some(Some(spec.slots as u64)),
                ..NodeChanges::default()
            };
            registry.update(node.id, changes).await.unwrap();
        }
    }
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", router.base_url());
    let mut tasks = Vec::new();
    let start = Instant::now();
    for b in 0..bursts {
        tokio::time::sleep_until((start + gap * b as u32).into()).await;
        for i in 0..burst {
            let (http, url) = (http.clone(), url.clone());
            let body = serde_json::json!({"model": "m", "stream": true,
                "messages": [{"role": "user", "content": format!("burst {b} request {i}")}]});
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let resp = http.post(&url).json(&body).send().await;
                let ok = match resp {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok_and(|b| b.ends_with(b"[DONE]\n\n")),
                    _ => false,
                };
                (ok, sent.elapsed())
            }));
        }
    }
    let mut figures = Figures {
        latencies: Vec::new(),
        errors: 0,
        served: Vec::new(),
    };
    for t in tasks {
        let (ok, latency) = t.await.unwrap();
        if ok {
            figures.latencies.push(latency);
        } else {
            figures.errors += 1;
        }
    }
    figures.latencies.sort();
    figures.served = NODES
        .iter()
        .zip(&nodes)
        .map(|(s, n)| (s.name.to_string(), n.received().len()))
        .collect();
    let peaks: Vec<usize> = nodes.iter().map(MockNode::peak_in_flight).collect();
    println!("  peak requests in flight at the nodes (fast, slow): {peaks:?}");
    router.shutdown().await;
    figures
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bursts = env("BENCH_BURSTS", 12);
    let burst = env("BENCH_BURST", 24);
    let gap = Duration::from_millis(env("BENCH_GAP_MS", 1000));
    println!(
        "{bursts} bursts of {burst} streamed requests, {} ms apart; nodes: fast (4 slots, {} ms per answer), slow (2 slots, {} ms)",
        gap.as_millis(),
        CHUNKS as u64 * NODES[0].chunk_delay_ms,
        CHUNKS as u64 * NODES[1].chunk_delay_ms
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (label, admission) in [
        ("least-busy (no capacity)", false),
        ("admission (capacity + queue)", true),
    ] {
        println!("{label}:");
        let f = rt.block_on(run(admission, bursts, burst, gap));
        let l = &f.latencies;
        let served: Vec<String> = f.served.iter().map(|(n, c)| format!("{n} {c}")).collect();
        println!(
            "  latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; errors {}; served: {}",
            ms(percentile(l, 0.50)),
            ms(percentile(l, 0.99)),
            ms(*l.last().unwrap()),
            f.errors,
            served.join(", ")
        );
    }
}
