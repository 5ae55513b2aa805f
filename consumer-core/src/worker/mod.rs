//! The worker runtime: heartbeats, the leases it owns, shard consumers, fencing, shutdown.
//!
//! One loop per worker process. A worker never reads every lease: the leader (one of the
//! workers, see [`crate::leader`]) decides who owns what and leaves a hint in each affected
//! worker's inbox. Every `scan_interval` a worker reads its inbox (one small item), reads
//! the leases it was hinted about (one consistent BatchGetItem), and acts on what they say:
//! a lease assigned to it starts once its parents are finished, a lease it was asked for is
//! handed over after the current batch, a lease taken from it stops. Every so often (more
//! rarely the more workers there are) it reads the coordination item to judge the leader
//! on its own clock, and claims the leader's role if the leader is dead or there is none.
//! Heartbeats run in their own task ([`crate::heartbeat`]); if none is confirmed for
//! `failover_time - margin`, the worker fences itself (stops every shard at once) and comes
//! back as a new incarnation. Idle, a worker costs one heartbeat write per renew interval
//! and two small reads per scan interval, whatever the number of workers and shards.
//!
//! This file holds the loop, its state and the incarnations; the loop's steps live by
//! concept beside it: `leadership` (the leader's role), `leases` (the leases the worker
//! owns), `handoff` (a task's end) and `shutdown` (fencing and graceful shutdown).

mod handoff;
mod hints;
mod leadership;
mod leases;
mod shutdown;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dynamodb_streams_leases::{Lease, LeaseKey, Ownership};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::announce::{self, AnnouncingStore};
use crate::error::Result;
use crate::fencing_clock::FencingClock;
use crate::heartbeat::Heartbeat;
use crate::leader::{AUDIT_INTERVAL, Leader, StreamSource};
use crate::lease_protocol::Liveness;
use crate::processor::ProcessorFactory;
use crate::retry::{self, FirstAttempt};
use crate::runtime::{Runtime, ShardOutcome, ShardSignals};

/// How often a new incarnation tries another id when its membership item is full.
const JOIN_ATTEMPTS: u32 = 8;

/// A worker of one application.
pub(crate) struct Worker<F: ProcessorFactory> {
    pub shared: Arc<Runtime<F>>,
    pub streams: Vec<StreamSource>,
    /// The store the shared one announces through: its inner store for the leader's own
    /// writes, its changes for the bump task and the children created here.
    pub announcer: Arc<AnnouncingStore>,
}

/// A shard consumer this worker runs.
struct Running {
    ownership: Ownership,
    signals: ShardSignals,
    /// The worker this lease is being handed to, once the owner was asked.
    handoff_to: Option<String>,
}

/// The state of one incarnation of the worker.
struct Incarnation {
    id: String,
    fenced: CancellationToken,
    stop_heartbeat: CancellationToken,
    /// While this incarnation leads: the live workers it counts (its heartbeat renews the
    /// leadership with it).
    leading: watch::Sender<Option<u64>>,
    /// Aborts the heartbeat task if the worker is dropped without shutting down (a crash
    /// of the runtime, or an aborted task in tests): a dead worker must stop heartbeating.
    _heartbeat: AbortOnDropHandle<()>,
}

