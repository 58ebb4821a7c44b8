//! Fuzzing of the parsers of untrusted bytes in `token`: the SSE framer, usage
//! extraction, the `include_usage` edits and the stream tap. Each property runs on
//! generated inputs, structured (what nodes and clients send, with member order,
//! whitespace, line endings and chunk boundaries varied) and random bytes, and checks
//! what the output must be, not only that nothing panics. `PROPTEST_CASES` sets the
//! number of cases (proptest's default, 256, in the test suite; `scripts/fuzz.sh`
//! runs 1,000,000). This module holds the generators; `bodies` fuzzes JSON bodies
//! and chunks, `stream` the framer and the tap.

mod bodies;
mod stream;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngAlgorithm;
use serde_json::{Number, Value};

use super::sse::{SseEvent, SseParser};

/// Proptest's defaults (`PROPTEST_CASES` included) with the XorShift generator:
/// ChaCha, unoptimized in a test build, took most of the time (5,000 cases of the
/// SSE property: 4.8 s, 0.9 s with XorShift).
fn config() -> ProptestConfig {
    ProptestConfig {
        rng_algorithm: RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

/// A JSON value as written on the wire: members in their order, numbers as typed.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    /// An object; a repeated key keeps its first value (JSON objects in the wild have
    /// none, and parsers disagree on them).
    fn obj(members: Vec<(String, J)>) -> J {
        let mut seen = std::collections::HashSet::new();
        J::Obj(members.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect())
    }

    fn value(&self) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Num(n) => Value::Number(n.clone()),
            J::Str(s) => Value::String(s.clone()),
            J::Arr(items) => Value::Array(items.iter().map(J::value).collect()),
            J::Obj(members) => Value::Object(members.iter().map(|(k, v)| (k.clone(), v.value())).collect()),
        }
    }

    /// Written with the whitespace `ws` picks between tokens.
    fn write(&self, ws: &mut Ws) -> String {
        let mut out = String::new();
        self.write_into(ws, &mut out);
        out
    }

    fn write_into(&self, ws: &mut Ws, out: &mut String) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(&n.to_string()),
            J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws.take());
                    item.write_into(ws, out);
                    out.push_str(ws.take());
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(ws.take());
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(ws.take());
                    out.push(':');
                    out.push_str(ws.take());
                    v.write_into(ws, out);
                    out.push_str(ws.take());
                }
                out.push('}');
            }
        }
    }
}

/// Whitespace between JSON tokens, drawn from generated picks in turn.
struct Ws<'a> {
    picks: &'a [u8],
    next: usize,
    newlines: bool,
}

impl<'a> Ws<'a> {
    fn new(picks: &'a [u8], newlines: bool) -> Self {
        Ws {
            picks,
            next: 0,
            newlines,
        }
    }

    fn compact() -> Ws<'static> {
        Ws::new(&[], false)
    }

    fn take(&mut self) -> &'static str {
        let Some(&p) = self.picks.get(self.next % self.picks.len().max(1)) else {
            return "";
        };
        self.next += 1;
        match p % 8 {
            7 if self.newlines => "\n",
            0..=3 => "",
            4 => " ",
            5 => "  ",
            _ => "\t",
        }
    }
}

/// Text of `len` characters from `alphabet` (cheaper to generate than a regex).
fn text(alphabet: &'static str, len: std::ops::Range<usize>) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    vec(prop::sample::select(chars), len).prop_map(String::from_iter)
}

/// Printable ASCII, quotes and backslashes included.
const ASCII: &str = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text(ASCII, 0..10),
        2 => vec(any::<char>(), 0..6).prop_map(String::from_iter),
        1 => Just("\"usage\":null".to_string()),
        1 => Just("{\"usage\": null}".to_string()),
        1 => Just("data: [DONE]\n\n".to_string()),
        1 => Just("\\".to_string()),
    ]
}

fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => text("abcdefghijklmnopqrstuvwxyz_", 1..8),
        1 => Just("usage".to_string()),
        1 => Just("choices".to_string()),
        1 => Just("type".to_string()),
        1 => arb_string(),
    ]
}

fn arb_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<u64>().prop_map(Number::from),
        any::<i64>().prop_map(Number::from),
        // Not a filter: a million cases would exceed proptest's cap on rejected ones.
        any::<f64>().prop_map(|f| Number::from_f64(f).unwrap_or_else(|| 0.into())),
    ]
}

fn arb_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        arb_number().prop_map(J::Num),
        arb_string().prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 32, 5, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..5).prop_map(J::Arr),
            vec((arb_key(), inner), 0..5).prop_map(J::obj),
        ]
    })
}

/// Members of an object other than `except`.
fn arb_members(except: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, J)>> {
    vec((arb_key(), arb_json()), 0..5).prop_map(move |m| {
        let J::Obj(m) = J::obj(m) else { unreachable!() };
        m.into_iter().filter(|(k, _)| !except.contains(&k.as_str())).collect()
    })
}

/// Bytes that look like an SSE stream more often than random bytes do.
fn arb_stream_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data:".to_vec()),
        Just(b"data: ".to_vec()),
        Just(b"event: ".to_vec()),
        Just(b":".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"[DONE]".to_vec()),
        Just(br#"{"choices":[{"delta":{"content":"x"}}]}"#.to_vec()),
        Just(br#"{"usage":{"prompt_tokens":1}}"#.to_vec()),
        text("abcz {}\":,", 1..6).prop_map(String::into_bytes),
        vec(any::<u8>(), 1..4),
    ];
    prop_oneof![vec(piece, 0..40).prop_map(|p| p.concat()), vec(any::<u8>(), 0..200),]
}

/// `bytes` cut at the generated points.
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(&bytes[last..p]);
        last = p;
    }
    chunks.push(&bytes[last..]);
    chunks
}

fn frame(chunks: &[&[u8]]) -> Vec<SseEvent> {
    let mut parser = SseParser::new();
    let mut events: Vec<SseEvent> = chunks.iter().flat_map(|c| parser.push(c)).collect();
    events.extend(parser.finish());
    assert_eq!(parser.pending(), 0);
    events
}
