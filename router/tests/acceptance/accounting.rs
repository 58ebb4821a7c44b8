//! Token accounting through the proxy (SPEC T-3…T-14): exact figures in the store
//! (request history), in `NodeLoadState` (dashboard nodes) and on the client's wire.

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

/// The only record, after exactly one request.
async fn only_record(h: &Harness) -> Value {
    let records = h.history().await;
    assert_eq!(records.len(), 1, "{records:?}");
    records[0].clone()
}

fn assert_tokens(r: &Value, input: u64, output: u64, source: &str) {
    assert_eq!(u(&r["input_tokens"]), input, "{r}");
    assert_eq!(u(&r["output_tokens"]), output, "{r}");
    assert_eq!(u(&r["total_tokens"]), input + output, "{r}");
    assert_eq!(r["token_source"], source, "{r}");
}

/// NodeLoadState of the node agrees with the given totals.
async fn assert_node_totals(h: &Harness, base_url: &str, requests: u64, input: u64, output: u64) {
    let n = h.node(base_url).await;
    assert_eq!(u(&n["total_requests"]), requests, "{n}");
    assert_eq!(u(&n["total_input_tokens"]), input, "{n}");
    assert_eq!(u(&n["total_output_tokens"]), output, "{n}");
    assert_eq!(u(&n["total_tokens"]), input + output, "{n}");
}

#[tokio::test]
async fn reported_usage_is_recorded_exactly() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (s, v) = h.chat("m", "one two three four").await;
    assert_eq!(s, 200);
    assert_eq!(v["usage"]["total_tokens"], 9);
    // Durable by default: the record is committed before the client got the body.
    let r = only_record(&h).await;
    assert_tokens(&r, 4, 5, "reported");
    assert_eq!(r["status"], "success");
    assert_eq!(r["stream"], false);
    assert_node_totals(&h, &a.base_url(), 1, 4, 5).await;
}

#[tokio::test]
async fn missing_usage_is_estimated_with_the_bpe_and_flagged() {
    let a = mock_with("alpha", &["m"], |c| c.usage = false).await;
    let h = Harness::start(&[&a]).await;
    let prompt = "Explain the difference between TCP and UDP in two sentences.";
    let (s, v) = h.chat("m", prompt).await;
    assert_eq!(s, 200);
    assert!(v.get("usage").is_none());
    let (input, output) = (tokens(prompt), tokens(&mock_text("alpha", 5)));
    assert_eq!(input, 12, "cl100k_base count of the prompt");
    let r = only_record(&h).await;
    assert_tokens(&r, input, output, "estimated");
    assert_node_totals(&h, &a.base_url(), 1, input, output).await;
    let stats = h.get("/api/dashboard/stats/tokens").await;
    assert_eq!(stats["estimated_request_count"], 1);
}

#[tokio::test]
async fn stream_without_include_usage_is_counted_exactly_and_client_sees_no_extra_chunk() {
    for usage_null in [false, true] {
        let a = mock_with("alpha", &["m"], |c| c.usage_null_in_chunks = usage_null).await;
        let h = Harness::start(&[&a]).await;
        let body = chat_body("m", "one two three", true);
        let direct = direct_stream(&a, &body).await;
        let (s, bytes) = h.chat_stream(&body).await;
        assert_eq!(s, 200);
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            String::from_utf8(direct).unwrap(),
            "usage_null={usage_null}"
        );
        // The router asked the node for usage…
        let sent = a.received().last().unwrap().body.clone();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        // …and recorded it exactly.
        let r = only_record(&h).await;
        assert_tokens(&r, 3, 5, "reported");
        assert_eq!(r["stream"], true);
        assert_node_totals(&h, &a.base_url(), 1, 3, 5).await;
    }
}

