//! A chat completions stream turned into Anthropic's Messages events, as it arrives:
//! `message_start`, then per content block `content_block_start`, its deltas
//! (`text_delta`, `input_json_delta` for tool calls) and `content_block_stop`, then
//! `message_delta` (stop reason and usage) and `message_stop` at the node's
//! `[DONE]` (or at the end of a stream that gave a finish reason without it).
//!
//! It sits after the stream tap, which reads the node's own chat chunks for the
//! record; this only rewrites what the client receives.

use bytes::{BufMut, Bytes, BytesMut};
use common::protocol::TokenUsage;
use serde_json::{json, Value};

use super::translate::stop_reason;
use crate::token::sse::SseParser;
use crate::token::{count_tokens, usage_from_json};

/// The content block being streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// A tool call, by its `index` in the chat chunks.
    Tool(u64),
}

#[derive(Debug)]
pub struct ChatToMessages {
    parser: SseParser,
    model: String,
    started: bool,
    ended: bool,
    open: Option<(usize, Open)>,
    next_index: usize,
    stop_reason: Option<&'static str>,
    usage: Option<TokenUsage>,
    /// Generated text, to tell the client an estimate when the node reports no usage.
    generated: String,
}

impl ChatToMessages {
    pub fn new(model: &str) -> Self {
        ChatToMessages {
            parser: SseParser::new(),
            model: model.to_string(),
            started: false,
            ended: false,
            open: None,
            next_index: 0,
            stop_reason: None,
            usage: None,
            generated: String::new(),
        }
    }

    /// Translates a piece of the node's stream; returns the events it completes.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        for e in self.parser.push(chunk) {
            if let Some(data) = e.data.as_deref() {
                self.on_data(data, &mut out);
            }
        }
        out.freeze()
    }

    /// The node's stream ended: ends the message if the node finished it without
    /// `[DONE]`.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if let Some(e) = self.parser.finish() {
            if let Some(data) = e.data.as_deref() {
                self.on_data(data, &mut out);
            }
        }
        if self.stop_reason.is_some() {
            self.end(&mut out);
        }
        out.freeze()
    }

    /// The message never ended: the node stopped before finishing it.
    pub fn incomplete(&self) -> bool {
        !self.ended
    }

    fn on_data(&mut self, data: &str, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if data.trim() == "[DONE]" {
            self.end(out);
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(err) = v.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| err.to_string(), str::to_string);
            event(
                out,
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            );
            return;
        }
        self.start(&v, out);
        if let Some(u) = usage_from_json(&v) {
            self.usage = Some(u);
        }
        let Some(choice) = v.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta");
        if let Some(text) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
            if !text.is_empty() {
                self.open_block(Open::Text, json!({"type": "text", "text": ""}), out);
                self.delta(json!({"type": "text_delta", "text": text}), out);
                self.generated.push_str(text);
            }
        }
        for call in delta
            .and_then(|d| d.get("tool_calls"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            if self.open.map(|(_, o)| o) != Some(Open::Tool(index)) {
                let block = json!({"type": "tool_use", "id": call.get("id").cloned().unwrap_or(Value::Null),
                    "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": {}});
                self.open_block(Open::Tool(index), block, out);
            }
            if let Some(args) = call.pointer("/function/arguments").and_then(Value::as_str) {
                if !args.is_empty() {
                    self.delta(json!({"type": "input_json_delta", "partial_json": args}), out);
                    self.generated.push_str(args);
                }
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(Some(reason)));
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = chunk.get("id").and_then(Value::as_str).unwrap_or("router");
        let message = json!({"id": format!("msg_{id}"), "type": "message", "role": "assistant",
            "model": self.model, "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0}});
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
    }

    fn open_block(&mut self, kind: Open, block: Value, out: &mut BytesMut) {
        if self.open.map(|(_, o)| o) == Some(kind) {
            return;
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, kind));
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
    }

    fn delta(&mut self, delta: Value, out: &mut BytesMut) {
        let index = self.open.map_or(0, |(i, _)| i);
        event(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        self.start(&Value::Null, out);
        self.close_block(out);
        self.ended = true;
        let usage = match self.usage {
            Some(u) => json!({"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}),
            None => json!({"output_tokens": count_tokens(&self.generated)}),
        };
        let stop = self.stop_reason.unwrap_or("end_turn");
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }
}

fn event(out: &mut BytesMut, name: &str, data: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.to_string().as_bytes());
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(bytes: &[u8]) -> Vec<Value> {
        let mut p = SseParser::new();
        p.push(bytes)
            .into_iter()
            .filter_map(|e| e.data.and_then(|d| serde_json::from_str(&d).ok()))
            .collect()
    }

    #[test]
    fn text_and_usage_become_message_events() {
        let mut t = ChatToMessages::new("m");
        let mut out = Vec::new();
        for chunk in [
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"id\":\"c\",\"choi",
            "ces\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n",
            "data: [DONE]\n\n",
        ] {
            out.extend_from_slice(&t.push(chunk.as_bytes()));
        }
        out.extend_from_slice(&t.finish());
        let ev = events(&out);
        let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[2]["delta"], json!({"type": "text_delta", "text": "Hel"}));
        assert_eq!(
            ev[5],
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 7, "output_tokens": 2}})
        );
        assert!(!t.incomplete());
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        let mut t = ChatToMessages::new("m");
        let out = t.push(concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"1}\"}}]},\"finish_reason\":\"tool_calls\"}]}\n\n",
        ).as_bytes());
        let ev = events(&out);
        assert_eq!(
            ev[1]["content_block"],
            json!({"type": "tool_use", "id": "call_1", "name": "f", "input": {}})
        );
        assert_eq!(
            ev[2]["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"a\":"})
        );
        // No [DONE]: the end of the stream ends the message, with an estimated count.
        let end = events(&t.finish());
        assert_eq!(end[1]["delta"]["stop_reason"], "tool_use");
        assert_eq!(end[1]["usage"]["output_tokens"], count_tokens("{\"a\":1}"));
        assert_eq!(end[2]["type"], "message_stop");
    }

    #[test]
    fn a_stream_that_stops_midway_is_incomplete() {
        let mut t = ChatToMessages::new("m");
        t.push(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert!(t.finish().is_empty());
        assert!(t.incomplete());
    }
}
