//! What survives: restarts, node failures and deletions, pruning, a locked store.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use crate::support::*;

async fn token_totals(h: &Harness) -> (u64, u64, u64) {
    let t = h.get("/api/dashboard/stats/tokens").await;
    (
        u(&t["total_input_tokens"]),
        u(&t["total_output_tokens"]),
        u(&t["request_count"]),
    )
}

#[tokio::test]
async fn totals_and_nodes_survive_a_restart() {
    let a = mock("alpha", &["m"]).await;
    let b = mock_with("beta", &["m2"], |c| c.usage = false).await;
    let h = Harness::start(&[&a]).await;
    let (s, _) = h
        .admin(
            Method::POST,
            "/api/nodes",
            Some(serde_json::json!({"base_url": b.base_url(), "name": "beta"})),
        )
        .await;
    assert_eq!(s, 201);
    h.chat("m", "one two three").await;
    h.chat_stream(&chat_body("m", "one two", true)).await;
    h.chat("m2", "some words here").await;
    let before_nodes = h.get("/api/dashboard/nodes").await;
    let before_tokens = h.get("/api/dashboard/stats/tokens").await;
    let before_metrics = token_metric_lines(&h).await;

    let h = h.restart().await;
    let after_nodes = h.get("/api/dashboard/nodes").await;
    for (x, y) in before_nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after_nodes["nodes"].as_array().unwrap())
    {
        for k in [
            "id",
            "name",
            "base_url",
            "total_requests",
            "successful_requests",
            "total_input_tokens",
            "total_output_tokens",
            "total_tokens",
        ] {
            assert_eq!(x[k], y[k], "{k} changed across the restart");
        }
    }
    assert_eq!(
        after_nodes["nodes"].as_array().unwrap().len(),
        2,
        "the API-registered node is restored"
    );
    assert_eq!(h.get("/api/dashboard/stats/tokens").await, before_tokens);
    assert_eq!(
        token_metric_lines(&h).await,
        before_metrics,
        "Prometheus counters restart from the store"
    );
    assert_eq!(h.chat("m2", "x").await.0, 200, "restored node routes again");
}

/// The token counter lines of `/metrics`.
async fn token_metric_lines(h: &Harness) -> Vec<String> {
    let text = h.metrics().await;
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("llm_router_input_tokens_total") || l.starts_with("llm_router_output_tokens_total"))
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[tokio::test]
async fn offline_and_deleted_nodes_keep_their_totals() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m2"]).await;
    let h = Harness::start(&[&a]).await;
    // Through the API: a node that --node declares cannot be deleted.
    let b_id = h.add_node(&b).await;
    let (a_url, b_url) = (a.base_url(), b.base_url());
    h.chat("m", "one two three").await;
    h.chat("m2", "one two").await;
    let total_before = token_totals(&h).await;
    assert_eq!(total_before, (5, 10, 2));

    a.shutdown().await;
    h.router.state.health.probe_all().await;
    let n = h.wait_node(&a_url, "offline", |n| n["status"] == "offline").await;
    assert_eq!((u(&n["total_input_tokens"]), u(&n["total_output_tokens"])), (3, 5));

    let (s, _) = h.admin(Method::DELETE, &format!("/api/nodes/{b_id}"), None).await;
    assert_eq!(s, 204);
    let n = h.node(&b_url).await;
    assert_eq!(n["deleted"], true);
    assert_eq!((u(&n["total_input_tokens"]), u(&n["total_output_tokens"])), (2, 5));
    assert_eq!(token_totals(&h).await, total_before);

    let h = h.restart().await;
    let n = h.node(&b_url).await;
    assert_eq!((n["deleted"].clone(), u(&n["total_tokens"])), (Value::Bool(true), 7));
    assert_eq!(u(&h.node(&a_url).await["total_tokens"]), 8);
    assert_eq!(token_totals(&h).await, total_before);
    let stats = h.get("/api/dashboard/stats").await;
    assert_eq!(
        (u(&stats["total_input_tokens"]), u(&stats["total_output_tokens"])),
        (5, 10)
    );
}

#[tokio::test]
async fn pruning_history_changes_no_token_figure() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    for _ in 0..3 {
        h.chat("m", "one two").await;
    }
    let before = h.get("/api/dashboard/stats/tokens").await;
    let daily_before = h.get("/api/dashboard/stats/tokens/daily?days=2").await;
    let deleted = h
        .router
        .state
        .store
        .prune_history(chrono::Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    assert!(h.history().await.is_empty());
    assert_eq!(h.get("/api/dashboard/stats/tokens").await, before);
    assert_eq!(h.get("/api/dashboard/stats/tokens/daily?days=2").await, daily_before);
    assert_eq!(u(&before["total_tokens"]), 21);
}

/// The store made unavailable: on SQLite another process (the sqlite3 CLI) holds its
/// write lock; on PostgreSQL the database refuses connections and its sessions are
/// ended.
enum StoreLock {
    Sqlite(tokio::process::Child),
    Postgres { admin: String, database: String },
}

