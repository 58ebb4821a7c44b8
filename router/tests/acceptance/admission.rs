//! Admission and placement (DESIGN §14): node capacity, the priority queue, weights,
//! conversation affinity and retry on 429/503 — through the real router, over mock
//! nodes that count their own requests in flight. The configuration file is in
//! `config_file`.

use std::time::{Duration, Instant};

use mock_node::{Imitation, MockNode, Refuse};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// Changes the node with this base URL through `PATCH /api/nodes/{id}`.
pub async fn patch_node(h: &Harness, base_url: &str, body: Value) -> Value {
    let nodes = h.get("/api/nodes").await;
    let id = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["base_url"] == base_url)
        .unwrap_or_else(|| panic!("{base_url} not in {nodes}"))["id"]
        .clone();
    let (s, v) = h.admin(Method::PATCH, &format!("/api/nodes/{id}"), Some(body)).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn create_key(h: &Harness, name: &str, priority: i64) -> String {
    let (s, v) = h
        .admin(
            Method::POST,
            "/api/keys",
            Some(json!({"name": name, "priority": priority})),
        )
        .await;
    assert_eq!((s, &v["priority"]), (201, &json!(priority)), "{v}");
    v["key"].as_str().unwrap().to_string()
}

async fn queue(h: &Harness) -> Value {
    h.get("/api/dashboard/stats").await["queue"].clone()
}

/// Waits (5 s at most) until `check` holds.
pub async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..1000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never: {what}");
}

async fn wait_depth(h: &Harness, depth: u64) {
    wait_until(&format!("queue depth {depth}"), || async {
        queue(h).await["depth"] == depth
    })
    .await;
}

/// A streamed chat completion sent from its own task; resolves to (status, retry-after, body).
fn spawn_stream(
    h: &Harness,
    content: &str,
    key: Option<&str>,
    session: Option<&str>,
) -> tokio::task::JoinHandle<(u16, Option<String>, String)> {
    let mut req = h
        .http
        .post(h.url("/v1/chat/completions"))
        .json(&chat_body("m", content, true));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(s) = session {
        req = req.header("x-session-id", s);
    }
    tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, retry, resp.text().await.unwrap_or_default())
    })
}

/// The contents of the requests a node received, in order of arrival.
fn contents(node: &MockNode) -> Vec<(u64, String)> {
    node.received()
        .iter()
        .map(|r| (r.seq, r.body["messages"][0]["content"].as_str().unwrap().to_string()))
        .collect()
}

/// A metric's value in the Prometheus exposition (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_burst_of_20_on_two_nodes_of_capacity_2_keeps_2_in_flight_each_and_serves_priority_then_arrival() {
    // Streams of a second: the sixteen requests queue before the first slot frees.
    let a = slow_stream_mock("alpha", 10, Duration::from_millis(100)).await;
    let b = slow_stream_mock("beta", 10, Duration::from_millis(100)).await;
    let h = Harness::start(&[&a, &b]).await;
    for n in [&a, &b] {
        let v = patch_node(&h, &n.base_url(), json!({"max_concurrent": 2})).await;
        assert_eq!((&v["max_concurrent"], &v["capacity"]), (&json!(2), &json!(2)));
    }
    let keys = [
        (0, create_key(&h, "batch", 0).await),
        (5, create_key(&h, "app", 5).await),
        (9, create_key(&h, "oncall", 9).await),
    ];
    // Four requests take the four slots, a little apart so that they free one by one.
    let mut tasks = Vec::new();
    for i in 0..4 {
        tasks.push(spawn_stream(&h, &format!("first {i}"), None, None));
        let busy = i + 1;
        wait_until("slots taken", || async { a.in_flight() + b.in_flight() == busy }).await;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Sixteen more queue, in a known order of arrival: anonymous (priority 0) and keys
    // of priority 0, 5 and 9.
    let mut queued = Vec::new();
    for i in 0..16 {
        let (priority, key) = match i % 4 {
            0 => (0, None),
            k => (keys[k - 1].0, Some(keys[k - 1].1.as_str())),
        };
        let content = format!("queued {i} priority {priority}");
        tasks.push(spawn_stream(&h, &content, key, None));
        wait_depth(&h, i as u64 + 1).await;
        queued.push((priority, i, content));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().0);
    }
    assert_eq!(statuses, vec![200; 20], "none failed");
    assert_eq!((a.peak_in_flight(), b.peak_in_flight()), (2, 2));

    // The nodes received the queued requests by priority, then by arrival.
    let mut received: Vec<(u64, String)> = contents(&a).into_iter().chain(contents(&b)).collect();
    received.sort();
    let order: Vec<String> = received.into_iter().map(|(_, c)| c).skip(4).collect();
    queued.sort_by_key(|(priority, arrival, _)| (-priority, *arrival));
    let expected: Vec<String> = queued.into_iter().map(|(_, _, c)| c).collect();
    assert_eq!(order, expected);

    let q = queue(&h).await;
    assert_eq!(
        (&q["depth"], &q["served"], &q["full"], &q["timed_out"], &q["cancelled"]),
        (&json!(0), &json!(16), &json!(0), &json!(0), &json!(0))
    );
    assert!(q["average_wait_ms"].as_f64().unwrap() > 0.0, "{q}");
    let records = h.wait_history(20).await;
    assert_eq!(records.iter().filter(|r| r["status"] == "success").count(), 20);
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_router_queue_wait_seconds_count"), 16.0);
    assert_eq!(metric(&m, "llm_router_queue_depth"), 0.0);
}

