//! Token accounting: where a request's token figures come from.
//!
//! Usage extraction (SPEC T-3/C-4): a node's `usage` field, in the OpenAI shape
//! (`prompt_tokens`, `completion_tokens`, `total_tokens`) or the Responses and
//! Messages APIs' shape (`input_tokens`, `output_tokens`); Ollama's top-level
//! `prompt_eval_count` and `eval_count`. Estimation (T-4/T-5/C-5): when a node reports
//! nothing, the request text and the generated text are counted with the `cl100k_base`
//! BPE of `bpe-openai` (the same counts as `tiktoken`, linear time on hostile input;
//! its tables are loaded only while estimates need them, see `tables`).
//! Counting never panics, runs large texts on the blocking pool, and caps its input:
//! beyond [`MAX_COUNTED_BYTES`] the count is extrapolated from the counted prefix.
//!
//! The stream side lives in `sse` and `ndjson` (framing), `tap` (per-event
//! accumulation) and `include_usage` (asking nodes for usage and hiding the answer
//! from the client).

#[cfg(test)]
mod fuzz;
pub mod include_usage;
mod json_members;
pub mod ndjson;
pub mod sse;
mod tables;
pub mod tap;

use std::sync::Arc;

use common::protocol::{TokenSource, TokenUsage};
use serde_json::Value;

pub use tap::{StreamTap, TapMode, TapOutput};

/// Texts longer than this are counted on tokio's blocking pool.
const INLINE_COUNT_BYTES: usize = 16 * 1024;
/// At most this much text is tokenized; the rest is extrapolated.
pub const MAX_COUNTED_BYTES: usize = 1024 * 1024;

/// Token figures of a request and where they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedUsage {
    pub usage: TokenUsage,
    pub source: TokenSource,
}

/// Counts the tokens of `text` (capped, see the module doc). Synchronous, and loads
/// the BPE tables on this thread when they are not loaded: call [`estimate_tokens`]
/// from async code.
pub fn count_tokens(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    count_with(&tables::tokenizer_blocking(), text)
}

fn count_with(bpe: &bpe_openai::Tokenizer, text: &str) -> u64 {
    if text.len() <= MAX_COUNTED_BYTES {
        return bpe.count(text) as u64;
    }
    let mut cut = MAX_COUNTED_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let counted = bpe.count(&text[..cut]) as u64;
    // Scale by bytes: the prefix's tokens-per-byte stands for the whole text.
    ((counted as u128 * text.len() as u128) / cut as u128) as u64
}

/// [`count_tokens`] without blocking the async runtime: large texts are counted, and
/// the BPE tables loaded, on tokio's blocking pool.
pub async fn estimate_tokens(text: String) -> u64 {
    if text.is_empty() {
        return 0;
    }
    let bpe = tables::tokenizer().await;
    if text.len() <= INLINE_COUNT_BYTES {
        return count_with(&bpe, &text);
    }
    tokio::task::spawn_blocking(move || count_with(&bpe, &text))
        .await
        .unwrap_or(0)
}

fn as_count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

/// The usage a node reported in a response body or a stream chunk, if any.
/// A `"usage": null` or a usage object without any count is no usage.
pub fn usage_from_json(v: &Value) -> Option<TokenUsage> {
    usage_object(v.get("usage")?)
}

/// The usage of a whole JSON answer, read without building the rest of it: an
/// embeddings answer is mostly numbers the router never looks at.
pub fn usage_in_body(body: &[u8]) -> Option<TokenUsage> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        usage: Option<Value>,
    }
    // A derived struct would also accept an array (`[usage]`).
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let answer: Answer = serde_json::from_slice(body).ok()?;
    usage_object(answer.usage.as_ref()?)
}

/// Ollama's counts in an answer or a stream's final object: `prompt_eval_count`
/// (input) and `eval_count` (output). Ollama leaves out a count that is zero.
pub fn usage_from_ollama(v: &Value) -> Option<TokenUsage> {
    let input = as_count(v.get("prompt_eval_count"));
    let output = as_count(v.get("eval_count"));
    if input.is_none() && output.is_none() {
        return None;
    }
    Some(TokenUsage::new(input.unwrap_or(0), output.unwrap_or(0), None))
}

