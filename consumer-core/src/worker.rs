//! The worker runtime: heartbeats, scans, shard consumers, fencing, shutdown.
//!
//! One loop per worker process. Every `scan_interval` (and at once after a shard ends) it
//! reads the lease and worker items, takes leases as [`crate::lease_protocol`] plans, starts a
//! shard consumer for each owned lease whose parents are finished, and stops consumers whose
//! lease moved. Heartbeats run in their own task so a slow scan cannot delay them; if none is
//! confirmed for `failover_time - margin`, the worker fences itself (stops every shard at once)
//! and comes back as a new incarnation.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::ExponentialBuilder;
use checkpoint_store::{Checkpoint, Lease, LeaseKey, LeaseStore, Ownership};
use futures::FutureExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::error::Result;
use crate::events::{Event, LeaseAcquired, LeaseReleased};
use crate::lease_protocol::{self, Liveness};
use crate::processor::ProcessorFactory;
use crate::retry;
use crate::shard_consumer::{ShardConsumer, ShardOutcome, ShardSignals, Shared};
use crate::shard_sync::{self, create_lease_if_absent};

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
    pub shared: Arc<Shared<F>>,
    pub streams: Vec<StreamSource>,
}

/// A shard consumer this worker runs.
struct Running {
    ownership: Ownership,
    signals: ShardSignals,
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
}

impl<F: ProcessorFactory> Worker<F> {
    /// Runs until `shutdown` completes, then stops gracefully. The lease table must exist
    /// (`LeaseStore::ensure_table`).
    pub(crate) async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let sync_lease = Lease::new(shard_sync_key(), Checkpoint::TrimHorizon, vec![]);
        let (incarnation, (), _) = tokio::try_join!(
            self.start_incarnation(retry::startup(), retry::is_retryable_store),
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
        };

