//! Slow and hostile clients, over raw sockets: half request heads, bodies that stop
//! short, idle keep-alive connections, more connections than the cap. The open-file
//! limit tests are in `open_files`.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Connects to the router.
pub async fn connect(h: &Harness) -> TcpStream {
    TcpStream::connect(h.router.addr).await.unwrap()
}

/// How many connections the router says it closed for `reason` (`/metrics`).
async fn closed(h: &Harness, reason: &str) -> u64 {
    let metrics = h.metrics().await;
    let series = format!("llm_router_client_connections_closed_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |n| n.parse().unwrap())
}

/// Reads until the router closes the connection (10 s at most); returns what it sent.
pub async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the router kept the connection open; it sent {out:?}");
    out
}

/// Reads one response with a `content-length` body; returns its head and body.
pub async fn read_response(tcp: &mut TcpStream) -> (String, Vec<u8>) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&data)
        );
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("content-length");
    while data.len() < head_end + length {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        data.extend_from_slice(&buf[..n]);
    }
    (head, data[head_end..].to_vec())
}

/// Whether the router still holds the connection open (nothing to read, no EOF).
pub fn is_open(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn split_response(raw: &[u8]) -> (String, Value) {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    (
        head.to_ascii_lowercase(),
        serde_json::from_str(body).expect("a JSON body"),
    )
}

const HEALTH: &[u8] = b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n";

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_closes_the_connection_unanswered() {
    let node = mock("n", &["m"]).await;
    let h = Harness::start_with(&[&node], |a| a.request_head_timeout_ms = 300).await;

    // Half a head, then silence.
    let started = Instant::now();
    let mut half = connect(&h).await;
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Le")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut half).await, b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );

    // Not a byte.
    let started = Instant::now();
    let mut silent = connect(&h).await;
    assert_eq!(read_to_close(&mut silent).await, b"");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );

    // A head sent slowly but within the time is served.
    let mut slow = connect(&h).await;
    for piece in HEALTH.chunks(10) {
        slow.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let (head, body) = read_response(&mut slow).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["status"], "ok");
    assert_eq!(node.received().len(), 0);
    assert_eq!(closed(&h, "head_timeout").await, 2);
}