/// [`usage_from_ollama`] of a whole answer, read without building the rest of it
/// (an embedding is mostly numbers).
pub fn ollama_usage_in_body(body: &[u8]) -> Option<TokenUsage> {
    #[derive(serde::Deserialize)]
    struct Answer {
        prompt_eval_count: Option<u64>,
        eval_count: Option<u64>,
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let a: Answer = serde_json::from_slice(body).ok()?;
    if a.prompt_eval_count.is_none() && a.eval_count.is_none() {
        return None;
    }
    Some(TokenUsage::new(
        a.prompt_eval_count.unwrap_or(0),
        a.eval_count.unwrap_or(0),
        None,
    ))
}

pub(crate) fn usage_object(u: &Value) -> Option<TokenUsage> {
    if !u.is_object() {
        return None;
    }
    let input = as_count(u.get("prompt_tokens")).or(as_count(u.get("input_tokens")));
    let output = as_count(u.get("completion_tokens")).or(as_count(u.get("output_tokens")));
    let total = as_count(u.get("total_tokens"));
    if input.is_none() && output.is_none() && total.is_none() {
        return None;
    }
    Some(TokenUsage::new(input.unwrap_or(0), output.unwrap_or(0), total))
}

/// What a request asks the model to read: the text to estimate its input tokens from,
/// plus tokens given directly as token-id arrays (`"prompt": [1, 2, 3]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptText {
    pub text: String,
    pub token_ids: u64,
}

impl PromptText {
    pub async fn estimate(self) -> u64 {
        let ids = self.token_ids;
        estimate_tokens(self.text).await.saturating_add(ids)
    }
}

/// A request's body, kept so that its prompt is extracted and counted only when the
/// node reports no usage (most requests never need it).
#[derive(Debug, Clone, Default)]
pub struct Prompt(Option<Arc<Value>>);

impl Prompt {
    pub fn of(request: Arc<Value>) -> Self {
        Prompt(Some(request))
    }

    /// The estimated input tokens of the request.
    pub async fn estimate(&self) -> u64 {
        match &self.0 {
            Some(request) => prompt_text(request).estimate().await,
            None => 0,
        }
    }

    /// [`Prompt::estimate`] outside an async runtime.
    pub fn estimate_blocking(&self) -> u64 {
        self.0.as_deref().map_or(0, |request| {
            let p = prompt_text(request);
            count_tokens(&p.text).saturating_add(p.token_ids)
        })
    }
}

