//! The worker runtime: heartbeats, scans, shard consumers, fencing, shutdown.
//!
//! One loop per worker process. Every `scan_interval` it reads the one membership item
//! (heartbeats of every worker and the leases version, a few KB); only when that shows a
//! change (the version moved, a worker joined or died, one of its shards ended, a handoff it
//! asked for timed out) does it scan the leases, take what [`crate::lease_protocol`] plans,
//! start a shard consumer for each owned lease whose parents are finished, and stop
//! consumers whose lease moved. So an idle application reads one small item per worker per
//! tick, whatever its shard count. The shard-sync holder also audits (a full scan every
//! [`AUDIT_INTERVAL`]) and bumps the version if it finds an ownership change whose own bump
//! was lost. Heartbeats run in their own task so a slow scan cannot delay them; if none is
//! confirmed for `failover_time - margin`, the worker fences itself (stops every shard at once)
//! and comes back as a new incarnation.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore, Membership, Ownership};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::error::Result;
use crate::events::{Event, LeaseAcquired, LeaseReleased, LeaseScanDiscarded};
use crate::lease_protocol::{self, Liveness};
use crate::processor::ProcessorFactory;
use crate::retry;
use crate::runtime::{LeaseTask, Runtime, ShardOutcome, ShardSignals};
use crate::shard_sync::{self, create_lease_if_absent};
use crate::{shard, snapshot};

/// How often the shard-sync holder scans the leases even though the version did not move,
/// to catch a lost version bump (a crash between a lease write and its bump).
pub(crate) const AUDIT_INTERVAL: Duration = Duration::from_secs(300);

/// Rescans in a row right after takes that lost a race, before waiting for the next tick
/// again (bounded: persistent conflicts must not become a busy loop).
const QUICK_RESCANS: u32 = 3;

/// The lease whose holder runs the periodic full shard sync (and cleanup).
pub(crate) fn shard_sync_key() -> LeaseKey {
    LeaseKey::coordination("shard-sync")
}

/// A stream this worker consumes, and the table it belongs to (if known).
#[derive(Clone, Debug)]
pub(crate) struct StreamSource {
    pub stream_arn: String,
    pub table: Option<String>,
}

/// A worker of one application.
pub(crate) struct Worker<F: ProcessorFactory> {
    pub shared: Arc<Runtime<F>>,
    pub streams: Vec<StreamSource>,
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
    /// Aborts the heartbeat task if the worker is dropped without shutting down (a crash
    /// of the runtime, or an aborted task in tests): a dead worker must stop heartbeating.
    _heartbeat: AbortOnDropHandle<()>,
}

/// The mutable state of the loop.
struct State {
    incarnation: Incarnation,
    liveness: Liveness,
    running: HashMap<LeaseKey, Running>,
    tasks: JoinSet<(LeaseKey, ShardOutcome)>,
    /// Leases this worker asked for: the epoch seen and when.
    handoffs_asked: HashMap<LeaseKey, (u64, Instant)>,
    /// Shards that failed: not restarted before this instant.
    retry_after: HashMap<LeaseKey, Instant>,
    last_sync: Option<Instant>,
    /// The leases as of the last scan: quiet ticks start ready shards and run the shard
    /// sync from it without reading the leases again.
    leases: Vec<Lease>,
    /// The leases version read before the last scan (`None`: scan on the next tick).
    seen_version: Option<u64>,
    /// Scan on the next tick whatever the version says (a shard ended).
    rescan: bool,
    /// A take lost a race: plan again at once rather than a tick later, so a collision
    /// does not add a scan interval to a takeover. Counts such quick rescans in a row (at
    /// most [`QUICK_RESCANS`]).
    quick_rescans: u32,
    /// When the shard-sync holder audits next.
    next_audit: Instant,
    /// The running shard sync, if any (aborted when the worker fences or stops).
    sync_task: Option<AbortOnDropHandle<()>>,
    /// When this worker's start-up sync listed every stream's shards in full (it found no
    /// leases for any of them): on taking the shard-sync lease, that counts as the last
    /// sync, so a new application does not list the same shards again while it starts.
    synced_at_start: Option<Instant>,
    /// The membership item as read during start-up (when asked, when answered), for the
    /// first tick. Its leases version may predate the start-up sync's lease creation: then
    /// the next tick sees the version moved and scans once more, which is safe.
    first_membership: Option<(Membership, Instant, Instant)>,
    /// The live workers as of the last tick.
    live_seen: HashSet<String>,
    /// Parent leases a consistent read found gone (or finished): their children may start.
    gone_parents: HashSet<LeaseKey>,
}

