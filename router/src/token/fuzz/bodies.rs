//! Properties of what reads or edits a JSON body or chunk: usage extraction
//! (`usage_in_body`, `usage_from_json`) and the `include_usage` edits of a request
//! and of a chunk.

use common::protocol::TokenUsage;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Number, Value};

use super::*;
use crate::token::include_usage::{request_with_include_usage, strip_usage_null};
use crate::token::{usage_from_json, usage_in_body};

/// The usage the documentation promises for a `usage` member.
fn expected_usage(usage: &J) -> Option<TokenUsage> {
    let J::Obj(members) = usage else { return None };
    let count = |key: &str| {
        members.iter().find(|(k, _)| k == key).and_then(|(_, v)| match v {
            J::Num(n) => n.as_u64(),
            _ => None,
        })
    };
    let input = count("prompt_tokens").or(count("input_tokens"));
    let output = count("completion_tokens").or(count("output_tokens"));
    let total = count("total_tokens");
    if input.is_none() && output.is_none() && total.is_none() {
        return None;
    }
    Some(TokenUsage::new(input.unwrap_or(0), output.unwrap_or(0), total))
}

fn arb_usage() -> impl Strategy<Value = J> {
    let count = prop_oneof![
        4 => (0u64..100_000).prop_map(|n| J::Num(n.into())),
        1 => any::<u64>().prop_map(|n| J::Num(n.into())),
        1 => (-5i64..0).prop_map(|n| J::Num(n.into())),
        1 => Just(J::Num(Number::from_f64(1.5).unwrap())),
        1 => Just(J::Str("7".into())),
        1 => Just(J::Null),
    ];
    let key = prop::sample::select(vec![
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "input_tokens",
        "output_tokens",
        "cached_tokens",
    ]);
    prop_oneof![
        4 => vec((key, count), 0..6).prop_map(|m| J::obj(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        1 => arb_json(),
    ]
}

/// The three forms of the `stream` member that matter, and its absence.
fn arb_stream_flag() -> impl Strategy<Value = Option<J>> {
    prop_oneof![
        Just(None),
        Just(Some(J::Bool(true))),
        Just(Some(J::Bool(false))),
        Just(Some(J::Str("true".into()))),
    ]
}

fn arb_stream_options() -> impl Strategy<Value = Option<J>> {
    let include = prop_oneof![
        Just(J::Bool(true)),
        Just(J::Bool(false)),
        Just(J::Null),
        Just(J::Num(1.into()))
    ];
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(J::Null)),
        2 => (include, arb_members(&["include_usage"]), any::<Index>()).prop_map(|(inc, mut m, at)| {
            m.insert(at.index(m.len() + 1), ("include_usage".into(), inc));
            Some(J::Obj(m))
        }),
        1 => arb_members(&["include_usage"]).prop_map(|m| Some(J::Obj(m))),
        1 => arb_json().prop_map(Some),
    ]
}