#[tokio::test]
async fn stream_with_client_include_usage_passes_the_usage_chunk_through() {
    let a = mock_with("alpha", &["m"], |c| c.usage_null_in_chunks = true).await;
    let h = Harness::start(&[&a]).await;
    let mut body = chat_body("m", "one two", true);
    body["stream_options"] = json!({"include_usage": true});
    let direct = direct_stream(&a, &body).await;
    let (_, bytes) = h.chat_stream(&body).await;
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text, String::from_utf8(direct).unwrap());
    assert!(text.contains(r#""usage":{"#) && text.contains(r#""usage":null"#));
    assert_tokens(&only_record(&h).await, 2, 5, "reported");
}

#[tokio::test]
async fn stream_without_usage_support_is_estimated_from_the_deltas() {
    let a = mock_with("alpha", &["m"], |c| {
        c.usage = false;
        c.chunks = 7;
    })
    .await;
    let h = Harness::start(&[&a]).await;
    let (s, _) = h.chat_stream(&chat_body("m", "count these words please", true)).await;
    assert_eq!(s, 200);
    let r = only_record(&h).await;
    assert_tokens(
        &r,
        tokens("count these words please"),
        tokens(&mock_text("alpha", 7)),
        "estimated",
    );
}

#[tokio::test]
async fn a_node_that_rejects_stream_options_is_retried_without_and_remembered() {
    let a = mock_with("alpha", &["m"], |c| {
        c.reject_stream_options = true;
        c.usage = false;
    })
    .await;
    let h = Harness::start(&[&a]).await;
    let body = chat_body("m", "hello world", true);
    let direct = direct_stream(&a, &chat_body("m", "hello world", true)).await;
    let (s, bytes) = h.chat_stream(&body).await;
    assert_eq!(s, 200);
    assert_eq!(bytes, direct);
    // One rejected attempt with the field, one without; the direct call is the third.
    assert_eq!(a.received().len(), 3);
    let (_, nodes) = h.admin(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes["nodes"][0]["include_usage_supported"], false);
    let (s, _) = h.chat_stream(&body).await;
    assert_eq!(s, 200);
    assert_eq!(a.received().len(), 4, "no second attempt once learned");
    assert!(a.received()[3].body.get("stream_options").is_none());
    let records = h.history().await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_tokens(r, tokens("hello world"), tokens(&mock_text("alpha", 5)), "estimated");
    }
}

#[tokio::test]
async fn include_usage_can_be_switched_off_per_node() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let (s, _) = h
        .admin(Method::PATCH, "/api/nodes/1", Some(json!({"include_usage": false})))
        .await;
    assert_eq!(s, 200);
    h.chat_stream(&chat_body("m", "a b", true)).await;
    assert!(a.received()[0].body.get("stream_options").is_none());
    assert_tokens(
        &only_record(&h).await,
        tokens("a b"),
        tokens(&mock_text("alpha", 5)),
        "estimated",
    );
}

#[tokio::test]
async fn an_error_response_counts_its_input_and_no_output() {
    let reported = mock_with("alpha", &["m"], |c| c.failure_rate = 1.0).await;
    let silent = mock_with("beta", &["m2"], |c| {
        c.failure_rate = 1.0;
        c.usage = false;
    })
    .await;
    let h = Harness::start(&[&reported, &silent]).await;
    let (s, v) = h.chat("m", "five words in this prompt").await;
    assert_eq!(s, 500, "the node's error is passed through: {v}");
    assert_eq!(v["error"]["message"], "mock failure");
    let (s, _) = h.chat("m2", "five words in this prompt").await;
    assert_eq!(s, 500);
    let records = h.history().await;
    assert_eq!(records[1]["status"], "error");
    assert_eq!(records[1]["http_status"], 500);
    assert_tokens(&records[1], 5, 0, "reported");
    assert_tokens(&records[0], tokens("five words in this prompt"), 0, "estimated");
    let n = h.node(&reported.base_url()).await;
    assert_eq!((u(&n["failed_requests"]), u(&n["total_input_tokens"])), (1, 5));
}

