//! Anthropic Messages ↔ OpenAI chat completions, for nodes that only speak the
//! latter. Pure functions on JSON values: no I/O, no accounting.
//!
//! Request: `system` becomes a system message; text, image, `tool_use` and
//! `tool_result` blocks become content, image parts, `tool_calls` and `tool`
//! messages; content that is all text becomes a plain string (some servers reject
//! content-part arrays); `max_tokens`, `stop_sequences`, `temperature`, `top_p`,
//! `top_k`, `tools` and `tool_choice` are mapped. Answer: `choices[0].message`
//! becomes content blocks, `finish_reason` a `stop_reason`, usage
//! `input_tokens` / `output_tokens`.

use common::protocol::TokenUsage;
use serde_json::{json, Map, Value};

/// The chat completions request for a Messages request. With `include_usage`, a
/// stream asks the node for its usage (the router reads it; the client never sees
/// the chat chunks).
pub fn messages_to_chat(req: &Value, include_usage: bool) -> Value {
    let mut out = Map::new();
    let mut messages = Vec::new();
    if let Some(system) = req.get("system") {
        let text = blocks_text(system);
        if !text.is_empty() {
            messages.push(json!({"role": "system", "content": text}));
        }
    }
    for m in req.get("messages").and_then(Value::as_array).into_iter().flatten() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
        match m.get("content") {
            Some(Value::Array(blocks)) if role == "assistant" => messages.push(assistant_message(blocks)),
            Some(Value::Array(blocks)) => user_messages(role, blocks, &mut messages),
            Some(content) => messages.push(json!({"role": role, "content": content})),
            None => messages.push(json!({"role": role, "content": ""})),
        }
    }
    out.insert("model".into(), req.get("model").cloned().unwrap_or(Value::Null));
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("max_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("stop_sequences", "stop"),
    ] {
        if let Some(v) = req.get(from) {
            out.insert(to.into(), v.clone());
        }
    }
    if let Some(user) = req.pointer("/metadata/user_id") {
        out.insert("user".into(), user.clone());
    }
    if let Some(tools) = req.get("tools").and_then(Value::as_array) {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.get("name").cloned().unwrap_or(Value::Null),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = req.get("tool_choice").and_then(tool_choice) {
        out.insert("tool_choice".into(), choice);
    }
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    out.insert("stream".into(), Value::Bool(stream));
    if stream && include_usage {
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(out)
}

/// The text of a string or of the text blocks of an array (joined by newlines).
fn blocks_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An assistant turn: its text and its tool calls.
fn assistant_message(blocks: &[Value]) -> Value {
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.extend(b.get("text").and_then(Value::as_str)),
            Some("tool_use") => calls.push(json!({
                "id": b.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": b.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": b.get("input").map_or_else(|| "{}".to_string(), Value::to_string),
                },
            })),
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": text.join("\n")});
    if !calls.is_empty() {
        if text.is_empty() {
            m["content"] = Value::Null;
        }
        m["tool_calls"] = Value::Array(calls);
    }
    m
}

/// A user turn: its tool results first (each a `tool` message, right after the
/// assistant's calls as chat completions wants), then its text and images.
fn user_messages(role: &str, blocks: &[Value], out: &mut Vec<Value>) {
    let mut parts = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("tool_result") => {
                let mut text = b.get("content").map(blocks_text).unwrap_or_default();
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(json!({"role": "tool",
                    "tool_call_id": b.get("tool_use_id").cloned().unwrap_or(Value::Null), "content": text}));
            }
            Some("text") => parts.push(json!({"type": "text", "text": b.get("text").cloned().unwrap_or_default()})),
            Some("image") => {
                if let Some(url) = image_url(b.get("source")) {
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
            }
            _ => {}
        }
    }
    if parts.is_empty() {
        return;
    }
    let all_text = parts.iter().all(|p| p["type"] == "text");
    let content = if all_text {
        Value::String(
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    } else {
        Value::Array(parts)
    };
    out.push(json!({"role": role, "content": content}));
}

