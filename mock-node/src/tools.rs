//! Tool calls of the mock node: a chat request with `tools` gets a call of the first
//! tool (plain or streamed in pieces, as servers stream arguments), unless its last
//! message is a tool result, which gets the usual text answer.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::{usage_json, Call, MockConfig};

/// The tool a chat request with `tools` gets a call of: the first one, unless the
/// conversation's last message is already a tool result.
pub(crate) fn tool_to_call(request: &Value) -> Option<String> {
    let tools = request.get("tools")?.as_array()?;
    let last_role = request
        .pointer("/messages")
        .and_then(Value::as_array)?
        .last()?
        .get("role");
    if last_role.and_then(Value::as_str) == Some("tool") {
        return None;
    }
    tools.first()?.pointer("/function/name")?.as_str().map(str::to_string)
}

/// A call of `tool` with `{"q": <node name>}`, counted as `chunks` output tokens.
pub(crate) fn tool_call_answer(cfg: &MockConfig, call: &Call, tool: &str) -> Response {
    let args = json!({"q": cfg.name}).to_string();
    let n = cfg.chunks as u64;
    let usage = cfg.usage.then(|| usage_json(call.prompt_tokens, n));
    if !call.stream {
        let mut out = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": call.model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_mock", "type": "function", "function": {"name": tool, "arguments": args}}]}}]});
        if let Some(u) = usage {
            out["usage"] = u;
        }
        return Json(out).into_response();
    }
    let chunk = |choices: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": call.model,
            "choices": choices})
    };
    let (head, tail) = args.split_at(args.len() / 2);
    let mut events = vec![
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_mock",
            "type": "function", "function": {"name": tool, "arguments": ""}}]}, "finish_reason": null}]),
        ),
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": head}}]}, "finish_reason": null}]),
        ),
        chunk(
            json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": tail}}]}, "finish_reason": null}]),
        ),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
    ];
    if let (Some(u), true) = (usage, call.include_usage) {
        let mut last = chunk(json!([]));
        last["usage"] = u;
        events.push(last);
    }
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from(body))
        .unwrap()
}
