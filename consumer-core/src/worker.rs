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

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use backon::ExponentialBuilder;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore, Ownership, WorkerRecord};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::announce::{self, AnnouncingStore};
use crate::error::Result;
use crate::events::{Event, LeaseAcquired, LeaseReleased, LeaseScanDiscarded};
use crate::fencing_clock::FencingClock;
use crate::heartbeat::Heartbeat;
use crate::leader::{AUDIT_INTERVAL, Leader, LeaderEnv, StreamSource, shard_sync_key, source_of};
use crate::lease_protocol::{self, Liveness};
use crate::processor::ProcessorFactory;
use crate::retry;
use crate::runtime::{LeaseTask, Runtime, ShardOutcome, ShardSignals};
use crate::{shard, snapshot};

/// How many coordination-item reads per second all workers together aim at: half a read
/// unit each, so the item stays at about 150 read units a second (a twentieth of what one
/// partition serves) however many workers poll it.
const COORDINATION_READS_PER_SECOND: f64 = 300.0;

/// The longest a worker that finds no leader waits before it claims the role: workers
/// starting together spread their claims over this, so that one wins and the others see it.
const CLAIM_SPREAD: Duration = Duration::from_millis(250);

/// The finished leases a worker remembers to release at shutdown (the shard sync deletes
/// finished leases once their children started, so older ones are mostly gone anyway).
const FINISHED_KEPT: usize = 1_000;

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
    fn new(incarnation: Incarnation, failover_time: Duration) -> Self {
        Self {
            incarnation,
            mine: BTreeMap::new(),
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            retry_after: BTreeMap::new(),
            stale: BTreeSet::new(),
            finished: BTreeMap::new(),
            done_parents: BTreeSet::new(),
            leader_liveness: Liveness::new(failover_time),
            leader: None,
            lead_now: false,
            next_coordination: Instant::now(),
            claim_at: None,
            next_self_audit: Instant::now() + AUDIT_INTERVAL,
        }
    }

    /// When the loop must look at the leader next without waiting for its tick: a claim
    /// that is due, the leader's counter going stale, or (leading) a worker's.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        match &self.leader {
            Some(leader) => leader.next_expiry(now),
            None => [self.claim_at, self.leader_liveness.next_expiry(now)]
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
        let incarnation = self
            .start_incarnation(retry::startup(), retry::is_retryable_store)
            .await?;
        tracing::info!(worker_id = %self.shared.worker_id, incarnation = %incarnation.id, streams = self.streams.len(), "worker started");
        let scan_interval = self.shared.config.scan_interval;
        let _bumps = AbortOnDropHandle::new(tokio::spawn(announce::bump_changes(
            self.announcer.inner().clone(),
            self.announcer.changes().clone(),
            scan_interval,
        )));
        let mut state = State::new(incarnation, self.shared.config.failover_time);
        let mut tick = tokio::time::interval(scan_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut leader_tick = tokio::time::interval(scan_interval / 2);
        leader_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
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
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        comeback = self.fence(&mut state) => comeback?,
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
    /// heartbeating from now on. The first heartbeat is retried as `policy` says, on errors
    /// `when` accepts; a full membership item is tried again under another id.
    async fn start_incarnation(
        &self,
        policy: ExponentialBuilder,
        when: fn(&dynamodb_streams_leases::Error) -> bool,
    ) -> Result<Incarnation> {
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
            let joined = retry::call(policy, retried, || {
                sent = clock.now();
                self.shared.store.heartbeat(&id, ttl)
            })
            .await;
            match joined {
                Ok(_) => break (id, sent),
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
        Ok(Incarnation {
            id,
            fenced,
            stop_heartbeat,
            leading,
            _heartbeat: AbortOnDropHandle::new(tokio::spawn(heartbeat.run())),
        })
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
                for running in state.running.values() {
                    running.signals.lost.cancel();
                }
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

    /// A worker's tick: the leader when due, the inbox, parents of waiting leases, and
    /// the shards that are ready.
    async fn tick(&self, state: &mut State) -> Result<()> {
        let now = Instant::now();
        if state.leader.is_none() && now >= state.next_coordination {
            self.watch_leader(state).await?;
        }
        self.read_inbox(state).await?;
        if now >= state.next_self_audit {
            self.self_audit(state).await?;
        }
        self.confirm_parents(state).await;
        self.start_ready(state, Instant::now());
        Ok(())
    }

    /// Reads the coordination item: judges the leader on this worker's clock, and claims
    /// the role if the leader is dead, or none is named (after a random delay).
    async fn watch_leader(&self, state: &mut State) -> Result<()> {
        // Taken before the read: a failed read must not leave a due claim that wakes the
        // loop again at once.
        let claim_due = state.claim_at.take_if(|at| Instant::now() >= *at).is_some();
        let coordination = self.shared.store.coordination().await?;
        let now = Instant::now();
        let me = state.incarnation.id.clone();
        let every =
            Duration::from_secs_f64(coordination.workers as f64 / COORDINATION_READS_PER_SECOND);
        state.next_coordination = now + every.max(self.shared.config.scan_interval);
        match coordination.leader {
            Some(leader) if leader.worker_id == me => Ok(()),
            Some(leader) => {
                state.claim_at = None;
                state.leader_liveness.observe(
                    &[WorkerRecord {
                        worker_id: leader.worker_id.clone(),
                        heartbeat: leader.heartbeat,
                        updated_at: UNIX_EPOCH,
                        expires_at: UNIX_EPOCH,
                    }],
                    now,
                );
                if state.leader_liveness.is_alive(&leader.worker_id, now) {
                    return Ok(());
                }
                tracing::warn!(leader = %leader.worker_id, "the leader's heartbeat stopped for the failover time; claiming its role");
                self.claim(state, Some(leader.worker_id)).await
            }
            None if claim_due => self.claim(state, None).await,
            None => match state.claim_at {
                Some(_) => Ok(()),
                None => {
                    let spread = (self.shared.config.scan_interval / 4).min(CLAIM_SPREAD);
                    let jitter = self.shared.api.random_u64() % (spread.as_millis() as u64).max(1);
                    state.claim_at = Some(now + Duration::from_millis(jitter));
                    Ok(())
                }
            },
        }
    }

    /// Names this worker the leader (conditional: none named, or `replacing`, judged dead).
    async fn claim(&self, state: &mut State, replacing: Option<String>) -> Result<()> {
        let me = state.incarnation.id.clone();
        let store = self.announcer.inner();
        if !store.claim_leadership(&me, replacing.as_deref()).await? {
            // Another worker claimed first: read who at the next tick.
            state.next_coordination = Instant::now();
            return Ok(());
        }
        tracing::info!(incarnation = %me, replaced = ?replacing, "leading the application");
        state.leader = Some(Leader::new(
            self.shared.config.failover_time,
            replacing.as_deref(),
        ));
        state.incarnation.leading.send_replace(Some(1));
        state.lead_now = true;
        Ok(())
    }

    /// A round of the leader; what it changed for this worker applies at once.
    async fn lead(&self, state: &mut State) -> Result<()> {
        let me = state.incarnation.id.clone();
        let Some(leader) = state.leader.as_mut() else {
            return Ok(());
        };
        let announced: Arc<dyn LeaseStore> = self.shared.store.clone();
        let env = LeaderEnv {
            me: &me,
            store: self.announcer.inner(),
            announced: &announced,
            api: &self.shared.api,
            config: &self.shared.config,
            streams: &self.streams,
        };
        let started = Instant::now();
        let ticked = leader.tick(&env).await?;
        let live = leader.live_count;
        let again = leader.wants_rescan();
        let Some(for_me) = ticked else {
            state.leader = None;
            state.incarnation.leading.send_replace(None);
            return Ok(());
        };
        if state.incarnation.fenced.is_cancelled() {
            LeaseScanDiscarded {
                took: started.elapsed(),
            }
            .emit();
            return Ok(());
        }
        state.incarnation.leading.send_replace(Some(live));
        state.lead_now = again;
        for lease in for_me.leases {
            self.reconcile(state, lease).await;
        }
        self.confirm_parents(state).await;
        self.start_ready(state, Instant::now());
        Ok(())
    }

    /// Reads the hints in this worker's inbox and the leases they name, acts on each
    /// lease, then clears the hints read.
    async fn read_inbox(&self, state: &mut State) -> Result<()> {
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
        let mut read: BTreeMap<LeaseKey, Lease> =
            leases.into_iter().map(|l| (l.key.clone(), l)).collect();
        for key in keys {
            match read.remove(&key) {
                Some(lease) => self.reconcile(state, lease).await,
                None => self.gone(state, &key),
            }
        }
        store.clear_notices(&me, &notices).await?;
        Ok(())
    }

    /// Reads every lease this worker holds or runs, and acts on what they say.
    async fn self_audit(&self, state: &mut State) -> Result<()> {
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
        let mut read: BTreeMap<LeaseKey, Lease> =
            leases.into_iter().map(|l| (l.key.clone(), l)).collect();
        for key in keys {
            match read.remove(&key) {
                Some(lease) => self.reconcile(state, lease).await,
                None => self.gone(state, &key),
            }
        }
        Ok(())
    }

    /// Acts on a lease as just read: keeps, starts, hands over or stops it.
    async fn reconcile(&self, state: &mut State, lease: Lease) {
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
            // over at once.
            state.mine.remove(&key);
            self.hand_over_unreleased(&key, &ownership, &to).await;
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
    fn gone(&self, state: &mut State, key: &LeaseKey) {
        state.stale.remove(key);
        if let Some(running) = state.running.get(key) {
            running.signals.lost.cancel();
        }
        state.mine.remove(key);
        state.done_parents.insert(key.clone());
    }

    /// Confirms, with one consistent read, which parents of the leases waiting here are
    /// finished or gone: a parent is done only when a read says so (invariant 3).
    async fn confirm_parents(&self, state: &mut State) {
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
    fn start_ready(&self, state: &mut State, now: Instant) {
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
    fn source_of(&self, stream_arn: &str) -> Option<&StreamSource> {
        source_of(&self.streams, stream_arn)
    }

    /// Handles a finished shard consumer.
    async fn shard_finished(
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
                    self.hand_over(&key, &ownership, &to).await;
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
    async fn continue_into_children(&self, state: &mut State, parent: &LeaseKey) {
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
    /// asked for this move and already counts the lease as the requester's.
    async fn hand_over(&self, key: &LeaseKey, released: &Ownership, to: &str) {
        let epoch = released.epoch + 1;
        match self
            .announcer
            .inner()
            .take_lease(key, None, epoch, to)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %key, %to, "lease handed over");
                self.hint(to, key).await;
            }
            // Someone took it first, or the release did not happen: nothing to hand over.
            Err(error) => tracing::debug!(lease = %key, %to, %error, "handover not done"),
        }
    }

    /// Hands over a lease this worker owns but does not run: one take on the requester's
    /// behalf, conditional on this worker's ownership (not announced, like [`Self::hand_over`]).
    async fn hand_over_unreleased(&self, key: &LeaseKey, ownership: &Ownership, to: &str) {
        match self
            .announcer
            .inner()
            .take_lease(key, Some(&ownership.owner), ownership.epoch, to)
            .await
        {
            Ok(_) => {
                tracing::info!(lease = %key, %to, "idle lease handed over");
                self.hint(to, key).await;
            }
            Err(error) => tracing::debug!(lease = %key, %to, %error, "handover not done"),
        }
    }

    async fn hint(&self, to: &str, key: &LeaseKey) {
        if let Err(error) = self
            .announcer
            .inner()
            .notify(to, std::slice::from_ref(key))
            .await
        {
            tracing::warn!(lease = %key, %to, %error, "cannot hint the new owner; the leader will");
        }
    }

    /// No confirmed heartbeat in time (or the entry was removed): stop every shard without
    /// writing, then come back as a new incarnation, which gets leases like any other.
    async fn fence(&self, state: &mut State) -> Result<()> {
        tracing::error!(incarnation = %state.incarnation.id, "fenced: stopping every shard");
        self.shared.telemetry.health.fenced();
        for running in state.running.values() {
            running.signals.lost.cancel();
        }
        while state.tasks.join_next().await.is_some() {}
        state.running.clear();
        state.incarnation.stop_heartbeat.cancel();
        state.incarnation.leading.send_replace(None);
        let policy = retry::reincarnation(self.shared.config.renew_interval);
        // Anything but a deleted lease table is worth another try.
        let incarnation = self
            .start_incarnation(policy, |e| !e.is_table_missing())
            .await?;
        tracing::info!(incarnation = %incarnation.id, "worker back as a new incarnation");
        *state = State {
            done_parents: std::mem::take(&mut state.done_parents),
            ..State::new(incarnation, self.shared.config.failover_time)
        };
        Ok(())
    }

    /// Graceful shutdown: every shard finishes its batch, is told, flushes and releases;
    /// leases not running are released too; the leader's role is given up, so another
    /// worker claims it at once; then the worker's entry goes.
    async fn shut_down(&self, mut state: State) {
        let me = state.incarnation.id.clone();
        tracing::info!(incarnation = %me, shards = state.running.len(), "shutting down");
        self.shared.telemetry.health.stopped();
        // A shard sync in flight is abandoned: the next leader's sync redoes it.
        let leading = state.leader.take().is_some();
        state.incarnation.leading.send_replace(None);
        for running in state.running.values() {
            running.signals.release.cancel();
        }
        // (issue 8) A shard whose final checkpoint could not be written keeps its lease.
        let mut kept = BTreeSet::new();
        while let Some(joined) = state.tasks.join_next().await {
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