        let mut scan_tick = tokio::time::interval(self.shared.config.scan_interval);
        scan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                _ = state.incarnation.fenced.cancelled() => {
                    self.fence(&mut state).await?;
                }
                Some(joined) = state.tasks.join_next() => {
                    let rescan = self.shard_finished(&mut state, joined);
                    if rescan {
                        scan_tick.reset_immediately();
                    }
                }
                // A worker may turn dead between ticks: scan right then, not up to a tick later.
                _ = sleep_until_some(state.liveness.next_expiry(Instant::now())) => {
                    if let Err(error) = self.scan(&mut state).await {
                        tracing::warn!(%error, "lease scan failed; retrying on the next tick");
                    }
                }
                _ = scan_tick.tick() => {
                    if let Err(error) = self.scan(&mut state).await {
                        tracing::warn!(%error, "lease scan failed; retrying on the next tick");
                    }
                }
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
        when: fn(&checkpoint_store::Error) -> bool,
    ) -> Result<Incarnation> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let millis = SystemTime::now()
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
        let retried = |error: &checkpoint_store::Error| {
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
    /// application does not wait for the shard-sync holder.
    async fn first_sync(&self) -> Result<()> {
        let leases = retry::call(retry::startup(), retry::is_retryable_store, || {
            self.shared.store.list_leases()
        })
        .await?;
        for source in &self.streams {
            if !leases.iter().any(|l| l.key.stream == source.stream_arn) {
                shard_sync::sync_stream(
                    self.shared.api.as_ref(),
                    &self.shared.store,
                    &source.stream_arn,
                    &leases,
                    self.shared.config.initial_position,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn scan(&self, state: &mut State) -> Result<()> {
        let started = Instant::now();
        let (leases, workers) = self.shared.store.snapshot().await?;
        let now = Instant::now();
        if self.is_stale(state, started) {
            return Ok(());
        }
        state.liveness.observe(&workers, now);
        let me = state.incarnation.id.clone();
        let streams: HashSet<&str> = self.streams.iter().map(|s| s.stream_arn.as_str()).collect();
        let ours =
            |l: &&Lease| streams.contains(l.key.stream.as_str()) || l.key == shard_sync_key();
        let mut leases: Vec<Lease> = leases.into_iter().filter(|l| ours(&l)).collect();

        self.check_running(state, &leases);

        // Take what the protocol says, then refresh our copies of what we took.
        let due: HashSet<LeaseKey> = state
            .handoffs_asked
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= self.shared.config.failover_time)
            .map(|(key, _)| key.clone())
            .collect();
        let live = state.liveness.live_workers(now);
        let plan = lease_protocol::plan(&me, &leases, &live, &due);
        let takes = plan.take.iter().map(|wanted| {
            self.shared
                .store
                .take_lease(&wanted.key, wanted.owner.as_deref(), wanted.epoch, &me)
        });
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
                Err(e) => tracing::debug!(lease = %wanted.key, error = %e, "take lost a race"),
            }
        }
        if let Some(lease) = plan.request_handoff
            && let Some(ownership) = lease.ownership()
            && !state.handoffs_asked.contains_key(&lease.key)
        {
            match self
                .shared
                .store
                .request_handoff(&lease.key, &ownership, &me)
                .await
            {
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

        self.run_shard_sync(state, &leases, now).await;
        if self.is_stale(state, started) {
            return Ok(());
        }
        self.start_ready(state, &leases, now);
        Ok(())
    }

    /// A scan that took so long that others may have judged this worker dead meanwhile (or
    /// during which it was fenced) must not be acted on: its view of ownership is stale.
    fn is_stale(&self, state: &State, started: Instant) -> bool {
        let stale = state.incarnation.fenced.is_cancelled()
            || started.elapsed() >= self.fencing_deadline() / 2;
        if stale {
            tracing::warn!(took = ?started.elapsed(), "lease scan too slow or worker fenced; its results are discarded");
        }
        stale
    }

    /// Stops consumers whose lease moved, and releases those another worker asked for.
    fn check_running(&self, state: &mut State, leases: &[Lease]) {
        for (key, running) in &state.running {
            let current = leases.iter().find(|l| &l.key == key);
            match current {
                Some(lease) if lease.ownership().as_ref() == Some(&running.ownership) => {
                    if lease.handoff_to.is_some() && !running.signals.release.is_cancelled() {
                        tracing::info!(lease = %key, to = ?lease.handoff_to, "handing the lease over");
                        running.signals.release.cancel();
                    }
                }
                _ => running.signals.lost.cancel(),
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
            {
                continue;
            }
            // Fencing reaches every shard at once through the token tree, even while this
            // loop is stuck in a slow lease-table call.
            let signals = ShardSignals {
                release: CancellationToken::new(),
                lost: state.incarnation.fenced.child_token(),
            };
            let consumer = ShardConsumer {
                shared: self.shared.clone(),
                lease: lease.clone(),
                ownership: ownership.clone(),
                table: self
                    .streams
                    .iter()
                    .find(|s| s.stream_arn == lease.key.stream)
                    .and_then(|s| s.table.clone()),
            };
            let key = lease.key.clone();
            let task_signals = signals.clone();
            state.tasks.spawn(async move {
                let outcome = AssertUnwindSafe(consumer.run(task_signals))
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
            state
                .running
                .insert(lease.key.clone(), Running { ownership, signals });
        }
    }

    /// Handles a finished shard consumer; returns whether to scan again at once.
    fn shard_finished(
        &self,
        state: &mut State,
        joined: std::result::Result<(LeaseKey, ShardOutcome), tokio::task::JoinError>,
    ) -> bool {
        let Ok((key, outcome)) = joined else {
            // Consumers catch their own panics (see `start_ready`); a join error means the
            // task was aborted, which only happens when the runtime shuts down.
            return false;
        };
        state.running.remove(&key);
        match outcome {
            ShardOutcome::Ended => true,
            ShardOutcome::Released | ShardOutcome::LeaseLost => false,
            ShardOutcome::Failed(error) => {
                let pause = self.shared.config.processing_backoff_max;
                tracing::error!(lease = %key, %error, ?pause, "shard consumer failed; restarting it later");
                state.retry_after.insert(key, Instant::now() + pause);
                false
            }
        }
    }

    /// The holder of the shard-sync lease lists every shard once per interval and removes
    /// the items of dead workers.
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
                Ok(_) => state.last_sync = None,
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
        state.last_sync = Some(now);
        for source in &self.streams {
            if let Err(error) = shard_sync::sync_stream(
                self.shared.api.as_ref(),
                &self.shared.store,
                &source.stream_arn,
                leases,
                self.shared.config.initial_position,
            )
            .await
            {
                tracing::warn!(stream_arn = %source.stream_arn, %error, "shard sync failed");
            }
        }
        for dead in state.liveness.dead_workers(now) {
            if leases.iter().all(|l| !l.is_owned_by(&dead)) {
                let _ = self.shared.store.delete_worker(&dead).await;
            }
        }
    }

    /// No confirmed heartbeat in time: stop every shard without writing, then come back as
    /// a new incarnation that takes leases like any other worker.
    async fn fence(&self, state: &mut State) -> Result<()> {
        tracing::error!(incarnation = %state.incarnation.id, "no heartbeat confirmed in time: fencing this worker (stopping every shard)");
        for running in state.running.values() {
            running.signals.lost.cancel();
        }
        while state.tasks.join_next().await.is_some() {}
        state.running.clear();
        state.incarnation.stop_heartbeat.cancel();
        let policy = retry::reincarnation(self.shared.config.renew_interval);
        let incarnation = self.start_incarnation(policy, |_| true).await?;
        tracing::info!(incarnation = %incarnation.id, "worker back as a new incarnation");
        state.incarnation = incarnation;
        state.last_sync = None;
        state.handoffs_asked.clear();
        Ok(())
    }

    /// Graceful shutdown: every shard finishes its batch, is told, flushes and releases;
    /// leases not running are released too; then the worker item goes.
    async fn shut_down(&self, mut state: State) {
        tracing::info!(incarnation = %state.incarnation.id, shards = state.running.len(), "shutting down");
        for running in state.running.values() {
            running.signals.release.cancel();
        }
        while state.tasks.join_next().await.is_some() {}
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
            .filter(|(_, ownership)| ownership.owner == me)
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

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(confirmed_at + deadline) => { fenced.cancel(); return; }
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        next = sent + renew;
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(confirmed_at + deadline) => { fenced.cancel(); return; }
            result = store.heartbeat(&id, ttl) => match result {
                Ok(_) => confirmed_at = sent,
                Err(error) => tracing::warn!(incarnation = %id, %error, "heartbeat failed"),
            },
        }
    }
}