/// Extracts the prompt of a chat, completions, embeddings or Responses request.
pub fn prompt_text(request: &Value) -> PromptText {
    let mut p = PromptText::default();
    if let Some(messages) = request.get("messages").and_then(Value::as_array) {
        for m in messages {
            collect_content(m.get("content"), &mut p.text);
            collect_tool_calls(m.get("tool_calls"), &mut p.text);
        }
    }
    if let Some(instructions) = request.get("instructions").and_then(Value::as_str) {
        push_text(&mut p.text, instructions);
    }
    // Anthropic's and Ollama's system prompt: a string or text blocks.
    collect_content(request.get("system"), &mut p.text);
    for key in ["prompt", "input"] {
        match request.get(key) {
            Some(Value::String(s)) => push_text(&mut p.text, s),
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(s) => push_text(&mut p.text, s),
                        Value::Number(_) => p.token_ids += 1,
                        Value::Array(ids) => p.token_ids += ids.len() as u64,
                        // Responses API input items: messages with content.
                        Value::Object(_) => collect_content(item.get("content"), &mut p.text),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    p
}

/// Extracts the generated text of a non-streamed response, for estimation.
pub fn output_text(response: &Value) -> String {
    let mut out = String::new();
    if let Some(choices) = response.get("choices").and_then(Value::as_array) {
        for c in choices {
            if let Some(m) = c.get("message") {
                collect_content(m.get("content"), &mut out);
                for k in ["reasoning_content", "refusal"] {
                    if let Some(s) = m.get(k).and_then(Value::as_str) {
                        push_text(&mut out, s);
                    }
                }
                collect_tool_calls(m.get("tool_calls"), &mut out);
            }
            if let Some(t) = c.get("text").and_then(Value::as_str) {
                push_text(&mut out, t);
            }
        }
    }
    // Ollama's chat (`message`) and generate (`response`) answers.
    if let Some(m) = response.get("message") {
        collect_content(m.get("content"), &mut out);
    }
    if let Some(r) = response.get("response").and_then(Value::as_str) {
        push_text(&mut out, r);
    }
    // Anthropic's `content` blocks: text, and the input of tool calls.
    for block in response.get("content").and_then(Value::as_array).into_iter().flatten() {
        if let Some(t) = block.get("text").and_then(Value::as_str) {
            push_text(&mut out, t);
        }
        if let Some(input) = block.get("input") {
            push_text(&mut out, &input.to_string());
        }
    }
    if let Some(items) = response.get("output").and_then(Value::as_array) {
        for item in items {
            collect_content(item.get("content"), &mut out);
            if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                push_text(&mut out, a);
            }
        }
    }
    out
}

/// `content` as a string or as an array of parts with `text`.
fn collect_content(content: Option<&Value>, out: &mut String) {
    match content {
        Some(Value::String(s)) => push_text(out, s),
        Some(Value::Array(parts)) => {
            for part in parts {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    push_text(out, t);
                }
            }
        }
        _ => {}
    }
}

fn collect_tool_calls(calls: Option<&Value>, out: &mut String) {
    for call in calls.and_then(Value::as_array).into_iter().flatten() {
        if let Some(a) = call.pointer("/function/arguments").and_then(Value::as_str) {
            push_text(out, a);
        }
    }
}

