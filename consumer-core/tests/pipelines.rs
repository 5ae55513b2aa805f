//! Named pipelines (`with_pipeline`) in simulation and paused time: one read of the shard
//! feeds every pipeline; a failing or slow pipeline holds only itself; each pipeline keeps
//! its own checkpoint in the lease item and resumes from it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use dynamodb_streams_consumer::streams::{ApiError, ShardInfo, StreamsApi};
use dynamodb_streams_consumer::testkit::{SimOperation, SimulatedStream};
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, Checkpointer, Consumer, ConsumerBuilder, FailedRecords,
    FailureHandler, InitialPosition, ProcessorFactory, RecordProcessor, ShardContext,
};
use dynamodb_streams_leases::{Checkpoint, InMemoryLeaseStore, Lease, LeaseStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

/// What one pipeline's processors saw.
#[derive(Clone, Default)]
struct Log {
    delivered: Arc<Mutex<Vec<u64>>>,
    failed: Arc<Mutex<Vec<u64>>>,
}

impl Log {
    fn values(&self) -> Vec<u64> {
        self.delivered.lock().unwrap().clone()
    }
}

/// Records every change; fails (a partial batch response) at `poison`; takes `delay` per
/// batch.
struct Tester {
    log: Log,
    poison: Option<u64>,
    delay: Duration,
}

#[async_trait]
impl RecordProcessor for Tester {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(self.delay).await;
        let mut delivered = self.log.delivered.lock().unwrap();
        for change in &batch.changes {
            let n = change.new.as_ref().map_or(u64::MAX, |r| r.n);
            if Some(n) == self.poison {
                return Err(BatchFailure::at(change.sequence_number.clone(), "poison").into());
            }
            delivered.push(n);
        }
        Ok(())
    }
}

fn tester(log: &Log, poison: Option<u64>, delay: Duration) -> impl ProcessorFactory + use<> {
    let log = log.clone();
    move |_: &ShardContext| Tester {
        log: log.clone(),
        poison,
        delay,
    }
}

/// The on-failure handler: keeps the `n` of each record given up.
struct Collect(Log);

#[async_trait]
impl FailureHandler for Collect {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        let ns = failed.records.iter().map(|r| n_of(r));
        self.0.failed.lock().unwrap().extend(ns);
        Ok(())
    }
}

