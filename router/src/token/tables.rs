//! The BPE tables behind the estimates (`cl100k_base`): loaded when an estimate needs
//! them, dropped once none has needed them for [`KEEP_UNUSED`].
//!
//! They take about 33 MB resident and 50 ms of CPU to load. A router whose nodes
//! report usage needs them only for cancelled streams, and those come in bursts (a
//! client's load ending, thousands of streams at once); kept for good, the tables
//! stayed in memory long after the burst. The tables are bpe-openai's, serialized by
//! `build.rs` (bpe-openai keeps its own in a static that is never freed), and the
//! pretokenizer is cl100k's pattern as bpe-openai writes it, with its negative
//! look-ahead turned into a one-character look-ahead; a test checks the counts equal
//! bpe-openai's.
//!
//! Loads run on tokio's blocking pool ([`tokenizer`]), one at a time, so that the
//! ~50 ms never stalls a proxy thread; an estimate that holds the tables keeps them
//! alive until it is done, even when they are dropped meanwhile.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use bpe_openai::Tokenizer;

/// How long the tables stay loaded without an estimate.
pub const KEEP_UNUSED: Duration = Duration::from_secs(15);

static DICT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/cl100k_base.dict"));

/// cl100k's pretokenizer: the main pattern, then `\s+(?!\S)` as `\s+\s` with the last
/// character a look-ahead, then `\s+`.
const PATTERNS: [(&str, bool); 3] = [
    (
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+$",
        false,
    ),
    ("\\s+\\s", true),
    ("\\s+", false),
];

struct Loaded {
    tokenizer: Arc<Tokenizer>,
    last_used: Instant,
}

static TABLES: Mutex<Option<Loaded>> = Mutex::new(None);
/// Held by the one thread that loads the tables.
static LOADING: Mutex<()> = Mutex::new(());
/// Held by the one task that waits for a load on the blocking pool: a burst of
/// estimates must not take a blocking thread each.
static ASYNC_LOADING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tables if loaded, marked as used now.
fn loaded() -> Option<Arc<Tokenizer>> {
    let mut tables = lock(&TABLES);
    let loaded = tables.as_mut()?;
    loaded.last_used = Instant::now();
    Some(loaded.tokenizer.clone())
}

/// The tables, loaded on tokio's blocking pool when they are not.
pub async fn tokenizer() -> Arc<Tokenizer> {
    if let Some(tokenizer) = loaded() {
        return tokenizer;
    }
    let _one = ASYNC_LOADING.lock().await;
    if let Some(tokenizer) = loaded() {
        return tokenizer;
    }
    tokio::task::spawn_blocking(tokenizer_blocking)
        .await
        .unwrap_or_else(|_| tokenizer_blocking())
}

/// The tables, loaded on this thread when they are not (outside async code, or for a
/// rare caller that cannot wait).
pub fn tokenizer_blocking() -> Arc<Tokenizer> {
    if let Some(tokenizer) = loaded() {
        return tokenizer;
    }
    let _one = lock(&LOADING);
    if let Some(tokenizer) = loaded() {
        return tokenizer;
    }
    let bpe: BytePairEncoding = rmp_serde::from_slice(DICT).expect("build.rs wrote valid tables");
    release_dict_pages();
    let tokenizer = Arc::new(Tokenizer::new_lookahead(bpe, &PATTERNS).expect("cl100k's patterns compile"));
    *lock(&TABLES) = Some(Loaded {
        tokenizer: tokenizer.clone(),
        last_used: Instant::now(),
    });
    std::thread::Builder::new()
        .name("bpe-tables".into())
        .spawn(drop_when_unused)
        .map(drop)
        // Without the thread the tables stay loaded, as they did before.
        .unwrap_or_else(|e| tracing::warn!(error = %e, "BPE tables will stay loaded"));
    tokenizer
}

/// Gives back the pages of the serialized tables that reading them made resident:
/// 15 MB of the binary that stayed in the router's resident memory after each load.
/// They belong to the executable's read-only mapping: the kernel reads them from the
/// file again should the tables be loaded again.
fn release_dict_pages() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        // Whole pages inside DICT only.
        let start = (DICT.as_ptr() as usize).next_multiple_of(page);
        let end = (DICT.as_ptr() as usize + DICT.len()) / page * page;
        if end > start {
            // SAFETY: the range lies within DICT, a static in a read-only, file-backed
            // mapping that is never written: MADV_DONTNEED only drops its pages from
            // this process, and a later read maps them from the file again.
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        }
    }
}

/// Runs beside loaded tables and drops them once unused for [`KEEP_UNUSED`].
fn drop_when_unused() {
    loop {
        std::thread::sleep(KEEP_UNUSED / 3);
        if drop_if_unused(Instant::now()) {
            return;
        }
    }
}

/// Drops the tables if unused for [`KEEP_UNUSED`] at `now`; true when none are loaded
/// any more.
fn drop_if_unused(now: Instant) -> bool {
    let mut tables = lock(&TABLES);
    match &*tables {
        Some(loaded) if now.saturating_duration_since(loaded.last_used) < KEEP_UNUSED => false,
        _ => {
            let dropped = tables.take();
            drop(tables);
            drop(dropped);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Texts of words, numbers, contractions, punctuation, runs of spaces and line
    /// breaks, and non-Latin scripts: what the pretokenizer's patterns tell apart.
    fn text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z]{1,12}",
            "[0-9]{1,7}",
            Just("'s".to_string()),
            Just("'LL".to_string()),
            "[ \t]{1,5}",
            "[\r\n]{1,3}",
            "[ \n]{1,4}[a-z]{0,3}",
            "[!-/:-@]{1,4}",
            "[日本語のテキスト🙂é]{1,6}",
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]
        #[test]
        fn counts_equal_bpe_openai(text in text()) {
            let ours = tokenizer_blocking();
            prop_assert_eq!(ours.count(&text), bpe_openai::cl100k_base().count(&text), "{:?}", text);
        }
    }

    #[test]
    fn dropped_when_unused_and_loaded_again() {
        let held = tokenizer_blocking();
        let later = lock(&TABLES).as_ref().expect("loaded").last_used + KEEP_UNUSED;
        assert!(!drop_if_unused(later - Duration::from_millis(1)));
        assert!(lock(&TABLES).is_some());
        assert!(drop_if_unused(Instant::now() + KEEP_UNUSED));
        // An estimate that holds them still counts with them.
        assert_eq!(held.count("hello world"), 2);
        let again = tokenizer_blocking();
        assert!(!Arc::ptr_eq(&held, &again));
        assert_eq!(again.count("hello world"), 2);
    }
}