/// Appends with a newline separator; stops growing past the counting cap's double so
/// a hostile body cannot make the router hold two copies of it.
fn push_text(out: &mut String, s: &str) {
    if s.is_empty() || out.len() > 2 * MAX_COUNTED_BYTES {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(s);
}

/// Final figures of a request: the reported usage when there is one, else the
/// estimate of the prompt and of the generated text.
pub async fn settle(reported: Option<TokenUsage>, prompt: &Prompt, generated: String) -> CountedUsage {
    match reported {
        Some(usage) => CountedUsage {
            usage,
            source: TokenSource::Reported,
        },
        None => {
            let input = prompt.estimate().await;
            let output = estimate_tokens(generated).await;
            CountedUsage {
                usage: TokenUsage::new(input, output, None),
                source: TokenSource::Estimated,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_body_s_usage_is_read_whatever_else_it_holds() {
        let vector: Vec<f64> = (0..4096).map(|i| i as f64 / 7.0).collect();
        let body = json!({"object": "list", "data": [{"embedding": vector, "index": 0}],
            "usage": {"prompt_tokens": 8, "total_tokens": 8}});
        let bytes = serde_json::to_vec(&body).unwrap();
        assert_eq!(usage_in_body(&bytes), Some(TokenUsage::new(8, 0, Some(8))));
        assert_eq!(usage_in_body(br#"{"usage": null, "choices": []}"#), None);
        assert_eq!(usage_in_body(br#"{"usage": 3}"#), None);
        assert_eq!(usage_in_body(br#"[{"prompt_tokens": 1}]"#), None);
        assert_eq!(usage_in_body(b"not json"), None);
    }

    #[test]
    fn openai_usage_is_taken_as_reported() {
        let u = usage_from_json(&json!({"usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}));
        assert_eq!(u, Some(TokenUsage::new(12, 5, Some(17))));
    }

    #[test]
    fn responses_api_usage_and_missing_total() {
        let u = usage_from_json(&json!({"usage": {"input_tokens": 3, "output_tokens": 4}}));
        assert_eq!(
            u,
            Some(TokenUsage {
                input_tokens: 3,
                output_tokens: 4,
                total_tokens: 7
            })
        );
    }

    #[test]
    fn embeddings_usage_has_no_completion() {
        let u = usage_from_json(&json!({"usage": {"prompt_tokens": 8, "total_tokens": 8}}));
        assert_eq!(
            u,
            Some(TokenUsage {
                input_tokens: 8,
                output_tokens: 0,
                total_tokens: 8
            })
        );
    }

    #[test]
    fn ollama_counts_are_read_from_the_final_object() {
        let done = json!({"done": true, "prompt_eval_count": 26, "eval_count": 290, "total_duration": 1});
        assert_eq!(usage_from_ollama(&done), Some(TokenUsage::new(26, 290, Some(316))));
        assert_eq!(usage_from_ollama(&json!({"done": true})), None);
        let body = br#"{"embeddings": [[0.1, 0.2]], "prompt_eval_count": 8}"#;
        assert_eq!(ollama_usage_in_body(body), Some(TokenUsage::new(8, 0, Some(8))));
        assert_eq!(ollama_usage_in_body(br#"{"embedding": [0.1]}"#), None);
    }

    #[test]
    fn null_or_empty_usage_is_no_usage() {
        assert_eq!(usage_from_json(&json!({"usage": null})), None);
        assert_eq!(usage_from_json(&json!({"usage": {}})), None);
        assert_eq!(usage_from_json(&json!({"choices": []})), None);
    }

    #[test]
    fn bpe_counts_match_tiktoken_cl100k() {
        // Reference counts from tiktoken's cl100k_base.
        assert_eq!(count_tokens("hello world"), 2);
        assert_eq!(count_tokens("The quick brown fox jumps over the lazy dog."), 10);
        assert_eq!(count_tokens(""), 0);
    }

    #[test]
    fn hostile_input_is_counted_without_panic() {
        let spaces = " ".repeat(1024 * 1024);
        assert!(count_tokens(&spaces) > 0);
        let big = "ab ".repeat(1024 * 1024);
        let n = count_tokens(&big);
        assert!(n > 1_000_000 && n < 4_000_000, "{n}");
    }

    #[test]
    fn prompt_text_covers_messages_parts_prompt_and_input() {
        let p = prompt_text(&json!({"messages": [
            {"role": "system", "content": "a b"},
            {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "image_url", "image_url": {}}]},
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
        ]}));
        assert_eq!(p.text, "a b\nc\n{}");
        let p = prompt_text(&json!({"prompt": [[1, 2, 3], "x"], "input": [{"role": "user", "content": "y"}]}));
        assert_eq!(
            p,
            PromptText {
                text: "x\ny".into(),
                token_ids: 3
            }
        );
    }

    #[test]
    fn output_text_covers_chat_completions_tools_and_responses() {
        let v = json!({"choices": [{"message": {"content": "hi", "tool_calls": [{"function": {"arguments": "{\"a\":1}"}}]}}, {"text": "t"}],
                       "output": [{"content": [{"type": "output_text", "text": "r"}]}, {"type": "function_call", "arguments": "z"}]});
        assert_eq!(output_text(&v), "hi\n{\"a\":1}\nt\nr\nz");
    }

    #[tokio::test]
    async fn settle_prefers_reported_and_flags_estimates() {
        let reported = settle(Some(TokenUsage::new(1, 2, None)), &Prompt::default(), String::new()).await;
        assert_eq!(reported.source, TokenSource::Reported);
        let est = settle(
            None,
            &Prompt::of(Arc::new(json!({"prompt": ["hello world", [1, 2]]}))),
            "hello world".into(),
        )
        .await;
        assert_eq!(
            est.usage,
            TokenUsage {
                input_tokens: 4,
                output_tokens: 2,
                total_tokens: 6
            }
        );
        assert_eq!(est.source, TokenSource::Estimated);
    }
}