fn n_of(record: &Record) -> u64 {
    let image = record.dynamodb().and_then(|d| d.new_image.as_ref());
    match image.and_then(|i| i.get("n")) {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

fn stream_with(rows: u64) -> SimulatedStream {
    let sim = SimulatedStream::with_seed(7);
    sim.add_table("t");
    for n in 0..rows {
        sim.put_value(
            "t",
            &Row {
                pk: format!("k{}", n % 10),
                n,
            },
        )
        .unwrap();
    }
    sim
}

fn builder(sim: &SimulatedStream, store: &Arc<InMemoryLeaseStore>) -> ConsumerBuilder {
    Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_checkpoint_interval(Duration::ZERO)
        .with_batch_limit(20)
}

/// Runs `consumer` until `done` holds (virtual deadline: one day), then shuts it down.
async fn run_until_done(
    consumer: Consumer<impl ProcessorFactory>,
    done: impl Fn() -> bool + Send + 'static,
) {
    tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        consumer.run_until(async move {
            while !done() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }),
    )
    .await
    .expect("the consumer did not get there")
    .unwrap();
}

/// Runs `consumer` for `virtual_time`, then shuts it down.
async fn run_for(consumer: Consumer<impl ProcessorFactory>, virtual_time: Duration) {
    consumer
        .run_until(tokio::time::sleep(virtual_time))
        .await
        .unwrap();
}

async fn the_lease(store: &InMemoryLeaseStore) -> Lease {
    let leases = store.list_leases().await.unwrap();
    leases
        .into_iter()
        .find(|l| !l.key.is_coordination())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_failing_and_a_slow_pipeline_hold_only_themselves_over_one_read() {
    let rows = 200;
    let sim = stream_with(rows);
    let store = Arc::new(InMemoryLeaseStore::new());
    let (search, audit, slow) = (Log::default(), Log::default(), Log::default());
    let consumer = builder(&sim, &store)
        .with_max_retries(2)
        .with_on_failure(Collect(audit.clone()))
        .with_pipeline("search", tester(&search, None, Duration::ZERO))
        .with_pipeline("audit", tester(&audit, Some(50), Duration::ZERO))
        .with_pipeline("slow", tester(&slow, None, Duration::from_millis(500)))
        .build_pipelines()
        .unwrap();
    let (s, a, w) = (search.clone(), audit.clone(), slow.clone());
    run_until_done(consumer, move || {
        s.values().len() as u64 >= rows
            && a.values().len() as u64 >= rows - 1
            && w.values().len() as u64 >= rows
    })
    .await;

    let all: Vec<u64> = (0..rows).collect();
    assert_eq!(search.values(), all, "every record once, in order");
    assert_eq!(slow.values(), all, "the slow pipeline too");
    let without_poison: Vec<u64> = all.iter().copied().filter(|n| *n != 50).collect();
    assert_eq!(audit.values(), without_poison);
    assert_eq!(
        *audit.failed.lock().unwrap(),
        vec![50],
        "the poison went to the handler"
    );
    assert!(search.failed.lock().unwrap().is_empty());

    // Each pipeline's checkpoint is in the lease item, the read position with them.
    let lease = the_lease(&store).await;
    let last = sim
        .records(&lease.key.stream, &lease.key.shard_id)
        .unwrap()
        .last()
        .and_then(|r| r.dynamodb().and_then(|d| d.sequence_number.clone()))
        .unwrap();
    for name in ["search", "audit", "slow"] {
        assert_eq!(
            lease.pipelines[name].to_string(),
            last,
            "pipeline {name} checkpointed its last record"
        );
    }
    assert_eq!(lease.checkpoint.to_string(), last);
    assert_eq!(lease.owner_pipelines.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn pipelines_read_a_shard_as_often_as_one_consumer() {
    let rows = 200;
    let run = Duration::from_secs(120);

    let single = stream_with(rows);
    let log = Log::default();
    let consumer = builder(&single, &Arc::new(InMemoryLeaseStore::new()))
        .build(tester(&log, None, Duration::ZERO))
        .unwrap();
    run_for(consumer, run).await;
    let single_reads = single.calls(SimOperation::GetRecords);
    assert_eq!(log.values().len() as u64, rows);

    let shared = stream_with(rows);
    let logs = [Log::default(), Log::default(), Log::default()];
    let consumer = builder(&shared, &Arc::new(InMemoryLeaseStore::new()))
        .with_pipeline("a", tester(&logs[0], None, Duration::ZERO))
        .with_pipeline("b", tester(&logs[1], None, Duration::ZERO))
        .with_pipeline("c", tester(&logs[2], None, Duration::from_millis(200)))
        .build_pipelines()
        .unwrap();
    run_for(consumer, run).await;
    let pipelines_reads = shared.calls(SimOperation::GetRecords);
    for log in &logs {
        assert_eq!(log.values().len() as u64, rows);
    }
    println!(
        "GetRecords in {run:?}: one consumer {single_reads}, three pipelines {pipelines_reads}"
    );
    assert!(
        pipelines_reads <= single_reads,
        "three pipelines read the shard {pipelines_reads} times, one consumer {single_reads}"
    );
}

#[tokio::test(start_paused = true)]
async fn each_pipeline_resumes_from_its_own_checkpoint() {
    let rows = 100;
    let sim = stream_with(rows);
    let store = Arc::new(InMemoryLeaseStore::new());

    // First run: "cache" holds at record 50 (no handler: it retries), "search" goes on.
    let (search, cache) = (Log::default(), Log::default());
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search, None, Duration::ZERO))
        .with_pipeline("cache", tester(&cache, Some(50), Duration::ZERO))
        .build_pipelines()
        .unwrap();
    let (s, c) = (search.clone(), cache.clone());
    run_until_done(consumer, move || {
        s.values().len() as u64 >= rows && c.values().len() >= 50
    })
    .await;
    assert_eq!(search.values(), (0..rows).collect::<Vec<_>>());
    assert_eq!(cache.values(), (0..50).collect::<Vec<_>>());
    let lease = the_lease(&store).await;
    assert!(lease.owner.is_none(), "released at shutdown");
    assert_eq!(
        lease.checkpoint, lease.pipelines["cache"],
        "the read position is the slowest pipeline's"
    );
    assert!(matches!(lease.pipelines["search"], Checkpoint::At(_)));
    assert_ne!(lease.pipelines["search"], lease.pipelines["cache"]);

    // Restart with a healthy "cache": it goes on after its own checkpoint; "search" gets
    // nothing again.
    let (search2, cache2) = (Log::default(), Log::default());
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search2, None, Duration::ZERO))
        .with_pipeline("cache", tester(&cache2, None, Duration::ZERO))
        .build_pipelines()
        .unwrap();
    let c = cache2.clone();
    run_until_done(consumer, move || c.values().len() >= 50).await;
    assert_eq!(cache2.values(), (50..rows).collect::<Vec<_>>());
    assert_eq!(search2.values(), Vec::<u64>::new());
    let lease = the_lease(&store).await;
    assert_eq!(lease.pipelines["search"], lease.pipelines["cache"]);
    assert_eq!(lease.checkpoint, lease.pipelines["search"]);
}

