//! Properties of the stream side: the SSE framer against the specification's reading
//! of a whole stream, and the stream tap on generated streams and random bytes.

use bytes::Bytes;
use common::protocol::TokenUsage;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

use super::*;
use crate::token::StreamTap;

/// The `event` and `data` fields of a whole stream as the SSE specification reads
/// them: lines end at `\r\n`, `\n` or `\r`, a blank line ends an event, and what is
/// left at the end forms a last one.
fn reference_events(bytes: &[u8]) -> Vec<(Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
    let mut pending = false;
    let mut i = 0;
    while i < bytes.len() {
        let end = bytes[i..].iter().position(|&b| b == b'\n' || b == b'\r').map(|p| i + p);
        let (line, next) = match end {
            Some(e) if bytes[e] == b'\r' && bytes.get(e + 1) == Some(&b'\n') => (&bytes[i..e], e + 2),
            Some(e) => (&bytes[i..e], e + 1),
            None => (&bytes[i..], bytes.len()),
        };
        i = next;
        if line.is_empty() {
            out.push((event.take(), data.take()));
            pending = false;
            continue;
        }
        pending = true;
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (&*line, ""),
        };
        match name {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            "event" => event = Some(value.to_string()),
            _ => {}
        }
    }
    if pending {
        out.push((event, data));
    }
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn sse_events_do_not_depend_on_how_the_bytes_are_split(
        bytes in arb_stream_bytes(),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let whole = frame(&[&bytes]);
        prop_assert_eq!(&frame(&split(&bytes, &cuts)), &whole);
        // Every byte is handed out once, in order, at its offset.
        let mut offset = 0;
        for e in &whole {
            prop_assert_eq!(e.start, offset);
            offset += e.raw.len() as u64;
        }
        prop_assert_eq!(offset, bytes.len() as u64);
        let fields: Vec<_> = whole.into_iter().map(|e| (e.event, e.data)).collect();
        prop_assert_eq!(fields, reference_events(&bytes));
    }
}

/// One event of a generated stream.
#[derive(Debug, Clone)]
enum StreamEvent {
    /// A chat chunk, with a `"usage":null` member where the index says.
    Delta(String, Option<Index>),
    UsageOnly(u64, u64),
    KeepAlive,
    Done,
    ResponsesDelta(String),
    ResponsesCompleted(u64, u64),
    Error(String),
    /// A data line that is not JSON.
    Garbage(String),
}

fn arb_stream_event() -> impl Strategy<Value = StreamEvent> {
    prop_oneof![
        6 => (arb_string(), prop::option::of(any::<Index>())).prop_map(|(c, u)| StreamEvent::Delta(c, u)),
        1 => (0u64..1000, 0u64..1000).prop_map(|(p, c)| StreamEvent::UsageOnly(p, c)),
        1 => Just(StreamEvent::KeepAlive),
        1 => Just(StreamEvent::Done),
        1 => arb_string().prop_map(StreamEvent::ResponsesDelta),
        1 => (0u64..1000, 0u64..1000).prop_map(|(i, o)| StreamEvent::ResponsesCompleted(i, o)),
        1 => arb_string().prop_map(StreamEvent::Error),
        1 => text(ASCII, 0..12).prop_map(StreamEvent::Garbage),
    ]
}

/// A generated stream and what the tap must make of it.
#[derive(Default)]
struct ExpectedStream {
    bytes: Vec<u8>,
    /// What the client sees when the router hides its own `include_usage`.
    hidden: Vec<u8>,
    /// Where the terminal event starts in `bytes` and in `hidden`, and where it ends
    /// in `bytes`.
    terminal_at: Option<(usize, usize, usize)>,
    usage: Option<TokenUsage>,
    error: Option<String>,
    generated: String,
}

fn s(text: &str) -> J {
    J::Str(text.into())
}

