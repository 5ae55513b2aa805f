//! The leases a worker owns: read from the hints in its inbox and from its own audits,
//! acted on (kept, started once their parents are done, handed over, stopped).

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;

use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Running, State, Worker};
use crate::error::Result;
use crate::events::{Event, LeaseAcquired};
use crate::leader::{AUDIT_INTERVAL, StreamSource, source_of};
use crate::lease_protocol;
use crate::processor::ProcessorFactory;
use crate::runtime::{LeaseTask, ShardOutcome, ShardSignals};
use crate::{shard, snapshot};

impl<F: ProcessorFactory> Worker<F> {
    /// Reads the hints in this worker's inbox and the leases they name, acts on each
    /// lease, then clears the hints read.
    pub(super) async fn read_inbox(&self, state: &mut State) -> Result<()> {
        let me = state.incarnation.id.clone();
        let store = self.announcer.inner();
        let notices = store.notices(&me).await?;
        if notices.is_empty() {
            return Ok(());
        }
        let mut keys: Vec<LeaseKey> = notices.iter().map(|n| n.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let leases = store.get_leases(&keys).await?;
        self.act_on_read(state, keys, leases).await;
        store.clear_notices(&me, &notices).await?;
        Ok(())
    }

    /// Reads every lease this worker holds or runs, and acts on what they say.
    pub(super) async fn self_audit(&self, state: &mut State) -> Result<()> {
        let mut keys: Vec<LeaseKey> = state
            .mine
            .keys()
            .chain(state.running.keys())
            .cloned()
            .collect();
        keys.sort();
        keys.dedup();
        let leases = self.shared.store.get_leases(&keys).await?;
        state.next_self_audit = Instant::now() + AUDIT_INTERVAL;
        self.act_on_read(state, keys, leases).await;
        Ok(())
    }

    /// Acts on a read of `keys` (sorted, without repeats): each lease `leases` holds is
    /// reconciled, each key it lacks is gone.
    async fn act_on_read(&self, state: &mut State, keys: Vec<LeaseKey>, leases: Vec<Lease>) {
        let mut read: BTreeMap<LeaseKey, Lease> =
            leases.into_iter().map(|l| (l.key.clone(), l)).collect();
        for key in keys {
            match read.remove(&key) {
                Some(lease) => self.reconcile(state, lease).await,
                None => self.gone(state, &key),
            }
        }
    }

    /// Acts on a lease as just read: keeps, starts, hands over or stops it.
    pub(super) async fn reconcile(&self, state: &mut State, lease: Lease) {
        let me = state.incarnation.id.clone();
        let key = lease.key.clone();
        state.stale.remove(&key);
        if lease.checkpoint == Checkpoint::ShardEnd {
            state.done_parents.insert(key.clone());
        }
        let mine_now = lease.is_owned_by(&me) && lease_protocol::is_active(&lease);
        if let Some(running) = state.running.get_mut(&key) {
            if !mine_now || lease.ownership().as_ref() != Some(&running.ownership) {
                running.signals.lost.cancel();
            } else if lease.handoff_to.is_some() && !running.signals.release.is_cancelled() {
                tracing::info!(lease = %key, to = ?lease.handoff_to, "handing the lease over");
                running.handoff_to = lease.handoff_to.clone();
                running.signals.release.cancel();
            }
        }
        if !mine_now {
            state.mine.remove(&key);
            return;
        }
        if let (false, Some(to), Some(ownership)) = (
            state.running.contains_key(&key),
            lease.handoff_to.clone(),
            lease.ownership(),
        ) {
            // Not running (waiting for parents or a retry): nothing to finish, hand it
            // over at once. Kept as mine until that write succeeds (`start_ready` skips a
            // lease asked for), so the next read of it (a hint, the self audit) tries
            // again: dropped on a failed write, the lease stayed with this live worker,
            // which ran it no more, and nobody else could take it (explorer seed 13898).
            if self
                .hand_over_unreleased(&mut state.undelivered, &key, &ownership, &to)
                .await
            {
                state.mine.remove(&key);
            } else {
                state.mine.insert(key, lease);
            }
            return;
        }
        if !state.mine.contains_key(&key) {
            LeaseAcquired {
                lease: &key,
                previous_owner: None,
            }
            .emit();
        }
        state.mine.insert(key, lease);
    }

    /// A lease a hint named is gone: stop it if it runs here; as a parent, it is done.
    pub(super) fn gone(&self, state: &mut State, key: &LeaseKey) {
        state.stale.remove(key);
        if let Some(running) = state.running.get(key) {
            running.signals.lost.cancel();
        }
        state.mine.remove(key);
        state.done_parents.insert(key.clone());
    }

    /// Confirms, with one consistent read, which parents of the leases waiting here are
    /// finished or gone: a parent is done only when a read says so (invariant 3).
    pub(super) async fn confirm_parents(&self, state: &mut State) {
        let mut parents: Vec<LeaseKey> = state
            .mine
            .values()
            .filter(|l| !state.running.contains_key(&l.key))
            .flat_map(|l| {
                l.parent_shard_ids
                    .iter()
                    .map(|parent| LeaseKey::new(l.key.stream.clone(), parent.clone()))
            })
            .filter(|parent| !state.done_parents.contains(parent))
            .collect();
        if parents.is_empty() {
            return;
        }
        parents.sort();
        parents.dedup();
        match self.shared.store.get_leases(&parents).await {
            Ok(read) => {
                let unfinished: BTreeSet<&LeaseKey> = read
                    .iter()
                    .filter(|l| l.checkpoint != Checkpoint::ShardEnd)
                    .map(|l| &l.key)
                    .collect();
                for parent in parents {
                    if !unfinished.contains(&parent) {
                        state.done_parents.insert(parent);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the parents of waiting leases; their children wait")
            }
        }
    }

    /// Starts a consumer for each lease of this worker whose parents are done.
    pub(super) fn start_ready(&self, state: &mut State, now: Instant) {
        let ready: Vec<Lease> = state
            .mine
            .values()
            .filter(|lease| {
                lease_protocol::is_active(lease)
                    && lease.handoff_to.is_none()
                    && !state.running.contains_key(&lease.key)
                    && !state.stale.contains(&lease.key)
                    && state
                        .retry_after
                        .get(&lease.key)
                        .is_none_or(|at| *at <= now)
                    && lease.parent_shard_ids.iter().all(|parent| {
                        state
                            .done_parents
                            .contains(&LeaseKey::new(lease.key.stream.clone(), parent.clone()))
                    })
            })
            .cloned()
            .collect();
        for lease in ready {
            let Some(ownership) = lease.ownership() else {
                continue;
            };
            // Fencing reaches every shard at once through the token tree, even while this
            // loop is stuck in a slow lease-table call.
            let signals = ShardSignals {
                release: CancellationToken::new(),
                lost: state.incarnation.fenced.child_token(),
            };
            let task = LeaseTask {
                runtime: self.shared.clone(),
                lease: lease.clone(),
                ownership: ownership.clone(),
                table: self
                    .source_of(&lease.key.stream)
                    .and_then(|s| s.table.clone()),
            };
            // A Scan segment of a snapshot, or a shard of the stream.
            let run: BoxFuture<'static, ShardOutcome> = if snapshot::is_segment(&lease.key) {
                Box::pin(snapshot::segment::run_segment(task, signals.clone()))
            } else {
                Box::pin(shard::run(task, signals.clone()))
            };
            let key = lease.key.clone();
            state.tasks.spawn(async move {
                let outcome = AssertUnwindSafe(run)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| {
                        ShardOutcome::Failed(crate::Error::Processor {
                            shard_id: key.shard_id.clone(),
                            source: "the processor panicked".into(),
                        })
                    });
                (key, outcome)
            });
            state.retry_after.remove(&lease.key);
            state.running.insert(
                lease.key.clone(),
                Running {
                    ownership,
                    signals,
                    handoff_to: None,
                },
            );
        }
    }

    /// The source a lease's stream belongs to.
    pub(super) fn source_of(&self, stream_arn: &str) -> Option<&StreamSource> {
        source_of(&self.streams, stream_arn)
    }
}