impl<F: ProcessorFactory> Worker<F> {
    /// Runs until `shutdown` completes, then stops gracefully. The lease table must exist
    /// (`LeaseStore::ensure_table`).
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let sync_lease = Lease::new(shard_sync_key(), Checkpoint::TrimHorizon, vec![]);
        let ((incarnation, first_membership), synced_at_start, _) = tokio::try_join!(
            async {
                let incarnation = self
                    .start_incarnation(retry::startup(), retry::is_retryable_store)
                    .await?;
                // Read after our own heartbeat, while the start-up sync may still run: the
                // first tick needs it and need not wait for another round trip. Best
                // effort: without it, the first tick reads it itself.
                let asked = Instant::now();
                let membership = self.shared.store.membership().await.ok();
                Ok((incarnation, membership.map(|m| (m, asked, Instant::now()))))
            },
            self.first_sync(),
            create_lease_if_absent(self.shared.store.as_ref(), &sync_lease),
        )?;
        tracing::info!(worker_id = %self.shared.worker_id, incarnation = %incarnation.id, streams = self.streams.len(), "worker started");
        let mut state = State {
            incarnation,
            liveness: Liveness::new(self.shared.config.failover_time),
            running: HashMap::new(),
            tasks: JoinSet::new(),
            handoffs_asked: HashMap::new(),
            retry_after: HashMap::new(),
            last_sync: None,
            leases: Vec::new(),
            seen_version: None,
            rescan: true,
            quick_rescans: 0,
            next_audit: Instant::now() + AUDIT_INTERVAL,
            sync_task: None,
            synced_at_start,
            first_membership,
            live_seen: HashSet::new(),
            gone_parents: HashSet::new(),
        };

