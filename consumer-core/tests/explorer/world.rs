//! The world: one scenario run in paused virtual time on a current-thread runtime. It
//! plays the timeline (writes, shard changes, workers starting, crashing and stopping,
//! faults), checks the oracle at every tick, then lets everything drain, stops every worker
//! gracefully and runs the end-of-run checks.
//!
//! Bounds stated here (invariants 6 and 8):
//! - a graceful stop ends within 2 × shutdown timeout + failover time + 10 s of its
//!   request (or of the end of a fault of its link, if later);
//! - after the last action and fault, every record is finished within
//!   [`drain_bound`];
//! - the run makes at most [`CALLS_PER_SECOND`] streams and lease-table calls per virtual
//!   second and running worker, on average.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use dynamodb_streams_consumer::streams::StreamsApi;
use dynamodb_streams_consumer::testkit::{
    InstrumentedStore, Link, PausableStreams, PauseSwitch, SimConfig, SimOperation,
    SimulatedStream, StoreOp, string_key,
};
use dynamodb_streams_consumer::{Consumer, ConsumerBuilder, InitialPosition, SnapshotConfig};
use dynamodb_streams_leases::InMemoryLeaseStore;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::oracle::{Oracle, Rules, Violation};
use crate::processor::{Explorer, Handler, Row};
use crate::scenario::{Action, LinkFault, Scenario};

/// The budget of streams and lease-table calls per virtual second and running worker.
pub const CALLS_PER_SECOND: f64 = 300.0;

/// The fewest worker-seconds the call budget is spread over. Workers that live about a
/// second (a start, a drain, a stop) do their burst of real work in it: seed 34224's took
/// and released 29 leases, checkpointed five snapshot segments and delivered the backlog
/// of three tables in under a second (316 calls, all of them work). A spinning task shows
/// as a rate kept up over many seconds, or as virtual time that stops moving (the real-time
/// limit), and either still breaks the budget.
const MIN_WORKER_SECONDS: f64 = 5.0;

/// The builder's defaults the bounds use when a setting is not drawn.
const DEFAULT_SHUTDOWN: Duration = Duration::from_secs(30);
const DEFAULT_SCAN: Duration = Duration::from_secs(2);
const DEFAULT_SYNC: Duration = Duration::from_secs(60);
const DEFAULT_BACKOFF: Duration = Duration::from_secs(30);
const TICK: Duration = Duration::from_millis(250);

/// What a run that kept every invariant did.
#[derive(Debug)]
pub struct Outcome {
    /// Hash and length of the event log: equal for two runs of one seed.
    pub hash: u64,
    pub events: u64,
    pub records: usize,
    pub virtual_secs: f64,
    pub calls: u64,
}

/// A broken invariant, with everything needed to understand and replay it.
pub struct Failure {
    pub scenario: Scenario,
    pub violation: Violation,
    pub tail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "explorer: seed {} broke invariant {}: {}",
            self.scenario.seed, self.violation.invariant, self.violation.detail
        )?;
        writeln!(
            f,
            "replay: EXPLORE_SEED={} EXPLORE_SPACE={} (same output)",
            self.scenario.seed,
            self.scenario.space.name()
        )?;
        writeln!(f, "{}", self.scenario)?;
        writeln!(f, "last events:\n{}", self.tail)
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The oracle a run of `scenario` checks with (made before the run, so a watchdog can
/// print its events if the run never ends).
pub fn oracle_for(scenario: &Scenario) -> Oracle {
    Oracle::new(Rules {
        creation_time_margin: Duration::from_secs(5),
        filter_modulus: scenario.settings.filter_modulus,
        max_record_age: scenario.settings.max_record_age,
        snapshot: scenario.settings.snapshot.is_some(),
    })
}

/// Runs `scenario` on a fresh runtime in paused time, checked by `oracle`.
pub fn run(scenario: &Scenario, oracle: Oracle) -> Result<Outcome, Box<Failure>> {
    // backon's jitter draws from fastrand's thread-local generator: seed it, on the one
    // thread the current-thread runtime runs every task on.
    fastrand::seed(scenario.seed);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        oracle.start_clock();
        let mut world = World::new(scenario, oracle);
        let result = world.play().await;
        world.abort_all();
        if let (Ok(path), Some(log)) = (std::env::var("EXPLORE_LOG"), world.oracle.full_log()) {
            let _ = std::fs::write(path, log);
        }
        result.map_err(|violation| {
            Box::new(Failure {
                scenario: scenario.clone(),
                violation,
                tail: world.oracle.tail(),
            })
        })
    })
}

