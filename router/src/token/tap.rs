//! The stream tap: watches a streamed response go by and accounts for its tokens.
//!
//! Every chunk from the node passes through [`StreamTap::on_chunk`], which frames it
//! into SSE events (or NDJSON lines for Ollama), accumulates the generated text and any
//! usage the node reports (T-11), and tells the proxy which bytes to forward now and
//! which to hold until the record is committed (the terminal event: `data: [DONE]`,
//! the Responses API's `response.completed`, Anthropic's `message_stop`, Ollama's
//! `"done": true` object). Finalizing (T-12) takes the reported usage if a chunk
//! carried one, else the estimate of the accumulated text.
//!
//! Usage is read in every protocol's fields: OpenAI's `usage`, the Responses API's
//! `response.usage`, Anthropic's `message_start` / `message_delta` usage, Ollama's
//! `prompt_eval_count` / `eval_count`. Ollama and Anthropic streams end with a final
//! event by definition: one that ends without it is incomplete (an error).
//!
//! Bytes are forwarded unchanged, except, when the router itself asked the node for
//! usage, the usage-only chunk and the `"usage":null` members (`include_usage`).

use std::sync::LazyLock;

use bytes::{Bytes, BytesMut};
use common::protocol::TokenUsage;
use serde_json::Value;

use super::include_usage::{is_usage_only_chunk, strip_usage_null};
use super::ndjson::NdjsonParser;
use super::sse::{SseEvent, SseParser};
use super::{usage_from_json, usage_object};

mod ollama;

/// Generated text kept for estimation; beyond it the text is not accumulated.
const MAX_GENERATED_BYTES: usize = 8 * 1024 * 1024;
/// Undecoded delta chunks kept before they are decoded anyway (bounds the memory a
/// long stream holds).
const MAX_DEFERRED_BYTES: usize = 256 * 1024;

/// What to send to the client for one upstream chunk.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TapOutput {
    /// Forward at once.
    pub now: Bytes,
    /// The terminal event and what follows it: forward once the record is committed.
    pub held: Option<Bytes>,
}

/// How a stream is framed and whether it must end with a terminal event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TapMode {
    /// OpenAI's SSE (chat, completions, Responses): `[DONE]` may be missing.
    #[default]
    OpenAi,
    /// Anthropic's SSE: must end with `message_stop`.
    Anthropic,
    /// Ollama's NDJSON: must end with a `"done": true` object.
    Ollama,
}

#[derive(Debug, Default)]
pub struct StreamTap {
    mode: TapMode,
    parser: SseParser,
    lines: NdjsonParser,
    /// The router added `include_usage`: hide its effects from the client.
    hide_injected_usage: bool,
    offset: u64,
    generated: String,
    /// Delta chunks not decoded yet: their text is only needed when no usage
    /// arrives, and decoding JSON was the tap's main cost.
    deferred: Vec<String>,
    deferred_bytes: usize,
    usage: Option<TokenUsage>,
    error: Option<String>,
    terminal_seen: bool,
}

/// What one event means for the client's bytes.
enum Disposition {
    Forward,
    Drop,
    Replace(Bytes),
}

impl StreamTap {
    pub fn new(hide_injected_usage: bool) -> Self {
        StreamTap {
            hide_injected_usage,
            ..Default::default()
        }
    }

    /// A pass-through tap for another protocol's stream.
    pub fn for_mode(mode: TapMode) -> Self {
        StreamTap {
            mode,
            ..Default::default()
        }
    }

    pub fn on_chunk(&mut self, chunk: Bytes) -> TapOutput {
        let chunk_start = self.offset;
        self.offset += chunk.len() as u64;
        if self.mode == TapMode::Ollama {
            return self.on_ndjson_chunk(chunk, chunk_start);
        }
        let events = self.parser.push(&chunk);
        if !self.hide_injected_usage {
            // Pass-through: the chunk goes out as it came, split only before a
            // terminal event (which may have started in an earlier chunk).
            let mut split = None;
            for e in &events {
                let (_, terminal) = self.observe(e);
                if terminal && split.is_none() {
                    split = Some(e.start.saturating_sub(chunk_start) as usize);
                }
            }
            return match split {
                Some(at) => TapOutput {
                    now: chunk.slice(..at),
                    held: Some(chunk.slice(at..)),
                },
                None => TapOutput { now: chunk, held: None },
            };
        }
        let mut now = BytesMut::new();
        let mut held: Option<BytesMut> = None;
        for e in &events {
            let (disposition, terminal) = self.observe(e);
            if terminal && held.is_none() {
                held = Some(BytesMut::new());
            }
            let out = held.as_mut().unwrap_or(&mut now);
            match disposition {
                Disposition::Forward => out.extend_from_slice(&e.raw),
                Disposition::Replace(b) => out.extend_from_slice(&b),
                Disposition::Drop => {}
            }
        }
        TapOutput {
            now: now.freeze(),
            held: held.map(BytesMut::freeze),
        }
    }

