//! Placement: which node with a free slot takes a request, and conversation affinity.
//!
//! Candidates are the online, enabled nodes that list the model, are of the kind the
//! request needs if it needs one (Ollama's API: `ollama` nodes only) and were not
//! tried yet, that are not in a back-off they asked for (429/503 with `Retry-After`) and
//! have a free slot (fewer requests in flight than their capacity). Among them the
//! least loaded relative to its share wins: in flight ÷ (weight × capacity, 1 for a
//! node without a capacity), compared without division; ties go round-robin (the
//! scan starts one node further each time). **Affinity**: a request whose session
//! key (the `x-session-id` header, else a hash of the leading messages) was placed
//! before goes back to that node if it has a free slot and no more than `margin`
//! requests in flight beyond the least busy candidate.
//!
//! One pass over the registry, atomics only, no allocation: this is the whole cost of
//! routing a request while a node has a free slot. It knows nothing of HTTP.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::nodes::{Node, NodeId, NodeKind, NodeRegistry, NodeStatus};

/// What placing a request needs to know of it.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub model: &'a str,
    /// The only kind of node that may serve it (`None`: any); a model that only nodes
    /// of other kinds serve is unknown to it.
    pub kind: Option<NodeKind>,
    /// Its conversation's key (see [`session_key`]); `None`: no affinity.
    pub session: Option<u64>,
}

/// Why no node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoNode {
    /// No live node lists the model.
    UnknownModel,
    /// Some node lists it, but none is online, enabled and untried.
    Unavailable,
}

/// The outcome of one placement attempt.
#[derive(Debug)]
pub(super) enum Placement {
    /// A slot on this node is taken for the request.
    Placed(Arc<Node>),
    /// Candidates exist, but none has a free slot now.
    Full,
    NoNode(NoNode),
}

/// Whether the affinity of a placed request was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AffinityResult {
    /// No node had served this conversation (or the request has no key).
    None,
    Hit,
    /// Another node took it (the remembered one was busier, full or gone).
    Miss,
}

/// A load compared as a fraction `active / share` without dividing.
#[derive(Debug, Clone, Copy)]
struct Load {
    active: u64,
    share: u64,
}

impl Load {
    fn less_than(self, other: Load) -> bool {
        u128::from(self.active) * u128::from(other.share) < u128::from(other.active) * u128::from(self.share)
    }
}

/// The last node of each conversation: a direct-mapped table of atomics (a newer
/// conversation that falls on the same entry takes it over; affinity is a hint).
pub struct AffinityTable {
    entries: Box<[AtomicU64]>,
}

/// Entries of the affinity table.
const AFFINITY_ENTRIES: usize = 1 << 14;
/// Bits of an entry that hold the node id (+1, so 0 is empty); the rest hold a tag of the key.
const NODE_BITS: u32 = 24;

