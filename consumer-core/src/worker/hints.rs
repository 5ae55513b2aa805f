//! Hints this worker could not deliver, sent again at every tick until the lease table
//! takes them.
//!
//! A take on another worker's behalf (the leader's plan, or an owner handing a lease over)
//! is not announced: the leader already counts the lease as the new owner's. The hint in
//! the new owner's inbox is then the only way that worker learns the lease is its own; its
//! self-audit reads only the leases it knows of. A hint lost to a throttled or partitioned
//! link used to leave the lease owned by a live worker that never ran it, for good (issue
//! 15, explorer seeds 821 and 847). The hints are kept across incarnations: a fenced
//! worker's hints are still true, and a hint to a worker that died since costs one write.
//! A crash loses them: the leader's scans hint the owners of leases they may not know of
//! (`crate::leader`, "Owners that may not know their leases"; explorer seed 106452).

use std::collections::{BTreeMap, BTreeSet};

use dynamodb_streams_leases::{LeaseKey, LeaseStore};

/// The most lease keys kept for redelivery: a link down for long with many handoffs must
/// not grow the worker's memory without bound (past it, new hints are dropped and
/// logged: their leases wait for the new owner's restart).
const MAX_KEPT: usize = 10_000;

/// Hints not delivered yet, by the worker they are for.
#[derive(Debug, Default)]
pub(super) struct Undelivered {
    by_worker: BTreeMap<String, BTreeSet<LeaseKey>>,
}

impl Undelivered {
    /// Keeps `keys` for `to`, to be sent at the next [`Self::retry`].
    pub(super) fn keep(&mut self, to: &str, keys: impl IntoIterator<Item = LeaseKey>) {
        let kept: usize = self.by_worker.values().map(BTreeSet::len).sum();
        let room = MAX_KEPT.saturating_sub(kept);
        let mut keys = keys.into_iter();
        let entry = self.by_worker.entry(to.to_owned()).or_default();
        entry.extend(keys.by_ref().take(room));
        if entry.is_empty() {
            self.by_worker.remove(to);
        }
        let dropped = keys.count();
        if dropped > 0 {
            tracing::error!(worker = %to, dropped, "too many undelivered hints; some leases wait for their owner's restart");
        }
    }

    /// Hints `to` about `keys` now; keeps them for a retry if the write fails.
    pub(super) async fn send(&mut self, store: &dyn LeaseStore, to: &str, keys: &[LeaseKey]) {
        if let Err(error) = store.notify(to, keys).await {
            tracing::warn!(worker = %to, leases = keys.len(), %error, "cannot hint the new owner; sending it again at the next tick");
            self.keep(to, keys.iter().cloned());
        }
    }

    /// Sends every kept hint once more; what fails again stays kept.
    pub(super) async fn retry(&mut self, store: &dyn LeaseStore) {
        for (to, keys) in std::mem::take(&mut self.by_worker) {
            let keys: Vec<LeaseKey> = keys.into_iter().collect();
            match store.notify(&to, &keys).await {
                Ok(()) => {
                    tracing::info!(worker = %to, leases = keys.len(), "undelivered hints delivered")
                }
                Err(error) => {
                    tracing::debug!(worker = %to, %error, "hints still undelivered");
                    self.keep(&to, keys);
                }
            }
        }
    }
}
