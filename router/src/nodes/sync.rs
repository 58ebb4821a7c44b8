//! Taking in the node changes other replicas made: the registry is brought in line
//! with the store's rows (router replicas on one database, DESIGN §12).
//!
//! Settings are the store's; what this replica observed (status, models, slots,
//! back-off, requests in flight) stays its own. A node new to this replica joins
//! unprobed: the caller probes it.

use std::sync::Arc;

use super::{Node, NodeLoadState, NodeRegistry};
use crate::store::{StoreError, StoredNode};

impl NodeRegistry {
    /// Reads the stored rows (every node, deleted ones included) and applies them to
    /// the registry; returns the live nodes that were not known before, to be probed.
    /// Changes made here wait meanwhile, so a row read before one of them never undoes
    /// it (a deleted node taking requests again until the next sync).
    pub async fn take_stored(&self) -> Result<Vec<Arc<Node>>, StoreError> {
        let _changing = self.changing.lock().await;
        let stored = self.store.all_nodes().await?;
        Ok(self.apply_stored(stored))
    }

    fn apply_stored(&self, stored: Vec<StoredNode>) -> Vec<Arc<Node>> {
        let mut added = Vec::new();
        let mut changed = false;
        for row in stored {
            match self.get(row.id) {
                Some(node) => {
                    if node.with_info(|i| same_settings(i, &row)) {
                        continue;
                    }
                    tracing::info!(node = %row.name, "node changed by another replica");
                    node.update_info(|i| {
                        // The operator asked for detection again elsewhere: do it here too.
                        i.redetect_kind |= i.kind_explicit && !row.kind_explicit;
                        i.take_settings(row);
                    });
                    changed = true;
                }
                None => {
                    let live = row.deleted_at.is_none();
                    tracing::info!(node = %row.name, live, "node added by another replica");
                    let node = Arc::new(Node::new(row, NodeLoadState::default()));
                    self.nodes.write().unwrap().push(node.clone());
                    if live {
                        added.push(node);
                    }
                }
            }
        }
        if changed {
            self.changed();
        }
        added
    }
}

/// Whether the node's settings are already the row's.
fn same_settings(i: &super::NodeInfo, row: &StoredNode) -> bool {
    i.name == row.name
        && i.api_key == row.api_key
        && i.enabled == row.enabled
        && i.include_usage == row.include_usage
        && i.kind_explicit == row.kind_explicit
        && (!row.kind_explicit || i.kind.as_str() == row.kind)
        && i.tls_insecure == row.tls_insecure
        && i.max_concurrent == row.max_concurrent
        && i.weight == row.weight
        && i.source == row.source
        && i.deleted == row.deleted_at.is_some()
}