/// A stream of `rows` rows, read to its end by one pipeline, "search".
async fn searched(rows: u64) -> (SimulatedStream, Arc<InMemoryLeaseStore>) {
    let sim = stream_with(rows);
    let store = Arc::new(InMemoryLeaseStore::new());
    let search = Log::default();
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search, None, Duration::ZERO))
        .build_pipelines()
        .unwrap();
    let s = search.clone();
    run_until_done(consumer, move || s.values().len() as u64 >= rows).await;
    (sim, store)
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_added_later_starts_at_its_initial_position() {
    let rows = 40;
    let (sim, store) = searched(rows).await;

    // "audit" joins (TRIM_HORIZON): it reads the retained history; "search" does not.
    let (search2, audit) = (Log::default(), Log::default());
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search2, None, Duration::ZERO))
        .with_pipeline("audit", tester(&audit, None, Duration::ZERO))
        .build_pipelines()
        .unwrap();
    let a = audit.clone();
    run_until_done(consumer, move || a.values().len() as u64 >= rows).await;
    assert_eq!(audit.values(), (0..rows).collect::<Vec<_>>());
    assert_eq!(search2.values(), Vec::<u64>::new());
}

/// A pipeline new to a running application that starts at `LATEST` does not move the
/// shard's read to the tip: the others go on after their own checkpoints (the read used
/// to open a `LATEST` iterator, as the slowest of `LATEST` and a sequence number is
/// `LATEST`, and "search" lost what was written while nothing ran).
#[tokio::test(start_paused = true)]
async fn a_pipeline_added_at_latest_leaves_the_others_where_they_were() {
    let rows = 40;
    let (sim, store) = searched(rows).await;

    // Written while nothing ran.
    for n in rows..rows + 20 {
        let row = Row {
            pk: format!("k{}", n % 10),
            n,
        };
        sim.put_value("t", &row).unwrap();
    }
    // Well past the creation-time margin: "tail" starts after every record so far.
    sim.advance_clock(Duration::from_secs(60));
    let (search2, tail) = (Log::default(), Log::default());
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search2, None, Duration::ZERO))
        .with_pipeline("tail", tester(&tail, None, Duration::ZERO))
        .with_pipeline_settings("tail", |b| b.with_initial_position(InitialPosition::Latest))
        .build_pipelines()
        .unwrap();
    let s = search2.clone();
    run_until_done(consumer, move || s.values().len() >= 20).await;
    assert_eq!(search2.values(), (rows..rows + 20).collect::<Vec<_>>());
    assert_eq!(tail.values(), Vec::<u64>::new(), "it starts at LATEST");
    let lease = the_lease(&store).await;
    assert_ne!(
        lease.pipelines["tail"],
        Checkpoint::Latest,
        "stored as a time"
    );
}

#[test]
fn pipeline_names_are_checked() {
    let sim = stream_with(0);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let error = builder(&sim, &store)
        .with_pipeline("a:b", tester(&log, None, Duration::ZERO))
        .build_pipelines()
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("\"a:b\""), "{error}");
    let error = builder(&sim, &store)
        .with_pipeline("a", tester(&log, None, Duration::ZERO))
        .with_pipeline("a", tester(&log, None, Duration::ZERO))
        .build_pipelines()
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("given twice"), "{error}");
    let error = builder(&sim, &store)
        .with_pipeline("a", tester(&log, None, Duration::ZERO))
        .build(tester(&log, None, Duration::ZERO))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("build_pipelines"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn each_pipeline_has_its_own_failure_policy_and_filter() {
    let rows = 60;
    let sim = stream_with(rows);
    let store = Arc::new(InMemoryLeaseStore::new());
    let (search, audit) = (Log::default(), Log::default());
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let seen = sizes.clone();
    let consumer = builder(&sim, &store)
        .with_pipeline("search", tester(&search, None, Duration::ZERO))
        .with_pipeline("audit", tester(&audit, Some(30), Duration::ZERO))
        .with_pipeline_settings("audit", {
            let audit = audit.clone();
            move |b| {
                b.with_max_retries(1)
                    .with_on_failure(Collect(audit))
                    .with_max_batch_size(4)
            }
        })
        .with_pipeline_settings("search", move |b| {
            b.with_filter(move |record| {
                seen.lock().unwrap().push(n_of(record));
                n_of(record).is_multiple_of(2)
            })
        })
        .build_pipelines()
        .unwrap();
    let (s, a) = (search.clone(), audit.clone());
    run_until_done(consumer, move || {
        s.values().len() as u64 >= rows / 2 && a.values().len() as u64 >= rows - 1
    })
    .await;
    let evens: Vec<u64> = (0..rows).filter(|n| n.is_multiple_of(2)).collect();
    assert_eq!(search.values(), evens, "search's own filter");
    let without_poison: Vec<u64> = (0..rows).filter(|n| *n != 30).collect();
    assert_eq!(
        audit.values(),
        without_poison,
        "audit's filter is the consumer's: none"
    );
    assert_eq!(
        *audit.failed.lock().unwrap(),
        vec![30],
        "audit's own handler"
    );
    assert_eq!(
        sizes.lock().unwrap().len() as u64,
        rows,
        "search's filter saw every record once"
    );

    let error = builder(&sim, &store)
        .with_pipeline_settings("nobody", |b| b)
        .with_pipeline("search", tester(&search, None, Duration::ZERO))
        .build_pipelines()
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("\"nobody\""), "{error}");
}

