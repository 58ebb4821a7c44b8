//! The test harness: start a router over mock nodes and talk to it like a client.
//!
//! With `LLM_ROUTER_TEST_DATABASE=postgres://…/postgres` (a server where the URL's
//! user may create databases) every router runs on PostgreSQL, each test in a fresh
//! database of its own; otherwise on SQLite in the test's temporary directory. Tests
//! of what only one engine has (SQLite's file, its write lock) do the same on the other
//! (a dump of the database, connections refused).

use std::time::Duration;

use llm_router::app::{self, RunningRouter};
use llm_router::config::ServeArgs;
use mock_node::{MockConfig, MockNode};
use serde_json::{json, Value};
use tempfile::TempDir;

pub const ADMIN_KEY: &str = "test-admin-key";

pub struct Harness {
    pub router: RunningRouter,
    pub dir: TempDir,
    pub http: reqwest::Client,
    args: ServeArgs,
}

/// The PostgreSQL server the tests run on, if any: an admin URL ending in `/<database>`.
pub fn postgres_server() -> Option<String> {
    std::env::var("LLM_ROUTER_TEST_DATABASE").ok().filter(|u| !u.is_empty())
}

/// Runs `sql` with `psql` on the database at `url`;
/// returns its output, unaligned.
pub fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([url, "-X", "-Atq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql is installed");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh database on the test server: its URL and its name.
pub fn fresh_postgres_database(admin: &str) -> (String, String) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let name = format!(
        "t_{:x}_{:x}_{}",
        std::process::id(),
        nanos,
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    psql(admin, &format!("CREATE DATABASE {name}"));
    let (server, _) = admin
        .rsplit_once('/')
        .expect("LLM_ROUTER_TEST_DATABASE ends in /<database>");
    (format!("{server}/{name}"), name)
}

pub fn base_args(dir: &TempDir) -> ServeArgs {
    let mut args = ServeArgs::for_data_dir(dir.path());
    if let Some(admin) = postgres_server() {
        args.database_url = Some(fresh_postgres_database(&admin).0);
    }
    args.admin_key = Some(ADMIN_KEY.into());
    args.health_interval_ms = 60_000;
    args.health_failures = 1;
    args
}

impl Harness {
    /// A router over `nodes` (static nodes), with a slow health loop unless changed.
    pub async fn start(nodes: &[&MockNode]) -> Harness {
        Self::start_with(nodes, |_| {}).await
    }

    pub async fn start_with(nodes: &[&MockNode], tweak: impl FnOnce(&mut ServeArgs)) -> Harness {
        warm_tokenizer();
        let dir = TempDir::new().unwrap();
        let mut args = base_args(&dir);
        args.nodes = nodes.iter().map(|n| n.base_url()).collect();
        tweak(&mut args);
        let router = app::start(args.clone()).await.expect("router starts");
        Harness {
            router,
            dir,
            http: reqwest::Client::new(),
            args,
        }
    }

    /// A harness over a router started by the test itself.
    pub fn from_router(router: RunningRouter, dir: TempDir, args: ServeArgs) -> Harness {
        Harness {
            router,
            dir,
            http: reqwest::Client::new(),
            args,
        }
    }

    /// Stops the router gracefully and starts it again on the same database.
    pub async fn restart(self) -> Harness {
        let Harness {
            router,
            dir,
            http,
            args,
        } = self;
        router.shutdown().await;
        let router = app::start(args.clone()).await.expect("router restarts");
        Harness {
            router,
            dir,
            http,
            args,
        }
    }

    /// The settings the router was started with.
    pub fn args(&self) -> &ServeArgs {
        &self.args
    }

    /// The router's database URL (SQLite's file or a PostgreSQL database).
    pub fn database_url(&self) -> String {
        self.args.database_url()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.router.base_url(), path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http.post(self.url(path)).json(body).send().await.unwrap()
    }

    /// Posts `raw` as a JSON body, byte for byte; returns the status and the body.
    pub async fn post_raw(&self, path: &str, raw: &str) -> (u16, Vec<u8>) {
        let resp = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(raw.to_string())
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
    }

    /// A chat completion; returns status and JSON body.
    pub async fn chat(&self, model: &str, content: &str) -> (u16, Value) {
        let resp = self
            .post("/v1/chat/completions", &chat_body(model, content, false))
            .await;
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// A streamed chat completion read to its end; returns status and raw bytes.
    pub async fn chat_stream(&self, body: &Value) -> (u16, Vec<u8>) {
        let resp = self.post("/v1/chat/completions", body).await;
        let status = resp.status().as_u16();
        (status, resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (status, v) = self.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }

    /// Registers `node` through the API (a node `--node` declares cannot be deleted);
    /// returns its id.
    pub async fn add_node(&self, node: &MockNode) -> i64 {
        let (status, v) = self
            .admin(
                reqwest::Method::POST,
                "/api/nodes",
                Some(json!({"base_url": node.base_url()})),
            )
            .await;
        assert_eq!(status, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    /// The Prometheus exposition of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the history holds `n` records (5 s at most); returns them.
    pub async fn wait_history(&self, n: usize) -> Vec<Value> {
        let mut records = Vec::new();
        for _ in 0..100 {
            records = self.history().await;
            if records.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        records
    }

    /// The newest request records, newest first.
    pub async fn history(&self) -> Vec<Value> {
        self.get("/api/dashboard/request-history?limit=500").await["records"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The dashboard entry of the node with this base URL.
    pub async fn node(&self, base_url: &str) -> Value {
        let nodes = self.get("/api/dashboard/nodes").await;
        nodes["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["base_url"] == base_url)
            .cloned()
            .unwrap_or_else(|| panic!("node {base_url} not listed: {nodes}"))
    }

    /// Waits until `check` holds on the node's dashboard entry (or fails after 5 s).
    pub async fn wait_node(&self, base_url: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..100 {
            let n = self.node(base_url).await;
            if check(&n) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {base_url} never became {what}: {}", self.node(base_url).await);
    }
}

/// Loads the BPE tables once per test process. The router loads them on the first
/// estimate (they take ~50 MB that a router whose nodes report usage never needs); in
/// a debug build that first load takes ~0.75 s, which would count in the timing of
/// whichever test estimates first.
fn warm_tokenizer() {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        llm_router::token::count_tokens("warm");
    });
}

pub fn chat_body(model: &str, content: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": content}]})
}

pub async fn mock(name: &str, models: &[&str]) -> MockNode {
    mock_with(name, models, |_| {}).await
}

pub async fn mock_with(name: &str, models: &[&str], tweak: impl FnOnce(&mut MockConfig)) -> MockNode {
    let mut config = MockConfig {
        name: name.into(),
        models: models.iter().map(|m| m.to_string()).collect(),
        ..MockConfig::default()
    };
    tweak(&mut config);
    MockNode::start(config).await.unwrap()
}

/// A mock node that streams `chunks` content chunks, `delay` apart.
pub async fn slow_stream_mock(name: &str, chunks: usize, delay: Duration) -> MockNode {
    mock_with(name, &["m"], |c| {
        c.chunks = chunks;
        c.chunk_delay = delay;
    })
    .await
}

/// The text a mock node generates for `n` chunks.
pub fn mock_text(name: &str, n: usize) -> String {
    (0..n).map(|i| mock_node::chunk_text(name, i)).collect()
}

pub fn tokens(text: &str) -> u64 {
    llm_router::token::count_tokens(text)
}

/// Sends `body` straight to the node, bypassing the router.
pub async fn direct_stream(node: &MockNode, body: &Value) -> Vec<u8> {
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", node.base_url()))
        .json(body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec()
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// Runs a Python script (the official SDKs: `openai`, `ollama`, `anthropic`); returns
/// its standard output, or fails with its standard error.
pub async fn python(script: &str) -> String {
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `/stats/tokens` after checking that Σ by_node = Σ by_model = Σ by_key = totals;
/// returns (input, output, total, requests).
pub async fn token_totals(h: &Harness) -> (u64, u64, u64, u64) {
    let t = h.get("/api/dashboard/stats/tokens").await;
    let totals = (
        u(&t["total_input_tokens"]),
        u(&t["total_output_tokens"]),
        u(&t["total_tokens"]),
        u(&t["request_count"]),
    );
    for list in ["by_node", "by_model", "by_key"] {
        let sum = |k: &str| t[list].as_array().unwrap().iter().map(|e| u(&e[k])).sum::<u64>();
        let sums = (
            sum("input_tokens"),
            sum("output_tokens"),
            sum("total_tokens"),
            sum("request_count"),
        );
        assert_eq!(sums, totals, "{list}: {t}");
    }
    totals
}

/// A record's token figures and their source.
pub fn assert_counts(r: &Value, input: u64, output: u64, source: &str) {
    assert_eq!(
        (u(&r["input_tokens"]), u(&r["output_tokens"]), u(&r["total_tokens"])),
        (input, output, input + output),
        "{r}"
    );
    assert_eq!(r["token_source"], source, "{r}");
}

/// Creates a key; returns its id and secret.
pub async fn create_key(h: &Harness, body: Value) -> (i64, String) {
    let (s, v) = h.admin(reqwest::Method::POST, "/api/keys", Some(body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_i64().unwrap(), v["key"].as_str().unwrap().to_string())
}

/// A chat completion with `key` as a bearer token: status, headers, body.
pub async fn keyed_chat(h: &Harness, key: Option<&str>, model: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = h
        .http
        .post(h.url("/v1/chat/completions"))
        .json(&chat_body(model, "one two", false));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

pub fn header(h: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    h.get(name).map(|v| v.to_str().unwrap().to_string())
}

pub fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}