impl Default for AffinityTable {
    fn default() -> Self {
        AffinityTable {
            entries: (0..AFFINITY_ENTRIES).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl AffinityTable {
    fn slot(&self, key: u64) -> (&AtomicU64, u64) {
        let entry = &self.entries[(key as usize) % self.entries.len()];
        (entry, key >> NODE_BITS)
    }

    /// The node that last served conversation `key`.
    pub fn get(&self, key: u64) -> Option<NodeId> {
        let (entry, tag) = self.slot(key);
        let e = entry.load(Ordering::Relaxed);
        (e != 0 && e >> NODE_BITS == tag).then(|| ((e & ((1 << NODE_BITS) - 1)) - 1) as NodeId)
    }

    pub fn remember(&self, key: u64, node: NodeId) {
        let (entry, tag) = self.slot(key);
        let id = (node as u64 + 1) & ((1 << NODE_BITS) - 1);
        entry.store(tag << NODE_BITS | id, Ordering::Relaxed);
    }
}

/// Places requests on nodes (see the module's documentation).
pub(super) struct Placer {
    pub registry: Arc<NodeRegistry>,
    pub affinity: AffinityTable,
    /// Requests in flight the remembered node may have beyond the least busy candidate.
    pub affinity_margin: u64,
    next: AtomicUsize,
}

impl Placer {
    pub fn new(registry: Arc<NodeRegistry>, affinity_margin: u64) -> Self {
        Placer {
            registry,
            affinity: AffinityTable::default(),
            affinity_margin,
            next: AtomicUsize::new(0),
        }
    }

    /// Takes a slot on the best candidate for `wanted`, skipping `tried`.
    pub fn place(&self, wanted: Wanted<'_>, tried: &[NodeId]) -> (Placement, AffinityResult) {
        let remembered = wanted.session.and_then(|k| self.affinity.get(k));
        // A slot may be taken by another thread between the scan and `try_enter`: scan again.
        for _ in 0..4 {
            let (node, capacity) = match self.choose(wanted, tried, remembered) {
                Ok(chosen) => chosen,
                Err(placement) => return (placement, AffinityResult::None),
            };
            if node.load.try_enter(capacity) {
                let result = match remembered {
                    None => AffinityResult::None,
                    Some(id) if id == node.id => AffinityResult::Hit,
                    Some(_) => AffinityResult::Miss,
                };
                if let Some(key) = wanted.session {
                    if result != AffinityResult::Hit {
                        self.affinity.remember(key, node.id);
                    }
                }
                return (Placement::Placed(node), result);
            }
        }
        (Placement::Full, AffinityResult::None)
    }

    /// A node other than `tried` that could take `wanted`, whether or not it is busy
    /// (no slot is taken): the least busy one, or why there is none.
    pub fn candidate(&self, wanted: Wanted<'_>, tried: &[NodeId]) -> Result<Arc<Node>, NoNode> {
        let mut listed = false;
        let mut best: Option<(u64, Arc<Node>)> = None;
        self.registry.for_each(|n| {
            let (serves, routable) = n.with_info(|i| {
                let fits = wanted.kind.is_none_or(|k| i.kind == k);
                (
                    fits && !i.deleted && i.serves(wanted.model),
                    fits && i.routable_for(wanted.model),
                )
            });
            listed |= serves;
            let active = n.load.active();
            if routable && !tried.contains(&n.id) && best.as_ref().is_none_or(|(a, _)| active < *a) {
                best = Some((active, n.clone()));
            }
        });
        match (best, listed) {
            (Some((_, node)), _) => Ok(node),
            (None, true) => Err(NoNode::Unavailable),
            (None, false) => Err(NoNode::UnknownModel),
        }
    }

    /// One scan: the chosen node and its capacity, or why there is none.
    fn choose(
        &self,
        wanted: Wanted<'_>,
        tried: &[NodeId],
        remembered: Option<NodeId>,
    ) -> Result<(Arc<Node>, Option<u64>), Placement> {
        let mut listed = false;
        let mut candidates = false;
        let mut best: Option<(Load, &Arc<Node>, Option<u64>)> = None;
        let mut sticky: Option<(u64, &Arc<Node>, Option<u64>)> = None;
        let mut least_active = u64::MAX;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let nodes = self.registry.read();
        let len = nodes.len();
        for i in 0..len {
            let node = &nodes[(start + i) % len];
            let (serves, routable, capacity, weight) = node.with_info(|i| {
                let serves = wanted.kind.is_none_or(|k| i.kind == k) && !i.deleted && i.serves(wanted.model);
                // `routable_for` without comparing the model names a second time.
                let routable = serves && i.enabled && i.status == NodeStatus::Online;
                (serves, routable, node.load.capacity_here(i.capacity()), i.weight)
            });
            listed |= serves;
            if !routable || tried.contains(&node.id) {
                continue;
            }
            candidates = true;
            let active = node.load.active();
            if capacity.is_some_and(|c| active >= c) || node.load.refusing() {
                continue;
            }
            least_active = least_active.min(active);
            let load = Load {
                active,
                share: weight.max(1) * capacity.unwrap_or(1),
            };
            if best.is_none_or(|(b, _, _)| load.less_than(b)) {
                best = Some((load, node, capacity));
            }
            if remembered == Some(node.id) {
                sticky = Some((active, node, capacity));
            }
        }
        if let Some((active, node, capacity)) = sticky {
            if active <= least_active.saturating_add(self.affinity_margin) {
                return Ok((node.clone(), capacity));
            }
        }
        match (best, candidates, listed) {
            (Some((_, node, capacity)), _, _) => Ok((node.clone(), capacity)),
            (None, true, _) => Err(Placement::Full),
            (None, false, true) => Err(Placement::NoNode(NoNode::Unavailable)),
            (None, false, false) => Err(Placement::NoNode(NoNode::UnknownModel)),
        }
    }
}

/// The conversation key of a request: its `x-session-id`, else a hash of its leading
/// messages (every message up to and including the first user message: what every
/// later turn of the conversation starts with). `None` without either.
///
/// Hashed with foldhash rather than SipHash (a third of the instructions on a short
/// conversation): the key only picks an entry of the affinity table, in memory, where
/// a collision costs a conversation its affinity and nothing else.
pub fn session_key(session_id: Option<&[u8]>, request: &serde_json::Value) -> Option<u64> {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = foldhash::quality::FixedState::with_seed(0x5e55_1011).build_hasher();
    if let Some(id) = session_id.filter(|id| !id.is_empty()) {
        "session".hash(&mut h);
        id.hash(&mut h);
        return Some(h.finish());
    }
    let messages = request.get("messages").or_else(|| request.get("input"))?.as_array()?;
    "prefix".hash(&mut h);
    request.get("model")?.as_str()?.hash(&mut h);
    for m in messages {
        // Not a conversation (an embeddings batch, say): no key, and no time spent on it.
        let role = m.get("role").and_then(serde_json::Value::as_str)?;
        hash_json(m, &mut h);
        if role == "user" {
            return Some(h.finish());
        }
    }
    None
}

fn hash_json(v: &serde_json::Value, h: &mut impl std::hash::Hasher) {
    use serde_json::Value;
    use std::hash::Hash;
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => b.hash(h),
        Value::Number(n) => n.as_f64().map(f64::to_bits).hash(h),
        Value::String(s) => s.hash(h),
        Value::Array(a) => a.iter().for_each(|x| hash_json(x, h)),
        Value::Object(o) => o.iter().for_each(|(k, x)| {
            k.hash(h);
            hash_json(x, h);
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn loads_compare_relative_to_their_share() {
        let l = |active, share| Load { active, share };
        assert!(l(1, 2).less_than(l(1, 1)));
        assert!(!l(2, 2).less_than(l(1, 1)), "equal: a tie");
        assert!(l(0, 1).less_than(l(1, 4)));
    }

    #[test]
    fn the_affinity_table_remembers_the_last_node_of_a_key() {
        let t = AffinityTable::default();
        assert_eq!(t.get(42), None);
        t.remember(42, 7);
        assert_eq!(t.get(42), Some(7));
        t.remember(42, 0);
        assert_eq!(t.get(42), Some(0));
        // Another key on the same entry takes it over; the first one is forgotten.
        let other = 42 + AFFINITY_ENTRIES as u64 * (1 << NODE_BITS);
        t.remember(other, 3);
        assert_eq!((t.get(other), t.get(42)), (Some(3), None));
    }

    #[test]
    fn every_turn_of_a_conversation_has_the_key_of_its_first_turn() {
        let turn1 = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]});
        let turn2 = json!({"model": "m", "messages": [
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how are you?"}]});
        let other = json!({"model": "m", "messages": [{"role": "user", "content": "hello"}]});
        let k1 = session_key(None, &turn1).unwrap();
        assert_eq!(session_key(None, &turn2), Some(k1));
        assert_ne!(session_key(None, &other), Some(k1));
        assert_ne!(session_key(Some(b"abc"), &turn1), Some(k1), "the header wins");
        assert_eq!(session_key(Some(b"abc"), &other), session_key(Some(b"abc"), &turn1));
        assert_eq!(session_key(None, &json!({"model": "m", "prompt": "x"})), None);
        assert_eq!(session_key(None, &json!({"model": "m", "input": ["a", "b"]})), None);
    }
}
