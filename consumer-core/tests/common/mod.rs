//! Shared by the multi-worker simulations (`multi_worker.rs`, `scale.rs`, `membership.rs`):
//! a cluster of simulated workers over one store (each through its own link, all through
//! one billing meter), and the invariant checks run over every record.

#![allow(dead_code)] // each test file uses its own part

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamodb_streams_consumer::testkit::{
    InstrumentedStore, Link, Recording, SimulatedStream, StoreObserver, StoreOp,
};
use dynamodb_streams_consumer::{ChangeBatch, Consumer};
use dynamodb_streams_leases::{Checkpoint, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub pk: String,
    pub n: u64,
}

/// (worker, shard, sequence number, key, n)
pub type Delivery = (String, String, String, String, u64);

/// A running worker: its task, its graceful stop, and its link to the lease table.
pub struct Running {
    pub task: tokio::task::JoinHandle<dynamodb_streams_consumer::Result<()>>,
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub gate: Arc<InstrumentedStore>,
}

/// Calls of `process` in flight per shard: (worker, calls).
type InFlight = Arc<Mutex<HashMap<String, (String, u32)>>>;

pub struct Cluster {
    pub sim: SimulatedStream,
    pub store: Arc<InMemoryLeaseStore>,
    /// Every worker's calls, priced per item (the hottest item's units).
    pub billing: Arc<InstrumentedStore<InMemoryLeaseStore>>,
    pub recording: Recording<Row>,
    pub zombie_deliveries: Arc<Mutex<Vec<String>>>,
    /// `process` calls for one shard by two workers at once.
    pub overlaps: Arc<Mutex<Vec<String>>>,
    pub workers: BTreeMap<String, Running>,
    /// The longest pause between polls of an idle shard (`with_idle_backoff`).
    pub idle_backoff_max: Duration,
    /// How long each `process` call takes (20 ms unless a test slows it down).
    pub processing: Arc<Mutex<Duration>>,
    /// Who owns each unfinished shard lease, kept from every write that reaches the store:
    /// what the checks poll, instead of reading every lease each time.
    pub owners: Arc<OwnerIndex>,
}

impl Cluster {
    /// No workers yet; their processors record deliveries, and whether the deliverer still
    /// owned the lease at that moment.
    pub fn new(sim: &SimulatedStream, store: Arc<InMemoryLeaseStore>) -> Self {
        let zombie_deliveries: Arc<Mutex<Vec<String>>> = Arc::default();
        let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
        let in_flight: InFlight = Arc::default();
        let (zombies, lease_store) = (zombie_deliveries.clone(), store.clone());
        let overlapping = overlaps.clone();
        let processing = Arc::new(Mutex::new(Duration::from_millis(20)));
        let took = processing.clone();
        let recording = Recording::new().with_hook(move |shard, batch: &ChangeBatch<Row>, _| {
            let (zombies, store, shard) = (zombies.clone(), lease_store.clone(), shard.clone());
            let (in_flight, overlapping) = (in_flight.clone(), overlapping.clone());
            let took = *took.lock().unwrap();
            let key = LeaseKey::new(batch.stream_arn.clone(), batch.shard_id.clone());
            let records = batch.len();
            Box::pin(async move {
                let me = shard.lease_owner.clone();
                {
                    let mut calls = in_flight.lock().unwrap();
                    let entry = calls
                        .entry(shard.shard_id.clone())
                        .or_insert((me.clone(), 0));
                    if entry.1 > 0 && entry.0 != me {
                        overlapping.lock().unwrap().push(format!(
                            "{me} processed {} while {} still did",
                            shard.shard_id, entry.0
                        ));
                    }
                    *entry = (me.clone(), entry.1 + 1);
                }
                // Processing takes a little time, so workers overlap and crashes hit
                // mid-batch.
                tokio::time::sleep(took).await;
                {
                    let mut calls = in_flight.lock().unwrap();
                    if let Some(entry) = calls.get_mut(&shard.shard_id)
                        && entry.0 == me
                    {
                        entry.1 -= 1;
                    }
                }
                let lease = store.get_lease(&key).await?.ok_or("lease vanished")?;
                if lease.owner.as_deref() != Some(&shard.lease_owner)
                    || lease.epoch != shard.lease_epoch
                {
                    zombies.lock().unwrap().push(format!(
                        "{} delivered {records} records of {} at epoch {} while {:?} owned it \
                         at epoch {}",
                        shard.lease_owner,
                        shard.shard_id,
                        shard.lease_epoch,
                        lease.owner,
                        lease.epoch
                    ));
                }
                Ok(())
            })
        });
        let billing = Arc::new(InstrumentedStore::new(store.clone()));
        let owners = Arc::new(OwnerIndex::of(&store));
        billing.observe(owners.clone());
        Cluster {
            sim: sim.clone(),
            billing,
            owners,
            store,
            recording,
            zombie_deliveries,
            overlaps,
            workers: BTreeMap::new(),
            idle_backoff_max: Duration::from_secs(1),
            processing,
        }
    }