#[tokio::test]
async fn a_full_queue_and_a_queue_timeout_answer_503_with_retry_after_and_are_recorded_without_a_node() {
    let a = slow_stream_mock("alpha", 3, Duration::from_millis(700)).await;
    let h = Harness::start_with(&[&a], |args| {
        args.queue_size = 1;
        args.queue_timeout_secs = 1;
    })
    .await;
    patch_node(&h, &a.base_url(), json!({"max_concurrent": 1})).await;
    let first = spawn_stream(&h, "first", None, None);
    wait_until("the slot taken", || async { a.in_flight() == 1 }).await;
    let waiting = spawn_stream(&h, "waits", None, None);
    wait_depth(&h, 1).await;

    let started = Instant::now();
    let (status, retry, body) = spawn_stream(&h, "no room", None, None).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "refused at once");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    assert_eq!(
        body["error"],
        json!({"message": "every node serving 'm' is busy and the queue is full; retry later",
               "type": "server_error", "code": "queue_full"})
    );

    let (status, retry, body) = waiting.await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, retry.as_deref(), &body["error"]["code"]),
        (503, Some("1"), &json!("queue_timeout"))
    );
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(a.received().len(), 1, "the node saw only the first request");

    let records = h.wait_history(3).await;
    let refused: Vec<(Value, Value, Value)> = records
        .iter()
        .filter(|r| r["status"] == "error")
        .map(|r| {
            (
                r["http_status"].clone(),
                r["node_id"].clone(),
                r["total_tokens"].clone(),
            )
        })
        .collect();
    assert_eq!(refused, vec![(json!(503), Value::Null, json!(0)); 2]);
    let q = queue(&h).await;
    assert_eq!(
        (&q["depth"], &q["full"], &q["timed_out"]),
        (&json!(0), &json!(1), &json!(1))
    );
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_router_queue_refused_total{reason=\"full\"}"), 1.0);
    assert_eq!(metric(&m, "llm_router_queue_refused_total{reason=\"timeout\"}"), 1.0);
}

#[tokio::test]
async fn a_client_that_leaves_the_queue_is_removed_at_once_and_recorded_cancelled_without_a_node() {
    let a = slow_stream_mock("alpha", 4, Duration::from_millis(150)).await;
    let h = Harness::start(&[&a]).await;
    patch_node(&h, &a.base_url(), json!({"max_concurrent": 1})).await;
    let first = spawn_stream(&h, "first", None, None);
    wait_until("the slot taken", || async { a.in_flight() == 1 }).await;
    let leaving = spawn_stream(&h, "leaves", None, None);
    wait_depth(&h, 1).await;
    leaving.abort();
    let left = Instant::now();
    wait_depth(&h, 0).await;
    assert!(a.in_flight() == 1, "left while the first request still runs");
    assert!(left.elapsed() < Duration::from_millis(300));
    let records = h.wait_history(1).await;
    let r = &records[0];
    assert_eq!(
        (
            &r["status"],
            &r["node_id"],
            &r["http_status"],
            &r["total_tokens"],
            &r["error_message"]
        ),
        (
            &json!("cancelled"),
            &Value::Null,
            &json!(0),
            &json!(0),
            &json!("client disconnected while queued")
        )
    );
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(a.received().len(), 1, "the node never saw the request that left");
    let q = queue(&h).await;
    assert_eq!((&q["cancelled"], &q["served"]), (&json!(1), &json!(0)));
    let m = h.metrics().await;
    assert_eq!(metric(&m, "llm_router_queue_refused_total{reason=\"cancelled\"}"), 1.0);
}