impl StoreLock {
    async fn take(h: &Harness) -> StoreLock {
        use tokio::io::AsyncWriteExt;
        if let Some(admin) = postgres_server() {
            let url = h.database_url();
            let database = url.rsplit_once('/').unwrap().1.to_string();
            psql(
                &admin,
                &format!(
                    "ALTER DATABASE {database} ALLOW_CONNECTIONS false;
                     SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{database}'"
                ),
            );
            return StoreLock::Postgres { admin, database };
        }
        let mut locker = tokio::process::Command::new("sqlite3")
            .arg(h.dir.path().join("router.db"))
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sqlite3 CLI is installed");
        let stdin = locker.stdin.as_mut().unwrap();
        stdin.write_all(b"BEGIN EXCLUSIVE;\nSELECT 1;\n").await.unwrap();
        stdin.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        StoreLock::Sqlite(locker)
    }

    async fn release(self) {
        use tokio::io::AsyncWriteExt;
        match self {
            StoreLock::Sqlite(mut locker) => {
                let mut stdin = locker.stdin.take().unwrap();
                stdin.write_all(b"COMMIT;\n.quit\n").await.unwrap();
                drop(stdin);
                locker.wait().await.unwrap();
            }
            StoreLock::Postgres { admin, database } => {
                psql(&admin, &format!("ALTER DATABASE {database} ALLOW_CONNECTIONS true"));
            }
        }
    }
}

/// Waits until every queued record is committed and the store reports no error.
async fn wait_for_empty_backlog(h: &Harness) {
    for _ in 0..200 {
        let health: Value = h.http.get(h.url("/health")).send().await.unwrap().json().await.unwrap();
        if health["recorder"]["backlog"] == 0 && health["status"] == "ok" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the backlog did not drain");
}

#[tokio::test]
async fn records_wait_in_memory_while_the_store_is_locked() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.commit_wait_ms = 300).await;
    h.chat("m", "warm up").await;
    // Another process takes the write lock for longer than the busy timeout.
    let lock = StoreLock::take(&h).await;

    for _ in 0..3 {
        let (s, _) = h.chat("m", "one two").await;
        assert_eq!(s, 200, "the router keeps serving");
    }
    // A stream's content is not held behind a commit that waits; its `[DONE]` is, until
    // the commit wait (300 ms) runs out.
    let resp = h.post("/v1/chat/completions", &chat_body("m", "one two", true)).await;
    assert_eq!(resp.status(), 200);
    let start = std::time::Instant::now();
    let (mut content_at, mut done_at) = (None, None);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let text = String::from_utf8_lossy(&chunk.unwrap()).into_owned();
        content_at = content_at.or_else(|| text.contains("\"content\"").then(|| start.elapsed()));
        if text.contains("[DONE]") {
            done_at = Some(start.elapsed());
        }
    }
    let (content_at, done_at) = (content_at.unwrap(), done_at.unwrap());
    // SQLite's commit waits for the lock, so the wait runs out; PostgreSQL refuses the
    // connection at once and the record is parked in memory straight away.
    if postgres_server().is_none() {
        assert!(
            done_at >= content_at + Duration::from_millis(200),
            "content at {content_at:?}, [DONE] at {done_at:?}"
        );
    }
    let health: Value = h.http.get(h.url("/health")).send().await.unwrap().json().await.unwrap();
    assert!(u(&health["recorder"]["backlog"]) >= 4, "{health}");
    // In memory the figures already count them.
    assert_eq!(u(&h.node(&a.base_url()).await["total_requests"]), 5);

    lock.release().await;
    wait_for_empty_backlog(&h).await;
    assert_eq!(h.history().await.len(), 5, "every record reached the store");
    assert_eq!(u(&h.get("/api/dashboard/stats/tokens").await["request_count"]), 5);
}

#[tokio::test]
async fn a_full_backlog_refuses_requests_until_the_store_is_back() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| {
        args.commit_wait_ms = 100;
        args.max_backlog = 3;
    })
    .await;
    let lock = StoreLock::take(&h).await;
    for _ in 0..3 {
        assert_eq!(h.chat("m", "one two").await.0, 200);
    }
    // A fourth record could not be kept: the request is refused before any node
    // sees it, in OpenAI's error shape.
    let (status, body) = h.chat("m", "one two").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable");
    assert_eq!(body["error"]["type"], "server_error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 records wait for the store"),
        "{body}"
    );
    assert_eq!(a.received().len(), 3, "the node never saw the refused request");
    let health: Value = h.http.get(h.url("/health")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (u(&health["recorder"]["backlog"]), u(&health["recorder"]["max_backlog"])),
        (3, 3)
    );
    assert_eq!(health["status"], "degraded");
    assert_eq!(u(&h.node(&a.base_url()).await["total_requests"]), 3);

    lock.release().await;
    wait_for_empty_backlog(&h).await;
    assert_eq!(h.chat("m", "one two").await.0, 200);
    assert_eq!(h.history().await.len(), 4, "the refused request has no record");
    assert_eq!(u(&h.get("/api/dashboard/stats/tokens").await["request_count"]), 4);
}

