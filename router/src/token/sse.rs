//! An incremental Server-Sent Events framer over raw bytes.
//!
//! Chunks arrive as TCP delivers them: an event, a line, even a UTF-8 character may
//! be split anywhere. The parser buffers only the current event, splits lines on
//! `\n`, `\r\n` or `\r` (a `\r` at the end of a chunk waits for the next one), and
//! hands out each complete event with its exact raw bytes, so the stream tap can
//! forward, edit or drop whole events byte for byte. Crates such as
//! `eventsource-stream` decode events but do not keep their bytes, which the
//! include_usage filter needs; that is why this framer exists.

use bytes::{Bytes, BytesMut};

/// An event larger than this is handed out as is (no data) to bound memory.
pub const MAX_EVENT_BYTES: usize = 8 * 1024 * 1024;

/// One dispatched block of the stream, ended by a blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// Offset of the first byte of `raw` in the whole stream.
    pub start: u64,
    /// The exact bytes of the event, its terminating blank line included.
    pub raw: Bytes,
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`; `None` for a block without data
    /// (comments, keep-alives, stray blank lines, oversized events).
    pub data: Option<String>,
}

#[derive(Debug, Default)]
pub struct SseParser {
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// How far into `buf` lines have been read.
    scan: usize,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk; returns the events it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some((line_end, next)) = self.next_line() {
            if line_end == self.scan {
                out.push(self.dispatch(next));
            } else {
                let line = String::from_utf8_lossy(&self.buf[self.scan..line_end]).into_owned();
                self.field(&line);
                self.scan = next;
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            self.data = None;
            self.event = None;
            let len = self.buf.len();
            out.push(self.dispatch(len));
        }
        out
    }

    /// Ends the stream: an unterminated last event is dispatched if it carries data,
    /// and its bytes are returned either way so nothing is lost.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buf.is_empty() {
            return None;
        }
        if self.scan < self.buf.len() {
            let tail = self.buf[self.scan..].to_vec();
            let line = String::from_utf8_lossy(&tail);
            self.field(line.trim_end_matches(['\r', '\n']));
        }
        let len = self.buf.len();
        Some(self.dispatch(len))
    }

    /// Bytes held for an event that is not complete yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The end of the next complete line from `scan` and where the line after starts.
    fn next_line(&self) -> Option<(usize, usize)> {
        let rest = &self.buf[self.scan..];
        let pos = rest.iter().position(|&b| b == b'\n' || b == b'\r')?;
        let at = self.scan + pos;
        if rest[pos] == b'\n' {
            return Some((at, at + 1));
        }
        match rest.get(pos + 1) {
            Some(b'\n') => Some((at, at + 2)),
            Some(_) => Some((at, at + 1)),
            // A lone `\r` at the end may be the first half of `\r\n`.
            None => None,
        }
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match name {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }

    fn dispatch(&mut self, end: usize) -> SseEvent {
        let raw = self.buf.split_to(end).freeze();
        let start = self.buf_start;
        self.buf_start += raw.len() as u64;
        self.scan = 0;
        SseEvent {
            start,
            raw,
            event: self.event.take(),
            data: self.data.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out: Vec<SseEvent> = chunks.iter().flat_map(|c| p.push(c)).collect();
        out.extend(p.finish());
        out
    }

    #[test]
    fn splits_events_and_joins_data_lines() {
        let ev = parse_all(&[b"event: a\ndata: x\ndata: y\n\n: comment\n\ndata:z\r\n\r\n"]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].event.as_deref(), Some("a"));
        assert_eq!(ev[0].data.as_deref(), Some("x\ny"));
        assert_eq!(ev[0].raw, Bytes::from_static(b"event: a\ndata: x\ndata: y\n\n"));
        assert_eq!(ev[1].data, None);
        assert_eq!(ev[2].data.as_deref(), Some("z"));
        assert_eq!(ev[2].start, 37);
    }

    #[test]
    fn carriage_return_split_across_chunks_is_one_line_end() {
        let ev = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\r"]);
        assert_eq!(
            ev.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            vec![Some("a".into()), Some("b".into())]
        );
    }

    #[test]
    fn utf8_split_inside_a_character_is_decoded_whole() {
        let text = "data: {\"c\":\"日本語\"}\n\n".as_bytes();
        let ev = parse_all(&[&text[..10], &text[10..13], &text[13..]]);
        assert_eq!(ev[0].data.as_deref(), Some("{\"c\":\"日本語\"}"));
    }

    #[test]
    fn oversized_event_is_flushed_without_data() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let ev = p.push(&big);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].raw.len(), big.len());
        assert_eq!(ev[0].data, None);
        assert_eq!(p.pending(), 0);
    }

    #[test]
    fn unterminated_last_event_keeps_its_bytes() {
        let ev = parse_all(&[b"data: a\n\ndata: b"]);
        assert_eq!(ev[1].data.as_deref(), Some("b"));
        assert_eq!(ev[1].raw, Bytes::from_static(b"data: b"));
    }

    proptest! {
        #[test]
        fn same_events_however_the_bytes_are_split(
            events in proptest::collection::vec(("[a-z.]{0,8}", "[ -~日本\\r\\n]{0,40}"), 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..12),
            crlf in any::<bool>(),
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let mut stream = String::new();
            for (name, data) in &events {
                if !name.is_empty() {
                    stream.push_str(&format!("event: {name}{nl}"));
                }
                for line in data.split(['\r', '\n']) {
                    stream.push_str(&format!("data: {line}{nl}"));
                }
                stream.push_str(nl);
            }
            let bytes = stream.as_bytes();
            let whole = parse_all(&[bytes]);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut last = 0;
            for p in points {
                chunks.push(&bytes[last..p]);
                last = p;
            }
            chunks.push(&bytes[last..]);
            let split = parse_all(&chunks);
            prop_assert_eq!(&split, &whole);
            prop_assert_eq!(whole.len(), events.len());
            let joined: Vec<u8> = split.iter().flat_map(|e| e.raw.to_vec()).collect();
            prop_assert_eq!(joined, bytes.to_vec());
        }
    }
}
