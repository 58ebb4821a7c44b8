//! Request and response bodies kept with the record (`--store-bodies`, DESIGN §6):
//! never by default; when asked, the client's body as it sent it and the node's answer
//! as the node sent it, cut at `--stored-body-max-bytes`, in one record's detail and in
//! the store, never in a history page.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// The record `id` as the store reads it, beside the API.
async fn stored(h: &Harness, id: i64) -> common::protocol::RequestResponseRecord {
    let store = llm_router::store::Store::open(&h.database_url()).await.unwrap();
    let record = store.history_record(id).await.unwrap().unwrap();
    store.close().await;
    record
}

/// The newest record's detail.
async fn newest_detail(h: &Harness, n: usize) -> Value {
    let records = h.wait_history(n).await;
    assert_eq!(records.len(), n);
    // A page of the history never carries bodies.
    for r in &records {
        assert!(
            r.get("request_body").is_none() && r.get("response_body").is_none(),
            "{r}"
        );
    }
    h.get(&format!("/api/dashboard/request-history/{}", records[0]["id"]))
        .await
}

fn body(text: &str, truncated: bool) -> Value {
    json!({"text": text, "truncated": truncated})
}

#[tokio::test]
async fn no_body_is_stored_unless_the_operator_asks() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start(&[&a]).await;
    assert_eq!(h.chat("m", "keep nothing").await.0, 200);
    let detail = newest_detail(&h, 1).await;
    assert!(detail.get("request_body").is_none(), "{detail}");
    assert!(detail.get("response_body").is_none(), "{detail}");
    let record = stored(&h, detail["id"].as_i64().unwrap()).await;
    assert_eq!((record.request_body, record.response_body), (None, None));
}

#[tokio::test]
async fn plain_and_streamed_exchanges_are_stored_byte_for_byte() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.store_bodies = true).await;

    // Plain: the request as the client wrote it (spacing and all), the answer as the
    // node sent it, which is also what the client received.
    let raw = r#"{ "model": "m",  "messages": [{"role": "user", "content": "héllo €"}] }"#;
    let (status, answer) = h.post_raw("/v1/chat/completions", raw).await;
    assert_eq!(status, 200);
    let detail = newest_detail(&h, 1).await;
    assert_eq!(detail["request_body"], body(raw, false));
    assert_eq!(
        detail["response_body"],
        body(std::str::from_utf8(&answer).unwrap(), false)
    );
    let record = stored(&h, detail["id"].as_i64().unwrap()).await;
    assert_eq!(record.request_body.unwrap().text, raw);
    assert_eq!(record.response_body.unwrap().text.as_bytes(), &answer[..]);

    // Streamed, with the client's own include_usage: the router hides nothing, so the
    // stored answer is exactly the bytes the client read, usage chunk and [DONE] included.
    let request = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream it"}]});
    let (status, streamed) = h.chat_stream(&request).await;
    assert_eq!(status, 200);
    let detail = newest_detail(&h, 2).await;
    assert_eq!(detail["request_body"], body(&request.to_string(), false));
    let text = std::str::from_utf8(&streamed).unwrap();
    assert!(
        text.contains("\"usage\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(detail["response_body"], body(text, false));

    // Without it, the stored answer is the node's: it holds the usage chunk the router
    // asked for and kept from the client, the figure the record counts.
    let (_, streamed) = h.chat_stream(&chat_body("m", "count me", true)).await;
    let client = String::from_utf8(streamed).unwrap();
    assert!(!client.contains("\"usage\""), "{client}");
    let detail = newest_detail(&h, 3).await;
    let node = detail["response_body"]["text"].as_str().unwrap();
    assert!(node.contains("\"usage\""), "{node}");
    assert!(
        node.contains(&format!("\"completion_tokens\":{}", detail["output_tokens"])),
        "{node} / {detail}"
    );
}

#[tokio::test]
async fn bodies_are_cut_at_the_limit_on_a_character_boundary_and_say_so() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| {
        args.store_bodies = true;
        args.stored_body_max_bytes = 40;
    })
    .await;
    // The limit falls inside "€" (bytes 39 to 41): the cut leaves it out.
    let raw = r#"{"model": "m", "messages": [], "x": "aa€ tail"}"#;
    assert_eq!(&raw.as_bytes()[39..42], "€".as_bytes());
    let (status, answer) = h.post_raw("/v1/chat/completions", raw).await;
    assert_eq!(status, 200);
    let detail = newest_detail(&h, 1).await;
    assert_eq!(detail["request_body"], body(&raw[..39], true));
    let answer = std::str::from_utf8(&answer).unwrap();
    assert_eq!(detail["response_body"], body(&answer[..40], true));

    // A stream is cut the same way, across the node's chunks.
    let (_, streamed) = h.chat_stream(&chat_body("m", "a stream", true)).await;
    assert!(streamed.len() > 40);
    let detail = newest_detail(&h, 2).await;
    let text = detail["response_body"]["text"].as_str().unwrap();
    assert_eq!(
        (text.len(), detail["response_body"]["truncated"].as_bool()),
        (40, Some(true))
    );
    assert_eq!(text.as_bytes(), &streamed[..40]);
}

#[tokio::test]
async fn a_refused_body_is_stored_without_an_answer() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.store_bodies = true).await;
    let (status, _) = h.post_raw("/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(status, 400);
    let detail = newest_detail(&h, 1).await;
    assert_eq!(detail["status"], "error");
    assert_eq!(detail["request_body"], body("{\"model\": ", false));
    assert!(detail.get("response_body").is_none(), "{detail}");
}

#[tokio::test]
async fn a_messages_request_is_stored_as_the_client_sent_it_and_the_answer_as_the_node_did() {
    let a = mock("alpha", &["m"]).await;
    let h = Harness::start_with(&[&a], |args| args.store_bodies = true).await;
    let raw = r#"{"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}"#;
    let (status, answer) = h.post_raw("/v1/messages", raw).await;
    assert_eq!(status, 200);
    let client: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(client["type"], "message");
    let detail = newest_detail(&h, 1).await;
    assert_eq!(detail["request_body"], body(raw, false));
    // The node speaks chat completions: its answer is stored, not the translation.
    let node: Value = serde_json::from_str(detail["response_body"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(node["object"], "chat.completion", "{node}");
    assert_eq!(
        node["usage"]["completion_tokens"], client["usage"]["output_tokens"],
        "{node} / {client}"
    );
}

#[tokio::test]
async fn a_stream_the_client_left_keeps_what_the_node_had_sent() {
    let a = slow_stream_mock("alpha", 40, Duration::from_millis(50)).await;
    let h = Harness::start_with(&[&a], |args| args.store_bodies = true).await;
    let resp = h
        .post("/v1/chat/completions", &chat_body("m", "leave early", true))
        .await;
    let mut s = resp.bytes_stream();
    let mut seen = Vec::new();
    while let Some(c) = s.next().await {
        seen.extend_from_slice(&c.unwrap());
        if String::from_utf8_lossy(&seen).matches("alpha").count() >= 3 {
            break;
        }
    }
    drop(s);
    let detail = newest_detail(&h, 1).await;
    assert_eq!(detail["status"], "cancelled");
    let kept = detail["response_body"]["text"].as_str().unwrap();
    assert!(
        kept.as_bytes().starts_with(&seen),
        "{kept:?} does not start with what the client read"
    );
    assert!(!kept.contains("[DONE]"), "{kept}");
}