#[tokio::test]
async fn shutdown_flushes_records_of_async_mode() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.durability = llm_router::recorder::Durability::Async).await;
    for _ in 0..20 {
        h.chat("m", "one").await;
    }
    let h = h.restart().await;
    assert_eq!(h.history().await.len(), 20);
    assert_eq!(u(&h.node(&a.base_url()).await["total_tokens"]), 120);
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_stream_finish_and_records_it() {
    let a = slow_stream_mock("alpha", 10, Duration::from_millis(60)).await;
    let h = Harness::start(&[&a]).await;
    let resp = h.post("/v1/chat/completions", &chat_body("m", "one two", true)).await;
    assert_eq!(resp.status(), 200);
    let reading = tokio::spawn(async move { resp.text().await.unwrap() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let url = h.database_url();
    let Harness { router, dir: _dir, .. } = h;
    router.shutdown().await;
    let body = reading.await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "the stream ran to its end: {body}");
    // The record is in the database after shutdown.
    let store = llm_router::store::Store::open(&url).await.unwrap();
    let page = store
        .history_page(&llm_router::store::HistoryFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].status, common::protocol::RequestStatus::Success);
    assert_eq!((page.records[0].input_tokens, page.records[0].output_tokens), (2, 10));
}

#[tokio::test]
async fn killing_the_router_loses_no_record_a_client_saw_complete() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m"]).await;
    let dir = tempfile::TempDir::new().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let database_url = base_args(&dir).database_url();
    let spawn = || {
        // Configured through the environment, as in a container.
        tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-router"))
            .env("LLM_ROUTER_DATABASE_URL", &database_url)
            .env("LLM_ROUTER_HOST", "127.0.0.1")
            .env("LLM_ROUTER_PORT", port.to_string())
            .env("LLM_ROUTER_ADMIN_KEY", ADMIN_KEY)
            .env("LLM_ROUTER_DATA_DIR", dir.path())
            .env("LLM_ROUTER_NODES", format!("{},{}", a.base_url(), b.base_url()))
            .env("LLM_ROUTER_LOG", "warn")
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let wait_up = || async {
        for _ in 0..100 {
            if http.get(format!("{base}/health")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("router did not start");
    };
    let mut router = spawn();
    wait_up().await;
    let mut completed = 0u64;
    for i in 0..30 {
        let body = chat_body("m", "one two", i % 2 == 0);
        let r = http
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(text.contains("alpha4") || text.contains("beta4"));
        completed += 1;
    }
    router.start_kill().unwrap(); // SIGKILL: no shutdown, no flush
    router.wait().await.unwrap();
    let _router = spawn();
    wait_up().await;
    let stats: Value = http
        .get(format!("{base}/api/dashboard/stats"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(u(&stats["total_requests"]), completed);
    assert_eq!(u(&stats["total_tokens"]), completed * 7);
    assert_eq!(u(&stats["total_nodes"]), 2, "both nodes of LLM_ROUTER_NODES");
}

/// Starts the binary with `args` and `env` on a free port; returns its first line of
/// output, or its exit status and error output if it refuses to start.
async fn first_line(args: &[&str], env: &[(&str, &str)]) -> Result<String, (i32, String)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let dir = tempfile::TempDir::new().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-router"))
        .args(["--host", "127.0.0.1", "--port", "0", "--admin-key", ADMIN_KEY])
        .args(args)
        .envs(env.iter().copied())
        .env("LLM_ROUTER_DATA_DIR", dir.path())
        .env("LLM_ROUTER_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    stdout.read_line(&mut line).await.unwrap();
    if !line.is_empty() {
        return Ok(line);
    }
    let status = child.wait().await.unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
    Err((status.code().unwrap_or(-1), err))
}

#[tokio::test]
async fn the_runtime_has_the_worker_threads_asked_for() {
    // By default, one per core the process may use.
    let cores = std::thread::available_parallelism().unwrap().get();
    let default = first_line(&[], &[]).await.unwrap();
    let plural = if cores == 1 { "" } else { "s" };
    assert!(
        default.contains(&format!(" with {cores} worker thread{plural} ")),
        "{default}"
    );
    let flag = first_line(&["--worker-threads", "3"], &[]).await.unwrap();
    assert!(flag.contains(" with 3 worker threads "), "{flag}");
    let env = first_line(&[], &[("LLM_ROUTER_WORKER_THREADS", "2")]).await.unwrap();
    assert!(env.contains(" with 2 worker threads "), "{env}");
    let (code, err) = first_line(&["--worker-threads", "0"], &[]).await.unwrap_err();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid value '0' for '--worker-threads"), "{err}");
}