/// The longest a drain may take after the last action and fault.
pub fn drain_bound(scenario: &Scenario) -> Duration {
    let s = &scenario.settings;
    let b = &scenario.behaviour;
    3 * s.failover_time
        + 4 * s.scan_interval.unwrap_or(DEFAULT_SCAN)
        + 2 * s.shard_sync_interval.unwrap_or(DEFAULT_SYNC)
        + 6 * s.retry_backoff_max.unwrap_or(DEFAULT_BACKOFF)
        + 4 * b.hang
        + 2 * s.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN)
        + Duration::from_secs(120)
}

fn stop_bound(scenario: &Scenario) -> Duration {
    let s = &scenario.settings;
    2 * s.shutdown_timeout.unwrap_or(DEFAULT_SHUTDOWN) + s.failover_time + Duration::from_secs(10)
}

struct Worker {
    task: JoinHandle<dynamodb_streams_consumer::Result<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    gate: Arc<InstrumentedStore<InMemoryLeaseStore>>,
    switch: PauseSwitch,
    /// When a graceful stop was asked (or the fault that delayed it ended).
    stopping_since: Option<Instant>,
    /// A fault of its link or a pause ends at this instant.
    fault_until: Option<Instant>,
}

struct World<'a> {
    scenario: &'a Scenario,
    sim: SimulatedStream,
    store: Arc<InMemoryLeaseStore>,
    oracle: Oracle,
    /// The oracles that check records: one per pipeline, or `oracle` without pipelines.
    checked: Vec<Oracle>,
    /// Whether `build` takes a snapshot together with the drawn pipelines (it starts being
    /// drawn once it does).
    snapshot: bool,
    tables: Vec<String>,
    streams: Vec<String>,
    workers: BTreeMap<usize, Worker>,
    /// Calls made by workers that are gone.
    gone_calls: u64,
    running_seconds: f64,
    last_tick: Instant,
    rng: SmallRng,
    next_n: u64,
    /// What misbehaving records can add to a drain, at most.
    misbehaviour: Duration,
    start: Instant,
}

impl<'a> World<'a> {
    fn new(scenario: &'a Scenario, oracle: Oracle) -> Self {
        let service = &scenario.service;
        let sim = SimulatedStream::new(SimConfig {
            seed: scenario.seed,
            max_records_per_page: service.max_records_per_page,
            initial_shards: service.initial_shards,
            describe_page_size: service.describe_page_size,
            empty_page_before_shard_end: service.empty_page_before_shard_end,
            latency: service.latency,
            ..SimConfig::default()
        });
        let tables: Vec<String> = (0..service.tables).map(|t| format!("t{t}")).collect();
        let streams = tables.iter().map(|t| sim.add_table(t)).collect();
        let pipelines = &scenario.settings.pipelines;
        let checked: Vec<Oracle> = if pipelines.is_empty() {
            vec![oracle.clone()]
        } else {
            pipelines
                .iter()
                .enumerate()
                .map(|(i, p)| oracle.for_pipeline(&p.name, i == 0))
                .collect()
        };
        let snapshot = scenario.settings.snapshot.is_some()
            && (pipelines.is_empty() || snapshot_with_pipelines_builds(&sim));
        if scenario.settings.snapshot.is_some() && !snapshot {
            oracle.log("no snapshot: `build` refuses it with named pipelines");
        }
        Self {
            scenario,
            checked,
            snapshot,
            sim,
            store: {
                let store = InMemoryLeaseStore::new();
                store.create_item_table(crate::processor::APPLIED_TABLE, &["id"]);
                Arc::new(store)
            },
            oracle,
            tables,
            streams,
            workers: BTreeMap::new(),
            gone_calls: 0,
            running_seconds: 0.0,
            last_tick: Instant::now(),
            rng: SmallRng::seed_from_u64(scenario.seed ^ 0x5eed),
            next_n: 0,
            misbehaviour: Duration::ZERO,
            start: Instant::now(),
        }
    }

