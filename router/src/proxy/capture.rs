//! The bodies kept with a request's record when the router stores them
//! (`--store-bodies`, DESIGN §6): the body the client sent and the one the node
//! answered, each cut at `--stored-body-max-bytes`. A plain answer is kept from the
//! bytes read whole; a stream's bytes are copied as they pass, up to the limit, so a
//! stream costs at most that much memory more while it is open. Nothing is kept when
//! the option is off (the default): bodies may hold what clients would not want
//! stored, and the operator opts in.

use common::protocol::StoredBody;

use crate::state::ProxySettings;

/// What to keep of each body; `None` in the settings when bodies are not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCapture {
    max_bytes: usize,
}

impl BodyCapture {
    pub fn new(max_bytes: usize) -> Self {
        BodyCapture { max_bytes }
    }

    /// What the settings say to keep; `None` when bodies are not stored.
    pub fn of(settings: &ProxySettings) -> Option<Self> {
        settings.stored_body_max_bytes.map(BodyCapture::new)
    }

    /// A whole body, cut at the limit.
    pub fn keep(&self, body: &[u8]) -> StoredBody {
        let truncated = body.len() > self.max_bytes;
        stored(&body[..body.len().min(self.max_bytes)], truncated)
    }

    /// A body that arrives in pieces.
    pub fn stream(&self) -> StreamCapture {
        StreamCapture {
            kept: Vec::new(),
            max_bytes: self.max_bytes,
            truncated: false,
        }
    }
}

/// The first bytes of a streamed body, gathered as it passes.
#[derive(Debug)]
pub struct StreamCapture {
    kept: Vec<u8>,
    max_bytes: usize,
    truncated: bool,
}

impl StreamCapture {
    pub fn push(&mut self, chunk: &[u8]) {
        let room = self.max_bytes - self.kept.len();
        if chunk.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }

    /// What was kept so far; the capture starts again empty.
    pub fn take(&mut self) -> StoredBody {
        stored(&std::mem::take(&mut self.kept), std::mem::take(&mut self.truncated))
    }
}

/// `bytes` as text. A cut may fall inside a character: its first bytes are left out
/// rather than shown as a replacement character.
fn stored(bytes: &[u8], truncated: bool) -> StoredBody {
    let end = if truncated { complete_prefix(bytes) } else { bytes.len() };
    StoredBody {
        text: String::from_utf8_lossy(&bytes[..end]).into_owned(),
        truncated,
    }
}

/// The length of `bytes` without a UTF-8 sequence cut short at its end.
fn complete_prefix(bytes: &[u8]) -> usize {
    // The last byte that starts a character, within the longest sequence (4 bytes).
    let Some(start) = (bytes.len().saturating_sub(4)..bytes.len())
        .rev()
        .find(|&i| bytes[i] & 0xC0 != 0x80)
    else {
        return bytes.len();
    };
    let lead = bytes[start];
    let width = match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return bytes.len(), // Not UTF-8 anyway: replaced like the rest.
    };
    if start + width > bytes.len() {
        start
    } else {
        bytes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_within_the_limit_is_kept_whole() {
        let kept = BodyCapture::new(5).keep(b"hello");
        assert_eq!(
            kept,
            StoredBody {
                text: "hello".into(),
                truncated: false
            }
        );
    }

    #[test]
    fn a_longer_body_is_cut_at_the_limit_and_flagged() {
        let kept = BodyCapture::new(4).keep(b"hello");
        assert_eq!(
            kept,
            StoredBody {
                text: "hell".into(),
                truncated: true
            }
        );
    }

    #[test]
    fn a_cut_inside_a_character_leaves_the_character_out() {
        // "é" is two bytes, "€" three, "𝄞" four: a cut after each of their first bytes.
        for (body, max, text) in [("aé", 2, "a"), ("a€", 3, "a"), ("a𝄞", 4, "a"), ("a𝄞", 5, "a𝄞")] {
            let kept = BodyCapture::new(max).keep(format!("{body}z").as_bytes());
            assert_eq!(kept.text, text, "{body} cut at {max}");
            assert!(kept.truncated);
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced() {
        let kept = BodyCapture::new(10).keep(b"a\xffb");
        assert_eq!(kept.text, "a\u{fffd}b");
    }

    #[test]
    fn a_stream_is_kept_up_to_the_limit_across_its_pieces() {
        let mut capture = BodyCapture::new(7).stream();
        for piece in [&b"data"[..], b": 1\n", b"\n"] {
            capture.push(piece);
        }
        assert_eq!(
            capture.take(),
            StoredBody {
                text: "data: 1".into(),
                truncated: true
            }
        );
        let mut exact = BodyCapture::new(8).stream();
        exact.push(b"data");
        exact.push(b": 1\n");
        assert_eq!(
            exact.take(),
            StoredBody {
                text: "data: 1\n".into(),
                truncated: false
            }
        );
    }
}
