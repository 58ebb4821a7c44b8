//! Where the members of a JSON object sit in its bytes, so that `include_usage` can
//! insert, replace or remove one without re-serializing the rest (which would reorder
//! keys, rewrite whitespace, and change numbers: serde_json parses floats to the
//! nearest value only with `float_roundtrip`). Only the object's own level is read;
//! nested values are skipped over. The bytes are JSON that serde_json has already
//! parsed; anything else gives `None`.

use std::ops::Range;

/// One member of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The key, unescaped.
    pub key: String,
    /// Offset of the key's opening quote.
    pub start: usize,
    /// The value's bytes.
    pub value: Range<usize>,
}

/// The members of the object whose `{` is at `open`, in order.
pub fn members(json: &[u8], open: usize) -> Option<Vec<Member>> {
    if json.get(open) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(json, open + 1);
    if json.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = string_end(json, i)?;
        let key: String = serde_json::from_slice(&json[i..key_end]).ok()?;
        let colon = skip_ws(json, key_end);
        if json.get(colon) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(json, colon + 1);
        let value_end = value_end(json, value_start)?;
        out.push(Member {
            key,
            start: i,
            value: value_start..value_end,
        });
        let next = skip_ws(json, value_end);
        match json.get(next) {
            Some(b',') => i = skip_ws(json, next + 1),
            Some(b'}') => return Some(out),
            _ => return None,
        }
    }
}

/// The last member named `key` (serde_json keeps the last of repeated keys).
pub fn last<'a>(members: &'a [Member], key: &str) -> Option<&'a Member> {
    members.iter().rev().find(|m| m.key == key)
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while matches!(json.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end of the string opening at `i` (after its closing quote).
fn string_end(json: &[u8], i: usize) -> Option<usize> {
    if json.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    loop {
        match json.get(j)? {
            b'"' => return Some(j + 1),
            b'\\' => j += 2,
            _ => j += 1,
        }
    }
}

/// The end of the value starting at `i`.
fn value_end(json: &[u8], i: usize) -> Option<usize> {
    match json.get(i)? {
        b'"' => string_end(json, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match json.get(j)? {
                    b'"' => {
                        j = string_end(json, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let len = json[i..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(json.len() - i);
            (len > 0).then_some(i + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_with_their_exact_spans() {
        let json = br#" { "a" : [1, {"b": "}"}] ,"c\u0064":"x\"y", "e":-1.5e3}"#;
        let m = members(json, 1).unwrap();
        let spans: Vec<(&str, &[u8])> = m.iter().map(|m| (m.key.as_str(), &json[m.value.clone()])).collect();
        assert_eq!(
            spans,
            [
                ("a", &br#"[1, {"b": "}"}]"#[..]),
                ("cd", br#""x\"y""#),
                ("e", b"-1.5e3")
            ]
        );
        assert_eq!(m[0].start, 3);
        assert_eq!(members(b"{}", 0), Some(vec![]));
        assert_eq!(members(b"{\"a\":1", 0), None);
        assert_eq!(members(b"[1]", 0), None);
    }
}
