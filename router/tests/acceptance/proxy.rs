//! The inference API and node management, driven over HTTP.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn requests_are_routed_to_a_node_serving_the_model() {
    let a = mock("alpha", &["model-a"]).await;
    let b = mock("beta", &["model-b"]).await;
    let h = Harness::start(&[&a, &b]).await;
    for _ in 0..3 {
        let (s, v) = h.chat("model-a", "hi").await;
        assert_eq!(s, 200);
        assert_eq!(v["system_fingerprint"], "alpha");
        let (s, v) = h.chat("model-b", "hi").await;
        assert_eq!(s, 200);
        assert_eq!(v["system_fingerprint"], "beta");
    }
    assert_eq!(a.received().len(), 3);
    assert_eq!(b.received().len(), 3);
}

#[tokio::test]
async fn concurrent_requests_spread_over_the_least_loaded_nodes() {
    let slow = |c: &mut mock_node::MockConfig| c.latency = Duration::from_millis(300);
    let a = mock_with("alpha", &["m"], slow).await;
    let b = mock_with("beta", &["m"], slow).await;
    let c = mock_with("gamma", &["m"], slow).await;
    let h = Harness::start(&[&a, &b, &c]).await;
    let mut tasks = Vec::new();
    for i in 0..9 {
        let (http, url) = (h.http.clone(), h.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            http.post(url)
                .json(&chat_body("m", "x", false))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // Each node had at most one more in flight than the others: 3 each.
    assert_eq!([a.received().len(), b.received().len(), c.received().len()], [3, 3, 3]);
    let nodes = h.get("/api/dashboard/nodes").await;
    for n in nodes["nodes"].as_array().unwrap() {
        assert_eq!(n["active_requests"], 0);
        assert_eq!(n["total_requests"], 3);
    }
}

#[tokio::test]
async fn a_node_that_refuses_connections_is_failed_over_and_marked_offline() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m"]).await;
    let h = Harness::start(&[&a, &b]).await;
    let a_url = a.base_url();
    a.shutdown().await;
    for _ in 0..4 {
        let (s, v) = h.chat("m", "hello").await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["system_fingerprint"], "beta");
    }
    let a_node = h.node(&a_url).await;
    assert_eq!(a_node["status"], "offline");
    assert_eq!(
        a_node["total_requests"], 0,
        "a failed attempt is not a request of the node"
    );
    assert_eq!(b.received().len(), 4);
    let records = h.history().await;
    assert_eq!(records.len(), 4);
    let b_name = h.node(&b.base_url()).await["name"].clone();
    assert!(records.iter().all(|r| r["node_name"] == b_name));
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("llm_router_upstream_failures_total{node_id=\"1\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_checker_marks_nodes_offline_and_online_again() {
    let a = mock("alpha", &["m"]).await;
    let addr = a.addr;
    let h = Harness::start_with(&[&a], |args| args.health_interval_ms = 100).await;
    let url = a.base_url();
    h.wait_node(&url, "online", |n| n["status"] == "online").await;
    a.shutdown().await;
    h.wait_node(&url, "offline", |n| n["status"] == "offline").await;
    let (s, v) = h.chat("m", "hi").await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "no_node_available");
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _back = mock_node::MockNode::serve(
        listener,
        mock_node::MockConfig {
            models: vec!["m".into(), "m2".into()],
            ..Default::default()
        },
    );
    let n = h.wait_node(&url, "online", |n| n["status"] == "online").await;
    assert_eq!(n["models"], json!(["m", "m2"]), "model list refreshed");
    assert_eq!(h.chat("m", "hi").await.0, 200);
}

#[tokio::test]
async fn streams_pass_chunk_by_chunk_and_byte_for_byte() {
    let a = slow_stream_mock("alpha", 4, Duration::from_millis(200)).await;
    let h = Harness::start(&[&a]).await;
    let body = chat_body("m", "tell me", true);
    let direct = direct_stream(&a, &body).await;

    let resp = h.post("/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let start = Instant::now();
    let mut arrivals = Vec::new();
    let mut bytes = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if String::from_utf8_lossy(&chunk).contains("alpha") {
            arrivals.push(start.elapsed());
        }
        bytes.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), String::from_utf8(direct).unwrap());
    // Content chunks arrive ~200 ms apart: nothing is buffered.
    let content: Vec<_> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(content.len() >= 3, "{arrivals:?}");
    for gap in content.iter().skip(1) {
        assert!(*gap >= Duration::from_millis(120), "chunks were buffered: {arrivals:?}");
    }
}