#[tokio::test]
async fn a_stream_broken_by_the_node_counts_what_was_produced() {
    let a = mock_with("alpha", &["m"], |c| {
        c.chunks = 6;
        c.break_after_chunks = Some(2);
    })
    .await;
    let h = Harness::start(&[&a]).await;
    let resp = h.post("/v1/chat/completions", &chat_body("m", "one two", true)).await;
    assert_eq!(resp.status(), 200);
    let mut got = Vec::new();
    let mut broke = false;
    let mut s = resp.bytes_stream();
    while let Some(c) = s.next().await {
        match c {
            Ok(b) => got.extend_from_slice(&b),
            Err(_) => broke = true,
        }
    }
    assert!(broke, "the client sees the break, not a clean end");
    assert!(!String::from_utf8_lossy(&got).contains("[DONE]"));
    let r = only_record(&h).await;
    assert_eq!(r["status"], "error");
    assert!(r["error_message"].as_str().unwrap().contains("broke the stream"), "{r}");
    assert_tokens(&r, tokens("one two"), tokens(&mock_text("alpha", 2)), "estimated");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_recorded_as_cancelled() {
    let a = slow_stream_mock("alpha", 40, Duration::from_millis(50)).await;
    let h = Harness::start(&[&a]).await;
    let resp = h.post("/v1/chat/completions", &chat_body("m", "one two", true)).await;
    let mut s = resp.bytes_stream();
    let mut seen = 0;
    while let Some(c) = s.next().await {
        seen += String::from_utf8_lossy(&c.unwrap()).matches("alpha").count();
        if seen >= 4 {
            break;
        }
    }
    drop(s);
    let records = h.wait_history(1).await;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r["status"], "cancelled");
    // Output: what the tap had seen when the client went away (k chunks).
    let out = u(&r["output_tokens"]);
    let k = (0..=40).find(|k| tokens(&mock_text("alpha", *k)) == out);
    assert!(
        k.is_some(),
        "output {out} is not the estimate of a prefix of the stream"
    );
    assert_tokens(r, tokens("one two"), out, "estimated");
    let n = h.wait_node(&a.base_url(), "idle", |n| n["active_requests"] == 0).await;
    assert_eq!(
        (u(&n["total_output_tokens"]), n["failed_requests"].clone()),
        (out, json!(1))
    );
}

#[tokio::test]
async fn responses_api_and_embeddings_usage_is_recorded() {
    let a = mock_with("alpha", &["m"], |c| c.chunks = 3).await;
    let h = Harness::start(&[&a]).await;
    let r = h
        .post("/v1/responses", &json!({"model": "m", "input": "a b c d"}))
        .await;
    assert_eq!(r.status(), 200);
    let r = h
        .post("/v1/responses", &json!({"model": "m", "input": "a b", "stream": true}))
        .await;
    let text = r.text().await.unwrap();
    assert!(text.contains("response.completed"));
    let r = h
        .post("/v1/embeddings", &json!({"model": "m", "input": ["x y", "z"]}))
        .await;
    assert_eq!(r.status(), 200);
    let records = h.history().await;
    assert_tokens(&records[2], 4, 3, "reported");
    assert_eq!(records[2]["request_type"], "responses");
    assert_tokens(&records[1], 2, 3, "reported");
    assert_eq!(records[1]["stream"], true);
    assert_tokens(&records[0], 3, 0, "reported");
    assert_eq!(records[0]["request_type"], "embeddings");
    assert_node_totals(&h, &a.base_url(), 3, 9, 6).await;
}