    /// Every delivery so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.recording
            .delivered()
            .into_iter()
            .map(|d| {
                let row = d.change.new.expect("a new image");
                (
                    d.shard.worker_id.clone(),
                    d.shard.shard_id.clone(),
                    d.change.sequence_number.to_string(),
                    row.pk,
                    row.n,
                )
            })
            .collect()
    }

    pub fn start(&mut self, id: &str) {
        let billing: Arc<dyn LeaseStore> = self.billing.clone();
        let gate = Arc::new(InstrumentedStore::new(billing));
        let consumer = Consumer::builder("app")
            .with_table("orders")
            .with_streams_api(Arc::new(self.sim.clone()))
            .with_lease_store(gate.clone())
            .with_worker_id(id)
            .with_batch_limit(25)
            .with_checkpoint_interval(Duration::from_millis(500))
            .with_idle_backoff(Duration::from_millis(100), self.idle_backoff_max)
            .build(self.recording.factory())
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        self.workers
            .insert(id.to_owned(), Running { task, stop, gate });
    }

    /// Stops one worker gracefully and waits until it stopped.
    pub async fn stop(&mut self, id: &str) {
        if let Some(worker) = self.workers.remove(id) {
            let _ = worker.stop.send(());
            let result = tokio::time::timeout(Duration::from_secs(120), worker.task)
                .await
                .unwrap_or_else(|_| panic!("worker {id} did not stop gracefully"));
            result.unwrap().unwrap();
        }
    }

    pub fn crash(&mut self, id: &str) {
        if let Some(worker) = self.workers.remove(id) {
            worker.task.abort();
        }
    }

    pub fn link(&self, id: &str, link: Link) {
        if let Some(worker) = self.workers.get(id) {
            worker.gate.set_link(link);
        }
    }

    pub async fn stop_all(&mut self) {
        for (id, worker) in std::mem::take(&mut self.workers) {
            worker.gate.set_link(Link::Up);
            let _ = worker.stop.send(());
            let result = tokio::time::timeout(Duration::from_secs(120), worker.task)
                .await
                .unwrap_or_else(|_| panic!("worker {id} did not stop gracefully"));
            result.unwrap().unwrap();
        }
    }

    /// The coordination item's reads since the billing meters were last reset: read units
    /// a second on average, and in its busiest second.
    pub fn coordination_reads(&self) -> (f64, f64) {
        let (items, over) = self.billing.item_units();
        let coordination = items
            .iter()
            .find(|i| i.item == "coordination")
            .expect("the coordination item was read");
        (
            coordination.read_units / over.as_secs_f64(),
            coordination.peak_read_units,
        )
    }

    /// Takes by the running workers so far (crashed workers' counts are gone with them).
    pub fn takes(&self) -> u64 {
        self.workers
            .values()
            .map(|w| {
                w.gate
                    .calls()
                    .get(&StoreOp::TakeLease)
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// The end of a run: every change delivered (within 10 virtual minutes), every worker
    /// stopped gracefully, then [`check_deliveries`] and [`check_released`].
    pub async fn finish(&mut self, stream_arn: &str) {
        self.wait_for_every_change(Duration::from_secs(600)).await;
        self.stop_all().await;
        check_deliveries(self, stream_arn);
        check_released(&self.store).await;
    }

    /// Polls every 100 ms until every written change was delivered, for up to `limit`.
    pub async fn wait_for_every_change(&self, limit: Duration) {
        let expected = written_positions(&self.sim);
        tokio::time::timeout(limit, async {
            loop {
                let delivered: HashSet<(String, String)> =
                    self.deliveries().into_iter().map(|d| (d.1, d.2)).collect();
                if expected.is_subset(&delivered) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await
        .expect("some changes were never delivered");
    }
}

/// (shard, sequence number) of every change written to the simulated table.
pub fn written_positions(sim: &SimulatedStream) -> HashSet<(String, String)> {
    sim.written()
        .iter()
        .map(|w| (w.shard_id.clone(), w.sequence_number.to_string()))
        .collect()
}

/// Invariants 1-4 over every delivery: no delivery by a worker that did not own the lease
/// at that moment, per-key order (redeliveries aside), parents before children, and a
/// bounded number of redeliveries. Call after every change was delivered.
pub fn check_deliveries(cluster: &Cluster, stream_arn: &str) {
    let expected = written_positions(&cluster.sim);
    let zombies = cluster.zombie_deliveries.lock().unwrap().clone();
    assert!(
        zombies.is_empty(),
        "deliveries by workers that had lost the lease: {zombies:#?}"
    );
    let overlaps = cluster.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.is_empty(),
        "shards processed by two workers at once: {overlaps:#?}"
    );
    let delivered = cluster.deliveries();
    // Per key, values only move forward, except redeliveries of values seen before
    // (after a crash or a lost lease, processing resumes at the last checkpoint).
    let mut last: HashMap<&str, u64> = HashMap::new();
    let mut seen: HashSet<(&str, u64)> = HashSet::new();
    for (worker, _, _, key, n) in &delivered {
        if let Some(prev) = last.insert(key, *n) {
            assert!(
                *n > prev || seen.contains(&(key.as_str(), *n)),
                "key {key}: {n} after {prev} at {worker}, and not a redelivery"
            );
        }
        seen.insert((key, *n));
    }
    // Parents before children.
    let first: HashMap<&str, usize> = delivered
        .iter()
        .enumerate()
        .rev()
        .map(|(i, d)| (d.1.as_str(), i))
        .collect();
    for shard in cluster.sim.all_shards(stream_arn).unwrap() {
        if let (Some(parent), Some(child_first)) =
            (&shard.parent_shard_id, first.get(shard.shard_id.as_str()))
            && let Some(parent_last) = delivered.iter().rposition(|d| &d.1 == parent)
        {
            assert!(
                parent_last < *child_first,
                "{} before its parent {parent} ended",
                shard.shard_id
            );
        }
    }
    let duplicates = delivered.len() - expected.len();
    assert!(
        duplicates < expected.len() / 5,
        "{duplicates} redeliveries for {} changes: more than crashes explain",
        expected.len()
    );
}

/// After a graceful stop of everyone, no unfinished lease is owned (finished ones may keep
/// a crashed owner: nobody needs to take them).
pub async fn check_released(store: &InMemoryLeaseStore) {
    for lease in store.list_leases().await.unwrap() {
        if lease.checkpoint != Checkpoint::ShardEnd && !lease.key.is_coordination() {
            assert!(
                lease.owner.is_none(),
                "{} still owned by {:?}",
                lease.key,
                lease.owner
            );
        }
    }
}

/// Unfinished shard leases per worker id (the part of the owner before `#`), and how many
/// have no owner or one outside `live`.
pub async fn ownership(
    store: &InMemoryLeaseStore,
    live: &[String],
) -> (BTreeMap<String, usize>, usize) {
    let mut per_worker: BTreeMap<String, usize> = live.iter().map(|w| (w.clone(), 0)).collect();
    let mut orphans = 0;
    store.for_each_lease(|lease| {
        if lease.key.is_coordination() || lease.checkpoint == Checkpoint::ShardEnd {
            return;
        }
        let worker = lease.owner.as_deref().and_then(|o| o.split('#').next());
        match worker.and_then(|w| per_worker.get_mut(w)) {
            Some(count) => *count += 1,
            None => orphans += 1,
        }
    });
    (per_worker, orphans)
}

/// Who owns each unfinished shard lease (by worker id, the part of the owner before `#`),
/// kept up to date from every lease write through the cluster's billing store: at 100,000
/// leases the checks ask it every 100 ms of simulated time, which reading every lease would
/// make the slowest part of the run. Seeded from the store when made.
#[derive(Default)]
pub struct OwnerIndex {
    state: Mutex<Owners>,
}

#[derive(Default)]
struct Owners {
    /// Unfinished shard leases and their owner (`None`: no owner).
    owner: HashMap<LeaseKey, Option<String>>,
    /// The same, per owner.
    by_owner: HashMap<Option<String>, HashSet<LeaseKey>>,
}

impl Owners {
    fn set(&mut self, key: &LeaseKey, lease: Option<&Lease>) {
        if let Some(old) = self.owner.remove(key)
            && let Some(keys) = self.by_owner.get_mut(&old)
        {
            keys.remove(key);
            if keys.is_empty() {
                self.by_owner.remove(&old);
            }
        }
        let Some(lease) = lease else { return };
        if lease.key.is_coordination() || lease.checkpoint == Checkpoint::ShardEnd {
            return;
        }
        let worker = lease
            .owner
            .as_deref()
            .map(|o| o.split('#').next().unwrap_or(o).to_owned());
        self.by_owner
            .entry(worker.clone())
            .or_default()
            .insert(key.clone());
        self.owner.insert(key.clone(), worker);
    }
}

impl OwnerIndex {
    /// The index of `store` as it is now.
    pub fn of(store: &InMemoryLeaseStore) -> Self {
        let index = Self::default();
        {
            let mut state = index.state.lock().unwrap();
            store.for_each_lease(|lease| state.set(&lease.key, Some(lease)));
        }
        index
    }

    /// Unfinished shard leases per worker of `live`, and how many have no live owner.
    pub fn ownership(&self, live: &[String]) -> (BTreeMap<String, usize>, usize) {
        let state = self.state.lock().unwrap();
        let per_worker: BTreeMap<String, usize> = live
            .iter()
            .map(|w| {
                let held = state.by_owner.get(&Some(w.clone())).map_or(0, HashSet::len);
                (w.clone(), held)
            })
            .collect();
        let owned: usize = per_worker.values().sum();
        (per_worker, state.owner.len() - owned)
    }

    /// The unfinished shard leases whose owner is not one of `running`.
    fn orphans(&self, running: &std::collections::BTreeSet<String>) -> HashSet<LeaseKey> {
        let state = self.state.lock().unwrap();
        state
            .by_owner
            .iter()
            .filter(|(owner, _)| !owner.as_ref().is_some_and(|o| running.contains(o)))
            .flat_map(|(_, keys)| keys.iter().cloned())
            .collect()
    }
}

impl StoreObserver for OwnerIndex {
    fn lease_written(
        &self,
        _op: StoreOp,
        key: &LeaseKey,
        _before: Option<&Lease>,
        after: Option<&Lease>,
    ) {
        self.state.lock().unwrap().set(key, after);
    }
}

/// Watches, every 100 ms, how long each unfinished shard lease goes without an owner among
/// the running workers; the longest such gap so far, and how many leases had one.
pub struct OrphanWatch {
    pub longest: Arc<Mutex<(Duration, usize)>>,
    task: tokio::task::JoinHandle<()>,
}

impl OrphanWatch {
    /// Starts watching the leases `owners` indexes; `live` says which worker ids run.
    pub fn start(
        owners: Arc<OwnerIndex>,
        live: Arc<Mutex<std::collections::BTreeSet<String>>>,
    ) -> Self {
        let longest: Arc<Mutex<(Duration, usize)>> = Arc::default();
        let report = longest.clone();
        let task = tokio::spawn(async move {
            let mut since: HashMap<LeaseKey, Instant> = HashMap::new();
            let mut ever = HashSet::new();
            loop {
                let now = Instant::now();
                let live = live.lock().unwrap().clone();
                let orphans = owners.orphans(&live);
                since.retain(|key, _| orphans.contains(key));
                for key in orphans {
                    ever.insert(key.clone());
                    since.entry(key).or_insert(now);
                }
                let worst = since.values().map(|at| now - *at).max().unwrap_or_default();
                {
                    let mut longest = report.lock().unwrap();
                    *longest = (longest.0.max(worst), ever.len());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { longest, task }
    }

    /// The longest gap seen, and how many leases had one.
    pub fn stop(self) -> (Duration, usize) {
        self.task.abort();
        *self.longest.lock().unwrap()
    }
}

/// Runs `test` on a current-thread runtime with time paused and a thread-local metrics
/// recorder: every task runs on this thread, so the recorder holds this test's metrics
/// only. `test` gets the recorder's snapshotter (to look during the run); so does the
/// caller, with the test's output.
pub fn run_recorded<F: std::future::Future>(
    test: impl FnOnce(metrics_util::debugging::Snapshotter) -> F,
) -> (F::Output, metrics_util::debugging::Snapshotter) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let output =
        metrics::with_local_recorder(&recorder, || runtime.block_on(test(snapshotter.clone())));
    (output, snapshotter)
}

/// The counter `name` summed over its series, since the previous snapshot.
pub fn counter_total(snapshotter: &metrics_util::debugging::Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}