    async fn play(&mut self) -> Result<Outcome, Violation> {
        let scenario = self.scenario;
        for (at, action) in &scenario.timeline {
            self.advance_to(self.start + *at).await?;
            self.act(action);
        }
        // Every fault ends; then at least one worker runs to drain.
        let faults_end = self
            .workers
            .values()
            .filter_map(|w| w.fault_until)
            .max()
            .unwrap_or_else(Instant::now);
        self.advance_to(faults_end.max(Instant::now())).await?;
        self.tick()?;
        if self.workers.values().all(|w| w.stop.is_none()) {
            let free = (1..=crate::scenario::MAX_WORKERS)
                .find(|id| !self.workers.contains_key(id))
                .unwrap_or(1);
            self.oracle.log(format!(
                "explorer: no worker runs; starting w{free} to drain"
            ));
            self.start_worker(free);
        }
        let quiet = Instant::now();
        let bound = drain_bound(scenario) + self.misbehaviour;
        loop {
            self.advance_to(Instant::now() + Duration::from_millis(500))
                .await?;
            let mut pending: Vec<String> = self.checked.iter().flat_map(Oracle::pending).collect();
            if pending.is_empty() && scenario.settings.auto_checkpoint {
                pending = self
                    .checked
                    .iter()
                    .flat_map(Oracle::lagging_checkpoints)
                    .collect();
            }
            let running: usize = self.checked.iter().map(Oracle::running_calls).sum();
            if pending.is_empty() && running == 0 {
                break;
            }
            if quiet.elapsed() > bound {
                return Err(Violation {
                    invariant: "8 drain",
                    detail: format!(
                        "{} records (or checkpoints) still pending {:?} after the last fault (bound {bound:?}); first: {}",
                        pending.len(),
                        quiet.elapsed(),
                        pending.first().cloned().unwrap_or_default()
                    ),
                });
            }
        }
        self.oracle
            .log(format!("drained after {:?}", quiet.elapsed()));
        // Graceful stop of everyone, each within its bound.
        let ids: Vec<usize> = self.workers.keys().copied().collect();
        for id in &ids {
            self.stop_worker(*id);
        }
        while self
            .workers
            .values()
            .any(|w| w.stop.is_none() && !w.task.is_finished())
        {
            self.advance_to(Instant::now() + TICK).await?;
        }
        self.tick()?;
        let sim = self.sim.clone();
        for oracle in &self.checked {
            oracle.check_sink(|table, key| {
                sim.item(table, &string_key("pk", key))
                    .ok()
                    .flatten()
                    .and_then(|item| {
                        serde_dynamo::aws_sdk_dynamodbstreams_1::from_item::<Row>(item).ok()
                    })
                    .map(|row| row.n)
            });
        }
        if self.scenario.settings.staged_writes {
            self.check_applied(true);
        }
        if let Some(violation) = self.violation() {
            return Err(violation);
        }
        let calls = self.calls();
        let virtual_secs = self.start.elapsed().as_secs_f64();
        let rate = calls as f64 / self.running_seconds.max(MIN_WORKER_SECONDS);
        if rate > CALLS_PER_SECOND {
            return Err(Violation {
                invariant: "6 bounds",
                detail: format!(
                    "{calls} calls in {virtual_secs:.0} virtual seconds ({:.0} worker-seconds): {rate:.0} a second per worker, over the budget of {CALLS_PER_SECOND}",
                    self.running_seconds
                ),
            });
        }
        let (hash, events) = self.oracle.journal_hash();
        Ok(Outcome {
            hash,
            events,
            records: self.checked.first().map_or(0, Oracle::written),
            virtual_secs,
            calls,
        })
    }

