//! The tap on Ollama's NDJSON streams: each line an object, forwarded unchanged;
//! the `"done": true` object is held until the record is committed and carries the
//! counts (`prompt_eval_count`, `eval_count`). A line that is not JSON is an error.

use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::Value;

use super::{error_message, StreamTap, TapOutput};
use crate::token::usage_from_ollama;

impl StreamTap {
    /// Ollama's NDJSON, forwarded unchanged, split only before the final object.
    pub(super) fn on_ndjson_chunk(&mut self, chunk: Bytes, chunk_start: u64) -> TapOutput {
        let mut split = None;
        for line in self.lines.push(&chunk) {
            let terminal = self.observe_line(line.json());
            if terminal && split.is_none() {
                split = Some(line.start.saturating_sub(chunk_start) as usize);
            }
        }
        match split {
            Some(at) => TapOutput {
                now: chunk.slice(..at),
                held: Some(chunk.slice(at..)),
            },
            None => TapOutput { now: chunk, held: None },
        }
    }

    /// One NDJSON line; returns whether it is the final object.
    pub(super) fn observe_line(&mut self, json: Option<&[u8]>) -> bool {
        let Some(json) = json else {
            return false;
        };
        if is_plain_ollama_delta(json) {
            if let Ok(text) = std::str::from_utf8(json) {
                self.defer(text);
                return false;
            }
        }
        let Ok(v) = serde_json::from_slice::<Value>(json) else {
            self.error
                .get_or_insert_with(|| "node sent a line that is not JSON".into());
            return false;
        };
        if let Some(err) = v.get("error") {
            self.error = Some(error_message(err));
        }
        self.collect_text(&v);
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            if let Some(u) = usage_from_ollama(&v) {
                self.usage = Some(u);
            }
            self.terminal_seen = true;
            return true;
        }
        false
    }
}

/// An Ollama object that can only carry generated text: not the final one, no error.
fn is_plain_ollama_delta(json: &[u8]) -> bool {
    static FINDERS: LazyLock<[memchr::memmem::Finder<'static>; 2]> = LazyLock::new(|| {
        [
            memchr::memmem::Finder::new("\"done\":false"),
            memchr::memmem::Finder::new("\"error\""),
        ]
    });
    FINDERS[0].find(json).is_some() && FINDERS[1].find(json).is_none()
}