        let mut scan_tick = tokio::time::interval(self.shared.config.scan_interval);
        scan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = state.incarnation.fenced.cancelled() => {
                    // SIGTERM is honoured while the comeback retries.
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        comeback = self.fence(&mut state) => comeback?,
                    }
                }
                Some(joined) = state.tasks.join_next() => {
                    if self.shard_finished(&mut state, joined).await {
                        state.rescan = true;
                        scan_tick.reset_immediately();
                    }
                }
                // A worker may turn dead between ticks: look right then, not up to a tick later.
                _ = sleep_until_some(state.liveness.next_expiry(Instant::now())) => {
                    self.tick_or_give_up(&mut state).await?;
                }
                _ = scan_tick.tick() => {
                    self.tick_or_give_up(&mut state).await?;
                }
            }
            if state.rescan && state.quick_rescans > 0 {
                scan_tick.reset_immediately();
            }
        }
        self.shut_down(state).await;
        Ok(())
    }

    /// A new identity: a worker id plus a unique suffix, heartbeating from now on. The first
    /// heartbeat is retried as `policy` says, on errors `when` accepts.
    async fn start_incarnation(
        &self,
        policy: ExponentialBuilder,
        when: fn(&dynamodb_streams_leases::Error) -> bool,
    ) -> Result<Incarnation> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // The stream's clock: the host's on AWS, the simulated one in simulations (where
        // ids, and so the protocol's per-worker offsets, must not depend on the host).
        let millis = self
            .shared
            .api
            .now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let id = format!(
            "{}#{:x}{}",
            self.shared.worker_id,
            millis,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ttl = self.worker_ttl();
        let mut sent = Instant::now();
        let retried = |error: &dynamodb_streams_leases::Error| {
            let retried = when(error);
            if retried {
                tracing::warn!(incarnation = %id, %error, "cannot heartbeat yet");
            }
            retried
        };
        retry::call(policy, retried, || {
            sent = Instant::now();
            self.shared.store.heartbeat(&id, ttl)
        })
        .await?;
        self.shared.telemetry.health.heartbeat_confirmed();
        let fenced = CancellationToken::new();
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat_loop(
            self.shared.store.clone(),
            id.clone(),
            ttl,
            self.shared.config.renew_interval,
            self.fencing_deadline(),
            sent,
            fenced.clone(),
            stop_heartbeat.clone(),
        )));
        Ok(Incarnation {
            id,
            fenced,
            stop_heartbeat,
            _heartbeat: heartbeat,
        })
    }

    /// How long a heartbeat may go unconfirmed before this worker stops its shards: others
    /// may take them after `failover_time`, so stop a margin earlier.
    fn fencing_deadline(&self) -> Duration {
        let failover = self.shared.config.failover_time;
        failover.saturating_sub((failover / 5).max(Duration::from_millis(500)))
    }

    /// Worker items outlive their worker by a while so observers see them stop, then TTL
    /// (or the cleanup pass) removes them.
    fn worker_ttl(&self) -> Duration {
        self.shared.config.failover_time * 6
    }

    /// Leases for streams that have none yet: every worker may do this at start, so a new
    /// application does not wait for the shard-sync holder. Returns when it began if it
    /// synced every stream in full (a full shard sync, as the holder's would have been).
    async fn first_sync(&self) -> Result<Option<Instant>> {
        let started = Instant::now();
        let leases = retry::call(retry::startup(), retry::is_retryable_store, || {
            self.shared.store.list_leases()
        })
        .await?;
        let mut complete = true;
        for source in &self.streams {
            if leases.iter().any(|l| l.key.stream == source.stream_arn) {
                complete = false;
            } else {
                let report = shard_sync::sync_stream(
                    self.shared.api.as_ref(),
                    &self.shared.store,
                    &source.stream_arn,
                    &leases,
                    self.shared.config.initial_position,
                    shard_sync::Contention::Racing,
                )
                .await?;
                complete &= !report.stopped_early;
            }
        }
        Ok(complete.then_some(started))
    }

    /// A tick whose failure is logged and retried on the next tick, except a lease table
    /// that is gone: then the worker stops its shards and returns the error (a clear exit,
    /// not an endless retry).
    async fn tick_or_give_up(&self, state: &mut State) -> Result<()> {
        match self.tick(state).await {
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
                tracing::warn!(%error, "lease scan failed; retrying on the next tick");
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// One tick: read the membership item, and scan the leases only if something changed
    /// (or an audit is due); otherwise act on the leases of the last scan.
    async fn tick(&self, state: &mut State) -> Result<()> {
        let first = state
            .first_membership
            .take()
            .filter(|(_, asked, _)| !self.is_stale(state, *asked));
        let (membership, started, now) = match first {
            Some(read) => read,
            None => {
                let started = Instant::now();
                let membership = self.shared.store.membership().await?;
                // Liveness is judged when the answer came, not when the question was sent.
                (membership, started, Instant::now())
            }
        };
        if self.is_stale(state, started) {
            state.seen_version = None;
            return Ok(());
        }
        state.liveness.observe(&membership.workers, now);
        // Compared with the last tick's view: a worker that died (or joined) since then is a
        // change even if it is judged dead both before and after this read.
        let live = state.liveness.live_workers(now);
        let membership_changed = live != state.live_seen;
        state.live_seen = live;
        let handoff_due = state
            .handoffs_asked
            .values()
            .any(|(_, at)| now.duration_since(*at) >= self.shared.config.failover_time);
        let audit = now >= state.next_audit && self.holds_shard_sync(state);
        let changed = state.seen_version != Some(membership.leases_version)
            || membership_changed
            || handoff_due
            || std::mem::take(&mut state.rescan);
        if changed || audit {
            if audit {
                state.next_audit = now + AUDIT_INTERVAL;
            }
            let before = std::mem::take(&mut state.leases);
            let scanned = self.scan(state, membership.leases_version).await;
            if audit && scanned.is_ok() && !changed && ownership_differs(&before, &state.leases) {
                tracing::warn!(
                    "audit found an ownership change without a leases version bump; bumping it"
                );
                self.shared.store.bump_leases_version().await?;
            }
            return scanned;
        }
        let leases = std::mem::take(&mut state.leases);
        self.confirm_missing_parents(state, &leases).await;
        self.start_ready(state, &leases, now);
        self.run_shard_sync(state, &leases, now).await;
        state.leases = leases;
        Ok(())
    }

    /// Whether this incarnation held the shard-sync lease at the last scan.
    fn holds_shard_sync(&self, state: &State) -> bool {
        state
            .leases
            .iter()
            .any(|l| l.key == shard_sync_key() && l.is_owned_by(&state.incarnation.id))
    }

    /// Reads every lease and worker (consistently), takes what the protocol plans, starts
    /// what is ready. `version` is the leases version read before the scan began.
    async fn scan(&self, state: &mut State, version: u64) -> Result<()> {
        // Until this scan completes, the next tick scans again.
        state.seen_version = None;
        let started = Instant::now();
        let (leases, workers) = self.shared.store.snapshot().await?;
        let now = Instant::now();
        if self.is_stale(state, started) {
            return Ok(());
        }
        state.liveness.observe(&workers, now);
        let me = state.incarnation.id.clone();
        // A table's streams before and after it was re-enabled are all ours.
        let ours =
            |l: &&Lease| self.source_of(&l.key.stream).is_some() || l.key == shard_sync_key();
        let mut leases: Vec<Lease> = leases.into_iter().filter(|l| ours(&l)).collect();

        self.check_running(state, &leases);
        self.hand_over_idle(state, &mut leases).await;

        // Take what the protocol says, then refresh our copies of what we took.
        let due = handoffs_due(
            &state.handoffs_asked,
            &leases,
            now,
            self.shared.config.failover_time,
        );
        let live = state.liveness.live_workers(now);
        let plan = lease_protocol::plan(&me, &leases, &live, &due);
        let takes = plan.take.iter().map(|wanted| {
            self.shared
                .store
                .take_lease(&wanted.key, wanted.owner.as_deref(), wanted.epoch, &me)
        });
        let mut lost_races = 0;
        for (wanted, taken) in plan.take.iter().zip(futures::future::join_all(takes).await) {
            match taken {
                Ok(taken) => {
                    LeaseAcquired {
                        lease: &taken.key,
                        previous_owner: wanted.owner.as_deref(),
                    }
                    .emit();
                    state.handoffs_asked.remove(&taken.key);
                    replace(&mut leases, taken);
                }
                Err(e) => {
                    tracing::debug!(lease = %wanted.key, error = %e, "take lost a race");
                    lost_races += 1;
                }
            }
        }
        if lost_races > 0 && state.quick_rescans < QUICK_RESCANS {
            state.quick_rescans += 1;
            state.rescan = true;
        } else {
            state.quick_rescans = 0;
        }
        let asks: Vec<(Lease, dynamodb_streams_leases::Ownership)> = plan
            .request_handoffs
            .into_iter()
            .filter(|lease| !state.handoffs_asked.contains_key(&lease.key))
            .filter_map(|lease| Some((lease.clone(), lease.ownership()?)))
            .collect();
        let requests = asks.iter().map(|(lease, ownership)| {
            self.shared
                .store
                .request_handoff(&lease.key, ownership, &me)
        });
        for ((lease, ownership), asked) in
            asks.iter().zip(futures::future::join_all(requests).await)
        {
            match asked {
                Ok(_) => {
                    tracing::info!(lease = %lease.key, owner = %ownership.owner, "asked for a handoff");
                    state
                        .handoffs_asked
                        .insert(lease.key.clone(), (lease.epoch, now));
                }
                Err(e) => {
                    tracing::debug!(lease = %lease.key, error = %e, "handoff request lost a race")
                }
            }
        }
        // Forget requests that were granted to someone else or whose lease changed hands.
        state.handoffs_asked.retain(|key, (epoch, _)| {
            leases
                .iter()
                .any(|l| &l.key == key && l.epoch == *epoch && !l.is_owned_by(&me))
        });

        self.confirm_missing_parents(state, &leases).await;
        let stale = self.is_stale(state, started);
        if !stale {
            self.start_ready(state, &leases, now);
        }
        // After the shards start: taking the shard-sync lease (a write and a version bump)
        // must not delay the first records.
        self.run_shard_sync(state, &leases, now).await;
        if stale {
            return Ok(());
        }
        state.leases = leases;
        state.seen_version = Some(version);
        Ok(())
    }

    /// A scan that took so long that others may have judged this worker dead meanwhile (or
    /// during which it was fenced) must not be acted on: its view of ownership is stale.
    fn is_stale(&self, state: &State, started: Instant) -> bool {
        let fenced = state.incarnation.fenced.is_cancelled();
        let took = started.elapsed();
        let stale = fenced || took >= self.fencing_deadline() / 2;
        if stale {
            LeaseScanDiscarded { took, fenced }.emit();
        }
        stale
    }

    /// Stops consumers whose lease moved, and releases those another worker asked for.
    fn check_running(&self, state: &mut State, leases: &[Lease]) {
        for (key, running) in &mut state.running {
            let current = leases.iter().find(|l| &l.key == key);
            match current {
                Some(lease) if lease.ownership().as_ref() == Some(&running.ownership) => {
                    if lease.handoff_to.is_some() && !running.signals.release.is_cancelled() {
                        tracing::info!(lease = %key, to = ?lease.handoff_to, "handing the lease over");
                        running.handoff_to = lease.handoff_to.clone();
                        running.signals.release.cancel();
                    }
                }
                _ => running.signals.lost.cancel(),
            }
        }
    }

    /// Confirms, with a consistent read each, that parents the scan did not return are
    /// really gone (or finished) before their children owned here may start: a parent
    /// missing from a scan is not proof (invariant 3).
    async fn confirm_missing_parents(&self, state: &mut State, leases: &[Lease]) {
        let by_key: HashMap<&LeaseKey, &Lease> = leases.iter().map(|l| (&l.key, l)).collect();
        let me = state.incarnation.id.as_str();
        let unconfirmed: HashSet<LeaseKey> = leases
            .iter()
            .filter(|l| l.is_owned_by(me) && lease_protocol::is_active(l))
            .filter(|l| !state.running.contains_key(&l.key))
            .flat_map(|l| lease_protocol::missing_parents(l, &by_key))
            .filter(|parent| !state.gone_parents.contains(parent))
            .collect();
        for parent in unconfirmed {
            match self.shared.store.get_lease(&parent).await {
                Ok(None) => {
                    state.gone_parents.insert(parent);
                }
                Ok(Some(lease)) if lease.checkpoint == Checkpoint::ShardEnd => {
                    state.gone_parents.insert(parent);
                }
                Ok(Some(_)) => {
                    tracing::warn!(%parent, "a parent lease missing from the scan exists and is not finished; its children wait");
                }
                Err(error) => {
                    tracing::warn!(%parent, %error, "cannot confirm a missing parent lease; its children wait")
                }
            }
        }
    }

    /// Starts a consumer for each lease we own whose parents are finished.
    fn start_ready(&self, state: &mut State, leases: &[Lease], now: Instant) {
        let by_key: HashMap<&LeaseKey, &Lease> = leases.iter().map(|l| (&l.key, l)).collect();
        for lease in leases {
            let Some(ownership) = lease.ownership() else {
                continue;
            };
            if ownership.owner != state.incarnation.id
                || !lease_protocol::is_active(lease)
                || lease.handoff_to.is_some()
                || state.running.contains_key(&lease.key)
                || state
                    .retry_after
                    .get(&lease.key)
                    .is_some_and(|at| *at > now)
                || !lease_protocol::parents_done(lease, &by_key)
                || !lease_protocol::missing_parents(lease, &by_key)
                    .iter()
                    .all(|parent| state.gone_parents.contains(parent))
            {
                continue;
            }
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

    /// Handles a finished shard consumer; returns whether to scan again at once.
    async fn shard_finished(
        &self,
        state: &mut State,
        joined: std::result::Result<(LeaseKey, ShardOutcome), tokio::task::JoinError>,
    ) -> bool {
        let Ok((key, outcome)) = joined else {
            // Consumers catch their own panics (see `start_ready`); a join error means the
            // task was aborted, which only happens when the runtime shuts down.
            return false;
        };
        let running = state.running.remove(&key);
        match outcome {
            ShardOutcome::Ended => true,
            ShardOutcome::Released => {
                if let Some(Running {
                    ownership,
                    handoff_to: Some(to),
                    ..
                }) = running
                {
                    self.hand_over(&key, &ownership, &to).await;
                }
                false
            }
            ShardOutcome::LeaseLost => false,
            ShardOutcome::Failed(error) => {
                let pause = self.shared.config.processing_backoff_max;
                tracing::error!(lease = %key, %error, ?pause, "shard consumer failed; restarting it later");
                state.retry_after.insert(key, Instant::now() + pause);
                false
            }
        }
    }

    /// Leases this worker owns but does not run (children waiting for their parents, shards
    /// waiting to restart) have nothing to finish: a handoff request for one is granted at
    /// once, instead of the requester waiting out the handoff timeout.
    async fn hand_over_idle(&self, state: &State, leases: &mut [Lease]) {
        let me = state.incarnation.id.as_str();
        let idle: Vec<(LeaseKey, Ownership, String)> = leases
            .iter()
            .filter(|l| l.is_owned_by(me) && !state.running.contains_key(&l.key))
            .filter_map(|l| Some((l.key.clone(), l.ownership()?, l.handoff_to.clone()?)))
            .collect();
        for (key, ownership, to) in idle {
            match self
                .shared
                .store
                .take_lease(&key, Some(me), ownership.epoch, &to)
                .await
            {
                Ok(given) => {
                    tracing::info!(lease = %key, %to, "idle lease handed over");
                    replace(leases, given);
                }
                Err(error) => tracing::debug!(lease = %key, %to, %error, "handover not done"),
            }
        }
    }

    /// Gives a lease released for a handoff to the worker that asked for it, right after the
    /// release (a take on its behalf, conditional on the epoch the release left): otherwise
    /// every worker under its share races for the free lease, the releaser among them, and
    /// the requester may ask again and again.
    async fn hand_over(&self, key: &LeaseKey, released: &Ownership, to: &str) {
        let epoch = released.epoch + 1;
        match self.shared.store.take_lease(key, None, epoch, to).await {
            Ok(_) => tracing::info!(lease = %key, %to, "lease handed over"),
            // Someone took it first, or the release did not happen: nothing to hand over.
            Err(error) => tracing::debug!(lease = %key, %to, %error, "handover not done"),
        }
    }

    /// The holder of the shard-sync lease lists every shard once per interval and removes
    /// the items of dead workers, in a task of its own.
    async fn run_shard_sync(&self, state: &mut State, leases: &[Lease], now: Instant) {
        let me = state.incarnation.id.clone();
        let Some(sync_lease) = leases.iter().find(|l| l.key == shard_sync_key()) else {
            return;
        };
        let holder_alive = sync_lease
            .owner
            .as_deref()
            .is_some_and(|o| o == me || state.liveness.is_alive(o, now));
        if !holder_alive {
            match self
                .shared
                .store
                .take_lease(
                    &sync_lease.key,
                    sync_lease.owner.as_deref(),
                    sync_lease.epoch,
                    &me,
                )
                .await
            {
                Ok(_) => state.last_sync = state.synced_at_start.take(),
                Err(_) => return,
            }
        } else if !sync_lease.is_owned_by(&me) {
            return;
        }
        if state
            .last_sync
            .is_some_and(|at| now.duration_since(at) < self.shared.config.shard_sync_interval)
        {
            return;
        }
        // Never two syncs at once; a slow DescribeStream delays the next sync, not the loop.
        if state
            .sync_task
            .as_ref()
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        state.last_sync = Some(now);
        let dead: Vec<String> = state
            .liveness
            .dead_workers(now)
            .into_iter()
            .filter(|dead| leases.iter().all(|l| !l.is_owned_by(dead)))
            .collect();
        let shared = self.shared.clone();
        let sources = self.streams.clone();
        let leases = leases.to_vec();
        // The full DescribeStream and the lease creation run in their own task: scans, lease
        // loss, fencing and shutdown are never blocked behind them.
        state.sync_task = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            let mut current = Vec::new();
            for source in &sources {
                let Some(stream_arn) = current_stream(shared.api.as_ref(), source).await else {
                    continue;
                };
                current.push(stream_arn.clone());
                if let Err(error) = shard_sync::sync_stream(
                    shared.api.as_ref(),
                    &shared.store,
                    &stream_arn,
                    &leases,
                    shared.config.initial_position,
                    shard_sync::Contention::Alone,
                )
                .await
                {
                    tracing::warn!(%stream_arn, %error, "shard sync failed");
                }
            }
            if let Err(error) =
                shard_sync::retire_replaced_streams(shared.store.as_ref(), &leases, &current).await
            {
                tracing::warn!(%error, "cannot retire a replaced stream");
            }
            for dead in dead {
                let _ = shared.store.delete_worker(&dead).await;
            }
        })));
    }

    /// The source a lease's stream belongs to: the stream itself, or another stream of the
    /// same table (the table's stream was disabled and enabled again).
    fn source_of(&self, stream_arn: &str) -> Option<&StreamSource> {
        self.streams
            .iter()
            .find(|s| s.stream_arn == stream_arn)
            .or_else(|| {
                self.streams
                    .iter()
                    .find(|s| crate::stream_arn::same_table(&s.stream_arn, stream_arn))
            })
    }

    /// No confirmed heartbeat in time: stop every shard without writing, then come back as
    /// a new incarnation that takes leases like any other worker.
    async fn fence(&self, state: &mut State) -> Result<()> {
        tracing::error!(incarnation = %state.incarnation.id, "no heartbeat confirmed in time: fencing this worker (stopping every shard)");
        self.shared.telemetry.health.fenced();
        for running in state.running.values() {
            running.signals.lost.cancel();
        }
        while state.tasks.join_next().await.is_some() {}
        state.running.clear();
        state.incarnation.stop_heartbeat.cancel();
        let policy = retry::reincarnation(self.shared.config.renew_interval);
        // Anything but a deleted lease table is worth another try.
        let incarnation = self
            .start_incarnation(policy, |e| !e.is_table_missing())
            .await?;
        tracing::info!(incarnation = %incarnation.id, "worker back as a new incarnation");
        state.incarnation = incarnation;
        state.last_sync = None;
        state.handoffs_asked.clear();
        state.seen_version = None;
        state.leases.clear();
        state.sync_task = None;
        Ok(())
    }

    /// Graceful shutdown: every shard finishes its batch, is told, flushes and releases;
    /// leases not running are released too; then the worker item goes.
    async fn shut_down(&self, mut state: State) {
        // A shard sync in flight is abandoned: the next holder's sync redoes it.
        drop(state.sync_task.take());
        tracing::info!(incarnation = %state.incarnation.id, shards = state.running.len(), "shutting down");
        self.shared.telemetry.health.stopped();
        for running in state.running.values() {
            running.signals.release.cancel();
        }
        // (issue 8) A shard whose final checkpoint could not be written keeps its lease.
        let mut kept = HashSet::new();
        while let Some(joined) = state.tasks.join_next().await {
            if let Ok((key, ShardOutcome::Failed(error))) = joined {
                tracing::error!(lease = %key, %error, "shard stopped on an error; its lease is kept, not released");
                kept.insert(key);
            }
        }
        let me = state.incarnation.id.clone();
        let store = self.shared.store.as_ref();
        let leases = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.list_leases()
        })
        .await;
        // Released together: one slow lease must not hold up the others.
        let releases = leases
            .iter()
            .flatten()
            .filter_map(|lease| Some((&lease.key, lease.ownership()?)))
            .filter(|(key, ownership)| ownership.owner == me && !kept.contains(*key))
            .map(|(key, ownership)| async move {
                let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
                    store.release_lease(key, &ownership)
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
        state.incarnation.stop_heartbeat.cancel();
        let deleted = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.delete_worker(&me)
        })
        .await;
        if let Err(error) = deleted {
            tracing::warn!(%error, "worker item not deleted; it expires by itself");
        }
        tracing::info!(incarnation = %me, "worker stopped");
    }
}

