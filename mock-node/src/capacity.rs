//! What the mock node does about its load: it counts the inference requests it has in
//! flight and their peak (so tests can check the router never exceeds a capacity),
//! serves at most `slots` at once with the rest waiting inside it (llama-server's
//! slots), and can refuse requests with 429 or 503 and a `Retry-After`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::Shared;

/// A refusal: `status` (429 or 503) with `Retry-After: retry_after` when set, to the
/// first `times` requests (`None`: all of them).
#[derive(Debug, Clone, Copy)]
pub struct Refuse {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub times: Option<usize>,
}

/// An accepted inference request, counted in flight until dropped (with the stream
/// it answers with), holding one of the node's slots once it has one.
pub(crate) struct Busy {
    shared: Arc<Shared>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Busy {
    pub(crate) async fn start(shared: &Arc<Shared>) -> Busy {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let slot = match &shared.slots {
            Some(s) => s.clone().acquire_owned().await.ok(),
            None => None,
        };
        Busy {
            shared: shared.clone(),
            _slot: slot,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
