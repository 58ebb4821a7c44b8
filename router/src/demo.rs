//! `llm-router demo`: the router with two mock nodes and light synthetic traffic, so a
//! newcomer sees requests, streams and token figures move on the dashboard.

use std::time::Duration;

use mock_node::{MockConfig, MockNode};
use serde_json::json;

use crate::app;
use crate::config::ServeArgs;
use crate::nodes::NodeRegistration;
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
    let base = router.base_url();
    println!("llm-router demo on {base}");
    println!(
        "  dashboard: {base}/dashboard   admin key: {}",
        router.state.admin_key.expose()
    );
    println!("  try: curl {base}/v1/chat/completions -H 'content-type: application/json' \\");
    println!("         -d '{{\"model\":\"llama-3-8b\",\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'");
    let traffic = tokio::spawn(synthetic_traffic(router.state.client.clone(), base));
    router.run_until_signal().await;
    traffic.abort();
    drop((alpha, beta));
    Ok(())
}

/// A request every second or so, alternating models, streams and plain answers.
async fn synthetic_traffic(client: crate::upstream::UpstreamClient, base: String) {
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
        let req = http::Request::post(format!("{base}/v1/chat/completions"))
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
