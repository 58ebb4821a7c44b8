//! The cost of client keys on the request path (not a test): what a keyed request
//! adds over an anonymous one, measured in-process on one thread, so that the figure
//! is CPU time and not the noise of a load test.
//!
//! Per request: read the presented secret from the headers, hash it and find the key
//! (`KeyRing::authenticate`), check its model list, budgets and windows (`admit`),
//! charge its tokens when it ends (`KeyPermit::charge`, as `finish_request` does),
//! count its Prometheus figures and release its concurrency slot (drop).
//!
//! Run: `cargo bench -p llm-router --bench keys` (BENCH_ITERATIONS, default 2,000,000).

use std::sync::Arc;
use std::time::Instant;

use common::protocol::{RequestStatus, TokenUsage};
use http::HeaderMap;
use llm_router::clock::Clock;
use llm_router::keys::{ClientAuth, KeyRing};
use llm_router::metrics::Metrics;
use llm_router::proxy::client_key;
use llm_router::store::{KeyLimits, Store};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let iterations: u64 = std::env::var("BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::TempDir::new().unwrap();
    let store = Store::open(&format!("sqlite://{}/keys.db", dir.path().display()))
        .await
        .unwrap();
    let keys = KeyRing::load(store, Arc::new(Metrics::new()), Clock::default())
        .await
        .unwrap();
    // A thousand other keys in the ring, as a team would have.
    for i in 0..1000 {
        keys.create(format!("other-{i}"), limits(None)).await.unwrap();
    }
    let usage = TokenUsage::new(40, 200, None);
    let started = chrono::Utc::now();
    for (label, limits) in [
        ("no limits", limits(None)),
        (
            "rpm + tpm + max_concurrent + daily and monthly budgets",
            limits(Some(u64::MAX / 4)),
        ),
    ] {
        let (key, secret) = keys.create("bench".into(), limits).await.unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", format!("Bearer {secret}").parse().unwrap());
        let t = Instant::now();
        for _ in 0..iterations {
            let found = keys
                .authenticate(client_key::presented(&headers), ClientAuth::Open)
                .unwrap()
                .unwrap();
            let permit = found.admit("mock-model").unwrap();
            permit.charge(&usage, started);
            permit.metrics().count(RequestStatus::Success, &usage);
            drop(permit);
        }
        let per = t.elapsed().as_nanos() as f64 / iterations as f64;
        println!(
            "keyed request, {label}: {:.3} µs per request ({iterations} iterations)",
            per / 1000.0
        );
        keys.revoke(key.id).await.unwrap();
    }
    // What an anonymous request pays for the same steps.
    let headers = HeaderMap::new();
    let t = Instant::now();
    for _ in 0..iterations {
        assert!(keys
            .authenticate(client_key::presented(&headers), ClientAuth::Open)
            .unwrap()
            .is_none());
    }
    let per = t.elapsed().as_nanos() as f64 / iterations as f64;
    println!("anonymous request: {:.3} µs per request", per / 1000.0);
}

fn limits(each: Option<u64>) -> KeyLimits {
    KeyLimits {
        allowed_models: each.map(|_| vec!["other".into(), "mock-model".into()]),
        rpm_limit: each,
        tpm_limit: each,
        max_concurrent: each,
        daily_token_budget: each,
        monthly_token_budget: each,
        budget_tz: if each.is_some() { "Europe/Paris" } else { "UTC" }.into(),
        ..KeyLimits::default()
    }
}