/// The stream to sync for `source`: a table's current stream (DescribeTable, once per
/// sync), which is new after the table's stream was disabled and enabled again. `None`
/// when the table cannot be described or has no stream now: its sync waits for the next
/// interval (syncing a stream that may have been replaced could recreate retired leases).
async fn current_stream(
    api: &dyn crate::streams::StreamsApi,
    source: &StreamSource,
) -> Option<String> {
    let Some(table) = &source.table else {
        return Some(source.stream_arn.clone());
    };
    match api.latest_stream_arn(table).await {
        Ok(arn) => {
            if arn != source.stream_arn {
                tracing::debug!(table, stream_arn = %arn, previous = %source.stream_arn, "the table has a new stream");
            }
            Some(arn)
        }
        Err(error) => {
            tracing::warn!(table, %error, "cannot look up the table's current stream; its shard sync waits for the next interval");
            None
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Who owns a lease, as an audit compares it: key, owner, epoch, handoff mark, finished.
type OwnershipView = (LeaseKey, Option<String>, u64, Option<String>, bool);

/// Whether two scans disagree on who owns what (checkpoints aside): what an audit looks for.
/// The leases this worker asked for whose handoff timed out while the owner it asked still
/// holds them (same epoch): those it may take by force. A request whose lease changed hands
/// since (its owner died and another worker took it) is not due: forcing it would steal
/// from a live owner that was never asked.
fn handoffs_due(
    asked: &HashMap<LeaseKey, (u64, Instant)>,
    leases: &[Lease],
    now: Instant,
    timeout: Duration,
) -> HashSet<LeaseKey> {
    asked
        .iter()
        .filter(|(_, (_, at))| now.duration_since(*at) >= timeout)
        .filter(|(key, (epoch, _))| leases.iter().any(|l| &l.key == *key && l.epoch == *epoch))
        .map(|(key, _)| key.clone())
        .collect()
}

fn ownership_differs(before: &[Lease], after: &[Lease]) -> bool {
    let view = |leases: &[Lease]| -> HashSet<OwnershipView> {
        leases
            .iter()
            .map(|l| {
                (
                    l.key.clone(),
                    l.owner.clone(),
                    l.epoch,
                    l.handoff_to.clone(),
                    l.checkpoint == Checkpoint::ShardEnd,
                )
            })
            .collect()
    };
    view(before) != view(after)
}

fn replace(leases: &mut [Lease], updated: Lease) {
    if let Some(slot) = leases.iter_mut().find(|l| l.key == updated.key) {
        *slot = updated;
    }
}

/// Heartbeats every `renew` until stopped; cancels `fenced` when no heartbeat has been
/// confirmed for `deadline`, measured from the send time of the last confirmed one.
#[allow(clippy::too_many_arguments)]
async fn heartbeat_loop(
    store: Arc<dyn LeaseStore>,
    id: String,
    ttl: Duration,
    renew: Duration,
    deadline: Duration,
    mut confirmed_at: Instant,
    fenced: CancellationToken,
    stop: CancellationToken,
) {
    let mut next = confirmed_at + renew;
    let mut pauses = retry::heartbeat(renew).build();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(confirmed_at + deadline) => { fenced.cancel(); return; }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(confirmed_at + deadline) => { fenced.cancel(); return; }
            result = store.heartbeat(&id, ttl) => match result {
                Ok(_) => {
                    confirmed_at = sent;
                    next = sent + renew;
                    pauses = retry::heartbeat(renew).build();
                }
                Err(error) => {
                    // Retried soon, on the heartbeat's own budget, not a renew interval later.
                    let pause = pauses.next().unwrap_or(renew);
                    tracing::warn!(incarnation = %id, %error, ?pause, "heartbeat failed");
                    next = Instant::now() + pause;
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::Checkpoint;

    #[tokio::test(start_paused = true)]
    async fn a_handoff_is_due_only_while_the_owner_asked_still_holds_the_lease() {
        let timeout = Duration::from_secs(10);
        let asked_at = Instant::now();
        let lease = |shard: &str, owner: &str, epoch: u64| {
            let mut lease =
                Lease::new(LeaseKey::new("arn", shard), Checkpoint::TrimHorizon, vec![]);
            lease.owner = Some(owner.into());
            lease.epoch = epoch;
            lease
        };
        let asked = HashMap::from([
            (LeaseKey::new("arn", "kept"), (1, asked_at)),
            (LeaseKey::new("arn", "moved"), (1, asked_at)),
        ]);
        // "moved": its owner died and another worker took it (epoch 2) before the timeout.
        let leases = [lease("kept", "a", 1), lease("moved", "b", 2)];
        assert!(handoffs_due(&asked, &leases, Instant::now(), timeout).is_empty());
        tokio::time::advance(timeout).await;
        let due = handoffs_due(&asked, &leases, Instant::now(), timeout);
        assert_eq!(due, HashSet::from([LeaseKey::new("arn", "kept")]));
    }
}