#[tokio::test]
async fn completions_stream_is_counted_and_hidden_usage_removed() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    let body = json!({"model": "m", "prompt": "one two three", "stream": true});
    let direct = reqwest::Client::new()
        .post(format!("{}/v1/completions", a.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let got = h.post("/v1/completions", &body).await.bytes().await.unwrap();
    assert_eq!(got, direct);
    assert_tokens(&only_record(&h).await, 3, 5, "reported");
}

#[tokio::test]
async fn a_client_that_gives_up_before_the_answer_is_recorded_as_cancelled() {
    let a = mock_with("alpha", &["m"], |c| c.latency = Duration::from_millis(800)).await;
    let h = Harness::start(&[&a]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = client
        .post(h.url("/v1/chat/completions"))
        .json(&chat_body("m", "one two three", false))
        .send()
        .await;
    assert!(err.is_err(), "the client timed out");
    let records = h.wait_history(1).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "cancelled");
    assert_tokens(&records[0], tokens("one two three"), 0, "estimated");
    let n = h.wait_node(&a.base_url(), "idle", |n| n["active_requests"] == 0).await;
    assert_eq!(n["failed_requests"], 1);
}

/// A node serving model `g` whose chat completions answer `parts` as an SSE stream,
/// one HTTP chunk each, written at once.
async fn sse_node(parts: &'static [&'static [u8]]) -> String {
    use axum::routing::{get, post};
    let app = axum::Router::new()
        .route(
            "/v1/models",
            get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "g"}]})) }),
        )
        .route(
            "/v1/chat/completions",
            post(move || async move {
                let chunks = futures_util::stream::iter(parts.iter().map(|p| Ok::<_, std::io::Error>(*p)));
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(chunks),
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// A router over an [`sse_node`] answering `parts`; returns it with the bytes a client
/// received for a streamed chat completion ("hello there").
async fn stream_from(parts: &'static [&'static [u8]]) -> (Harness, Vec<u8>) {
    let url = sse_node(parts).await;
    let h = Harness::start(&[]).await;
    let (s, _) = h
        .admin(Method::POST, "/api/nodes", Some(json!({"base_url": url})))
        .await;
    assert_eq!(s, 201);
    let (s, bytes) = h.chat_stream(&chat_body("g", "hello there", true)).await;
    assert_eq!(s, 200);
    (h, bytes)
}

#[tokio::test]
async fn a_node_that_sends_garbage_sse_is_passed_through_and_estimated() {
    let parts: &'static [&'static [u8]] = &[b"data: {broken json\n\n\x00\xff\xfe not sse at all\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":42}}]}\n\ndata: [DONE]\n\n"];
    let (h, bytes) = stream_from(parts).await;
    assert_eq!(
        bytes,
        parts.concat(),
        "bytes pass unchanged (the router's include_usage edit finds nothing to remove)"
    );
    let r = only_record(&h).await;
    assert_eq!(r["status"], "success");
    assert_tokens(&r, tokens("hello there"), 0, "estimated");
}

#[tokio::test]
async fn a_megabyte_of_whitespace_is_estimated_off_the_runtime_without_panic() {
    let a = mock_with("alpha", &["m"], |c| c.usage = false).await;
    let h = Harness::start(&[&a]).await;
    let prompt = " ".repeat(1024 * 1024);
    let (s, _) = h.chat("m", &prompt).await;
    assert_eq!(s, 200);
    let r = only_record(&h).await;
    assert_tokens(&r, tokens(&prompt), tokens(&mock_text("alpha", 5)), "estimated");
    assert!(u(&r["input_tokens"]) > 0);
    // The router still answers at once afterwards.
    assert_eq!(h.chat("m", "x").await.0, 200);
}

#[tokio::test]
async fn bytes_after_the_terminal_event_follow_it_in_order() {
    // Separate chunks, so that the router sees the end and what follows as frames of
    // their own.
    let parts: &'static [&'static [u8]] = &[
        b"data: {\"choices\":[{\"delta\":{\"content\":\"one two\"}}]}\n\n",
        b"data: [DONE]\n\n",
        b": after the end\n\n",
        b"data: {\"late\":1}\n\n",
    ];
    let (h, bytes) = stream_from(parts).await;
    assert_eq!(bytes, parts.concat(), "every byte, in the node's order");
    let r = only_record(&h).await;
    assert_eq!(r["status"], "success");
    assert_tokens(&r, tokens("hello there"), tokens("one two"), "estimated");
}