    /// Invariant 5: how many times each record's staged write was applied.
    fn check_applied(&self, end: bool) {
        let applied: BTreeMap<String, u64> = self
            .store
            .items(crate::processor::APPLIED_TABLE)
            .into_iter()
            .filter_map(|item| {
                let id = item.get("id")?.as_s().ok()?.clone();
                let n = item.get("n")?.as_n().ok()?.parse().ok()?;
                Some((id, n))
            })
            .collect();
        for oracle in &self.checked {
            oracle.check_applied(|id| applied.get(id).copied().unwrap_or(0), end);
        }
    }

    /// The first broken invariant any oracle saw.
    fn violation(&self) -> Option<Violation> {
        self.oracle
            .violation()
            .or_else(|| self.checked.iter().find_map(Oracle::violation))
    }

    /// Tells every oracle that worker `w<id>` is paused or runs again.
    fn paused(&self, id: usize, paused: bool) {
        self.oracle.paused(&format!("w{id}"), paused);
        for oracle in &self.checked {
            oracle.paused(&format!("w{id}"), paused);
        }
    }

    fn calls(&self) -> u64 {
        let streams: u64 = SimOperation::ALL.iter().map(|op| self.sim.calls(*op)).sum();
        let store: u64 = self
            .workers
            .values()
            .map(|w| w.gate.calls().values().sum::<u64>())
            .sum();
        streams + store + self.gone_calls
    }

    /// Lets virtual time run to `until`, checking at every tick.
    async fn advance_to(&mut self, until: Instant) -> Result<(), Violation> {
        loop {
            self.tick()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            tokio::time::sleep((until - now).min(TICK)).await;
        }
    }

    /// The checks of every tick: the oracle, faults that end, graceful stops and their
    /// bound, workers that stopped on their own.
    fn tick(&mut self) -> Result<(), Violation> {
        let now = Instant::now();
        let running = self.workers.values().filter(|w| w.stop.is_some()).count();
        self.running_seconds += (now - self.last_tick).as_secs_f64() * running as f64;
        self.last_tick = now;
        if self.scenario.settings.staged_writes {
            self.check_applied(false);
        }
        if let Some(violation) = self.violation() {
            return Err(violation);
        }
        let bound = stop_bound(self.scenario);
        let mut finished = Vec::new();
        let mut resumed = Vec::new();
        for (id, worker) in &mut self.workers {
            if worker.fault_until.is_some_and(|until| until <= now) {
                worker.fault_until = None;
                worker.gate.set_link(Link::Up);
                worker.switch.resume();
                resumed.push(*id);
                self.oracle.log(format!("w{id} fault ends"));
                if let Some(since) = &mut worker.stopping_since {
                    *since = now;
                }
            }
            if worker.task.is_finished() {
                finished.push(*id);
            } else if let Some(since) = worker.stopping_since
                && worker.fault_until.is_none()
                && now - since > bound
            {
                return Err(Violation {
                    invariant: "6 bounds",
                    detail: format!(
                        "w{id} was asked to stop {:?} ago and still runs (bound {bound:?})",
                        now - since
                    ),
                });
            }
        }
        for id in resumed {
            self.paused(id, false);
        }
        for id in finished {
            let Some(worker) = self.workers.remove(&id) else {
                continue;
            };
            self.gone_calls += worker.gate.calls().values().sum::<u64>();
            let asked = worker.stop.is_none();
            let result = futures::FutureExt::now_or_never(worker.task);
            let text = match result {
                Some(Ok(Ok(()))) => "stopped".to_owned(),
                Some(Ok(Err(error))) => format!("stopped with an error: {error}"),
                Some(Err(join)) => format!("task failed: {join}"),
                None => "gone".to_owned(),
            };
            self.oracle.log(format!("w{id} {text}"));
            if !asked || text != "stopped" {
                return Err(Violation {
                    invariant: "6 bounds",
                    detail: format!(
                        "w{id} {text}{}",
                        if asked { "" } else { " without being asked to" }
                    ),
                });
            }
        }
        Ok(())
    }

