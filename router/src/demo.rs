//! `llm-router demo`: the router with two mock nodes, three client keys and light
//! synthetic traffic, so a newcomer sees requests, streams and token figures move on
//! the dashboard, usage per key, and a key's daily budget being hit.

use std::time::Duration;

use mock_node::{MockConfig, MockNode};
use serde_json::json;

use crate::app;
use crate::config::ServeArgs;
use crate::keys::KeyRing;
use crate::nodes::NodeRegistration;
use crate::store::KeyLimits;
use crate::upstream::CertificateCheck;

pub async fn run(mut args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let alpha = MockNode::start(MockConfig {
        name: "alpha".into(),
        models: vec!["llama-3-8b".into(), "qwen-2.5-7b".into()],
        chunks: 24,
        chunk_delay: Duration::from_millis(40),
        ..MockConfig::default()
    })
    .await?;
    let beta = MockNode::start(MockConfig {
        name: "beta".into(),
        models: vec!["llama-3-8b".into()],
        chunks: 16,
        chunk_delay: Duration::from_millis(60),
        // Like servers that never report usage: the router estimates.
        usage: false,
        ..MockConfig::default()
    })
    .await?;
    // Keep the demo's figures out of the real router's database.
    if args.data_dir.is_none() && args.database_url.is_none() {
        args.data_dir = Some(args.data_dir().join("demo"));
    }
    let router = app::start(args).await?;
    // Mock nodes of an earlier demo run listened on other ports: retire them (their
    // statistics stay, listed as deleted).
    let registry = router.state.balancer.registry();
    for old in registry.live() {
        registry.delete(old.id).await?;
    }
    for (node, name) in [(&alpha, "alpha"), (&beta, "beta (no usage)")] {
        let registration = NodeRegistration {
            base_url: node.base_url(),
            name: Some(name.into()),
            ..NodeRegistration::default()
        };
        let added = registry.add(registration, "static").await?;
        router.state.health.probe(&added).await;
    }
    let keys = demo_keys(&router.state.keys).await?;
    let base = router.base_url();
    println!("llm-router demo on {base}");
    println!(
        "  dashboard: {base}/dashboard   admin key: {}",
        router.state.admin_key.expose()
    );
    println!("  try: curl {base}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("         -d '{{\"model\":\"llama-3-8b\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    for (name, secret) in &keys {
        println!("  client key {name}: {secret}");
    }
    println!("  (add -H 'Authorization: Bearer <key>' to the curl above; GET {base}/v1/key shows a key's usage)");
    let secrets = keys.into_iter().map(|(_, s)| s).collect();
    let traffic = tokio::spawn(synthetic_traffic(router.state.client.clone(), base, secrets));
    router.run_until_signal().await;
    traffic.abort();
    drop((alpha, beta));
    Ok(())
}

/// Keys for the demo: `alice` without limits and `ci-bot` with a small daily budget,
/// which its share of the traffic uses up in a few minutes. The keys of an earlier run
/// are revoked (their secrets were shown then only; their statistics stay).
async fn demo_keys(keys: &KeyRing) -> Result<Vec<(&'static str, String)>, Box<dyn std::error::Error>> {
    for old in keys.all() {
        if !old.settings().revoked {
            keys.revoke(old.id).await?;
        }
    }
    let mut out = Vec::new();
    for (name, daily_token_budget, rpm_limit) in [("alice", None, None), ("ci-bot", Some(3000), Some(30))] {
        let limits = KeyLimits {
            daily_token_budget,
            rpm_limit,
            budget_tz: "UTC".into(),
            ..KeyLimits::default()
        };
        let (_, secret) = keys.create(name.into(), limits).await?;
        out.push((name, secret));
    }
    Ok(out)
}

/// A request every second or so, alternating models, streams and plain answers, and
/// the clients: each key in turn, then an anonymous one.
async fn synthetic_traffic(client: crate::upstream::UpstreamClient, base: String, keys: Vec<String>) {
    let mut i = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(700 + (i % 5) * 150)).await;
        let model = if i.is_multiple_of(3) {
            "qwen-2.5-7b"
        } else {
            "llama-3-8b"
        };
        let body = json!({
            "model": model,
            "stream": i.is_multiple_of(2),
            "messages": [{"role": "user", "content": format!("Demo question number {i}: tell me about load balancing.")}]
        });
        let mut req = http::Request::post(format!("{base}/v1/chat/completions"));
        if let Some(key) = keys.get(i as usize % (keys.len() + 1)) {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
            .expect("static request");
        if let Ok(resp) = client
            .send(req, CertificateCheck::Verify, Duration::from_secs(30))
            .await
        {
            let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
        }
        i += 1;
    }
}