/// Sends one HTTP/1.1 request over a raw socket and returns the response head and the
/// body's chunks as they were framed on the wire (chunked transfer encoding).
async fn raw_chunked_post(addr: &str, path: &str, body: &Value) -> (String, Vec<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("response head") + 4;
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut rest = &raw[split..];
    let mut chunks = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return (head, chunks);
        }
        chunks.push(rest[..size].to_vec());
        assert_eq!(&rest[size..size + 2], b"\r\n");
        rest = &rest[size + 2..];
    }
}

#[tokio::test]
async fn events_the_node_sent_together_reach_the_client_in_one_chunk() {
    // The mock node writes its whole answer (role, 5 content events, usage, [DONE]) at
    // once. The router forwards it in one piece: one write, one wake-up of the client.
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let body = chat_body("m", "tell me", true);
    let direct = direct_stream(&a, &body).await;
    let addr = h
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    for _ in 0..5 {
        let (head, chunks) = raw_chunked_post(&addr, "/v1/chat/completions", &body).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("transfer-encoding: chunked"), "{head}");
        assert_eq!(chunks.concat(), direct, "the bytes pass unchanged");
        if postgres_server().is_some() && chunks.len() == 2 {
            // A PostgreSQL commit is a round trip on the writer's thread: the held
            // `[DONE]` may leave after the events, which still come in one piece.
            assert_eq!(chunks[1], b"data: [DONE]\n\n", "{chunks:?}");
        } else {
            assert_eq!(chunks.len(), 1, "one chunk: {chunks:?}");
        }
    }
}

#[tokio::test]
async fn a_long_answer_sent_at_once_still_flows_in_pieces() {
    // 20,000 events (~4 MB) written as fast as the node can: the router gathers what
    // is ready, but never more than 64 KiB before it writes.
    let a = mock_with("alpha", &["m"], |c| c.chunks = 20_000).await;
    let h = Harness::start(&[&a]).await;
    let body = chat_body("m", "tell me", true);
    let direct = direct_stream(&a, &body).await;
    let addr = h.url("").trim_start_matches("http://").to_string();
    let (head, chunks) = raw_chunked_post(&addr, "/v1/chat/completions", &body).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(chunks.concat(), direct, "the bytes pass unchanged");
    let largest = chunks.iter().map(Vec::len).max().unwrap();
    assert!(largest < 64 * 1024 + 1024, "one chunk held {largest} bytes");
    assert!(chunks.len() >= direct.len() / (65 * 1024), "{} chunks", chunks.len());
}

