//! The configuration file (DESIGN §14): nodes and settings from TOML, flags and env
//! over it, nodes it declares that cannot be deleted, and a bad file that stops the
//! binary naming its line.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::admission::patch_node;
use crate::support::*;

/// `llm-router --config <file> ARGS…` as the binary parses it.
fn parse(file: &std::path::Path, dir: &tempfile::TempDir, args: &[&str]) -> llm_router::config::ServeArgs {
    let mut argv = vec![
        "llm-router".to_string(),
        "--config".into(),
        file.display().to_string(),
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--admin-key".into(),
        ADMIN_KEY.into(),
        "--host".into(),
        "127.0.0.1".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let (args, demo) = llm_router::config::parse_from(argv).expect("the configuration parses");
    assert!(!demo);
    args
}

#[tokio::test]
async fn a_configuration_file_declares_nodes_and_settings_that_flags_override_and_its_nodes_cannot_be_deleted() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m"]).await;
    let dir = tempfile::TempDir::new().unwrap();
    let file = dir.path().join("llm-router.toml");
    let text = format!(
        "# the router's settings\nport = 0\nqueue_size = 7\nqueue_timeout_secs = 3\nmetrics = \"admin\"\n\
         max_connections = 64\nrequest_head_timeout_ms = 2500\nworker_threads = 2\n\n\
         [[nodes]]\nurl = \"{}\"\nname = \"gpu-a\"\nmax_concurrent = 4\nweight = 3\n\n\
         [[nodes]]\nbase_url = \"{}/v1\"\nkind = \"openai\"\n",
        a.base_url(),
        b.base_url()
    );
    std::fs::write(&file, text).unwrap();

    let args = parse(&file, &dir, &[]);
    assert_eq!((args.queue_size, args.queue_timeout_secs), (7, 3));
    assert_eq!(args.metrics, llm_router::config::MetricsAccess::Admin);
    // The server's limits (issue 17) are settings like any other.
    assert_eq!(
        (args.max_connections, args.request_head_timeout_ms, args.worker_threads),
        (Some(64), 2500, Some(2))
    );
    // A flag wins over the file.
    let overridden = parse(
        &file,
        &dir,
        &["--queue-size", "9", "--metrics", "open", "--max-connections", "128"],
    );
    assert_eq!((overridden.queue_size, overridden.queue_timeout_secs), (9, 3));
    assert_eq!(overridden.metrics, llm_router::config::MetricsAccess::Open);
    assert_eq!(
        (overridden.max_connections, overridden.worker_threads),
        (Some(128), Some(2))
    );

    let router = llm_router::app::start(args.clone()).await.unwrap();
    let h = Harness::from_router(router, dir, args);
    let nodes = h.get("/api/nodes").await["nodes"].clone();
    let view: Vec<Value> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            json!([
                n["name"],
                n["source"],
                n["max_concurrent"],
                n["weight"],
                n["kind_explicit"],
                n["status"]
            ])
        })
        .collect();
    let b_name = b.addr.to_string();
    assert_eq!(
        view,
        [
            json!(["gpu-a", "config", 4, 3, false, "online"]),
            json!([b_name, "config", null, 1, true, "online"])
        ]
    );
    assert_eq!(h.chat("m", "x").await.0, 200);
    let id = nodes[0]["id"].clone();
    let (s, v) = h.admin(Method::DELETE, &format!("/api/nodes/{id}"), None).await;
    assert_eq!((s, &v["error"]["code"]), (409, &json!("conflict")));
    assert_eq!(
        v["error"]["message"],
        format!(
            "node {id} is declared in the configuration file {}: remove it there (it can be disabled here)",
            file.display()
        )
    );
    // It can be disabled, and stays disabled and declared across a restart.
    patch_node(&h, &a.base_url(), json!({"enabled": false})).await;
    let h = h.restart().await;
    let nodes = h.get("/api/nodes").await["nodes"].clone();
    assert_eq!(nodes.as_array().unwrap().len(), 2, "no node added twice");
    assert_eq!(
        (&nodes[0]["enabled"], &nodes[0]["source"]),
        (&json!(false), &json!("config"))
    );

    // Once the file no longer declares a node, it can be deleted.
    let c = mock("gamma", &["m"]).await;
    std::fs::write(&file, format!("[[nodes]]\nurl = \"{}\"\n", c.base_url())).unwrap();
    let h = h.restart().await;
    let (s, _) = h.admin(Method::DELETE, &format!("/api/nodes/{id}"), None).await;
    assert_eq!(s, 204);
    assert_eq!(h.get("/api/nodes").await["nodes"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_binary_refuses_a_bad_file_naming_its_line_and_env_overrides_a_good_one() {
    let dir = tempfile::TempDir::new().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "port = 8080\n\n[[nodes]]\nurl = \"http://gpu:1\"\nmax_concurent = 2\n",
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-router"))
        .arg("--config")
        .arg(&bad)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!(
            "llm-router: configuration file {}, line 5: unknown field `max_concurent`",
            bad.display()
        )),
        "{stderr}"
    );

    // The file says one port, the environment another: the environment wins.
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (file_port, env_port) = (free(), free());
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("host = \"127.0.0.1\"\nport = {file_port}\n")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-router"))
        .arg("--config")
        .arg(&good)
        .arg("--data-dir")
        .arg(dir.path())
        .env("LLM_ROUTER_PORT", env_port.to_string())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut listening = String::new();
    while let Some(line) = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
    {
        if line.starts_with("llm-router listening") {
            listening = line;
            break;
        }
    }
    assert!(
        listening.starts_with(&format!("llm-router listening on http://127.0.0.1:{env_port} ")),
        "{listening}"
    );
    child.kill().await.unwrap();
}