    /// The stream ended: returns bytes still held by the framer (an unterminated last
    /// event), to forward as they are.
    pub fn on_end(&mut self) -> Bytes {
        if self.mode == TapMode::Ollama {
            if let Some(line) = self.lines.finish() {
                self.observe_line(line.json());
            }
            return Bytes::new();
        }
        match self.parser.finish() {
            Some(e) => {
                self.observe(&e);
                if self.hide_injected_usage {
                    e.raw
                } else {
                    Bytes::new()
                }
            }
            None => Bytes::new(),
        }
    }

    pub fn reported_usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// An error the node reported inside the stream.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// `[DONE]` or a final Responses API event was seen: the stream ran to its end.
    pub fn terminal_seen(&self) -> bool {
        self.terminal_seen
    }

    /// The stream ended without the final event its protocol always sends.
    pub fn incomplete(&self) -> bool {
        self.mode != TapMode::OpenAi && !self.terminal_seen
    }

    /// The text generated so far, for estimation when the node reported no usage
    /// (once it has, the text is not decoded and this may be partial).
    pub fn take_generated(&mut self) -> String {
        if self.usage.is_none() {
            self.decode_deferred();
        }
        std::mem::take(&mut self.generated)
    }

    pub(super) fn defer(&mut self, data: &str) {
        self.deferred_bytes += data.len();
        self.deferred.push(data.to_string());
        if self.deferred_bytes > MAX_DEFERRED_BYTES {
            self.decode_deferred();
        }
    }

    fn decode_deferred(&mut self) {
        self.deferred_bytes = 0;
        for data in std::mem::take(&mut self.deferred) {
            if let Ok(v) = serde_json::from_str::<Value>(&data) {
                self.collect_text(&v);
            }
        }
    }

    fn observe(&mut self, e: &SseEvent) -> (Disposition, bool) {
        let Some(data) = e.data.as_deref() else {
            return (Disposition::Forward, false);
        };
        if data.trim() == "[DONE]" {
            self.terminal_seen = true;
            return (Disposition::Forward, true);
        }
        if is_plain_delta(data) {
            self.defer(data);
            return (Disposition::Forward, false);
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return (Disposition::Forward, false);
        };
        if let Some(kind) = v.get("type").and_then(Value::as_str) {
            return (Disposition::Forward, self.observe_responses_event(kind, &v));
        }
        if let Some(err) = v.get("error") {
            self.error = Some(error_message(err));
        }
        self.collect_text(&v);
        if let Some(u) = usage_from_json(&v) {
            self.usage = Some(u);
        }
        if !self.hide_injected_usage {
            return (Disposition::Forward, false);
        }
        if is_usage_only_chunk(&v) {
            return (Disposition::Drop, false);
        }
        if v.get("usage").is_some_and(Value::is_null) {
            if let Some(edited) = strip_usage_null(&e.raw) {
                return (Disposition::Replace(edited), false);
            }
        }
        (Disposition::Forward, false)
    }