#[tokio::test]
async fn a_body_that_stops_short_gets_408_and_the_connection_is_closed() {
    let node = mock("n", &["m"]).await;
    let h = Harness::start_with(&[&node], |a| a.request_body_timeout_ms = 300).await;
    let expected_error = json!({"error": {
        "message": "the request body did not arrive in time",
        "type": "invalid_request_error",
        "code": "request_timeout"}});

    // Declares 100 bytes, sends 13.
    let started = Instant::now();
    let mut short = connect(&h).await;
    short
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":\"m\",")
        .await
        .unwrap();
    let (head, body) = split_response(&read_to_close(&mut short).await);
    let waited = started.elapsed();
    assert!(head.starts_with("http/1.1 408 request timeout\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(body, expected_error);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );

    // A chunked body whose last chunk never comes.
    let mut chunked = connect(&h).await;
    chunked
        .write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mod\r\n",
        )
        .await
        .unwrap();
    let (head, body) = split_response(&read_to_close(&mut chunked).await);
    assert!(head.starts_with("http/1.1 408 request timeout\r\n"), "{head}");
    assert_eq!(body, expected_error);

    // The same on an admin route, answered by the server layer.
    let mut admin = connect(&h).await;
    admin
        .write_all(format!("POST /api/nodes HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: 100\r\n\r\n{{\"base_url\":").as_bytes())
        .await
        .unwrap();
    let (head, body) = split_response(&read_to_close(&mut admin).await);
    assert!(head.starts_with("http/1.1 408 request timeout\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert_eq!(
        body,
        json!({"error": {"message": "the request body did not arrive within 300ms",
            "type": "invalid_request_error", "code": "request_timeout"}})
    );

    // No node saw them; both inference requests are recorded as 408s.
    assert_eq!(node.received().len(), 0);
    let records = h.wait_history(2).await;
    assert_eq!(records.len(), 2, "{records:?}");
    for r in &records {
        assert_eq!(r["http_status"], 408, "{r}");
        assert_eq!(r["status"], "error", "{r}");
        assert_eq!(r["node_id"], Value::Null, "{r}");
    }
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout() {
    let node = mock("n", &["m"]).await;
    // A second: room for the 250 ms pause below on a loaded machine.
    let h = Harness::start_with(&[&node], |a| a.keep_alive_timeout_ms = 1000).await;
    let mut tcp = connect(&h).await;
    tcp.write_all(HEALTH).await.unwrap();
    let (head, _) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    // Within the keep-alive time the connection serves the next request.
    tokio::time::sleep(Duration::from_millis(250)).await;
    tcp.write_all(HEALTH).await.unwrap();
    let (head, _) = read_response(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let idle_from = Instant::now();
    assert_eq!(read_to_close(&mut tcp).await, b"");
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(990) && idle < Duration::from_millis(3000),
        "{idle:?}"
    );
    assert_eq!(closed(&h, "keep_alive_timeout").await, 1);
}

#[tokio::test]
async fn at_the_connection_cap_the_connection_idle_the_longest_makes_room() {
    let node = mock("n", &["m"]).await;
    let h = Harness::start_with(&[&node], |a| a.max_connections = Some(4)).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut tcp = connect(&h).await;
        tcp.write_all(HEALTH).await.unwrap();
        read_response(&mut tcp).await;
        idle.push(tcp);
    }
    let (status, v) = h.chat("m", "hello").await;
    assert_eq!(status, 200, "{v}");
    let mut open: Vec<bool> = Vec::new();
    for _ in 0..40 {
        open = idle.iter().map(is_open).collect();
        if open == [false, true, true, true] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open, [false, true, true, true]);
}

#[tokio::test]
async fn when_every_connection_is_busy_a_new_client_gets_503_at_once() {
    let node = mock_with("n", &["m"], |c| c.latency = Duration::from_millis(1500)).await;
    let h = Harness::start_with(&[&node], |a| a.max_connections = Some(2)).await;
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (http, url) = (reqwest::Client::new(), h.url("/v1/chat/completions"));
            tokio::spawn(async move {
                let resp = http.post(url).json(&chat_body("m", "x", false)).send().await.unwrap();
                resp.status().as_u16()
            })
        })
        .collect();
    while node.received().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let started = Instant::now();
    let mut refused = connect(&h).await;
    refused.write_all(HEALTH).await.unwrap();
    let (head, body) = split_response(&read_to_close(&mut refused).await);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert!(head.starts_with("http/1.1 503 service unavailable\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: close"), "{head}");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    assert_eq!(
        body,
        json!({"error": {"message": "the router has too many open connections; retry later",
            "type": "server_error", "code": "too_many_connections"}})
    );

    for b in busy {
        assert_eq!(b.await.unwrap(), 200);
    }
    // Once they are idle, a new client takes the place of one of them.
    let (status, v) = h.chat("m", "again").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(node.received().len(), 3);
    assert_eq!(closed(&h, "over_cap").await, 1);
}