#[tokio::test]
async fn models_endpoint_lists_the_union_of_online_nodes() {
    let a = mock("alpha", &["m1", "m2"]).await;
    let b = mock("beta", &["m2", "m3"]).await;
    let c = mock("gamma", &["m4"]).await;
    let h = Harness::start(&[&a, &b, &c]).await;
    let c_url = c.base_url();
    c.shutdown().await;
    h.router.state.health.probe_all().await;
    h.wait_node(&c_url, "offline", |n| n["status"] == "offline").await;
    let v: Value = h
        .http
        .get(h.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2", "m3"]);
    assert_eq!(v["data"][0]["object"], "model");
}

fn assert_error(v: &Value, code: &str) {
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
}

#[tokio::test]
async fn each_error_has_its_status_and_the_openai_shape() {
    let a = mock("alpha", &["m"]).await;
    let gone = mock("gone", &["only-on-gone"]).await;
    let h = Harness::start_with(&[&a, &gone], |args| args.max_body_bytes = 4096).await;
    gone.shutdown().await;
    let url = h.url("/v1/chat/completions");
    let send = |body: String| {
        let (http, url) = (h.http.clone(), url.clone());
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = send("{not json".into()).await;
    assert_eq!(s, 400);
    assert_error(&v, "invalid_json");
    let (s, v) = send(r#"{"messages": []}"#.into()).await;
    assert_eq!(s, 400);
    assert_error(&v, "missing_model");
    let (s, v) = send(chat_body("nope", "x", false).to_string()).await;
    assert_eq!(s, 404);
    assert_error(&v, "model_not_found");
    let (s, v) = send(chat_body("m", &"x ".repeat(5000), false).to_string()).await;
    assert_eq!(s, 413);
    assert_error(&v, "request_too_large");
    let (s, v) = send(chat_body("only-on-gone", "x", false).to_string()).await;
    assert_eq!(s, 502, "the only node refuses connections: {v}");
    assert_error(&v, "upstream_error");
    let (s, v) = send(chat_body("only-on-gone", "x", false).to_string()).await;
    assert_eq!(s, 503, "now it is known offline: {v}");
    assert_error(&v, "no_node_available");
    // A 1 MB body of whitespace is refused cleanly by the limit, not parsed.
    let (s, _) = send(" ".repeat(1024 * 1024)).await;
    assert_eq!(s, 413);
    // Every one of them is in the history, with its status.
    let statuses: Vec<u64> = h.history().await.iter().map(|r| u(&r["http_status"])).collect();
    assert_eq!(statuses, [413, 503, 502, 413, 404, 400, 400]);
}

#[tokio::test]
async fn every_admin_route_needs_the_key() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let doc = h.get("/api/openapi.json").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/") {
            continue;
        }
        let concrete = path.replace("{id}", "1");
        for method in item.as_object().unwrap().keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for auth in [None, Some("Bearer wrong-key"), Some("test-admin-key")] {
                let mut req = h.http.request(m.clone(), h.url(&concrete));
                if let Some(a) = auth {
                    req = req.header("authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
                let v: Value = resp.json().await.unwrap();
                assert_error(&v, "invalid_admin_key");
            }
            checked += 1;
        }
    }
    assert!(checked >= 13, "only {checked} admin routes in the OpenAPI document");
}

#[tokio::test]
async fn nodes_are_managed_through_the_api() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m", "mb"]).await;
    let h = Harness::start(&[&a]).await;
    let (s, v) = h
        .admin(
            Method::POST,
            "/api/nodes",
            Some(json!({"base_url": format!("{}/v1/", b.base_url()), "name": "beta", "api_key": "node-secret"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["base_url"], b.base_url());
    assert_eq!(v["status"], "online", "probed at once");
    assert_eq!(v["models"], json!(["m", "mb"]));
    assert_eq!(v["has_api_key"], true);
    assert!(v.get("api_key").is_none(), "the key is never shown");
    let id = v["id"].as_i64().unwrap();

    let (s, e) = h
        .admin(Method::POST, "/api/nodes", Some(json!({"base_url": b.base_url()})))
        .await;
    assert_eq!(s, 409, "{e}");
    let (s, e) = h
        .admin(Method::POST, "/api/nodes", Some(json!({"base_url": "not a url"})))
        .await;
    assert_eq!(s, 400);
    assert!(e["error"]["message"].as_str().unwrap().contains("base_url"));
    let (s, _) = h.admin(Method::POST, "/api/nodes", Some(json!({"name": "x"}))).await;
    assert_eq!(s, 400);
    let (s, _) = h.admin(Method::GET, "/api/nodes/999", None).await;
    assert_eq!(s, 404);
    let (s, e) = h.admin(Method::GET, "/api/nodes/abc", None).await;
    assert_eq!(s, 400, "{e}");

    let (s, v) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{id}"),
            Some(json!({"name": "beta-2", "enabled": false})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "beta-2");
    assert_eq!(v["enabled"], false);
    assert_eq!(h.chat("mb", "x").await.0, 503, "disabled nodes take no requests");
    let (s, v) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!((s, &v["enabled"]), (200, &json!(true)));
    assert_eq!(h.chat("mb", "x").await.0, 200);

    let (s, list) = h.admin(Method::GET, "/api/nodes", None).await;
    assert_eq!(s, 200);
    assert_eq!(list["nodes"].as_array().unwrap().len(), 2);
    // A node the command line declares cannot be deleted (it would come back at the
    // next start); it can be disabled.
    let static_id = h.node(&a.base_url()).await["id"].as_i64().unwrap();
    let (s, v) = h.admin(Method::DELETE, &format!("/api/nodes/{static_id}"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("--node"), "{v}");
    let (s, _) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{static_id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = h.admin(Method::DELETE, &format!("/api/nodes/{id}"), None).await;
    assert_eq!(s, 204);
    assert_eq!(h.chat("mb", "x").await.0, 404, "a deleted node leaves routing at once");
    let (s, _) = h.admin(Method::DELETE, &format!("/api/nodes/{id}"), None).await;
    assert_eq!(s, 404);
    // The same URL can be registered again once deleted.
    let (s, _) = h
        .admin(Method::POST, "/api/nodes", Some(json!({"base_url": b.base_url()})))
        .await;
    assert_eq!(s, 201);
}

#[tokio::test]
async fn client_headers_pass_and_the_node_key_goes_to_its_node_only() {
    let a = mock("alpha", &["m"]).await;
    let b = mock("beta", &["m2"]).await;
    let h = Harness::start(&[&b]).await;
    let (s, _) = h
        .admin(
            Method::POST,
            "/api/nodes",
            Some(json!({"base_url": a.base_url(), "api_key": "alpha-secret"})),
        )
        .await;
    assert_eq!(s, 201);
    for model in ["m", "m2"] {
        let r = h
            .http
            .post(h.url("/v1/chat/completions"))
            .header("authorization", "Bearer client-key")
            .header("x-request-id", "req-42")
            .header("openai-organization", "org-1")
            .json(&chat_body(model, "x", false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let got_a = &a.received()[0].headers;
    assert_eq!(got_a["authorization"], "Bearer alpha-secret");
    assert_eq!(got_a["x-request-id"], "req-42");
    assert_eq!(got_a["openai-organization"], "org-1");
    let got_b = &b.received()[0].headers;
    assert!(
        got_b.get("authorization").is_none(),
        "client key and alpha's key stay away from beta"
    );
    assert_eq!(got_b["x-request-id"], "req-42");
}

#[tokio::test]
async fn the_openai_python_sdk_works_unchanged() {
    // The official SDK, plain and streaming, against the router (CI installs it).
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let script = format!(
        r#"
import openai
c = openai.OpenAI(base_url="{}/v1", api_key="unused")
r = c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "one two"}}])
print(r.choices[0].message.content.strip(), r.usage.total_tokens)
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="m", messages=[{{"role": "user", "content": "x"}}], stream=True) if ch.choices]
print("".join(parts).strip())
print(len(c.embeddings.create(model="m", input=["a", "b"]).data))
print([m.id for m in c.models.list().data])
"#,
        h.router.base_url()
    );
    let text = python(&script).await;
    assert_eq!(
        text,
        "alpha0 alpha1 alpha2 alpha3 alpha4 7\nalpha0 alpha1 alpha2 alpha3 alpha4\n2\n['m']\n"
    );
    assert_eq!(h.history().await.len(), 3);
}

#[tokio::test]
async fn a_node_slower_than_the_first_byte_timeout_gets_504_and_an_error_record() {
    let a = mock_with("alpha", &["m"], |c| c.latency = Duration::from_millis(1500)).await;
    let h = Harness::start_with(&[&a], |args| args.first_byte_timeout_secs = 1).await;
    let started = Instant::now();
    let (s, v) = h.chat("m", "one two").await;
    assert_eq!(s, 504, "{v}");
    assert_error(&v, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_millis(1400));
    let r = &h.history().await[0];
    assert_eq!(
        (r["status"].clone(), r["http_status"].clone()),
        (json!("error"), json!(504))
    );
    assert_eq!(u(&r["input_tokens"]), tokens("one two"), "the node received the prompt");
}

#[tokio::test]
async fn a_stream_silent_longer_than_the_idle_timeout_is_broken_and_recorded() {
    let a = slow_stream_mock("alpha", 3, Duration::from_millis(1500)).await;
    let h = Harness::start_with(&[&a], |args| args.idle_timeout_secs = 1).await;
    let resp = h.post("/v1/chat/completions", &chat_body("m", "x", true)).await;
    assert_eq!(resp.status(), 200);
    let mut s = resp.bytes_stream();
    let mut broke = false;
    while let Some(c) = s.next().await {
        broke |= c.is_err();
    }
    assert!(broke, "the client's stream is broken, not ended cleanly");
    let r = &h.wait_history(1).await[0];
    assert_eq!(r["status"], "error");
    assert!(r["error_message"].as_str().unwrap().contains("sent nothing"), "{r}");
}

#[tokio::test]
async fn the_mock_node_keeps_a_bounded_log_of_requests() {
    // The benchmark sends it millions of requests; it once grew to 24 GB and was killed.
    let a = mock("alpha", &["m"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", a.base_url());
    let sent = mock_node::KEPT_REQUESTS + 5;
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move {
                for i in (t..sent).step_by(8) {
                    let body = chat_body("m", &format!("request {i}"), false);
                    assert_eq!(http.post(&url).json(&body).send().await.unwrap().status(), 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let kept = a.received();
    assert_eq!(kept.len(), mock_node::KEPT_REQUESTS);
    let last = kept.last().unwrap().body["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(last.starts_with("request "), "{last}");
}

/// Connections to a node are kept for the next requests, and closed once unused for
/// `--node-keep-alive-timeout-ms`.
#[tokio::test]
async fn connections_to_a_node_are_reused_then_closed_when_idle() {
    let node = slow_stream_mock("pool", 3, Duration::from_millis(100)).await;
    let h = Harness::start_with(&[&node], |a| a.node_keep_alive_timeout_ms = 1_000).await;
    let body = chat_body("m", "hi", true);
    let four = || futures_util::future::join_all((0..4).map(|_| h.chat_stream(&body)));
    assert!(four().await.iter().all(|(status, _)| *status == 200));
    // Four streams at once took four connections (and the first health probe perhaps
    // one); they stay open for the next requests, which open none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let open = node.open_connections();
    assert!((4..=5).contains(&open), "{open} open");
    assert!(four().await.iter().all(|(status, _)| *status == 200));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(node.open_connections(), open, "the second four reused the first four's");
    // Unused for a second, they close (the pool's timer runs every second here).
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.open_connections() > 0 {
        assert!(Instant::now() < deadline, "{} still open", node.open_connections());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