    /// The generated text of a chat or completions chunk, or of an Ollama object.
    pub(super) fn collect_text(&mut self, v: &Value) {
        if let Some(m) = v.get("message") {
            for k in ["content", "thinking"] {
                if let Some(s) = m.get(k).and_then(Value::as_str) {
                    self.push_generated(s);
                }
            }
            for call in m.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                if let Some(a) = call.pointer("/function/arguments").filter(|a| !a.is_null()) {
                    self.push_generated(&a.to_string());
                }
            }
        }
        for k in ["response", "thinking"] {
            if let Some(s) = v.get(k).and_then(Value::as_str) {
                self.push_generated(s);
            }
        }
        self.collect_choices_text(v);
    }

    fn collect_choices_text(&mut self, v: &Value) {
        for c in v.get("choices").and_then(Value::as_array).into_iter().flatten() {
            if let Some(d) = c.get("delta") {
                for k in ["content", "reasoning_content", "reasoning", "refusal"] {
                    if let Some(s) = d.get(k).and_then(Value::as_str) {
                        self.push_generated(s);
                    }
                }
                for call in d.get("tool_calls").and_then(Value::as_array).into_iter().flatten() {
                    if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
                        self.push_generated(a);
                    }
                }
            }
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                self.push_generated(t);
            }
        }
    }

    /// Responses API and Anthropic events; returns whether the event ends the response.
    fn observe_responses_event(&mut self, kind: &str, v: &Value) -> bool {
        match kind {
            "message_start" => {
                self.usage = v.pointer("/message/usage").and_then(usage_object);
                return false;
            }
            "content_block_delta" => {
                let delta = v.get("delta");
                for k in ["text", "partial_json", "thinking"] {
                    if let Some(s) = delta.and_then(|d| d.get(k)).and_then(Value::as_str) {
                        self.push_generated(s);
                    }
                }
                return false;
            }
            "content_block_start" => {
                if let Some(s) = v.pointer("/content_block/text").and_then(Value::as_str) {
                    self.push_generated(s);
                }
                return false;
            }
            "message_delta" => {
                // The final counts: output always, input when the server repeats it.
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    let count = |k: &str| u.get(k).and_then(Value::as_u64);
                    let input = count("input_tokens").or(self.usage.map(|u| u.input_tokens));
                    let output = count("output_tokens").or(self.usage.map(|u| u.output_tokens));
                    if input.is_some() || output.is_some() {
                        self.usage = Some(TokenUsage::new(input.unwrap_or(0), output.unwrap_or(0), None));
                    }
                }
                return false;
            }
            "message_stop" => {
                self.terminal_seen = true;
                return true;
            }
            _ => {}
        }
        if kind.ends_with(".delta") {
            if let Some(d) = v.get("delta").and_then(Value::as_str) {
                self.push_generated(d);
            }
            return false;
        }
        match kind {
            "response.completed" | "response.incomplete" | "response.failed" => {
                if let Some(u) = v.get("response").and_then(usage_from_json) {
                    self.usage = Some(u);
                }
                if kind == "response.failed" {
                    let err = v.pointer("/response/error").cloned().unwrap_or(Value::Null);
                    self.error = Some(error_message(&err));
                }
                self.terminal_seen = true;
                true
            }
            "error" => {
                // Anthropic nests it: `{"type": "error", "error": {"type", "message"}}`.
                self.error = Some(error_message(v.get("error").filter(|e| e.is_object()).unwrap_or(v)));
                false
            }
            _ => false,
        }
    }

    fn push_generated(&mut self, s: &str) {
        // Keep the text in stream order: earlier undecoded chunks first.
        if !self.deferred.is_empty() {
            self.decode_deferred();
        }
        if self.generated.len() + s.len() <= MAX_GENERATED_BYTES {
            self.generated.push_str(s);
        }
    }
}

/// A chunk that can only carry generated text: no usage, no error, not a Responses
/// API event (a key is always spelled out with its quotes in the raw JSON; a quote
/// inside a string value is escaped). Anything else is decoded at once.
fn is_plain_delta(data: &str) -> bool {
    static KEYS: LazyLock<[memchr::memmem::Finder<'static>; 3]> = LazyLock::new(|| {
        [
            memchr::memmem::Finder::new("\"usage\""),
            memchr::memmem::Finder::new("\"type\""),
            memchr::memmem::Finder::new("\"error\""),
        ]
    });
    KEYS.iter().all(|k| k.find(data.as_bytes()).is_none())
}