/// Text that PostgreSQL cannot hold (a NUL character, legal in JSON as `\u0000`) in
/// every column a client or a node writes: the model, the error the node sent, the
/// stored bodies. Each request is recorded, and the records after it too: a record
/// the store refused would block the writer's queue behind it.
#[tokio::test]
async fn a_nul_character_anywhere_is_recorded_and_blocks_nothing() {
    let a = mock_with("alpha", &["m"], |c| {
        c.failure_rate = 1.0;
        c.failure_message = "bad\u{0}answer".into();
    })
    .await;
    let h = Harness::start_with(&[&a], |args| args.store_bodies = true).await;
    let raw = "{\"model\": \"m\\u0000x\", \"messages\": []}";
    assert_eq!(h.post_raw("/v1/chat/completions", raw).await.0, 404);
    let raw = "{\"model\": \"m\", \0";
    assert_eq!(h.post_raw("/v1/chat/completions", raw).await.0, 400);
    assert_eq!(h.chat("m", "the node fails").await.0, 500);
    let records = h.wait_history(3).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert_eq!(records[2]["model"], "m\u{fffd}x");
    assert!(
        records[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("bad\u{fffd}answer"),
        "{}",
        records[0]
    );
    let detail = h
        .get(&format!("/api/dashboard/request-history/{}", records[1]["id"]))
        .await;
    assert_eq!(detail["request_body"]["text"], "{\"model\": \"m\", \u{fffd}");
    // The store holds the three, as the API shows them.
    let store = llm_router::store::Store::open(&h.database_url()).await.unwrap();
    assert_eq!(store.history_count().await.unwrap(), 3);
    store.close().await;
}

/// Names and keys the operator gives are text a header or PostgreSQL can hold: a
/// control character (a NUL, a line break) is refused with 400 naming the field.
#[tokio::test]
async fn control_characters_in_names_and_node_keys_are_refused_with_400() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[]).await;
    let id = h.add_node(&a).await;
    let b = mock("beta", &["m"]).await;
    let cases = [
        (
            Method::POST,
            "/api/nodes".to_string(),
            json!({"base_url": b.base_url(), "name": "b\u{0}"}),
            "name",
        ),
        (
            Method::POST,
            "/api/nodes".into(),
            json!({"base_url": b.base_url(), "api_key": "k\r\nX-Evil: 1"}),
            "api_key",
        ),
        (
            Method::PATCH,
            format!("/api/nodes/{id}"),
            json!({"name": "a\nb"}),
            "name",
        ),
        (
            Method::PATCH,
            format!("/api/nodes/{id}"),
            json!({"api_key": "k\u{0}"}),
            "api_key",
        ),
        (Method::POST, "/api/keys".into(), json!({"name": "k\u{0}"}), "name"),
        (
            Method::POST,
            "/api/keys".into(),
            json!({"name": "k", "allowed_models": ["m\u{0}"]}),
            "allowed_models",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, v) = h.admin(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(status, 400, "{method} {path} {body}: {v}");
        assert!(v.to_string().contains(field), "{method} {path}: {v}");
    }
    // Nothing was changed or added.
    let nodes = h.get("/api/nodes").await;
    assert_eq!(nodes["nodes"].as_array().unwrap().len(), 1, "{nodes}");
    assert_eq!(h.get("/api/keys").await["keys"], json!([]));
}

/// A client that stops reading its stream: once the router's writes to it have been
/// blocked for the send timeout, its connection is closed, the request is recorded
/// as cancelled, and the node's one slot serves the next client. (Without the
/// timeout hyper stops polling the stream when the socket is full: nothing would
/// ever end the request.)
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_send_timeout_and_frees_its_slot() {
    // An answer far larger than the router's send buffer can grow to (the kernel's
    // tcp_wmem maximum; an event is over 100 bytes): three times that.
    let wmem_max: usize = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().last()?.parse().ok())
        .unwrap_or(4 << 20);
    let chunks = (3 * wmem_max / 100).max(80_000);
    let node = mock_with("n", &["m"], |c| c.chunks = chunks).await;
    let h = Harness::start_with(&[&node], |a| a.send_timeout_ms = 300).await;
    let id = h.get("/api/nodes").await["nodes"][0]["id"].as_i64().unwrap();
    let (status, v) = h
        .admin(
            Method::PATCH,
            &format!("/api/nodes/{id}"),
            Some(json!({"max_concurrent": 1})),
        )
        .await;
    assert_eq!(status, 200, "{v}");

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket.connect(h.router.addr).await.unwrap();
    let body = chat_body("m", "never read", true).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    // Not a byte is read.
    let records = h.wait_history(1).await;
    assert_eq!(records.len(), 1, "the request never ended");
    assert_eq!(records[0]["status"], "cancelled", "{}", records[0]);
    assert!(u(&records[0]["output_tokens"]) > 0, "{}", records[0]);
    // The slot is free: the next client is served, not queued.
    let (status, v) = h.chat("m", "next").await;
    assert_eq!(status, 200, "{v}");
    let stats = h.get("/api/dashboard/stats").await;
    assert_eq!(stats["queue"]["served"], 0, "{stats}");
    assert_eq!(closed(&h, "send_timeout").await, 1);
    drop(tcp);
}