const INSERTED: &str = r#""stream_options":{"include_usage":true},"#;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn usage_is_the_node_s_figures_wherever_it_sits_in_the_body(
        others in arb_members(&["usage"]),
        usage in arb_usage(),
        at in any::<Index>(),
        picks in vec(any::<u8>(), 0..16),
        lead in text(" \t\r\n", 0..3),
    ) {
        let mut members = others;
        members.insert(at.index(members.len() + 1), ("usage".into(), usage.clone()));
        let body = format!("{lead}{}", J::Obj(members).write(&mut Ws::new(&picks, true)));
        let expected = expected_usage(&usage);
        prop_assert_eq!(usage_in_body(body.as_bytes()), expected);
        let parsed: Value = serde_json::from_str(&body).unwrap();
        prop_assert_eq!(usage_from_json(&parsed), expected);
    }

    #[test]
    fn usage_extraction_from_bytes_agrees_with_the_parsed_json(bytes in arb_stream_bytes()) {
        let from_bytes = usage_in_body(&bytes);
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if v.is_object() => prop_assert_eq!(from_bytes, usage_from_json(&v)),
            _ => prop_assert_eq!(from_bytes, None),
        }
    }

    #[test]
    fn the_include_usage_request_edit_adds_the_field_and_changes_nothing_else(
        others in arb_members(&["stream", "stream_options"]),
        stream in arb_stream_flag(),
        options in arb_stream_options(),
        at in vec(any::<Index>(), 2),
        picks in vec(any::<u8>(), 0..16),
        lead in text(" \t\r\n", 0..3),
    ) {
        let mut members = others;
        for ((key, value), at) in [("stream", &stream), ("stream_options", &options)].into_iter().zip(&at) {
            if let Some(v) = value {
                members.insert(at.index(members.len() + 1), (key.to_string(), v.clone()));
            }
        }
        let body = format!("{lead}{}", J::Obj(members).write(&mut Ws::new(&picks, true)));
        let request: Value = serde_json::from_str(&body).unwrap();
        let edited = request_with_include_usage(body.as_bytes(), &request);
        // The request as the client sent it, asking for usage (`stream_options` is an
        // object or null in the cases that use it).
        let wanted = || {
            let mut v = request.clone();
            v["stream_options"]["include_usage"] = Value::Bool(true);
            v
        };
        match (stream.as_ref().map(J::value), options.as_ref().map(J::value)) {
            (Some(Value::Bool(true)), None) => {
                let edited = edited.expect("inserted");
                // The client's bytes, with the member inserted after the opening brace.
                let open = lead.len();
                let expected = format!("{}{INSERTED}{}", &body[..=open], &body[open + 1..]);
                prop_assert_eq!(&edited[..], expected.as_bytes());
                prop_assert_eq!(serde_json::from_slice::<Value>(&edited).unwrap(), wanted());
            }
            (Some(Value::Bool(true)), Some(Value::Object(o))) if o.get("include_usage") == Some(&Value::Bool(true)) => {
                prop_assert_eq!(edited, None);
            }
            (Some(Value::Bool(true)), Some(Value::Object(_) | Value::Null)) => {
                let edited = edited.expect("merged");
                prop_assert_eq!(serde_json::from_slice::<Value>(&edited).unwrap(), wanted());
            }
            _ => prop_assert_eq!(edited, None),
        }
    }

    #[test]
    fn the_include_usage_request_edit_leaves_any_other_json_alone(value in arb_json()) {
        let body = value.write(&mut Ws::compact());
        let parsed: Value = serde_json::from_str(&body).unwrap();
        let edited = request_with_include_usage(body.as_bytes(), &parsed);
        if !parsed.is_object() {
            prop_assert_eq!(edited, None);
        }
    }

    #[test]
    fn stripping_usage_null_removes_that_member_and_nothing_else(
        others in arb_members(&["usage"]),
        at in any::<Index>(),
        picks in vec(any::<u8>(), 0..16),
        multiline in any::<bool>(),
        event_line in any::<bool>(),
    ) {
        let mut members = others;
        members.insert(at.index(members.len() + 1), ("usage".into(), J::Null));
        let chunk = J::Obj(members.clone());
        let json = chunk.write(&mut Ws::new(&picks, multiline));
        let event = if event_line { "event: chunk\n" } else { "" };
        let raw = format!("{event}data: {}\n\n", json.replace('\n', "\ndata: "));
        // Declined when the JSON is on several data lines (no node writes that).
        let edited = strip_usage_null(raw.as_bytes());
        prop_assert_eq!(edited.is_none(), json.contains('\n'), "{:?}", raw);
        let Some(edited) = edited else { return Ok(()) };
        // One run of bytes went, and what is left is the same event without the member.
        let prefix = raw.bytes().zip(edited.iter()).take_while(|(a, b)| a == *b).count();
        let suffix = raw.bytes().rev().zip(edited.iter().rev()).take_while(|(a, b)| a == *b).count();
        prop_assert!(prefix + suffix >= edited.len(), "more than one cut: {raw:?} -> {edited:?}");
        let events = frame(&[&edited]);
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(events[0].event.as_deref(), event_line.then_some("chunk"));
        let left: Value = serde_json::from_str(events[0].data.as_deref().unwrap()).unwrap();
        members.retain(|(k, _)| k != "usage");
        // Compared as parsed from text on both sides: serde_json may read a float one
        // ulp off, the same way each time.
        let expected: Value = serde_json::from_str(&J::Obj(members).write(&mut Ws::compact())).unwrap();
        prop_assert_eq!(left, expected);
    }

    #[test]
    fn stripping_usage_null_leaves_a_chunk_without_it_at_its_top_unchanged(
        others in arb_members(&["usage"]),
        picks in vec(any::<u8>(), 0..16),
    ) {
        let raw = format!("data: {}\n\n", J::Obj(others).write(&mut Ws::new(&picks, false)));
        prop_assert_eq!(strip_usage_null(raw.as_bytes()), None);
    }
}