    fn act(&mut self, action: &Action) {
        self.oracle.log(format!("action {action:?}"));
        match *action {
            Action::Write { table, count } => {
                for _ in 0..count {
                    self.write(table);
                }
            }
            Action::Split { table, pick } | Action::Rotate { table, pick } => {
                let arn = self.streams[table].clone();
                let open = self.sim.open_shards(&arn).unwrap_or_default();
                if open.is_empty() {
                    return;
                }
                let shard = &open[pick % open.len()].shard_id;
                let result = if matches!(action, Action::Split { .. }) {
                    self.sim
                        .split_shard(&arn, shard)
                        .map(|(a, b)| format!("{a} {b}"))
                } else {
                    self.sim.rotate_shard(&arn, shard)
                };
                self.oracle.log(format!("{shard} -> {result:?}"));
            }
            Action::Reenable { table } => {
                if let Ok(arn) = self.sim.reenable_stream(&self.tables[table]) {
                    self.oracle.log(format!("new stream {arn}"));
                    for oracle in &self.checked {
                        oracle.stream_replaced(&self.streams[table]);
                    }
                    self.streams[table] = arn;
                }
            }
            Action::Start { worker } => self.start_worker(worker),
            Action::Crash { worker } => {
                if let Some(w) = self.workers.remove(&worker) {
                    w.task.abort();
                    self.gone_calls += w.gate.calls().values().sum::<u64>();
                    self.paused(worker, false);
                }
            }
            Action::Stop { worker } => self.stop_worker(worker),
            Action::LinkFault {
                worker,
                fault,
                lasting,
            } => {
                if let Some(w) = self.workers.get_mut(&worker)
                    && w.fault_until.is_none()
                {
                    w.gate.set_link(match fault {
                        LinkFault::Frozen => Link::Frozen,
                        LinkFault::Partitioned => Link::Partitioned,
                        LinkFault::Throttled => Link::Throttled,
                    });
                    w.fault_until = Some(Instant::now() + lasting);
                }
            }
            Action::LoseCheckpointAnswers { worker, count } => {
                if let Some(w) = self.workers.get(&worker) {
                    w.gate.lose_answers(StoreOp::Checkpoint, count);
                }
            }
            Action::Pause { worker, lasting } => {
                if let Some(w) = self.workers.get_mut(&worker)
                    && w.fault_until.is_none()
                {
                    w.gate.set_link(Link::Frozen);
                    w.switch.pause();
                    w.fault_until = Some(Instant::now() + lasting);
                    self.paused(worker, true);
                }
            }
        }
    }

    fn write(&mut self, table: usize) {
        let name = &self.tables[table];
        let key = format!("k{}", self.rng.random_range(0..self.scenario.service.keys));
        let n = self.next_n;
        self.next_n += 1;
        let op = self.rng.random_range(0..100);
        let row = Row { pk: key.clone(), n };
        let (written, image) = if op < 70 {
            (self.sim.put_value(name, &row), Some(n))
        } else if op < 85 {
            (self.sim.update_value(name, &row), Some(n))
        } else {
            (self.sim.delete(name, string_key("pk", &key)), None)
        };
        if let Ok(Some(written)) = written {
            let s = &self.scenario.settings;
            self.misbehaviour += crate::processor::worst_delay(
                self.scenario.seed,
                &self.scenario.behaviour,
                &written.event_id,
                s.batch_timeout,
                s.retry_backoff_max.unwrap_or(DEFAULT_BACKOFF),
            ) + self.scenario.behaviour.slow;
            let created: SystemTime = StreamsApi::now(&self.sim);
            for oracle in &self.checked {
                oracle.wrote(&written, image, created);
            }
        }
    }

