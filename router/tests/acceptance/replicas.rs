//! Two router replicas on one PostgreSQL database (DESIGN §12): shared nodes and keys,
//! cluster-wide figures and budgets, `kill -9` of a replica under load, and the
//! database stopped under load.
//!
//! These tests need PostgreSQL: `scripts/test.sh` runs them in its PostgreSQL pass
//! (and leaves them out of the SQLite pass); run alone without a server, they fail
//! saying so rather than pass without testing anything.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llm_router::app;
use llm_router::config::ServeArgs;
use llm_router::keys::ClientAuth;
use mock_node::MockNode;
use reqwest::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::process::RouterProcess;
use crate::support::*;

pub(crate) fn require_postgres() -> String {
    postgres_server().expect(
        "the replica tests need PostgreSQL: run scripts/test.sh, or set LLM_ROUTER_TEST_DATABASE=postgres://…/postgres",
    )
}

/// Another replica of `of`'s router: the same database and settings, its own port and
/// data directory.
pub(crate) async fn replica(of: &Harness, tweak: impl FnOnce(&mut ServeArgs)) -> Harness {
    let dir = TempDir::new().unwrap();
    let mut args = of.args().clone();
    args.data_dir = Some(dir.path().into());
    tweak(&mut args);
    let router = app::start(args.clone()).await.expect("the replica starts");
    Harness::from_router(router, dir, args)
}

/// Polls `check` every 20 ms until it holds; returns how long that took (fails after
/// `limit`).
pub(crate) async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) const TWO_SECONDS: Duration = Duration::from_secs(2);

/// Two replicas over `nodes` (keys required, a sync round every 100 ms) and a key made
/// through A with `key`, once B has served it one request; returns its secret.
pub(crate) async fn two_replicas_with_key(nodes: &[&MockNode], key: Value) -> (Harness, Harness, String) {
    require_postgres();
    let a = Harness::start_with(nodes, |args| {
        args.replica_sync_ms = 100;
        args.client_auth = ClientAuth::Required;
    })
    .await;
    let b = replica(&a, |_| {}).await;
    let (_, secret) = create_key(&a, key).await;
    // Refused as unknown (not counted) until B has the key.
    within(TWO_SECONDS, "B knows the key", || async {
        keyed_chat(&b, Some(&secret), "m").await.0 == 200
    })
    .await;
    (a, b, secret)
}

