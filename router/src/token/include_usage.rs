//! Asking nodes for exact stream usage without the client noticing.
//!
//! A streamed chat or completions request that does not set
//! `stream_options.include_usage: true` gets it added on the way to the node, so the
//! node reports exact usage in a last, usage-only chunk. On the way back that chunk is
//! dropped and the `"usage":null` field some servers (vLLM, OpenAI) add to every chunk
//! is cut out of the bytes, so the client receives what the node would have sent it
//! without the router. Edits are byte-level (`json_members` finds the bytes to change):
//! neither the request nor the chunks are re-serialized, so what is not edited reaches
//! the node or the client byte for byte.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use super::json_members::{self, Member};

/// The body to send upstream with `include_usage` requested, or `None` when the
/// request already asks for it (or is not a stream, or `stream_options` is not an
/// object). Only the bytes of `stream_options` change.
pub fn request_with_include_usage(body: &[u8], request: &Value) -> Option<Bytes> {
    if request.get("stream").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    let open = body.iter().position(|&b| b == b'{')?;
    let members = json_members::members(body, open)?;
    let Some(options) = json_members::last(&members, "stream_options") else {
        // Right after the opening brace: `stream` follows, so a comma goes with it.
        return Some(splice(
            body,
            open + 1..open + 1,
            br#""stream_options":{"include_usage":true},"#,
        ));
    };
    match request.get("stream_options")? {
        Value::Null => Some(splice(body, options.value.clone(), br#"{"include_usage":true}"#)),
        Value::Object(o) if o.get("include_usage") == Some(&Value::Bool(true)) => None,
        Value::Object(o) => {
            let inner = json_members::members(body, options.value.start)?;
            match json_members::last(&inner, "include_usage") {
                Some(Member { value, .. }) => Some(splice(body, value.clone(), b"true")),
                None => {
                    let at = options.value.start + 1;
                    let member: &[u8] = if o.is_empty() {
                        br#""include_usage":true"#
                    } else {
                        br#""include_usage":true,"#
                    };
                    Some(splice(body, at..at, member))
                }
            }
        }
        // A malformed stream_options is the node's to reject, as the client sent it.
        _ => None,
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

/// The SSE event `raw` with the `"usage": null` member of its JSON removed (with the
/// comma that joined it to a neighbour), or `None` if it has none. Only a member of
/// the top-level object counts (the last one, as serde_json reads repeated keys), and
/// only in an event whose data is on one line (nodes write each chunk on one).
pub fn strip_usage_null(raw: &[u8]) -> Option<Bytes> {
    let payload = single_data_line(raw)?;
    let open = payload.start + raw[payload.clone()].iter().position(|b| !b.is_ascii_whitespace())?;
    let members = json_members::members(&raw[..payload.end], open)?;
    let i = members
        .iter()
        .rposition(|m| m.key == "usage")
        .filter(|&i| &raw[members[i].value.clone()] == b"null")?;
    let cut = match (i.checked_sub(1), members.get(i + 1)) {
        // From the end of the value before it: its comma goes too.
        (Some(before), _) => members[before].value.end..members[i].value.end,
        // The first member: up to the key after it.
        (None, Some(after)) => members[i].start..after.start,
        (None, None) => members[i].start..members[i].value.end,
    };
    Some(splice(raw, cut, b""))
}

/// Where the value of the event's only `data:` line is (after `data:` and one space).
fn single_data_line(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut found = None;
    let mut start = 0;
    while start < raw.len() {
        let end = raw[start..]
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .map_or(raw.len(), |p| start + p);
        if let Some(value) = raw[start..end].strip_prefix(b"data:") {
            if found.is_some() {
                return None;
            }
            let skip = usize::from(value.first() == Some(&b' '));
            found = Some(end - value.len() + skip..end);
        }
        start = end + 1;
    }
    found
}

fn splice(bytes: &[u8], range: std::ops::Range<usize>, with: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len() + with.len());
    out.extend_from_slice(&bytes[..range.start]);
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[range.end..]);
    out.freeze()
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
    fn existing_stream_options_are_edited_in_place_and_true_is_left_alone() {
        let edit = |body: &str| {
            let v: Value = serde_json::from_str(body).unwrap();
            request_with_include_usage(body.as_bytes(), &v).map(|b| String::from_utf8(b.to_vec()).unwrap())
        };
        // The float serde_json would have rewritten (it parses it one ulp off) stays as sent.
        assert_eq!(
            edit(r#"{"temperature": -1.7071772791241587e-143, "stream":true, "stream_options": {"include_usage": false}}"#).unwrap(),
            r#"{"temperature": -1.7071772791241587e-143, "stream":true, "stream_options": {"include_usage": true}}"#
        );
        assert_eq!(
            edit(r#"{"stream":true,"stream_options":null}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            edit(r#"{"stream":true,"stream_options":{ }}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true }}"#
        );
        assert_eq!(
            edit(r#"{"stream":true,"stream_options":{"x":1}}"#).unwrap(),
            r#"{"stream":true,"stream_options":{"include_usage":true,"x":1}}"#
        );
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
        let out = strip_usage_null(b"data: {\"usage\": null, \"a\":1}\n\n").unwrap();
        assert_eq!(&out[..], b"data: {\"a\":1}\n\n");
        assert_eq!(strip_usage_null(br#"data: {"usage":{"prompt_tokens":1}}"#), None);
        // A nested member is the chunk's content, not the router's doing.
        let raw = br#"data: {"choices":[{"usage":null}],"usage":null}"#;
        assert_eq!(
            &strip_usage_null(raw).unwrap()[..],
            br#"data: {"choices":[{"usage":null}]}"#
        );
        assert_eq!(strip_usage_null(br#"data: {"choices":{"usage":null}}"#), None);
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