/// An image source as a URL: a `data:` URL for base64 data, else its `url`.
fn image_url(source: Option<&Value>) -> Option<String> {
    let s = source?;
    match s.get("type").and_then(Value::as_str) {
        Some("base64") => Some(format!(
            "data:{};base64,{}",
            s.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
            s.get("data").and_then(Value::as_str)?
        )),
        Some("url") => s.get("url").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn tool_choice(c: &Value) -> Option<Value> {
    match c.get("type").and_then(Value::as_str)? {
        "auto" => Some(json!("auto")),
        "any" => Some(json!("required")),
        "none" => Some(json!("none")),
        "tool" => Some(json!({"type": "function", "function": {"name": c.get("name")?}})),
        _ => None,
    }
}

/// Anthropic's `stop_reason` for a chat `finish_reason`.
pub fn stop_reason(finish_reason: Option<&str>) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("tool_calls") | Some("function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// The Messages answer for a chat completion, with the request's figures.
pub fn chat_to_message(resp: &Value, model: &str, usage: TokenUsage) -> Value {
    let choice = resp.pointer("/choices/0");
    let message = choice.and_then(|c| c.get("message"));
    let mut content = Vec::new();
    if let Some(text) = message.and_then(|m| m.get("content")).map(blocks_text) {
        if !text.is_empty() {
            content.push(json!({"type": "text", "text": text}));
        }
    }
    for call in message
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        content.push(tool_use_block(call));
    }
    let finish = choice.and_then(|c| c.get("finish_reason")).and_then(Value::as_str);
    let id = resp.get("id").and_then(Value::as_str).unwrap_or("router");
    json!({
        "id": format!("msg_{id}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
    })
}

/// A `tool_use` block for a chat tool call; arguments that are not a JSON object
/// are kept as a string under `input`.
pub fn tool_use_block(call: &Value) -> Value {
    let args = call.pointer("/function/arguments");
    let input = match args {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or_else(|_| json!({"input": s})),
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
        "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": input})
}

/// The message of a node's OpenAI-shaped error, or its raw text.
pub fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message")
                .and_then(Value::as_str)
                .or(e.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_text_and_limit_become_plain_chat_fields() {
        let req = json!({"model": "m", "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}],
            "stop_sequences": ["END"], "temperature": 0.2, "stream": true,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hi"},
                {"role": "user", "content": "Bye"}]});
        let chat = messages_to_chat(&req, true);
        assert_eq!(
            chat,
            json!({"model": "m", "max_tokens": 64, "stop": ["END"], "temperature": 0.2, "stream": true,
                "stream_options": {"include_usage": true},
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello\nthere"},
                    {"role": "assistant", "content": "Hi"},
                    {"role": "user", "content": "Bye"}]})
        );
    }

    #[test]
    fn images_become_image_parts() {
        let req = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAAA"}},
            {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
            {"type": "text", "text": "What is this?"}]}]});
        let chat = messages_to_chat(&req, false);
        assert_eq!(
            chat["messages"][0]["content"],
            json!([{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                {"type": "text", "text": "What is this?"}])
        );
        assert!(chat.get("stream_options").is_none());
    }

    #[test]
    fn tools_calls_and_results_map_both_ways() {
        let req = json!({"model": "m", "max_tokens": 8,
            "tools": [{"name": "weather", "description": "Weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "weather"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                    "content": [{"type": "text", "text": "sunny"}]}, {"type": "text", "text": "Thanks"}]}]});
        let chat = messages_to_chat(&req, false);
        assert_eq!(
            chat["tools"],
            json!([{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            chat["tool_choice"],
            json!({"type": "function", "function": {"name": "weather"}})
        );
        assert_eq!(
            chat["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "Thanks"}])
        );
        let resp = json!({"id": "c1", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": null, "tool_calls": [{"id": "call_2", "type": "function",
                "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}}]}}]});
        let msg = chat_to_message(&resp, "m", TokenUsage::new(10, 3, None));
        assert_eq!(
            msg,
            json!({"id": "msg_c1", "type": "message", "role": "assistant", "model": "m",
                "content": [{"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}}],
                "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 10, "output_tokens": 3}})
        );
    }

    #[test]
    fn finish_reasons_map_to_stop_reasons() {
        assert_eq!(stop_reason(Some("stop")), "end_turn");
        assert_eq!(stop_reason(Some("length")), "max_tokens");
        assert_eq!(stop_reason(Some("tool_calls")), "tool_use");
        assert_eq!(stop_reason(None), "end_turn");
    }

    #[test]
    fn node_errors_keep_their_message() {
        assert_eq!(error_message(br#"{"error": {"message": "bad"}}"#), "bad");
        assert_eq!(error_message(br#"{"error": "worse"}"#), "worse");
        assert_eq!(error_message(b"plain"), "plain");
    }
}