fn build_stream(events: &[StreamEvent], nl: &str, tail: &Option<String>) -> ExpectedStream {
    let mut out = ExpectedStream::default();
    for e in events {
        let data = |json: &J| format!("data: {}{nl}{nl}", json.write(&mut Ws::compact()));
        let (raw, hidden) = match e {
            StreamEvent::Delta(content, usage_at) => {
                let delta = J::obj(vec![("content".into(), s(content))]);
                let choice = J::obj(vec![("index".into(), J::Num(0.into())), ("delta".into(), delta)]);
                let mut members = vec![("id".to_string(), s("c")), ("choices".into(), J::Arr(vec![choice]))];
                let hidden = data(&J::Obj(members.clone()));
                if let Some(at) = usage_at {
                    members.insert(at.index(members.len() + 1), ("usage".into(), J::Null));
                }
                out.generated.push_str(content);
                (data(&J::Obj(members)), hidden)
            }
            StreamEvent::UsageOnly(p, c) => {
                out.usage = Some(TokenUsage::new(*p, *c, Some(p + c)));
                let usage = format!(
                    r#"{{"prompt_tokens":{p},"completion_tokens":{c},"total_tokens":{}}}"#,
                    p + c
                );
                (
                    format!(r#"data: {{"id":"c","choices":[],"usage":{usage}}}{nl}{nl}"#),
                    String::new(),
                )
            }
            StreamEvent::KeepAlive => {
                let raw = format!(": keep-alive{nl}{nl}");
                (raw.clone(), raw)
            }
            StreamEvent::Done => {
                let raw = format!("data: [DONE]{nl}{nl}");
                out.terminal_at
                    .get_or_insert((out.bytes.len(), out.hidden.len(), out.bytes.len() + raw.len()));
                (raw.clone(), raw)
            }
            StreamEvent::ResponsesDelta(text) => {
                out.generated.push_str(text);
                let kind = "response.output_text.delta";
                let json = J::obj(vec![("type".into(), s(kind)), ("delta".into(), s(text))]);
                let raw = format!("event: {kind}{nl}{}", data(&json));
                (raw.clone(), raw)
            }
            StreamEvent::ResponsesCompleted(i, o) => {
                out.usage = Some(TokenUsage::new(*i, *o, Some(i + o)));
                let raw = format!(
                    r#"event: response.completed{nl}data: {{"type":"response.completed","response":{{"usage":{{"input_tokens":{i},"output_tokens":{o},"total_tokens":{}}}}}}}{nl}{nl}"#,
                    i + o
                );
                out.terminal_at
                    .get_or_insert((out.bytes.len(), out.hidden.len(), out.bytes.len() + raw.len()));
                (raw.clone(), raw)
            }
            StreamEvent::Error(message) => {
                out.error = Some(message.clone());
                let raw = data(&J::obj(vec![(
                    "error".into(),
                    J::obj(vec![("message".into(), s(message))]),
                )]));
                (raw.clone(), raw)
            }
            StreamEvent::Garbage(text) => {
                let raw = format!("data: #{text}{nl}{nl}");
                (raw.clone(), raw)
            }
        };
        out.bytes.extend_from_slice(raw.as_bytes());
        out.hidden.extend_from_slice(hidden.as_bytes());
    }
    if let Some(tail) = tail {
        // An unterminated last event: it reaches the client as it is.
        let raw = format!("data: #{tail}");
        out.bytes.extend_from_slice(raw.as_bytes());
        out.hidden.extend_from_slice(raw.as_bytes());
    }
    out
}

/// What the tap lets out before the commit point and after it, as the proxy's
/// streamed body forwards it (everything from the first held byte on waits).
struct Tapped {
    now: Vec<u8>,
    held: Vec<u8>,
    usage: Option<TokenUsage>,
    error: Option<String>,
    terminal: bool,
    generated: String,
}

fn tap(hide: bool, chunks: &[&[u8]]) -> Tapped {
    let mut tap = StreamTap::new(hide);
    let (mut now, mut held) = (Vec::new(), Vec::new());
    let mut holding = false;
    for c in chunks {
        let out = tap.on_chunk(Bytes::copy_from_slice(c));
        if holding { &mut held } else { &mut now }.extend_from_slice(&out.now);
        if let Some(h) = out.held {
            holding = true;
            held.extend_from_slice(&h);
        }
    }
    let end = tap.on_end();
    if holding { &mut held } else { &mut now }.extend_from_slice(&end);
    Tapped {
        now,
        held,
        usage: tap.reported_usage(),
        error: tap.error().map(str::to_string),
        terminal: tap.terminal_seen(),
        generated: tap.take_generated(),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_tap_passes_a_stream_through_or_hides_only_the_injected_usage(
        events in vec(arb_stream_event(), 0..12),
        crlf in any::<bool>(),
        tail in prop::option::of(text(ASCII, 0..8)),
        cuts in vec(any::<Index>(), 0..8),
        hide in any::<bool>(),
    ) {
        let expected = build_stream(&events, if crlf { "\r\n" } else { "\n" }, &tail);
        let chunks = split(&expected.bytes, &cuts);
        let got = tap(hide, &chunks);
        // The terminal event and what follows it wait for the commit. Hiding, the tap
        // forwards whole events; passing through, it forwards each chunk at once, so
        // what came of the terminal event before the chunk that completes it is out.
        let (shown, released) = if hide {
            (&expected.hidden, expected.terminal_at.map(|(_, start, _)| start))
        } else {
            let completing_chunk_start = |end: usize| {
                let mut offset = 0;
                for c in &chunks {
                    if offset + c.len() >= end {
                        break;
                    }
                    offset += c.len();
                }
                offset
            };
            (&expected.bytes, expected.terminal_at.map(|(start, _, end)| start.max(completing_chunk_start(end))))
        };
        prop_assert_eq!(&[got.now.clone(), got.held.clone()].concat(), shown);
        prop_assert_eq!(got.now.len(), released.unwrap_or(shown.len()));
        prop_assert_eq!(got.usage, expected.usage);
        prop_assert_eq!(got.error, expected.error);
        prop_assert_eq!(got.terminal, expected.terminal_at.is_some());
        if expected.usage.is_none() {
            prop_assert_eq!(got.generated, expected.generated);
        }
    }

    #[test]
    fn the_tap_output_does_not_depend_on_how_random_bytes_are_split(
        bytes in arb_stream_bytes(),
        cuts in vec(any::<Index>(), 0..8),
        hide in any::<bool>(),
    ) {
        let whole = tap(hide, &[&bytes]);
        let split = tap(hide, &split(&bytes, &cuts));
        prop_assert_eq!([&split.now[..], &split.held].concat(), [&whole.now[..], &whole.held].concat());
        if hide {
            prop_assert_eq!(&split.now, &whole.now);
        } else {
            // Passing through, what came of the terminal event before the chunk that
            // completes it is out already; the rest of it waits all the same.
            prop_assert!(split.now.len() >= whole.now.len());
            prop_assert_eq!(split.held.is_empty(), whole.held.is_empty());
        }
        prop_assert_eq!(split.usage, whole.usage);
        prop_assert_eq!(split.error, whole.error);
        prop_assert_eq!(split.terminal, whole.terminal);
        prop_assert_eq!(split.generated, whole.generated);
        if !hide {
            prop_assert_eq!([whole.now, whole.held].concat(), bytes);
        }
    }
}
