//! The mock node's Anthropic Messages API (`POST /v1/messages`), served when it
//! imitates a server that speaks it (llama.cpp's `llama-server`, vLLM): a message,
//! or its events from `message_start` to `message_stop`, with `usage` counted like
//! the other routes (the prompt's words in, one token per content chunk out).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use serde_json::{json, Value};

use crate::{chunk_text, keep_request, pause, prompt_words, Shared};

pub(crate) async fn messages(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        let e = json!({"type": "error", "error": {"type": "invalid_request_error", "message": "invalid JSON"}});
        return (StatusCode::BAD_REQUEST, Json(e)).into_response();
    };
    keep_request(&s, "/v1/messages", headers, &value);
    let model = value.get("model").and_then(Value::as_str).unwrap_or("").to_string();
    let n = s.config.chunks;
    let name = s.config.name.clone();
    let input = prompt_words(&value);
    let message = |content: Value, stop: Value, output: usize| {
        json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": content,
            "stop_reason": stop, "stop_sequence": null, "usage": {"input_tokens": input, "output_tokens": output}})
    };
    if !value.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let text: String = (0..n).map(|i| chunk_text(&name, i)).collect();
        return Json(message(json!([{"type": "text", "text": text}]), json!("end_turn"), n)).into_response();
    }
    let event = |v: Value| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or(""));
    let mut events = vec![
        event(json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)})),
        event(json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})),
    ];
    for i in 0..n {
        events.push(event(json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": chunk_text(&name, i)}})));
    }
    events.push(event(json!({"type": "content_block_stop", "index": 0})));
    events.push(event(
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
        "usage": {"output_tokens": n}}),
    ));
    events.push(event(json!({"type": "message_stop"})));
    let delay = s.config.chunk_delay;
    let body = stream::unfold(events.into_iter(), move |mut it| async move {
        let e = it.next()?;
        pause(delay).await;
        Some((Ok::<_, std::io::Error>(Bytes::from(e)), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}