#[tokio::test]
async fn a_llama_server_tells_its_slots_and_gets_no_more_requests_than_that() {
    let node = mock_with("llama", &["m"], |c| {
        c.imitate = Imitation::LlamaCpp;
        c.slots = Some(3);
        c.chunks = 4;
        c.chunk_delay = Duration::from_millis(40);
    })
    .await;
    let h = Harness::start(&[&node]).await;
    let view = &h.get("/api/nodes").await["nodes"][0];
    assert_eq!(
        (
            &view["kind"],
            &view["detected_slots"],
            &view["max_concurrent"],
            &view["capacity"]
        ),
        (&json!("llamacpp"), &json!(3), &Value::Null, &json!(3))
    );
    let tasks: Vec<_> = (0..7).map(|i| spawn_stream(&h, &format!("r{i}"), None, None)).collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 200);
    }
    assert_eq!(node.peak_in_flight(), 3);
    // The operator's limit wins over the node's.
    let v = patch_node(&h, &node.base_url(), json!({"max_concurrent": 1})).await;
    assert_eq!((&v["capacity"], &v["detected_slots"]), (&json!(1), &json!(3)));
    let (s, v) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{}", v["id"]),
            Some(json!({"max_concurrent": 0})),
        )
        .await;
    assert_eq!((s, &v["error"]["code"]), (400, &json!("invalid_parameter")));
    assert!(v["error"]["message"].as_str().unwrap().contains("max_concurrent"));
}