/// The mutable state of the loop.
struct State {
    incarnation: Incarnation,
    /// The leases this incarnation owns, as last read: running, or waiting for their
    /// parents or for a retry.
    mine: BTreeMap<LeaseKey, Lease>,
    running: BTreeMap<LeaseKey, Running>,
    tasks: JoinSet<(LeaseKey, ShardOutcome)>,
    /// Shards that failed: not restarted before this instant.
    retry_after: BTreeMap<LeaseKey, Instant>,
    /// Failed shards whose copy in `mine` is older than what they wrote (this worker's own
    /// checkpoints do not come back as hints): not restarted before a read refreshes them.
    stale: BTreeSet<LeaseKey>,
    /// Leases of shards this incarnation finished: they stay owned (the leader gives a
    /// finished shard's children to its owner first) until shutdown releases them.
    finished: BTreeMap<LeaseKey, Ownership>,
    /// Parent leases a consistent read found finished or gone: their children may start.
    done_parents: BTreeSet<LeaseKey>,
    /// Hints to other workers that could not be written yet (kept across incarnations).
    undelivered: hints::Undelivered,
    /// The leader as this worker observes it (through the coordination item).
    leader_liveness: Liveness,
    /// The leader's state, while this incarnation leads.
    leader: Option<Leader>,
    /// Lead at once (just claimed): the first leader round does not wait for its tick.
    lead_now: bool,
    /// When the coordination item is read next.
    next_coordination: Instant,
    /// No leader was named at the last read: claim at this instant if there still is none
    /// (a random delay, so that workers starting together do not all claim at once).
    claim_at: Option<Instant>,
    /// When this worker reads its own leases again, whatever the hints said: a take that
    /// came with no hint (a bug, or an operator's tool that does not hint) is noticed then.
    next_self_audit: Instant,
}

impl State {
    fn new(incarnation: Incarnation, failover_time: Duration, first_coordination: Instant) -> Self {
        Self {
            incarnation,
            mine: BTreeMap::new(),
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            retry_after: BTreeMap::new(),
            stale: BTreeSet::new(),
            finished: BTreeMap::new(),
            done_parents: BTreeSet::new(),
            undelivered: hints::Undelivered::default(),
            leader_liveness: Liveness::new(failover_time),
            leader: None,
            lead_now: false,
            next_coordination: first_coordination,
            claim_at: None,
            next_self_audit: Instant::now() + AUDIT_INTERVAL,
        }
    }

    /// Stops every running shard at once, writing nothing (each calls `lease_lost`): its
    /// lease is gone or soon will be (fenced, or the lease table deleted).
    fn stop_all_shards(&self) {
        for running in self.running.values() {
            running.signals.lost.cancel();
        }
    }

    /// When the loop must look at the leader next without waiting for its tick: the
    /// coordination item's next read, a claim that is due, the leader's counter going
    /// stale, or (leading) a worker's. The reads are not aligned on the tick: workers
    /// whose ticks coincide (started together) still spread them over the interval.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        match &self.leader {
            Some(leader) => leader.next_expiry(now),
            None => [
                Some(self.next_coordination),
                self.claim_at,
                self.leader_liveness.next_expiry(now),
            ]
            .into_iter()
            .flatten()
            .min(),
        }
    }
}