    fn start_worker(&mut self, id: usize) {
        if self.workers.contains_key(&id) {
            return;
        }
        let s = &self.scenario.settings;
        let gate = Arc::new(InstrumentedStore::new(self.store.clone()));
        gate.observe(Arc::new(Observers(self.checked.clone())));
        let switch = PauseSwitch::new();
        let explorer = Explorer {
            seed: self.scenario.seed,
            oracle: self.oracle.clone(),
            store: self.store.clone(),
            sim: self.sim.clone(),
            retention: SimConfig::default().retention,
            behaviour: self.scenario.behaviour.clone(),
            auto_checkpoint: s.auto_checkpoint,
            handler_failures: s.handler_failures.unwrap_or(0),
            switch: switch.clone(),
            staged_writes: s.staged_writes,
            pipeline: None,
        };
        let mut builder = Consumer::builder("explorer")
            .with_worker_id(format!("w{id}"))
            .with_streams_api(Arc::new(PausableStreams::new(
                self.sim.clone(),
                switch.clone(),
            )))
            .with_lease_store(gate.clone())
            .with_initial_position(if s.latest {
                InitialPosition::Latest
            } else {
                InitialPosition::TrimHorizon
            })
            .with_auto_checkpoint(s.auto_checkpoint)
            .with_key_parallelism(s.key_parallelism)
            .with_bisect_on_error(s.bisect)
            .with_failover_time(s.failover_time);
        for table in &self.tables {
            builder = builder.with_table(table);
        }
        builder = with(builder, s.batch_limit, ConsumerBuilder::with_batch_limit);
        builder = with(
            builder,
            s.max_batch_size,
            ConsumerBuilder::with_max_batch_size,
        );
        builder = with(
            builder,
            s.batching_window,
            ConsumerBuilder::with_batching_window,
        );
        builder = with(
            builder,
            s.checkpoint_interval,
            ConsumerBuilder::with_checkpoint_interval,
        );
        builder = with(builder, s.max_retries, ConsumerBuilder::with_max_retries);
        builder = with(
            builder,
            s.max_record_age,
            ConsumerBuilder::with_max_record_age,
        );
        builder = with(
            builder,
            s.batch_timeout,
            ConsumerBuilder::with_batch_timeout,
        );
        builder = with(
            builder,
            s.shutdown_timeout,
            ConsumerBuilder::with_shutdown_timeout,
        );
        builder = with(
            builder,
            s.scan_interval,
            ConsumerBuilder::with_scan_interval,
        );
        builder = with(
            builder,
            s.shard_sync_interval,
            ConsumerBuilder::with_shard_sync_interval,
        );
        builder = with(
            builder,
            s.prefetch_pages,
            ConsumerBuilder::with_prefetch_pages,
        );
        builder = with(
            builder,
            s.max_buffered_bytes,
            ConsumerBuilder::with_max_buffered_bytes,
        );
        builder = with(
            builder,
            s.retry_backoff_max,
            ConsumerBuilder::with_retry_backoff_max,
        );
        if let Some(snapshot) = s.snapshot.filter(|_| self.snapshot) {
            builder = builder.with_snapshot(
                SnapshotConfig::new()
                    .with_segments(snapshot.segments)
                    .with_page_size(snapshot.page_size)
                    .with_simulated_tables(PausableStreams::new(self.sim.clone(), switch.clone())),
            );
        }
        if let Some((min, max)) = s.idle_backoff {
            builder = builder.with_idle_backoff(min, max);
        }
        if s.handler_failures.is_some() {
            builder = builder.with_on_failure(Handler(explorer.clone()));
        }
        if let Some(modulus) = s.filter_modulus {
            // Snapshot records have no event id: the filter keeps them.
            builder = builder.with_filter(move |record| {
                record
                    .event_id()
                    .is_none_or(|id| !crate::oracle::filtered_out(Some(modulus), id))
            });
        }
        for (pipeline, oracle) in s.pipelines.iter().zip(&self.checked) {
            let ex = Explorer {
                oracle: oracle.clone(),
                pipeline: Some(pipeline.name.clone()),
                ..explorer.clone()
            };
            let own = pipeline.clone();
            let handler = s.handler_failures.map(|_| Handler(ex.clone()));
            builder = builder
                .with_pipeline(&pipeline.name, ex)
                .with_pipeline_settings(&pipeline.name, move |mut b| {
                    b = with(b, own.max_batch_size, ConsumerBuilder::with_max_batch_size);
                    b = with(
                        b,
                        own.key_parallelism,
                        ConsumerBuilder::with_key_parallelism,
                    );
                    b = with(
                        b,
                        own.checkpoint_interval,
                        ConsumerBuilder::with_checkpoint_interval,
                    );
                    b = with(b, own.batch_timeout, ConsumerBuilder::with_batch_timeout);
                    with(b, handler, ConsumerBuilder::with_on_failure)
                });
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let until = async move {
            let _ = stopped.await;
        };
        let built = if s.pipelines.is_empty() {
            builder
                .build(explorer)
                .map(|consumer| tokio::spawn(consumer.run_until(until)))
        } else {
            builder
                .build_pipelines()
                .map(|consumer| tokio::spawn(consumer.run_until(until)))
        };
        let task = match built {
            Ok(task) => task,
            Err(error) => {
                self.oracle.violate(
                    "0 settings",
                    format!("the drawn settings are refused: {error}"),
                );
                return;
            }
        };
        self.oracle.log(format!("w{id} starts"));
        self.workers.insert(
            id,
            Worker {
                task,
                stop: Some(stop),
                gate,
                switch,
                stopping_since: None,
                fault_until: None,
            },
        );
    }

    fn stop_worker(&mut self, id: usize) {
        if let Some(worker) = self.workers.get_mut(&id)
            && let Some(stop) = worker.stop.take()
        {
            let _ = stop.send(());
            worker.stopping_since = Some(Instant::now());
            self.oracle.log(format!("w{id} asked to stop"));
        }
    }

    fn abort_all(&mut self) {
        for worker in self.workers.values() {
            worker.task.abort();
        }
    }
}

/// `builder` with a drawn setting, if one was drawn.
fn with<T>(
    builder: ConsumerBuilder,
    value: Option<T>,
    set: fn(ConsumerBuilder, T) -> ConsumerBuilder,
) -> ConsumerBuilder {
    match value {
        Some(value) => set(builder, value),
        None => builder,
    }
}

/// Every pipeline's oracle watches the lease writes.
struct Observers(Vec<Oracle>);

impl dynamodb_streams_consumer::testkit::StoreObserver for Observers {
    fn lease_written(
        &self,
        op: StoreOp,
        key: &dynamodb_streams_leases::LeaseKey,
        before: Option<&dynamodb_streams_leases::Lease>,
        after: Option<&dynamodb_streams_leases::Lease>,
    ) {
        for oracle in &self.0 {
            oracle.lease_written(op, key, before, after);
        }
    }
}

/// Whether `build_pipelines` takes a snapshot (named pipelines did not run one at first).
fn snapshot_with_pipelines_builds(sim: &SimulatedStream) -> bool {
    let refused = Consumer::builder("probe")
        .with_table("t0")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_pipeline("p", dynamodb_streams_consumer::Pipelines)
        .with_snapshot(
            SnapshotConfig::new()
                .with_simulated_tables(PausableStreams::new(sim.clone(), PauseSwitch::new())),
        )
        .build_pipelines();
    !matches!(
        refused,
        Err(dynamodb_streams_consumer::Error::Config {
            key: "with_snapshot",
            ..
        })
    )
}
