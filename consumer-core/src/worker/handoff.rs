//! A shard task's end as the worker sees it: a finished shard continues into its children,
//! a released lease is handed to the worker that asked for it, a failed one restarts later.

use dynamodb_streams_leases::{LeaseKey, Ownership};
use tokio::time::Instant;

use super::hints::Undelivered;
use super::{Running, State, Worker};
use crate::events::{Event, LeaseAcquired};
use crate::processor::ProcessorFactory;
use crate::runtime::ShardOutcome;

/// The finished leases a worker remembers to release at shutdown (the shard sync deletes
/// finished leases once their children started, so older ones are mostly gone anyway).
const FINISHED_KEPT: usize = 1_000;

impl<F: ProcessorFactory> Worker<F> {
    /// Handles a finished shard consumer.
    pub(super) async fn shard_finished(
        &self,
        state: &mut State,
        joined: std::result::Result<(LeaseKey, ShardOutcome), tokio::task::JoinError>,
    ) {
        let Ok((key, outcome)) = joined else {
            // Consumers catch their own panics (see `start_ready`); a join error means the
            // task was aborted, which only happens when the runtime shuts down.
            return;
        };
        let running = state.running.remove(&key);
        match outcome {
            ShardOutcome::Ended => {
                state.mine.remove(&key);
                if let Some(running) = running
                    && state.finished.len() < FINISHED_KEPT
                {
                    state.finished.insert(key.clone(), running.ownership);
                }
                state.done_parents.insert(key.clone());
                self.continue_into_children(state, &key).await;
                self.confirm_parents(state).await;
                self.start_ready(state, Instant::now());
            }
            ShardOutcome::Released => {
                state.mine.remove(&key);
                if let Some(Running {
                    ownership,
                    handoff_to: Some(to),
                    ..
                }) = running
                {
                    self.hand_over(&mut state.undelivered, &key, &ownership, &to)
                        .await;
                }
            }
            ShardOutcome::LeaseLost => {
                // The lease may already be this worker's again under a new epoch (the
                // leader took it back for it, e.g. after an operator's reset): that lease
                // starts afresh from its own checkpoint; only the one that was lost goes.
                let retaken = match (state.mine.get(&key), &running) {
                    (Some(lease), Some(running)) => {
                        lease.ownership().as_ref() != Some(&running.ownership)
                    }
                    _ => false,
                };
                if retaken {
                    self.start_ready(state, Instant::now());
                } else {
                    state.mine.remove(&key);
                }
            }
            ShardOutcome::Failed(error) => {
                let pause = self.shared.config.processing_backoff_max;
                tracing::error!(lease = %key, %error, ?pause, "shard consumer failed; restarting it later");
                state
                    .retry_after
                    .insert(key.clone(), Instant::now() + pause);
                // Restarted from the lease as read now, not as first taken (issue 15); if
                // the read fails, the next self-audit refreshes it.
                state.stale.insert(key.clone());
                match self.shared.store.get_lease(&key).await {
                    Ok(Some(lease)) => self.reconcile(state, lease).await,
                    Ok(None) => self.gone(state, &key),
                    Err(error) => {
                        tracing::warn!(lease = %key, %error, "cannot read the failed shard's lease; it restarts after the next audit")
                    }
                }
            }
        }
    }

    /// Takes the children of a shard this worker just finished that it created itself
    /// (unowned, as created): the shard's history continues here without waiting for the
    /// leader. Children created by another worker come through the leader.
    pub(super) async fn continue_into_children(&self, state: &mut State, parent: &LeaseKey) {
        let me = state.incarnation.id.clone();
        for child in self.announcer.changes().take_children_of(parent) {
            match self
                .shared
                .store
                .take_lease(&child.key, None, child.epoch, &me)
                .await
            {
                Ok(taken) => {
                    LeaseAcquired {
                        lease: &taken.key,
                        previous_owner: None,
                    }
                    .emit();
                    state.mine.insert(taken.key.clone(), taken);
                }
                Err(error) => {
                    tracing::debug!(lease = %child.key, %error, "child taken by another worker first")
                }
            }
        }
    }

    /// Gives a lease released for a handoff to the worker that asked for it, right after the
    /// release (a take on its behalf, conditional on the epoch the release left), and hints
    /// it: otherwise the lease would wait unowned for the leader. Not announced: the leader
    /// asked for this move and already counts the lease as the requester's, so a hint that
    /// cannot be written is kept and sent again ([`super::hints`]).
    pub(super) async fn hand_over(
        &self,
        undelivered: &mut Undelivered,
        key: &LeaseKey,
        released: &Ownership,
        to: &str,
    ) {
        let epoch = released.epoch + 1;
        match self
            .announcer
            .inner()
            .take_lease(key, None, epoch, to)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %key, %to, "lease handed over");
                self.hint(undelivered, to, key).await;
            }
            // Someone took it first, or the release did not happen: nothing to hand over.
            Err(error) => tracing::debug!(lease = %key, %to, %error, "handover not done"),
        }
    }

    /// Hands over a lease this worker owns but does not run: one take on the requester's
    /// behalf, conditional on this worker's ownership (not announced, like [`Self::hand_over`]).
    /// Whether it was handed over.
    pub(super) async fn hand_over_unreleased(
        &self,
        undelivered: &mut Undelivered,
        key: &LeaseKey,
        ownership: &Ownership,
        to: &str,
    ) -> bool {
        match self
            .announcer
            .inner()
            .take_lease(key, Some(&ownership.owner), ownership.epoch, to)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %key, %to, "idle lease handed over");
                self.hint(undelivered, to, key).await;
                true
            }
            Err(error) => {
                tracing::debug!(lease = %key, %to, %error, "handover not done");
                false
            }
        }
    }

    /// Hints `to` that `key` is its own now (kept for a retry if the write fails).
    async fn hint(&self, undelivered: &mut Undelivered, to: &str, key: &LeaseKey) {
        undelivered
            .send(
                self.announcer.inner().as_ref(),
                to,
                std::slice::from_ref(key),
            )
            .await;
    }
}