impl<F: ProcessorFactory> Worker<F> {
    /// Runs until `shutdown` completes, then stops gracefully. The lease table must exist
    /// (`LeaseStore::ensure_table`).
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(shutdown);
        // The lease table answered the start-up check: an outage now is waited out (only
        // a refused heartbeat, a configuration error, stops the start), until shutdown.
        let joined = self
            .start_incarnation(retry::is_retryable_store, shutdown.as_mut())
            .await?;
        let Some(incarnation) = joined else {
            tracing::info!(worker_id = %self.shared.worker_id, "shutdown before the first heartbeat was confirmed");
            return Ok(());
        };
        tracing::info!(worker_id = %self.shared.worker_id, incarnation = %incarnation.id, streams = self.streams.len(), "worker started");
        let scan_interval = self.shared.config.scan_interval;
        let _bumps = AbortOnDropHandle::new(tokio::spawn(announce::bump_changes(
            self.announcer.inner().clone(),
            self.announcer.changes().clone(),
            scan_interval,
        )));
        let mut state = State::new(
            incarnation,
            self.shared.config.failover_time,
            self.first_coordination(),
        );
        let mut tick = tokio::time::interval(scan_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut leader_tick = tokio::time::interval(scan_interval / 2);
        leader_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if std::mem::take(&mut state.lead_now) {
                leader_tick.reset_immediately();
            }
            let fenced = state.incarnation.fenced.clone();
            let wake = state.next_wake(Instant::now());
            let leading = state.leader.is_some();
            let synced = state.leader.as_ref().map(|l| l.sync_done.clone());
            // Every step is raced against shutdown and fencing: those are answered at
            // once, even in the middle of a slow lease-table call.
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = fenced.cancelled() => {
                    // SIGTERM is honoured while the comeback retries.
                    if self.fence(&mut state, shutdown.as_mut()).await?.is_none() {
                        break;
                    }
                }
                Some(joined) = state.tasks.join_next() => {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        () = self.shard_finished(&mut state, joined) => {}
                    }
                }
                _ = sleep_until_some(wake) => {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = fenced.cancelled() => {}
                        done = self.step(&mut state, Step::Wake) => done?,
                    }
                }
                // A shard sync ended: plan its new leases now, not a tick later.
                _ = notified(synced) => state.lead_now = true,
                _ = leader_tick.tick(), if leading => {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = fenced.cancelled() => {}
                        done = self.step(&mut state, Step::Lead) => done?,
                    }
                }
                _ = tick.tick() => {
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = fenced.cancelled() => {}
                        done = self.step(&mut state, Step::Tick) => done?,
                    }
                }
            }
        }
        self.shut_down(state).await;
        Ok(())
    }

    /// A new identity: the worker id plus the time and a random part (two processes with
    /// the same host name and pid starting in the same millisecond still differ),
    /// heartbeating from now on. The first heartbeat is retried until it is confirmed
    /// ([`retry::until_passed`]), on errors `when` accepts; a full membership item is tried
    /// again under another id. `None`: `shutdown` came first.
    async fn start_incarnation(
        &self,
        when: fn(&dynamodb_streams_leases::Error) -> bool,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Incarnation>> {
        let ttl = self.worker_ttl();
        let mut attempt = 0;
        let (id, sent) = loop {
            let id = self.incarnation_id();
            let mut sent = Instant::now();
            let retried = |error: &dynamodb_streams_leases::Error| {
                let retried = when(error);
                if retried {
                    tracing::warn!(incarnation = %id, %error, "cannot heartbeat yet");
                }
                retried
            };
            let clock = FencingClock::default();
            let joined = retry::until_passed(
                self.shared.config.renew_interval,
                retried,
                FirstAttempt::Raced,
                shutdown.as_mut(),
                || {
                    sent = clock.now();
                    self.shared.store.heartbeat(&id, ttl)
                },
            )
            .await;
            match joined {
                Ok(Some(_)) => break (id, sent),
                Ok(None) => return Ok(None),
                Err(error @ dynamodb_streams_leases::Error::MembershipFull { .. })
                    if attempt + 1 < JOIN_ATTEMPTS =>
                {
                    tracing::warn!(incarnation = %id, %error, "membership item full; trying another id");
                    attempt += 1;
                }
                Err(error) => return Err(error.into()),
            }
        };
        self.shared.telemetry.health.heartbeat_confirmed();
        let fenced = CancellationToken::new();
        let stop_heartbeat = CancellationToken::new();
        let (leading, leading_rx) = watch::channel(None);
        let heartbeat = Heartbeat {
            store: self.shared.store.clone(),
            id: id.clone(),
            ttl,
            renew: self.shared.config.renew_interval,
            deadline: self.fencing_deadline(),
            clock: FencingClock::default(),
            confirmed_at: sent,
            fenced: fenced.clone(),
            stop: stop_heartbeat.clone(),
            leading: leading_rx,
        };
        Ok(Some(Incarnation {
            id,
            fenced,
            stop_heartbeat,
            leading,
            _heartbeat: AbortOnDropHandle::new(tokio::spawn(heartbeat.run())),
        }))
    }

    /// `{worker id}#{unix ms, hex}{32 random bits, hex}`. The stream's clock and random
    /// numbers: the host's on AWS, the simulation's (seeded) in simulations.
    fn incarnation_id(&self) -> String {
        let millis = self
            .shared
            .api
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        incarnation_id(&self.shared.worker_id, millis, self.shared.api.random_u64())
    }

    /// How long a heartbeat may go unconfirmed before this worker stops its shards: others
    /// may take them after `failover_time`, so stop a margin earlier.
    fn fencing_deadline(&self) -> Duration {
        let failover = self.shared.config.failover_time;
        failover.saturating_sub((failover / 5).max(Duration::from_millis(500)))
    }

    /// How long operators see a stopped worker's entry as merely late (`ddbsc status`);
    /// the leader removes it after `failover_time`.
    fn worker_ttl(&self) -> Duration {
        self.shared.config.failover_time * 6
    }

    /// One step of the loop; its failure is logged and retried at the next one, except a
    /// lease table that is gone: then the worker stops its shards and returns the error (a
    /// clear exit, not an endless retry).
    async fn step(&self, state: &mut State, step: Step) -> Result<()> {
        let done = match step {
            Step::Tick => self.tick(state).await,
            Step::Lead => self.lead(state).await,
            Step::Wake if state.leader.is_some() => self.lead(state).await,
            Step::Wake => self.watch_leader(state).await,
        };
        match done {
            Err(crate::Error::LeaseStore(error)) if error.is_table_missing() => {
                tracing::error!(%error, "the lease table is gone; stopping this worker");
                state.stop_all_shards();
                while state.tasks.join_next().await.is_some() {}
                state.running.clear();
                state.incarnation.stop_heartbeat.cancel();
                Err(crate::Error::LeaseStore(error))
            }
            Err(error) => {
                tracing::warn!(%error, "lease table call failed; retrying at the next tick");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// A worker's tick: hints not delivered yet, the inbox, parents of waiting leases, and
    /// the shards that are ready (the coordination item is read on its own schedule,
    /// `State::next_wake`).
    async fn tick(&self, state: &mut State) -> Result<()> {
        let now = Instant::now();
        state
            .undelivered
            .retry(self.announcer.inner().as_ref())
            .await;
        self.read_inbox(state).await?;
        if now >= state.next_self_audit {
            self.self_audit(state).await?;
        }
        self.confirm_parents(state).await;
        self.start_ready(state, Instant::now());
        Ok(())
    }
}

/// `{worker id}#{millis, hex}{low 32 bits of random, hex}`: two processes with the same
/// host name and pid starting in the same millisecond differ by the random part.
fn incarnation_id(worker_id: &str, millis: u128, random: u64) -> String {
    format!("{worker_id}#{millis:x}{:08x}", random as u32)
}

/// What a step of the loop is for.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// The worker's tick.
    Tick,
    /// The leader's tick.
    Lead,
    /// A liveness deadline or a due claim, between ticks.
    Wake,
}

/// Waits for `notify`, or forever without one.
async fn notified(notify: Option<Arc<tokio::sync::Notify>>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::StreamsApi;

    /// Two containers with the same host name and pid (so the same worker id) starting in
    /// the same millisecond: their incarnation ids differ (issue 17; the id used to be the
    /// time and a per-process counter, the same in both).
    #[test]
    fn incarnations_started_in_the_same_millisecond_differ() {
        // The AWS streams access draws from the OS (no request is sent).
        let config = aws_types::SdkConfig::builder()
            .behavior_version(aws_sdk_dynamodbstreams::config::BehaviorVersion::latest())
            .build();
        let api = crate::streams::SdkStreams::from_sdk_config(&config);
        let millis = 1_767_225_600_123;
        let (one, other) = (api.random_u64(), api.random_u64());
        let a = incarnation_id("ip-10-0-0-7-1", millis, one);
        let b = incarnation_id("ip-10-0-0-7-1", millis, other);
        assert_ne!(a, b);
        assert!(a.starts_with("ip-10-0-0-7-1#19b7"), "{a}");
    }
}
