//! Asking nodes for exact stream usage without the client noticing.
//!
//! A streamed chat or completions request that does not set
//! `stream_options.include_usage: true` gets it added on the way to the node, so the
//! node reports exact usage in a last, usage-only chunk. On the way back that chunk is
//! dropped and the `"usage":null` field some servers (vLLM, OpenAI) add to every chunk
//! is cut out of the bytes, so the client receives what the node would have sent it
//! without the router. Edits are byte-level: chunks are never re-serialized.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

/// The body to send upstream with `include_usage` requested, or `None` when the
/// request already asks for it (or is not a stream).
pub fn request_with_include_usage(body: &[u8], request: &Value) -> Option<Bytes> {
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    match request.get("stream_options") {
        None => {
            // Insert the field right after the opening brace: the client's bytes are
            // otherwise unchanged.
            let open = body.iter().position(|&b| b == b'{')?;
            let mut out = BytesMut::with_capacity(body.len() + 48);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true},"#);
            out.extend_from_slice(&body[open + 1..]);
            Some(out.freeze())
        }
        Some(opts) if opts.get("include_usage").and_then(Value::as_bool) == Some(true) => None,
        Some(Value::Object(_)) | Some(Value::Null) => {
            let mut v = request.clone();
            let opts = v.get_mut("stream_options").expect("present");
            if opts.is_null() {
                *opts = Value::Object(Default::default());
            }
            opts["include_usage"] = Value::Bool(true);
            serde_json::to_vec(&v).ok().map(Bytes::from)
        }
        // A malformed stream_options is the node's to reject, as the client sent it.
        Some(_) => None,
    }
}

/// The extra chunk the node sends because of `include_usage`: no choices, a usage.
pub fn is_usage_only_chunk(chunk: &Value) -> bool {
    chunk
        .get("choices")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
        && chunk.get("usage").is_some_and(Value::is_object)
}

/// `raw` with its `"usage": null` member removed, or `None` if it has none.
/// Only a member preceded by `,` or `{` is a key (inside a JSON string a quote is
/// escaped), and the comma that joined it to its neighbour goes with it.
pub fn strip_usage_null(raw: &[u8]) -> Option<Bytes> {
    const KEY: &[u8] = b"\"usage\"";
    let mut from = 0;
    while let Some(pos) = find(&raw[from..], KEY).map(|p| p + from) {
        from = pos + KEY.len();
        let after = skip_ws(raw, pos + KEY.len());
        if raw.get(after) != Some(&b':') {
            continue;
        }
        let value = skip_ws(raw, after + 1);
        if !raw[value..].starts_with(b"null") {
            continue;
        }
        let value_end = value + 4;
        let before = skip_ws_back(raw, pos);
        let (cut_start, cut_end) = match before.checked_sub(1).map(|i| raw[i]) {
            Some(b',') => (before - 1, value_end),
            Some(b'{') => {
                // First member: remove the comma after it instead, if any.
                let next = skip_ws(raw, value_end);
                if raw.get(next) == Some(&b',') {
                    (pos, skip_ws(raw, next + 1))
                } else {
                    (pos, value_end)
                }
            }
            _ => continue,
        };
        let mut out = BytesMut::with_capacity(raw.len());
        out.extend_from_slice(&raw[..cut_start]);
        out.extend_from_slice(&raw[cut_end..]);
        return Some(out.freeze());
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while raw.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

fn skip_ws_back(raw: &[u8], mut i: usize) -> usize {
    while i > 0 && raw[i - 1].is_ascii_whitespace() {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn include_usage_is_inserted_without_touching_other_bytes() {
        let body = br#"{"model":"m","stream":true,"messages":[]}"#;
        let v: Value = serde_json::from_slice(body).unwrap();
        let out = request_with_include_usage(body, &v).unwrap();
        assert_eq!(
            &out[..],
            br#"{"stream_options":{"include_usage":true},"model":"m","stream":true,"messages":[]}"#
        );
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["stream_options"]["include_usage"], true);
    }

    #[test]
    fn existing_stream_options_are_merged_and_true_is_left_alone() {
        let v = json!({"stream": true, "stream_options": {"include_usage": false}});
        let out = request_with_include_usage(v.to_string().as_bytes(), &v).unwrap();
        let parsed: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["stream_options"]["include_usage"], true);
        let v = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert_eq!(request_with_include_usage(v.to_string().as_bytes(), &v), None);
        let v = json!({"stream": false});
        assert_eq!(request_with_include_usage(v.to_string().as_bytes(), &v), None);
    }

    #[test]
    fn usage_null_is_cut_byte_exactly() {
        let raw = br#"data: {"id":"x","choices":[{"delta":{"content":"\"usage\":null"}}],"usage":null}"#;
        let out = strip_usage_null(raw).unwrap();
        assert_eq!(
            &out[..],
            br#"data: {"id":"x","choices":[{"delta":{"content":"\"usage\":null"}}]}"#
        );
        let out = strip_usage_null(br#"{"usage": null, "a":1}"#).unwrap();
        assert_eq!(&out[..], br#"{"a":1}"#);
        assert_eq!(strip_usage_null(br#"{"usage":{"prompt_tokens":1}}"#), None);
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        assert!(is_usage_only_chunk(
            &json!({"choices": [], "usage": {"prompt_tokens": 1}})
        ));
        assert!(!is_usage_only_chunk(
            &json!({"choices": [{}], "usage": {"prompt_tokens": 1}})
        ));
        assert!(!is_usage_only_chunk(&json!({"choices": [], "usage": null})));
    }
}