#[tokio::test]
async fn weights_2_to_1_split_a_steady_load_2_to_1_within_10_percent() {
    // Answers slow enough that the six clients' requests overlap even on a busy
    // machine (with 15 ms, a loaded CI machine saw mostly one in flight: 1.2 to 1).
    let a = mock_with("alpha", &["m"], |c| c.latency = Duration::from_millis(50)).await;
    let b = mock_with("beta", &["m"], |c| c.latency = Duration::from_millis(50)).await;
    let h = Harness::start(&[&a, &b]).await;
    let v = patch_node(&h, &a.base_url(), json!({"weight": 2})).await;
    assert_eq!(v["weight"], 2);
    // Six clients, each sending 25 requests one after the other, all different (no affinity).
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let http = h.http.clone();
            let url = h.url("/v1/chat/completions");
            tokio::spawn(async move {
                for i in 0..25 {
                    let resp = http
                        .post(&url)
                        .json(&chat_body("m", &format!("client {c} request {i}"), false))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    let (na, nb) = (a.received().len() as f64, b.received().len() as f64);
    assert_eq!(na + nb, 150.0);
    let ratio = na / nb;
    assert!((1.8..=2.2).contains(&ratio), "alpha {na}, beta {nb}: ratio {ratio}");
}

#[tokio::test]
async fn affinity_returns_a_conversation_to_its_node_and_gives_way_under_load() {
    let a = slow_stream_mock("alpha", 4, Duration::from_millis(100)).await;
    let b = slow_stream_mock("beta", 4, Duration::from_millis(100)).await;
    let h = Harness::start(&[&a, &b]).await;
    let served_by = |body: &str| {
        if body.contains("alpha0") {
            "alpha"
        } else {
            "beta"
        }
    };
    // A session header: every turn goes back to the first turn's node.
    let mut nodes = Vec::new();
    for turn in 0..4 {
        let (s, _, body) = spawn_stream(&h, &format!("turn {turn}"), None, Some("s-1"))
            .await
            .unwrap();
        assert_eq!(s, 200);
        nodes.push(served_by(&body));
    }
    assert!(nodes.iter().all(|n| *n == nodes[0]), "{nodes:?}");
    // No header: the leading messages (up to the first user message) are the key.
    let turn = |n: usize| {
        let mut messages = vec![
            json!({"role": "system", "content": "terse"}),
            json!({"role": "user", "content": "hi"}),
        ];
        for i in 1..n {
            messages.push(json!({"role": "assistant", "content": format!("answer {i}")}));
            messages.push(json!({"role": "user", "content": format!("question {i}")}));
        }
        json!({"model": "m", "stream": true, "messages": messages})
    };
    let mut prefix_nodes = Vec::new();
    for n in 1..=3 {
        let (s, body) = h.chat_stream(&turn(n)).await;
        assert_eq!(s, 200);
        prefix_nodes.push(served_by(&String::from_utf8(body).unwrap()));
    }
    assert!(prefix_nodes.iter().all(|n| *n == prefix_nodes[0]), "{prefix_nodes:?}");
    let m = h.metrics().await;
    assert_eq!(
        (
            metric(&m, "llm_router_affinity_total{result=\"hit\"}"),
            metric(&m, "llm_router_affinity_total{result=\"miss\"}")
        ),
        (5.0, 0.0)
    );

    // Under load: the session's node takes it while it has at most `affinity_margin` (2)
    // requests in flight more than the other node, then gives way.
    let (home, other) = if nodes[0] == "alpha" { (&a, &b) } else { (&b, &a) };
    let mut running = Vec::new();
    for i in 0..3 {
        running.push(spawn_stream(&h, &format!("busy {i}"), None, Some("s-1")));
        let busy = i + 1;
        wait_until("in flight on the session's node", || async { home.in_flight() == busy }).await;
    }
    assert_eq!(other.in_flight(), 0);
    let (s, _, body) = spawn_stream(&h, "one more", None, Some("s-1")).await.unwrap();
    assert_eq!(s, 200);
    assert_eq!(served_by(&body), if nodes[0] == "alpha" { "beta" } else { "alpha" });
    for r in running {
        assert_eq!(r.await.unwrap().0, 200);
    }
    let m = h.metrics().await;
    assert_eq!(
        (
            metric(&m, "llm_router_affinity_total{result=\"hit\"}"),
            metric(&m, "llm_router_affinity_total{result=\"miss\"}")
        ),
        (8.0, 1.0)
    );
}

#[tokio::test]
async fn a_node_answering_503_sends_the_request_to_the_next_node_and_is_left_alone_for_its_retry_after() {
    let busy = mock_with("busy", &["m"], |c| {
        c.refuse = Some(Refuse {
            status: 503,
            retry_after: Some(2),
            times: None,
        })
    })
    .await;
    let ok = mock("ok", &["m"]).await;
    let h = Harness::start(&[&busy, &ok]).await;
    for i in 0..4 {
        let (s, v) = h.chat("m", &format!("request {i}")).await;
        assert_eq!((s, &v["system_fingerprint"]), (200, &json!("ok")), "{v}");
    }
    assert_eq!(busy.refused(), 1, "tried once, then left alone for its Retry-After");
    let records = h.wait_history(4).await;
    assert_eq!(records.len(), 4, "a refused attempt is no record");
    assert!(records
        .iter()
        .all(|r| r["status"] == "success" && r["node_name"] == ok.addr.to_string()));
    let busy_node = h.node(&busy.base_url()).await;
    assert_eq!(
        (&busy_node["total_requests"], &busy_node["status"]),
        (&json!(0), &json!("online"))
    );
    let m = h.metrics().await;
    let id = &busy_node["id"];
    assert_eq!(
        metric(
            &m,
            &format!(
                "llm_router_upstream_failures_total{{node_id=\"{id}\",node=\"{}\"}}",
                busy.addr
            )
        ),
        1.0
    );
}

#[tokio::test]
async fn a_429_is_retried_elsewhere_its_node_serves_again_after_retry_after_and_alone_it_is_passed_on() {
    let limited = mock_with("limited", &["m"], |c| {
        c.refuse = Some(Refuse {
            status: 429,
            retry_after: Some(1),
            times: Some(1),
        })
    })
    .await;
    let other = mock("other", &["m"]).await;
    let h = Harness::start(&[&limited, &other]).await;
    for i in 0..3 {
        assert_eq!(h.chat("m", &format!("r{i}")).await.1["system_fingerprint"], "other");
    }
    assert_eq!(limited.refused(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut served = Vec::new();
    for i in 0..4 {
        served.push(h.chat("m", &format!("later {i}")).await.1["system_fingerprint"].clone());
    }
    assert!(
        served.contains(&json!("limited")),
        "back after its Retry-After: {served:?}"
    );

    // With one node, or with --retry-refused false, the node's answer is the client's.
    let alone = mock_with("alone", &["m"], |c| {
        c.refuse = Some(Refuse {
            status: 503,
            retry_after: Some(7),
            times: None,
        })
    })
    .await;
    let h = Harness::start(&[&alone]).await;
    let resp = h.post("/v1/chat/completions", &chat_body("m", "x", false)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let again = mock("again", &["m"]).await;
    let refusing = mock_with("refusing", &["m"], |c| {
        c.refuse = Some(Refuse {
            status: 503,
            retry_after: None,
            times: None,
        })
    })
    .await;
    let h = Harness::start_with(&[&refusing, &again], |a| a.retry_refused = false).await;
    let mut statuses = Vec::new();
    for i in 0..2 {
        statuses.push(h.chat("m", &format!("n{i}")).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [200, 503]);
    assert_eq!(refusing.refused(), 1);
}
