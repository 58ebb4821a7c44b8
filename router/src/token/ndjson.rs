//! An incremental NDJSON framer over raw bytes (Ollama's streams: one JSON object per
//! line, `\n`-terminated).
//!
//! Like `sse`, it keeps each line's exact bytes and its offset in the stream, so the
//! stream tap can hold the final object until the record is committed and forward
//! everything else unchanged. Lines may be split anywhere across chunks; only the
//! current line is buffered, up to [`MAX_LINE_BYTES`].

use bytes::{Bytes, BytesMut};

/// A line longer than this is handed out as is (not decoded) to bound memory.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdjsonLine {
    /// Offset of the first byte of `raw` in the whole stream.
    pub start: u64,
    /// The exact bytes of the line, its `\n` included (absent for an unterminated last
    /// line).
    pub raw: Bytes,
    /// Whether the line is complete and small enough to decode.
    pub whole: bool,
}

impl NdjsonLine {
    /// The line without its terminator, when it is worth decoding.
    pub fn json(&self) -> Option<&[u8]> {
        if !self.whole {
            return None;
        }
        let text = self.raw.trim_ascii();
        (!text.is_empty()).then_some(text)
    }
}

#[derive(Debug, Default)]
pub struct NdjsonParser {
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
}

impl NdjsonParser {
    /// Feeds a chunk; returns the lines it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<NdjsonLine> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            self.buf.extend_from_slice(&rest[..=pos]);
            rest = &rest[pos + 1..];
            out.push(self.take(true));
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > MAX_LINE_BYTES {
            out.push(self.take(false));
        }
        out
    }

    /// Ends the stream: an unterminated last line, if any.
    pub fn finish(&mut self) -> Option<NdjsonLine> {
        (!self.buf.is_empty()).then(|| self.take(true))
    }

    fn take(&mut self, whole: bool) -> NdjsonLine {
        let raw = self.buf.split().freeze();
        let line = NdjsonLine {
            start: self.buf_start,
            whole,
            raw,
        };
        self.buf_start += line.raw.len() as u64;
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = "{\"response\":\"h\u{e9}\",\"done\":false}\n{\"response\":\"llo\",\"done\":false}\n{\"done\":true,\"eval_count\":2}\n";

    #[test]
    fn lines_keep_their_bytes_and_offsets() {
        let mut p = NdjsonParser::default();
        let lines = p.push(STREAM.as_bytes());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1].start as usize, STREAM.find("{\"response\":\"llo").unwrap());
        assert_eq!(lines[2].json().unwrap(), b"{\"done\":true,\"eval_count\":2}");
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn an_unterminated_last_line_is_handed_out_at_the_end() {
        let mut p = NdjsonParser::default();
        assert!(p.push(b"{\"done\":").is_empty());
        let last = p.finish().unwrap();
        assert_eq!(&last.raw[..], b"{\"done\":");
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_lines(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..8)) {
            let bytes = STREAM.as_bytes();
            let mut cuts = cuts;
            cuts.sort();
            let mut p = NdjsonParser::default();
            let mut lines = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                lines.extend(p.push(&bytes[from..c]));
                from = c;
            }
            let raws: Vec<&[u8]> = lines.iter().map(|l| &l.raw[..]).collect();
            let whole: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
            prop_assert_eq!(raws, whole);
        }
    }
}