#[tokio::test]
async fn nodes_and_keys_changed_through_one_replica_take_effect_on_the_other_within_2_s() {
    require_postgres();
    let node = mock("n1", &["m"]).await;
    let a = Harness::start_with(&[], |args| args.client_auth = ClientAuth::Required).await;
    let b = replica(&a, |_| {}).await;

    // A node and a key added through A serve B's clients.
    let started = Instant::now();
    let node_id = a.add_node(&node).await;
    let (key_id, secret) = create_key(&a, json!({"name": "team"})).await;
    within(TWO_SECONDS, "B serves the new node and key", || async {
        keyed_chat(&b, Some(&secret), "m").await.0 == 200
    })
    .await;
    assert!(started.elapsed() < TWO_SECONDS, "{:?}", started.elapsed());

    // A key's limits changed through B bind on A: a model list without `m`.
    let (s, v) = b
        .admin(
            Method::PATCH,
            &format!("/api/keys/{key_id}"),
            Some(json!({"allowed_models": ["other"]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    within(TWO_SECONDS, "A applies the key's model list", || async {
        keyed_chat(&a, Some(&secret), "m").await.0 == 403
    })
    .await;

    // Revoked through B: refused by A.
    let (s, v) = b.admin(Method::DELETE, &format!("/api/keys/{key_id}"), None).await;
    assert_eq!(s, 204, "{v}");
    let (_, other) = create_key(&b, json!({"name": "second"})).await;
    within(TWO_SECONDS, "A refuses the revoked key", || async {
        keyed_chat(&a, Some(&secret), "m").await.0 == 401
    })
    .await;
    // Two changes, two transactions: A's sync may take in the revocation a round
    // before the key created after it.
    within(TWO_SECONDS, "A serves the key created through B", || async {
        keyed_chat(&a, Some(&other), "m").await.0 == 200
    })
    .await;

    // Disabled through A: B stops routing to it; enabled again: B routes again.
    let patch = |enabled: bool| Some(json!({ "enabled": enabled }));
    assert_eq!(
        a.admin(Method::PATCH, &format!("/api/nodes/{node_id}"), patch(false))
            .await
            .0,
        200
    );
    within(TWO_SECONDS, "B stops routing to the disabled node", || async {
        keyed_chat(&b, Some(&other), "m").await.0 == 503
    })
    .await;
    assert_eq!(
        a.admin(Method::PATCH, &format!("/api/nodes/{node_id}"), patch(true))
            .await
            .0,
        200
    );
    within(TWO_SECONDS, "B routes to the enabled node again", || async {
        keyed_chat(&b, Some(&other), "m").await.0 == 200
    })
    .await;

    // Deleted through B: A lists it as deleted and does not route to it.
    assert_eq!(
        b.admin(Method::DELETE, &format!("/api/nodes/{node_id}"), None).await.0,
        204
    );
    within(TWO_SECONDS, "A sees the node deleted", || async {
        a.node(&node.base_url()).await["deleted"] == true
    })
    .await;
    // No live node serves the model any more.
    assert_eq!(keyed_chat(&a, Some(&other), "m").await.0, 404);
}

/// The figures a client of `h` sees: dashboard totals, per-node figures, token
/// statistics by node, model and key, and the Prometheus token counters.
async fn figures(h: &Harness) -> Value {
    let stats = h.get("/api/dashboard/stats").await;
    let nodes = h.get("/api/dashboard/nodes").await;
    let tokens = h.get("/api/dashboard/stats/tokens").await;
    let metrics = h.metrics().await;
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name}_total{{")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
            .sum()
    };
    json!({
        "stats": [stats["total_requests"], stats["successful_requests"], stats["failed_requests"],
                  stats["total_input_tokens"], stats["total_output_tokens"], stats["total_tokens"]],
        "nodes": nodes["nodes"].as_array().unwrap().iter()
            .map(|n| json!([n["id"], n["total_requests"], n["total_tokens"]])).collect::<Vec<_>>(),
        "tokens": [tokens["total_tokens"], tokens["request_count"], tokens["by_node"], tokens["by_model"], tokens["by_key"]],
        "metrics": [counter("llm_router_tokens"), counter("llm_router_requests"),
                    counter("llm_router_key_tokens"), counter("llm_router_key_requests")],
    })
}

#[tokio::test]
async fn two_replicas_show_the_same_exact_figures_the_sum_of_every_record() {
    require_postgres();
    let n1 = mock("n1", &["m"]).await;
    let n2 = mock("n2", &["m", "m2"]).await;
    let a = Harness::start(&[&n1, &n2]).await;
    let b = replica(&a, |_| {}).await;
    let (_, secret) = create_key(&a, json!({"name": "team"})).await;
    within(TWO_SECONDS, "B knows the key", || async {
        keyed_chat(&b, Some(&secret), "m").await.0 == 200
    })
    .await;

    // A client alternating between the replicas: plain and streamed, keyed and
    // anonymous, a model only one node has, and a refused model.
    let mut expected_requests = 1;
    for i in 0..12 {
        let h = if i % 2 == 0 { &a } else { &b };
        let model = if i % 3 == 0 { "m2" } else { "m" };
        match i % 4 {
            0 => assert_eq!(h.chat(model, &mock_text("w", i + 1)).await.0, 200),
            1 => assert_eq!(h.chat_stream(&chat_body(model, &mock_text("w", i), true)).await.0, 200),
            2 => assert_eq!(keyed_chat(h, Some(&secret), model).await.0, 200),
            _ => assert_eq!(h.chat("missing", "x").await.0, 404),
        }
        expected_requests += 1;
    }
    let records = a.wait_history(expected_requests).await;
    assert_eq!(records.len(), expected_requests);
    let routed: Vec<&Value> = records.iter().filter(|r| !r["node_id"].is_null()).collect();
    let sum = |k: &str| routed.iter().map(|r| u(&r[k])).sum::<u64>();

    let (fa, fb) = (figures(&a).await, figures(&b).await);
    assert_eq!(fa, fb, "the replicas disagree");
    assert_eq!(
        fa["stats"],
        json!([
            routed.len(),
            routed.len(),
            0,
            sum("input_tokens"),
            sum("output_tokens"),
            sum("total_tokens")
        ])
    );
    assert_eq!(fa["tokens"][0], json!(sum("total_tokens")));
    assert_eq!(fa["tokens"][1], json!(routed.len()));
    assert_eq!(
        fa["metrics"],
        json!([sum("total_tokens"), routed.len(), sum("total_tokens"), routed.len()])
    );
    assert_eq!(token_totals(&b).await.2, sum("total_tokens"));
}

async fn active(h: &Harness) -> u64 {
    u(&h.get("/api/dashboard/stats").await["active_requests"])
}

#[tokio::test]
async fn requests_in_flight_on_one_replica_count_on_the_other() {
    require_postgres();
    let node = slow_stream_mock("slow", 20, Duration::from_millis(100)).await;
    let a = Harness::start(&[&node]).await;
    let b = replica(&a, |_| {}).await;
    let stream = {
        let http = a.http.clone();
        let url = a.url("/v1/chat/completions");
        tokio::spawn(async move {
            let resp = http.post(url).json(&chat_body("m", "hi", true)).send().await.unwrap();
            resp.bytes().await.unwrap().len()
        })
    };
    within(TWO_SECONDS, "B counts A's stream", || async { active(&b).await == 1 }).await;
    assert_eq!(active(&a).await, 1);
    assert_eq!(u(&b.node(&node.base_url()).await["active_requests"]), 1);
    assert!(stream.await.unwrap() > 0);
    within(TWO_SECONDS, "B sees the stream end", || async { active(&b).await == 0 }).await;
}

#[tokio::test]
async fn a_node_s_capacity_is_shared_by_the_replicas() {
    require_postgres();
    let node = slow_stream_mock("slow", 10, Duration::from_millis(100)).await;
    let a = Harness::start_with(&[&node], |args| args.replica_sync_ms = 100).await;
    let b = replica(&a, |_| {}).await;
    let (s, v) = a
        .admin(Method::PATCH, "/api/nodes/1", Some(json!({"max_concurrent": 2})))
        .await;
    assert_eq!(s, 200, "{v}");
    let stream = |h: &Harness| {
        let (http, url) = (h.http.clone(), h.url("/v1/chat/completions"));
        tokio::spawn(async move {
            let resp = http.post(url).json(&chat_body("m", "hi", true)).send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap().len())
        })
    };
    // A takes both slots; once B has heard of them, its two requests wait in its
    // queue until A's streams end, instead of piling onto the node.
    let on_a = [stream(&a), stream(&a)];
    within(TWO_SECONDS, "B sees the node full", || async { active(&b).await == 2 }).await;
    let on_b = [stream(&b), stream(&b)];
    for t in on_a.into_iter().chain(on_b) {
        let (status, len) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(len > 0);
    }
    assert_eq!(node.peak_in_flight(), 2, "the node never had more than its capacity");
    let queued = b.get("/api/dashboard/stats").await["queue"]["served"].clone();
    assert_eq!(queued, 2, "B's requests waited for a slot");
}

#[tokio::test]
async fn a_daily_budget_holds_across_replicas() {
    let node = mock("n1", &["m"]).await;
    let (a, b, secret) = two_replicas_with_key(&[&node], json!({"name": "capped"})).await;
    let per_request = u(&a.history().await[0]["total_tokens"]);
    assert!(per_request > 0);
    // Room for five requests, the first one included.
    let key_id = a.get("/api/keys").await["keys"][0]["id"].as_i64().unwrap();
    let budget = json!({"daily_token_budget": 5 * per_request});
    assert_eq!(
        a.admin(Method::PATCH, &format!("/api/keys/{key_id}"), Some(budget))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Alternating, one at a time, each replica having seen the other's last request:
    // four more are served, and both refuse the sixth.
    let mut served = 1;
    for i in 0..8 {
        let h = if i % 2 == 0 { &b } else { &a };
        let (status, _, v) = keyed_chat(h, Some(&secret), "m").await;
        match status {
            200 => served += 1,
            429 => assert_eq!(code(&v), "insufficient_quota", "{v}"),
            other => panic!("{other}: {v}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(served, 5);
    for h in [&a, &b] {
        let (status, _, v) = keyed_chat(h, Some(&secret), "m").await;
        assert_eq!((status, code(&v)), (429, "insufficient_quota"));
    }
    assert_eq!(token_totals(&a).await.2, 5 * per_request);
}

/// What a load of alternating clients saw: for each request (a unique prompt length,
/// so a unique `input_tokens`), the replica it went to and whether it completed.
type Seen = Arc<Mutex<BTreeMap<u64, (usize, bool)>>>;

/// `clients` clients sending chat completions in turn to the replicas at `urls` until
/// `stop`; request `n` has `n` prompt words.
fn alternating_load(
    urls: Vec<String>,
    clients: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let tasks = (0..clients)
        .map(|c| {
            let (seen, next, stop, urls) = (seen.clone(), next.clone(), stop.clone(), urls.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap();
                let mut turn = c;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let replica = turn % urls.len();
                    turn += 1;
                    let body = chat_body("m", &vec!["w"; n as usize].join(" "), n % 2 == 0);
                    let send = http
                        .post(format!("{}/v1/chat/completions", urls[replica]))
                        .json(&body)
                        .send();
                    let ok = match send.await {
                        Ok(resp) if resp.status() == 200 => resp.bytes().await.is_ok(),
                        _ => false,
                    };
                    seen.lock().unwrap().insert(n, (replica, ok));
                }
            })
        })
        .collect();
    (seen, tasks)
}

/// `input_tokens` of every record in the database, with how many records have it.
fn recorded_inputs(url: &str) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for line in psql(url, "SELECT input_tokens FROM request_history").lines() {
        *out.entry(line.trim().parse::<u64>().unwrap()).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn a_replica_killed_under_load_loses_no_completed_request_and_the_other_serves_on() {
    let admin = require_postgres();
    let (db, _) = fresh_postgres_database(&admin);
    let node = mock_with("n", &["m"], |c| c.latency = Duration::from_millis(20)).await;
    let args = ["--database-url", db.as_str()];
    let mut a = RouterProcess::start(&node, &args, || Ok(())).await;
    let b = RouterProcess::start(&node, &args, || Ok(())).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, tasks) = alternating_load(vec![a.base_url.clone(), b.base_url.clone()], 8, stop.clone());
    // Load on both, then A dies mid-load; B takes every request after that.
    let answered = || seen.lock().unwrap().len();
    within(Duration::from_secs(30), "40 requests answered", || async {
        answered() >= 40
    })
    .await;
    a.child.start_kill().unwrap();
    let killed_at = answered();
    within(Duration::from_secs(30), "40 more requests answered", || async {
        answered() >= killed_at + 40
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let seen = seen.lock().unwrap().clone();
    let recorded = recorded_inputs(&db);
    let on_b: Vec<_> = seen.iter().filter(|(_, (r, _))| *r == 1).collect();
    assert!(on_b.len() > 40, "B served {}", on_b.len());
    assert!(on_b.iter().all(|(_, (_, ok))| *ok), "B failed requests: {on_b:?}");
    let completed: Vec<u64> = seen.iter().filter(|(_, (_, ok))| *ok).map(|(n, _)| *n).collect();
    let lost: Vec<_> = completed.iter().filter(|n| !recorded.contains_key(n)).collect();
    assert!(lost.is_empty(), "completed but not recorded: {lost:?}");
    assert!(recorded.values().all(|c| *c == 1), "a record twice: {recorded:?}");
}

#[tokio::test]
async fn a_killed_replica_s_requests_in_flight_stop_counting_within_15_s() {
    let admin = require_postgres();
    let (db, _) = fresh_postgres_database(&admin);
    let node = slow_stream_mock("slow", 100, Duration::from_millis(200)).await;
    let args = ["--database-url", db.as_str()];
    let mut a = RouterProcess::start(&node, &args, || Ok(())).await;
    let b = RouterProcess::start(&node, &args, || Ok(())).await;
    let stream = tokio::spawn(
        reqwest::Client::new()
            .post(format!("{}/v1/chat/completions", a.base_url))
            .json(&chat_body("m", "hi", true))
            .send(),
    );
    let active = || async { u(&b.get("/api/dashboard/stats").await["active_requests"]) };
    within(TWO_SECONDS, "B counts A's stream", || async { active().await == 1 }).await;
    a.child.start_kill().unwrap();
    let killed = Instant::now();
    let _ = stream.await;
    // Its last heartbeat still counts for a while, then no more.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(active().await, 1, "counted until its heartbeat is too old");
    within(
        Duration::from_secs(15) - killed.elapsed(),
        "B stops counting the dead replica",
        || async { active().await == 0 },
    )
    .await;
}

/// A PostgreSQL server of the test's own, which it can stop and start again (the
/// shared test server serves the other tests meanwhile).
struct OwnPostgres {
    dir: TempDir,
    port: u16,
    bin: String,
}

impl OwnPostgres {
    /// Runs one of the server's tools (as `postgres` when the tests run as root).
    fn try_run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let tool = format!("{}/{tool}", self.bin);
        // SAFETY: geteuid has no preconditions.
        let mut cmd = if unsafe { libc::geteuid() } == 0 {
            // PostgreSQL refuses to run as root.
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--", &tool]);
            c
        } else {
            std::process::Command::new(&tool)
        };
        cmd.args(args).output().expect("PostgreSQL's tools run")
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.try_run(tool, args);
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Debian's postgresql package")
            .map(|e| e.unwrap().path())
            .max()
            .unwrap()
            .join("bin")
            .display()
            .to_string();
        let dir = TempDir::new().unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let ok = std::process::Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPostgres { dir, port, bin };
        let data = pg.data();
        pg.run("initdb", &["-D", &data, "-U", "postgres", "-A", "trust"]);
        pg.resume();
        pg
    }

    fn data(&self) -> String {
        format!("{}/data", self.dir.path().display())
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn resume(&self) {
        let opts = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.dir.path().display(),
            self.port
        );
        let log = format!("{}/server.log", self.dir.path().display());
        self.run("pg_ctl", &["-D", &self.data(), "-l", &log, "-w", "-o", &opts, "start"]);
    }

    fn stop(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        self.try_run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
    }
}

#[tokio::test]
async fn with_the_database_stopped_for_30_s_both_replicas_serve_and_every_record_lands_once() {
    require_postgres();
    let outage = Duration::from_secs(
        std::env::var("LLM_ROUTER_TEST_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let pg = OwnPostgres::start();
    let node = mock_with("n", &["m"], |c| c.latency = Duration::from_millis(20)).await;
    let a = Harness::start_with(&[&node], |args| {
        args.database_url = Some(pg.url());
        args.commit_wait_ms = 200;
    })
    .await;
    let b = replica(&a, |_| {}).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (seen, tasks) = alternating_load(vec![a.router.base_url(), b.router.base_url()], 8, stop.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.stop();
    let stopped = seen.lock().unwrap().len();
    tokio::time::sleep(outage).await;
    let during = seen.lock().unwrap().len() - stopped;
    pg.resume();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for h in [&a, &b] {
        within(Duration::from_secs(30), "the backlog is committed", || async {
            let health: Value = h.http.get(h.url("/health")).send().await.unwrap().json().await.unwrap();
            u(&health["recorder"]["backlog"]) == 0
        })
        .await;
    }

    let seen = seen.lock().unwrap().clone();
    assert!(during > 40, "too few requests served during the outage: {during}");
    let failed: Vec<_> = seen.iter().filter(|(_, (_, ok))| !ok).collect();
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    let recorded = recorded_inputs(&pg.url());
    let sent: HashSet<u64> = seen.keys().copied().collect();
    let recorded_set: HashSet<u64> = recorded.keys().copied().collect();
    assert_eq!(sent, recorded_set, "every request recorded, none else");
    assert!(recorded.values().all(|c| *c == 1), "a record twice: {recorded:?}");
    let total: u64 = seen.keys().sum();
    assert_eq!(token_totals(&b).await.0, total);
}
