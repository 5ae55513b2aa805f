//! How a worker stops every shard: fenced (no confirmed heartbeat in time; it comes back
//! as a new incarnation) or gracefully (flush, release, resign, leave).

use std::collections::BTreeSet;
use std::pin::Pin;

use dynamodb_streams_leases::{Checkpoint, LeaseKey, Ownership};

use super::{State, Worker};
use crate::announce;
use crate::error::Result;
use crate::events::{Event, LeaseReleased};
use crate::leader::shard_sync_key;
use crate::processor::ProcessorFactory;
use crate::retry;
use crate::runtime::ShardOutcome;

impl<F: ProcessorFactory> Worker<F> {
    /// No confirmed heartbeat in time (or the entry was removed): stop every shard without
    /// writing, then come back as a new incarnation, which gets leases like any other.
    /// Every step gives way to `shutdown` at once (`None`), the comeback's retries too.
    pub(super) async fn fence(
        &self,
        state: &mut State,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<()>> {
        let stopped = async {
            tracing::error!(incarnation = %state.incarnation.id, "fenced: stopping every shard");
            self.shared.telemetry.health.fenced();
            state.stop_all_shards();
            while state.tasks.join_next().await.is_some() {}
            state.running.clear();
            state.incarnation.stop_heartbeat.cancel();
            state.incarnation.leading.send_replace(None);
        };
        tokio::select! {
            biased;
            () = &mut shutdown => return Ok(None),
            () = stopped => {}
        }
        // Anything but a deleted lease table is worth another try.
        let comeback = self
            .start_incarnation(|e| !e.is_table_missing(), shutdown)
            .await?;
        let Some(incarnation) = comeback else {
            return Ok(None);
        };
        tracing::info!(incarnation = %incarnation.id, "worker back as a new incarnation");
        *state = State {
            done_parents: std::mem::take(&mut state.done_parents),
            undelivered: std::mem::take(&mut state.undelivered),
            ..State::new(
                incarnation,
                self.shared.config.failover_time,
                self.first_coordination(),
            )
        };
        Ok(Some(()))
    }

    /// Graceful shutdown: every shard finishes its batch, is told, flushes and releases;
    /// leases not running are released too; the leader's role is given up, so another
    /// worker claims it at once; then the worker's entry goes.
    pub(super) async fn shut_down(&self, mut state: State) {
        let me = state.incarnation.id.clone();
        tracing::info!(incarnation = %me, shards = state.running.len(), "shutting down");
        self.shared.telemetry.health.stopped();
        // A shard sync in flight is abandoned: the next leader's sync redoes it.
        // The heartbeat goes on renewing the leader's role until it is given up below: a
        // role left to lapse while shards finish their batches (a shutdown timeout longer
        // than the failover time) would make the next leader judge this worker dead and
        // hand out its leases while its callbacks still run.
        let leading = state.leader.take().is_some();
        for running in state.running.values() {
            running.signals.release.cancel();
        }
        // (issue 8) A shard whose final checkpoint could not be written keeps its lease.
        let mut kept = BTreeSet::new();
        let fenced = state.incarnation.fenced.clone();
        let mut fencing_seen = false;
        loop {
            let joined = tokio::select! {
                joined = state.tasks.join_next() => joined,
                () = fenced.cancelled(), if !fencing_seen => {
                    // Heartbeats stopped being confirmed while shards finish their batches
                    // (a shutdown timeout longer than the failover time): other workers
                    // may take these leases soon, so every shard stops now, as when fenced.
                    tracing::error!(incarnation = %me, "fenced while shutting down: stopping every shard");
                    state.stop_all_shards();
                    fencing_seen = true;
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            match joined {
                Ok((key, ShardOutcome::Failed(error))) => {
                    tracing::error!(lease = %key, %error, "shard stopped on an error; its lease is kept, not released");
                    kept.insert(key);
                }
                Ok((key, _)) => {
                    state.mine.remove(&key);
                }
                Err(_) => {}
            }
        }
        // Leases given to this worker whose hints it has not read yet are its own too.
        let inbox = self.announcer.inner();
        if let Ok(notices) = inbox.notices(&me).await
            && !notices.is_empty()
        {
            let keys: Vec<LeaseKey> = notices.iter().map(|n| n.key.clone()).collect();
            if let Ok(leases) = inbox.get_leases(&keys).await {
                for lease in leases.into_iter().filter(|l| l.is_owned_by(&me)) {
                    if lease.checkpoint == Checkpoint::ShardEnd {
                        if let Some(ownership) = lease.ownership() {
                            state.finished.insert(lease.key.clone(), ownership);
                        }
                    } else {
                        state.mine.insert(lease.key.clone(), lease);
                    }
                }
            }
        }
        let store = self.shared.store.as_ref();
        let mut owned: Vec<(LeaseKey, Ownership)> = state
            .mine
            .values()
            .filter(|l| !kept.contains(&l.key))
            .filter_map(|l| Some((l.key.clone(), l.ownership()?)))
            .chain(std::mem::take(&mut state.finished))
            .collect();
        if leading
            && let Ok(Some(sync)) = store.get_lease(&shard_sync_key()).await
            && let Some(ownership) = sync.ownership().filter(|o| o.owner == me)
        {
            owned.push((sync.key, ownership));
        }
        // Released together: one slow lease must not hold up the others.
        let releases = owned.iter().map(|(key, ownership)| async move {
            let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
                store.release_lease(key, ownership)
            })
            .await;
            if released.is_ok() {
                LeaseReleased {
                    lease: key,
                    to: None,
                }
                .emit();
            }
        });
        futures::future::join_all(releases).await;
        announce::flush(self.announcer.inner().as_ref(), self.announcer.changes()).await;
        // Hints still undelivered get a last try: their leases are other workers' now.
        state
            .undelivered
            .retry(self.announcer.inner().as_ref())
            .await;
        state.incarnation.leading.send_replace(None);
        if leading && let Err(error) = self.announcer.inner().resign_leadership(&me).await {
            tracing::warn!(%error, "could not give up the leader's role; another worker takes it after the failover time");
        }
        state.incarnation.stop_heartbeat.cancel();
        let deleted = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.delete_worker(&me)
        })
        .await;
        if let Err(error) = deleted {
            tracing::warn!(%error, "worker entry not removed; the leader removes it after the failover time");
        }
        tracing::info!(incarnation = %me, "worker stopped");
    }
}