/// A consumer of pipelines "x" and "y" (y slow) for worker `id`, started in the background.
fn start_worker(
    sim: &SimulatedStream,
    store: &Arc<InMemoryLeaseStore>,
    id: &str,
    x: &Log,
    y: &Log,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<dynamodb_streams_consumer::Result<()>>,
) {
    let consumer = builder(sim, store)
        .with_worker_id(id)
        .with_pipeline("x", tester(x, None, Duration::ZERO))
        .with_pipeline("y", tester(y, None, Duration::from_millis(300)))
        .build_pipelines()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

#[tokio::test(start_paused = true)]
async fn a_handoff_flushes_every_pipeline_and_the_new_owner_goes_on_from_each() {
    use dynamodb_streams_consumer::testkit::SimConfig;
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 4,
        ..SimConfig::with_seed(11)
    });
    sim.add_table("t");
    let store = Arc::new(InMemoryLeaseStore::new());
    let (x, y) = (Log::default(), Log::default());
    let (stop_a, a) = start_worker(&sim, &store, "a", &x, &y);
    let rows = 400u64;
    let mut b = None;
    for n in 0..rows {
        sim.put_value(
            "t",
            &Row {
                pk: format!("k{}", n % 40),
                n,
            },
        )
        .unwrap();
        if n == rows / 4 {
            // b joins: a hands some shards over while y is behind on them.
            tokio::time::sleep(Duration::from_secs(5)).await;
            b = Some(start_worker(&sim, &store, "b", &x, &y));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owners = async || {
        let leases = store.list_leases().await.unwrap();
        leases
            .iter()
            .filter(|l| !l.key.is_coordination())
            .filter_map(|l| l.owner.clone())
            .filter(|o| o.starts_with("b#"))
            .count()
    };
    tokio::time::timeout(Duration::from_secs(600), async {
        while (x.values().len() as u64) < rows || (y.values().len() as u64) < rows {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every record reached both pipelines");
    assert!(owners().await > 0, "b took leases by handoff");
    for (name, log) in [("x", &x), ("y", &y)] {
        let mut values = log.values();
        values.sort_unstable();
        assert_eq!(
            values,
            (0..rows).collect::<Vec<_>>(),
            "pipeline {name}: every record exactly once across the handoff"
        );
    }
    stop_a.send(()).unwrap();
    a.await.unwrap().unwrap();
    let (stop_b, b) = b.unwrap();
    stop_b.send(()).unwrap();
    b.await.unwrap().unwrap();
}

/// A gauge's value in `snapshot`, of the series with exactly these labels besides `stream`.
fn gauge_of(
    snapshot: &[(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        metrics_util::debugging::DebugValue,
    )],
    name: &str,
    pipeline: Option<&str>,
) -> Option<f64> {
    snapshot.iter().find_map(|(key, _, _, value)| {
        let key = key.key();
        let label = key
            .labels()
            .find(|l| l.key() == "pipeline")
            .map(|l| l.value().to_owned());
        match value {
            metrics_util::debugging::DebugValue::Gauge(v)
                if key.name() == name && label.as_deref() == pipeline =>
            {
                Some(v.into_inner())
            }
            _ => None,
        }
    })
}

/// The lag gauges are per pipeline: a stuck pipeline shows with its name while the one
/// that keeps up shows none; the delivery counters carry the pipeline label too.
#[test]
fn a_stuck_pipeline_shows_in_the_lag_gauges_by_its_name() {
    let rows = 100;
    let (snapshot, _) = common::run_recorded(|snapshotter| async move {
        let sim = stream_with(rows);
        let store = Arc::new(InMemoryLeaseStore::new());
        let (fast, stuck) = (Log::default(), Log::default());
        let consumer = builder(&sim, &store)
            .with_pipeline("fast", tester(&fast, None, Duration::ZERO))
            .with_pipeline("stuck", tester(&stuck, None, Duration::from_secs(3600)))
            .build_pipelines()
            .unwrap();
        let taken = Arc::new(Mutex::new(None));
        let (f, snapshotter, into) = (fast.clone(), snapshotter.clone(), taken.clone());
        consumer
            .run_until(async move {
                while (f.values().len() as u64) < rows {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // Two publications of the gauges after the fast one caught up.
                tokio::time::sleep(Duration::from_secs(2)).await;
                *into.lock().unwrap() = Some(snapshotter.snapshot().into_vec());
            })
            .await
            .unwrap();
        assert!(stuck.values().len() < rows as usize, "stuck stayed behind");
        taken.lock().unwrap().take().unwrap()
    });
    let behind = |pipeline| gauge_of(&snapshot, "ddb_stream_records_behind", pipeline);
    assert!(
        behind(Some("stuck")).unwrap() > 0.0,
        "the stuck pipeline's records behind: {:?}",
        behind(Some("stuck"))
    );
    assert_eq!(behind(Some("fast")), Some(0.0), "the fast one caught up");
    assert_eq!(
        behind(None),
        None,
        "no unlabelled series for named pipelines"
    );
    let millis = |pipeline| gauge_of(&snapshot, "ddb_stream_millis_behind_latest", pipeline);
    assert!(millis(Some("stuck")).is_some());
    assert_eq!(millis(Some("fast")), Some(0.0));
    assert_eq!(
        gauge_of(&snapshot, "ddb_stream_leases_owned", None),
        Some(1.0),
        "one shard, counted once"
    );
    let fast_processed: u64 = snapshot
        .iter()
        .filter(|(key, ..)| {
            key.key().name() == "ddb_stream_records_processed_total"
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "pipeline" && l.value() == "fast")
        })
        .map(|(.., value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(
        fast_processed, rows,
        "the fast pipeline's records, labelled"
    );
}

/// The simulated stream, counting the children lookups (DescribeStream with
/// `ShardFilter{CHILD_SHARDS}`) per parent shard.
#[derive(Debug)]
struct CountingChildLookups {
    sim: SimulatedStream,
    lookups: Mutex<std::collections::BTreeMap<String, u64>>,
}

#[async_trait]
impl dynamodb_streams_consumer::streams::StreamsWrapper for CountingChildLookups {
    type Inner = SimulatedStream;

    fn wrapped(&self) -> &SimulatedStream {
        &self.sim
    }

    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        *self
            .lookups
            .lock()
            .unwrap()
            .entry(parent_shard_id.to_owned())
            .or_default() += 1;
        self.sim.child_shards(stream_arn, parent_shard_id).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_ends_looks_up_its_children_once_whatever_its_pipelines() {
    let rows = 30;
    let sim = stream_with(rows);
    let arn = sim.latest_stream_arn("t").await.unwrap();
    let parent = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
    let child = sim.rotate_shard(&arn, &parent).unwrap();
    for n in rows..rows + 10 {
        let row = Row {
            pk: format!("k{}", n % 10),
            n,
        };
        sim.put_value("t", &row).unwrap();
    }
    let api = Arc::new(CountingChildLookups {
        sim: sim.clone(),
        lookups: Mutex::default(),
    });
    let logs = [Log::default(), Log::default(), Log::default()];
    let consumer = builder(&sim, &Arc::new(InMemoryLeaseStore::new()))
        .with_streams_api(api.clone())
        .with_pipeline("a", tester(&logs[0], None, Duration::ZERO))
        .with_pipeline("b", tester(&logs[1], None, Duration::from_millis(50)))
        .with_pipeline("c", tester(&logs[2], None, Duration::from_millis(300)))
        .build_pipelines()
        .unwrap();
    let done = logs.clone();
    run_until_done(consumer, move || {
        done.iter().all(|l| l.values().len() as u64 >= rows + 10)
    })
    .await;
    for log in &logs {
        assert_eq!(log.values(), (0..rows + 10).collect::<Vec<_>>());
    }
    let lookups = api.lookups.lock().unwrap().clone();
    assert_eq!(
        lookups.get(&parent),
        Some(&1),
        "children of {parent} (child {child}) looked up: {lookups:?}"
    );
}