/// The message of an error: `{"message": …}`, Ollama's plain string, or the JSON.
pub(super) fn error_message(err: &Value) -> String {
    if let Some(s) = err.as_str() {
        return s.to_string();
    }
    err.get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks`; returns what the client gets before and after the commit point.
    fn run(tap: &mut StreamTap, chunks: &[&str]) -> (String, String) {
        let (mut now, mut held) = (Vec::new(), Vec::new());
        let mut after_commit = false;
        for c in chunks {
            let out = tap.on_chunk(Bytes::copy_from_slice(c.as_bytes()));
            if after_commit { &mut held } else { &mut now }.extend_from_slice(&out.now);
            if let Some(h) = out.held {
                after_commit = true;
                held.extend_from_slice(&h);
            }
        }
        let tail = tap.on_end();
        if after_commit { &mut held } else { &mut now }.extend_from_slice(&tail);
        (String::from_utf8(now).unwrap(), String::from_utf8(held).unwrap())
    }

    #[test]
    fn accumulates_deltas_and_holds_done() {
        let mut tap = StreamTap::new(false);
        let (now, held) = run(
            &mut tap,
            &["data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n", "\ndata: [DO", "NE]\n\n"],
        );
        assert_eq!(tap.take_generated(), "Hello");
        assert!(tap.terminal_seen());
        assert_eq!(tap.reported_usage(), None);
        assert!(now.ends_with("data: [DO"));
        assert_eq!(held, "NE]\n\n");
    }

    #[test]
    fn hides_injected_usage_chunk_and_usage_null() {
        let mut tap = StreamTap::new(true);
        let (now, held) = run(
            &mut tap,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n",
            ],
        );
        assert_eq!(now, "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n");
        assert_eq!(held, "data: [DONE]\n\n");
        assert_eq!(tap.reported_usage(), Some(TokenUsage::new(3, 1, Some(4))));
    }

    #[test]
    fn responses_api_completed_event_carries_usage() {
        let mut tap = StreamTap::new(false);
        run(
            &mut tap,
            &["event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"x\"}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":2,\"output_tokens\":1,\"total_tokens\":3}}}\n\n"],
        );
        assert_eq!(tap.reported_usage(), Some(TokenUsage::new(2, 1, Some(3))));
        assert_eq!(tap.take_generated(), "x");
        assert!(tap.terminal_seen());
    }

    #[test]
    fn text_keeps_stream_order_when_decoding_is_deferred() {
        let mut tap = StreamTap::new(false);
        run(
            &mut tap,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"one \"}}]}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"two \"}}],\"usage\":null}\n\n",
                "data: {\"choices\":[{\"delta\":{\"content\":\"three \\\"usage\\\"\"}}]}\n\n",
                "data: [DONE]\n\n",
            ],
        );
        assert_eq!(tap.reported_usage(), None);
        assert_eq!(tap.take_generated(), "one two three \"usage\"");
    }

    #[test]
    fn a_long_stream_without_usage_is_decoded_as_it_goes() {
        let mut tap = StreamTap::new(false);
        let chunk = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{}\"}}}}]}}\n\n",
            "x".repeat(1000)
        );
        for _ in 0..1000 {
            let _ = tap.on_chunk(Bytes::from(chunk.clone()));
            assert!(tap.deferred_bytes <= MAX_DEFERRED_BYTES);
        }
        assert_eq!(tap.take_generated().len(), 1_000_000);
    }

    #[test]
    fn garbage_is_forwarded_and_counts_nothing() {
        let mut tap = StreamTap::new(true);
        let (now, held) = run(&mut tap, &["data: {not json\n\n", "\u{0}\u{1}garbage"]);
        assert_eq!(now, "data: {not json\n\n\u{0}\u{1}garbage");
        assert_eq!(held, "");
        assert_eq!(tap.reported_usage(), None);
        assert_eq!(tap.take_generated(), "");
    }

    #[test]
    fn ollama_ndjson_passes_through_and_its_final_object_is_held_and_counted() {
        let mut tap = StreamTap::for_mode(TapMode::Ollama);
        let (now, held) = run(
            &mut tap,
            &[
                "{\"message\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"done\":false}\n{\"message\":{\"con",
                "tent\":\"lo\"},\"done\":false}\n{\"message\":{\"content\":\"\"},\"done\":true,",
                "\"prompt_eval_count\":4,\"eval_count\":2}\n",
            ],
        );
        // The final object is known once whole: what came of it before stays sent.
        assert!(now.ends_with("\"done\":true,"), "{now}");
        assert_eq!(held, "\"prompt_eval_count\":4,\"eval_count\":2}\n");
        assert_eq!(tap.reported_usage(), Some(TokenUsage::new(4, 2, None)));
        assert!(!tap.incomplete());
        assert_eq!(tap.error(), None);
    }

    #[test]
    fn ollama_without_counts_is_estimated_and_garbage_is_an_error() {
        let mut tap = StreamTap::for_mode(TapMode::Ollama);
        run(
            &mut tap,
            &["{\"response\":\"a \",\"done\":false}\n{\"response\":\"b\",\"done\":true}\n"],
        );
        assert_eq!(tap.reported_usage(), None);
        assert_eq!(tap.take_generated(), "a b");
        let mut garbage = StreamTap::for_mode(TapMode::Ollama);
        let (now, _) = run(&mut garbage, &["not json\n{\"done\":"]);
        assert_eq!(now, "not json\n{\"done\":");
        assert!(garbage.error().is_some());
        assert!(garbage.incomplete());
    }

    #[test]
    fn anthropic_events_carry_usage_and_message_stop_is_held() {
        let mut tap = StreamTap::for_mode(TapMode::Anthropic);
        let (now, held) = run(
            &mut tap,
            &[
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
                "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
                "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":3}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            ],
        );
        assert!(now.ends_with("\"output_tokens\":3}}\n\n"), "{now}");
        assert_eq!(held, "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        assert_eq!(tap.reported_usage(), Some(TokenUsage::new(9, 3, None)));
        assert_eq!(tap.take_generated(), "hi");
        let mut cut = StreamTap::for_mode(TapMode::Anthropic);
        run(&mut cut, &["event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"busy\"}}\n\n"]);
        assert_eq!(cut.error(), Some("busy"));
        assert!(cut.incomplete());
    }
}
