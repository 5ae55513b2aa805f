//! The delivery controls in simulation and paused time: callbacks that can always be
//! stopped (lease loss, shutdown timeout, batch timeout), the failure policy (max retries,
//! bisect, partial batch response, the on-failure handler for poison, undecodable and
//! panicking records), the filter and batches gathered across pages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use dynamodb_streams_consumer::testkit::{InstrumentedStore, SimulatedStream, StoreOp};
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, Checkpointer, Consumer, ConsumerBuilder, FailedRecords,
    FailureHandler, RecordProcessor, ShardContext,
};
use dynamodb_streams_leases::{Checkpoint, InMemoryLeaseStore, LeaseKey, LeaseStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

/// What a test processor does with the batch that holds the poison record.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Poison {
    /// Fails the whole batch (nothing of it is recorded).
    WholeBatch,
    /// Records the changes before the poison and reports a partial batch failure there.
    Partial,
    /// Panics.
    Panics,
    /// Never returns.
    SleepsForever,
}

/// Records the failure handler took: the reason and the `n` of each record.
type Failures = Vec<(String, Vec<u64>)>;

/// What every processor and the failure handler saw.
#[derive(Clone, Default)]
struct Log {
    delivered: Arc<Mutex<Vec<Row>>>,
    batch_sizes: Arc<Mutex<Vec<usize>>>,
    failed: Arc<Mutex<Failures>>,
    lease_lost: Arc<AtomicUsize>,
    /// `process` futures dropped before they finished.
    dropped: Arc<AtomicUsize>,
    /// The `n` of each record `records_filtered` was told of.
    filtered: Arc<Mutex<Vec<u64>>>,
}

impl Log {
    fn values(&self) -> Vec<u64> {
        self.delivered.lock().unwrap().iter().map(|r| r.n).collect()
    }
    fn failed(&self) -> Failures {
        self.failed.lock().unwrap().clone()
    }
}

struct Tester {
    log: Log,
    poison: Option<u64>,
    mode: Poison,
}

/// Counts a `process` future dropped before it returned.
struct DropWatch(Option<Arc<AtomicUsize>>);

impl Drop for DropWatch {
    fn drop(&mut self) {
        if let Some(count) = self.0.take() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl RecordProcessor for Tester {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let mut watch = DropWatch(Some(self.log.dropped.clone()));
        self.log.batch_sizes.lock().unwrap().push(batch.len());
        let poison_at = batch
            .iter()
            .position(|c| Some(c.new.as_ref().map_or(u64::MAX, |r| r.n)) == self.poison);
        let result = match poison_at {
            None => {
                let rows = batch.changes.into_iter().filter_map(|c| c.new);
                self.log.delivered.lock().unwrap().extend(rows);
                Ok(())
            }
            Some(at) => match self.mode {
                Poison::WholeBatch => Err("poison in the batch".into()),
                Poison::Partial => {
                    let seq = batch.changes[at].sequence_number.clone();
                    let rows = batch.changes.into_iter().take(at).filter_map(|c| c.new);
                    self.log.delivered.lock().unwrap().extend(rows);
                    Err(BatchFailure::at(seq, "poison").into())
                }
                Poison::Panics => panic!("poison"),
                Poison::SleepsForever => std::future::pending().await,
            },
        };
        watch.0 = None;
        result
    }

    async fn lease_lost(&mut self) {
        self.log.lease_lost.fetch_add(1, Ordering::SeqCst);
    }

    async fn records_filtered(&mut self, records: &[Arc<Record>]) {
        let filtered = records.iter().map(|record| n_of(record));
        self.log.filtered.lock().unwrap().extend(filtered);
    }
}

/// An on-failure handler that keeps the reason and the `n` of each record (`u64::MAX`
/// when `n` is not a number).
struct Collect(Log);

fn n_of(record: &Record) -> u64 {
    let image = record.dynamodb().and_then(|d| d.new_image.as_ref());
    match image.and_then(|i| i.get("n")) {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(u64::MAX),
        _ => u64::MAX,
    }
}

#[async_trait]
impl FailureHandler for Collect {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        let ns = failed.records.iter().map(|r| n_of(r)).collect();
        self.0
            .failed
            .lock()
            .unwrap()
            .push((failed.reason.as_str().to_owned(), ns));
        assert!(
            !failed.error.contains("secret"),
            "no item values in errors: {}",
            failed.error
        );
        Ok(())
    }
}

fn stream_with(rows: u64) -> SimulatedStream {
    stream_with_keys(rows, 10)
}

/// `rows` changes of `keys` items: change `n` is of item `k{n % keys}`.
fn stream_with_keys(rows: u64, keys: u64) -> SimulatedStream {
    let sim = SimulatedStream::with_seed(3);
    sim.add_table("t");
    for n in 0..rows {
        let pk = format!("k{}", n % keys);
        sim.put_value("t", &Row { pk, n }).unwrap();
    }
    sim
}

fn builder(sim: &SimulatedStream, store: &Arc<InMemoryLeaseStore>) -> ConsumerBuilder {
    Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_checkpoint_interval(Duration::ZERO)
}

fn tester(
    log: &Log,
    poison: Option<u64>,
    mode: Poison,
) -> impl Fn(&ShardContext) -> Tester + use<> {
    let log = log.clone();
    move |_: &ShardContext| Tester {
        log: log.clone(),
        poison,
        mode,
    }
}

/// Runs `consumer` until `done` holds (virtual deadline: one day), then shuts it down.
async fn run_until_done(
    consumer: Consumer<impl dynamodb_streams_consumer::ProcessorFactory>,
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

/// Runs a [`Tester`] consumer over `sim`, with an on-failure handler collecting into `log`
/// and the settings `configure` adds, until `delivered` changes were recorded.
async fn run_tester(
    sim: &SimulatedStream,
    store: &Arc<InMemoryLeaseStore>,
    log: &Log,
    poison: Option<u64>,
    mode: Poison,
    delivered: usize,
    configure: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder,
) {
    let consumer = configure(builder(sim, store).with_on_failure(Collect(log.clone())))
        .build(tester(log, poison, mode))
        .unwrap();
    let watched = log.clone();
    run_until_done(consumer, move || watched.values().len() >= delivered).await;
}

async fn stored_checkpoint(sim: &SimulatedStream, store: &InMemoryLeaseStore) -> Checkpoint {
    let arn = sim.latest_stream_arn_of("t");
    let leases = store.list_leases().await.unwrap();
    leases
        .into_iter()
        .find(|l| l.key.stream == arn)
        .map(|l| l.checkpoint)
        .unwrap()
}

/// The stream's lease is checkpointed at the last record written (filtered records
/// included: they are checkpointed past).
async fn assert_checkpointed_at_the_last_record(sim: &SimulatedStream, store: &InMemoryLeaseStore) {
    let Checkpoint::At(seq) = stored_checkpoint(sim, store).await else {
        panic!("checkpointed");
    };
    assert_eq!(seq, sim.written().last().unwrap().sequence_number);
}

trait SimExt {
    fn latest_stream_arn_of(&self, table: &str) -> String;
}

impl SimExt for SimulatedStream {
    fn latest_stream_arn_of(&self, table: &str) -> String {
        self.written()
            .into_iter()
            .find(|w| w.table == table)
            .map(|w| w.stream_arn)
            .unwrap()
    }
}

/// Every value in `0..rows` except `poison`, delivered exactly once and in order per item.
fn assert_delivered_once_in_order(log: &Log, rows: u64, poison: u64) {
    assert_delivered_once_in_order_of(log, rows, poison, 10);
}

fn assert_delivered_once_in_order_of(log: &Log, rows: u64, poison: u64, keys: u64) {
    let values = log.values();
    let mut seen = values.clone();
    seen.sort_unstable();
    let expected: Vec<u64> = (0..rows).filter(|n| *n != poison).collect();
    assert_eq!(seen, expected, "everything else delivered exactly once");
    let mut last: HashMap<u64, u64> = HashMap::new();
    for n in values {
        if let Some(before) = last.insert(n % keys, n) {
            assert!(
                before < n,
                "item k{} went back from {before} to {n}",
                n % keys
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_poison_record_among_1000_ends_alone_in_the_handler_with_bisect_and_max_retries() {
    let sim = stream_with(1000);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(
        &sim,
        &store,
        &log,
        Some(437),
        Poison::WholeBatch,
        999,
        |b| b.with_max_retries(2).with_bisect_on_error(true),
    )
    .await;
    assert_eq!(
        log.failed(),
        vec![("retries-exhausted".to_owned(), vec![437])]
    );
    assert_delivered_once_in_order(&log, 1000, 437);
    let Checkpoint::At(seq) = stored_checkpoint(&sim, &store).await else {
        panic!("checkpointed past everything");
    };
    assert_eq!(
        seq,
        sim.written().last().unwrap().sequence_number,
        "the checkpoint moved past the poison once the handler took it"
    );
}

#[tokio::test(start_paused = true)]
async fn without_bisect_the_whole_failing_batch_goes_to_the_handler_after_max_retries() {
    let sim = stream_with(30);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(&sim, &store, &log, Some(15), Poison::WholeBatch, 20, |b| {
        b.with_batch_limit(10).with_max_retries(1)
    })
    .await;
    assert_eq!(
        log.failed(),
        vec![("retries-exhausted".to_owned(), (10..20).collect())]
    );
    // Two calls with the poison batch (first try, one retry), then the others.
    assert_eq!(log.batch_sizes.lock().unwrap().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_response_checkpoints_before_the_failed_record_and_redelivers_from_it() {
    let sim = stream_with(100);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(&sim, &store, &log, Some(42), Poison::Partial, 99, |b| {
        b.with_max_retries(3)
    })
    .await;
    assert_eq!(
        log.failed(),
        vec![("retries-exhausted".to_owned(), vec![42])]
    );
    assert_delivered_once_in_order(&log, 100, 42);
    // One batch of 100 (first failure at 42), three retries from 42 on, then the rest.
    let sizes = log.batch_sizes.lock().unwrap().clone();
    assert_eq!(sizes, vec![100, 58, 58, 58, 57]);
}

#[test]
fn the_records_before_a_partial_batch_failure_count_as_processed() {
    let ((), metrics) = common::run_recorded(|_| async {
        let sim = stream_with(100);
        let store = Arc::new(InMemoryLeaseStore::new());
        let log = Log::default();
        run_tester(&sim, &store, &log, Some(42), Poison::Partial, 99, |b| {
            b.with_max_retries(3)
        })
        .await;
    });
    let processed = common::counter_total(&metrics, "ddb_stream_records_processed_total");
    // 0..42 before the failure (their partial batch), 43..100 after the handler took 42.
    assert_eq!(processed, 99, "every record processed Ok is counted once");
}

#[tokio::test(start_paused = true)]
async fn panics_and_timeouts_go_through_the_failure_policy() {
    for (mode, reason) in [
        (Poison::Panics, "panicked"),
        (Poison::SleepsForever, "timed-out"),
    ] {
        let sim = stream_with(20);
        let store = Arc::new(InMemoryLeaseStore::new());
        let log = Log::default();
        run_tester(&sim, &store, &log, Some(7), mode, 19, |b| {
            b.with_max_retries(1)
                .with_bisect_on_error(true)
                .with_batch_timeout(Duration::from_secs(5))
        })
        .await;
        assert_eq!(log.failed(), vec![(reason.to_owned(), vec![7])], "{mode:?}");
        assert_delivered_once_in_order(&log, 20, 7);
    }
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_record_goes_to_the_handler_and_its_value_is_not_in_the_error() {
    #[derive(Serialize)]
    struct Bad {
        pk: String,
        n: String,
    }
    let sim = stream_with(5);
    sim.put_value(
        "t",
        &Bad {
            pk: "k5".into(),
            n: "secret-value".into(),
        },
    )
    .unwrap();
    for n in 6..10 {
        sim.put_value(
            "t",
            &Row {
                pk: format!("k{n}"),
                n,
            },
        )
        .unwrap();
    }
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(&sim, &store, &log, None, Poison::WholeBatch, 9, |b| b).await;
    assert_eq!(
        log.failed(),
        vec![("undecodable".to_owned(), vec![u64::MAX])]
    );
    assert_eq!(log.values(), vec![0, 1, 2, 3, 4, 6, 7, 8, 9]);
}

#[tokio::test(start_paused = true)]
async fn a_processor_that_sleeps_forever_is_dropped_when_the_lease_is_lost() {
    let sim = stream_with(10);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let consumer = builder(&sim, &store)
        .build(tester(&log, Some(0), Poison::SleepsForever))
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    // Wait until the batch is stuck in `process`, then take the lease away.
    while log.batch_sizes.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lease = loop {
        let leases = store.list_leases().await.unwrap();
        if let Some(lease) = leases
            .into_iter()
            .find(|l| !l.key.is_coordination() && l.owner.is_some())
        {
            break lease;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let key: LeaseKey = lease.key.clone();
    store
        .take_lease(&key, lease.owner.as_deref(), lease.epoch, "thief")
        .await
        .unwrap();
    // Whoever takes a live worker's lease hints the owner (as the leader and `ddbsc` do):
    // the worker notices at its next inbox read (every 2 s) and drops the call at once.
    store
        .notify(lease.owner.as_deref().unwrap(), std::slice::from_ref(&key))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while log.lease_lost.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("lease_lost was not called");
    assert_eq!(
        log.dropped.load(Ordering::SeqCst),
        1,
        "the stuck call was dropped"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the worker stops at once: no shard is still running")
        .unwrap()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_drops_a_processor_that_sleeps_forever_after_the_shutdown_timeout() {
    let sim = stream_with(10);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let consumer = builder(&sim, &store)
        .with_shutdown_timeout(Duration::from_secs(7))
        .build(tester(&log, Some(5), Poison::SleepsForever))
        .unwrap();
    let watched = log.clone();
    let started = tokio::time::Instant::now();
    let stuck_at = Arc::new(Mutex::new(None));
    let stuck = stuck_at.clone();
    run_until_done(consumer, move || {
        let stuck_now = !watched.batch_sizes.lock().unwrap().is_empty();
        if stuck_now {
            stuck
                .lock()
                .unwrap()
                .get_or_insert(tokio::time::Instant::now());
        }
        stuck_now
    })
    .await;
    let asked = stuck_at.lock().unwrap().unwrap();
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(9),
        "shutdown took {took:?} after it was asked for ({:?} in all)",
        started.elapsed()
    );
    assert_eq!(log.dropped.load(Ordering::SeqCst), 1);
    let leases = store.list_leases().await.unwrap();
    assert!(
        leases.iter().all(|l| l.owner.is_none()),
        "every lease released: {leases:?}"
    );
    assert_eq!(
        stored_checkpoint(&sim, &store).await,
        Checkpoint::TrimHorizon,
        "nothing succeeded, nothing is covered"
    );
}

#[tokio::test(start_paused = true)]
async fn filtered_records_are_checkpointed_past_and_batches_gather_pages() {
    let sim = stream_with(200);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(&sim, &store, &log, None, Poison::WholeBatch, 100, |b| {
        b.with_batch_limit(10)
            .with_max_batch_size(50)
            .with_batching_window(Duration::from_secs(1))
            .with_prefetch_pages(8)
            .with_filter(|record: &Record| n_of(record).is_multiple_of(2))
    })
    .await;
    assert_eq!(log.values(), (0..200).step_by(2).collect::<Vec<_>>());
    assert_eq!(
        *log.filtered.lock().unwrap(),
        (1..200).step_by(2).collect::<Vec<_>>(),
        "records_filtered hears of every record left out, in order"
    );
    let sizes = log.batch_sizes.lock().unwrap().clone();
    assert!(
        sizes.iter().any(|&n| n > 10),
        "batches larger than a page: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|&n| n <= 25),
        "at most 50 records, half filtered: {sizes:?}"
    );
    assert_checkpointed_at_the_last_record(&sim, &store).await;
}

/// `with_filter_pattern` goes through the same filter path as `with_filter`: records it
/// rejects are told to `records_filtered` and checkpointed past. Two patterns are OR-ed and
/// a third setting, `with_filter`, must also pass.
#[tokio::test(start_paused = true)]
async fn lambda_filter_patterns_are_the_filter() {
    let sim = stream_with(200);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    // Even n (a DynamoDB number is a string in Lambda's shape: suffixes, not `numeric`),
    // or n written with a leading 19 (19, 190-199); and with_filter drops n = 0.
    let even = r#"{"eventName": ["INSERT", "MODIFY"], "dynamodb": {"NewImage": {"n": {"N": [
        {"suffix": "0"}, {"suffix": "2"}, {"suffix": "4"}, {"suffix": "6"}, {"suffix": "8"}]}}}}"#;
    let from_190 = r#"{"dynamodb": {"NewImage": {"n": {"N": [{"prefix": "19"}]}}}}"#;
    let kept: Vec<u64> = (1..200)
        .filter(|n| n % 2 == 0 || n.to_string().starts_with("19"))
        .collect();
    run_tester(
        &sim,
        &store,
        &log,
        None,
        Poison::WholeBatch,
        kept.len(),
        |b| {
            b.with_batch_limit(10)
                .with_filter_pattern(even)
                .with_filter_pattern(from_190)
                .with_filter(|record: &Record| n_of(record) != 0)
        },
    )
    .await;
    assert_eq!(log.values(), kept);
    let filtered: Vec<u64> = (0..200).filter(|n| !kept.contains(n)).collect();
    assert_eq!(*log.filtered.lock().unwrap(), filtered);
    assert_checkpointed_at_the_last_record(&sim, &store).await;
}

#[test]
fn an_invalid_filter_pattern_is_refused_at_build_naming_its_path() {
    let sim = stream_with(1);
    let store = Arc::new(InMemoryLeaseStore::new());
    let error = builder(&sim, &store)
        .with_filter_pattern(r#"{"dynamodb": {"Keys": {"id": {"S": [{"prefix": 1}]}}}}"#)
        .build(tester(&Log::default(), None, Poison::WholeBatch))
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("with_filter_pattern"), "{error}");
    assert!(error.contains("$.dynamodb.Keys.id.S[0].prefix"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn with_key_parallelism_the_batching_window_still_fills_batches_across_pages() {
    let sim = stream_with(400);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_tester(&sim, &store, &log, None, Poison::WholeBatch, 400, |b| {
        b.with_batch_limit(10)
            .with_max_batch_size(50)
            .with_batching_window(Duration::from_secs(1))
            .with_prefetch_pages(8)
            .with_key_parallelism(2)
    })
    .await;
    assert_delivered_once_in_order_of(&log, 400, u64::MAX, 10);
    let sizes = log.batch_sizes.lock().unwrap().clone();
    // Pages of 10 split over 2 partitions: without the window, batches of about 5.
    assert!(
        sizes.iter().any(|&n| n > 10),
        "batches larger than a page: {sizes:?}"
    );
    assert!(sizes.iter().all(|&n| n <= 50), "at most 50: {sizes:?}");
}

#[test]
fn busy_loop_settings_are_refused_naming_the_setting() {
    let sim = stream_with(0);
    let store = Arc::new(InMemoryLeaseStore::new());
    let refused =
        |b: ConsumerBuilder| match b.build(tester(&Log::default(), None, Poison::WholeBatch)) {
            Err(dynamodb_streams_consumer::Error::Config { key, .. }) => key,
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("accepted"),
        };
    assert_eq!(
        refused(builder(&sim, &store).with_idle_backoff(Duration::ZERO, Duration::from_secs(1))),
        "with_idle_backoff"
    );
    assert_eq!(
        refused(builder(&sim, &store).with_retry_backoff_max(Duration::ZERO)),
        "with_retry_backoff_max"
    );
    assert_eq!(
        refused(builder(&sim, &store).with_max_record_age(Duration::from_secs(60))),
        "with_max_record_age"
    );
    assert_eq!(
        refused(builder(&sim, &store).with_max_batch_size(20_000)),
        "with_max_batch_size"
    );
}

/// A processor that takes one second per call, whatever the batch holds.
struct Slow(Log);

#[async_trait]
impl RecordProcessor for Slow {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows = batch.changes.into_iter().filter_map(|c| c.new);
        self.0.delivered.lock().unwrap().extend(rows);
        Ok(())
    }
}

/// Drains 2000 changes of 1000 items with batches of 10 and a one-second processor;
/// returns how long it took and checks per-item order and the final checkpoint.
async fn drain_with_key_parallelism(n: usize) -> Duration {
    let sim = stream_with_keys(2000, 1000);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let processors = log.clone();
    let consumer = builder(&sim, &store)
        .with_max_batch_size(10)
        .with_key_parallelism(n)
        .build(move |_: &ShardContext| Slow(processors.clone()))
        .unwrap();
    let watched = log.clone();
    let started = tokio::time::Instant::now();
    let finished = Arc::new(Mutex::new(None));
    let at = finished.clone();
    run_until_done(consumer, move || {
        let done = watched.values().len() >= 2000;
        if done {
            at.lock()
                .unwrap()
                .get_or_insert(tokio::time::Instant::now());
        }
        done
    })
    .await;
    assert_delivered_once_in_order_of(&log, 2000, u64::MAX, 1000);
    assert_checkpointed_at_the_last_record(&sim, &store).await;
    finished.lock().unwrap().unwrap() - started
}

#[tokio::test(start_paused = true)]
async fn key_parallelism_keeps_per_item_order_and_drains_a_slow_backlog_about_n_times_faster() {
    let one = drain_with_key_parallelism(1).await;
    let four = drain_with_key_parallelism(4).await;
    let speedup = one.as_secs_f64() / four.as_secs_f64();
    println!("key parallelism: 1 partition {one:?}, 4 partitions {four:?}, speedup {speedup:.2}");
    assert!(
        speedup >= 3.0,
        "1 partition: {one:?}, 4 partitions: {four:?}, speedup {speedup:.2}"
    );
}

/// Takes 1,000 s over a batch holding the item `hot`, 10 ms over any other.
struct HotItem(Log);

#[async_trait]
impl RecordProcessor for HotItem {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let hot = batch
            .iter()
            .any(|c| c.new.as_ref().is_some_and(|r| r.pk == "hot"));
        let took = if hot { 1000 } else { 0 };
        tokio::time::sleep(Duration::from_secs(took) + Duration::from_millis(10)).await;
        let rows = batch.changes.into_iter().filter_map(|c| c.new);
        self.0.delivered.lock().unwrap().extend(rows);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn with_key_parallelism_one_slow_item_does_not_hold_up_the_other_partitions() {
    // The hot item's change first, then 600 changes of 100 other items, in pages of 10.
    let sim = SimulatedStream::new(dynamodb_streams_consumer::testkit::SimConfig {
        max_records_per_page: 10,
        ..dynamodb_streams_consumer::testkit::SimConfig::with_seed(5)
    });
    sim.add_table("t");
    sim.put_value(
        "t",
        &Row {
            pk: "hot".into(),
            n: 0,
        },
    )
    .unwrap();
    for n in 1..=600 {
        let pk = format!("k{}", n % 100);
        sim.put_value("t", &Row { pk, n }).unwrap();
    }
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let processors = log.clone();
    let consumer = builder(&sim, &store)
        .with_max_batch_size(10)
        .with_key_parallelism(4)
        .build(move |_: &ShardContext| HotItem(processors.clone()))
        .unwrap();
    let watched = log.clone();
    let run = tokio::spawn(run_until_done(consumer, move || {
        watched.values().len() >= 601
    }));

    // A minute in, the hot item's partition is still on its first batch; the other three
    // went on through the pages fetched meanwhile (waiting for the round would leave them
    // at the first page or two), and the checkpoint stays before the hot change.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let early = log.values().len();
    println!("key parallelism with a hot item: {early} of 601 changes delivered after 60 s");
    assert!(
        early >= 300,
        "only {early} of 601 changes delivered after 60 s"
    );
    assert!(
        !log.values().contains(&0),
        "the hot change is still being processed"
    );
    assert_eq!(
        stored_checkpoint(&sim, &store).await,
        Checkpoint::TrimHorizon
    );

    run.await.unwrap();
    let values = log.values();
    assert_eq!(values.len(), 601, "everything once");
    let mut last: HashMap<String, u64> = HashMap::new();
    for row in log.delivered.lock().unwrap().iter() {
        if let Some(before) = last.insert(row.pk.clone(), row.n) {
            assert!(
                before < row.n,
                "{} went back from {before} to {}",
                row.pk,
                row.n
            );
        }
    }
    assert_checkpointed_at_the_last_record(&sim, &store).await;
}

/// Fails every batch that holds change 0 (its partition retries, pausing in between);
/// takes 10 s over every other batch, counting the calls started and those dropped mid-way.
#[derive(Clone)]
struct SlowBesideAFailure {
    log: Log,
    failures: Arc<AtomicUsize>,
    slow_started: Arc<AtomicUsize>,
}

#[async_trait]
impl RecordProcessor for SlowBesideAFailure {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        if batch
            .iter()
            .any(|c| c.new.as_ref().is_some_and(|r| r.n == 0))
        {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err("change 0 fails, every time".into());
        }
        let mut watch = DropWatch(Some(self.log.dropped.clone()));
        self.slow_started.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rows = batch.changes.into_iter().filter_map(|c| c.new);
        self.log.delivered.lock().unwrap().extend(rows);
        watch.0 = None;
        Ok(())
    }
}

/// Issue 15: with key parallelism, a release (here a graceful shutdown) that finds one
/// partition pausing between retries lets the other partitions' `process` calls in flight
/// finish. It used to end the shard at once and drop them mid-call.
#[tokio::test(start_paused = true)]
async fn a_release_during_one_partitions_retry_pause_lets_the_other_partitions_finish() {
    let sim = stream_with_keys(40, 8);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let failures = Arc::new(AtomicUsize::new(0));
    let slow_started = Arc::new(AtomicUsize::new(0));
    let processor = SlowBesideAFailure {
        log: log.clone(),
        failures: failures.clone(),
        slow_started: slow_started.clone(),
    };
    let consumer = builder(&sim, &store)
        .with_key_parallelism(4)
        .with_retry_backoff_max(Duration::from_secs(60))
        .build(move |_: &ShardContext| processor.clone())
        .unwrap();
    // Shut down once change 0 failed three times (its partition is in a pause of 400 ms
    // or more, as a failing call takes no time) while other partitions' 10 s calls run.
    let (failed, started) = (failures.clone(), slow_started.clone());
    tokio::time::timeout(
        Duration::from_secs(600),
        consumer.run_until(async move {
            while failed.load(Ordering::SeqCst) < 3 || started.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }),
    )
    .await
    .expect("the consumer stopped")
    .unwrap();
    assert_eq!(
        log.dropped.load(Ordering::SeqCst),
        0,
        "process calls of other partitions were dropped mid-way"
    );
    assert!(
        !log.values().is_empty(),
        "the calls running at the release finished"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_vanished_is_reported_as_data_loss_and_finished_so_its_child_runs() {
    use dynamodb_streams_consumer::testkit::Recording;
    let sim = SimulatedStream::with_seed(8);
    let arn = sim.add_table("t");
    for n in 0..3 {
        let pk = format!("k{n}");
        sim.put_value("t", &Row { pk, n }).unwrap();
    }
    let parent = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
    let store = Arc::new(InMemoryLeaseStore::new());
    let in_first_batch = Arc::new(tokio::sync::Notify::new());
    let go_on = Arc::new(tokio::sync::Notify::new());
    let (entered, proceed) = (in_first_batch.clone(), go_on.clone());
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let recording: Recording<Row> = Recording::new().with_hook(move |_, _, _| {
        let (entered, proceed) = (entered.clone(), proceed.clone());
        let is_first = first.swap(false, Ordering::SeqCst);
        Box::pin(async move {
            if is_first {
                entered.notify_one();
                proceed.notified().await;
            }
            Ok(())
        })
    });
    let consumer = builder(&sim, &store).build(recording.factory()).unwrap();
    let watched = recording.clone();
    let run = tokio::spawn(run_until_done(consumer, move || watched.len() >= 6));
    in_first_batch.notified().await;
    // While the first batch is processed, the shard closes and, a day later, is gone.
    sim.rotate_shard(&arn, &parent).unwrap();
    sim.advance_clock(Duration::from_secs(25 * 3600));
    for n in 3..6 {
        let pk = format!("k{n}");
        sim.put_value("t", &Row { pk, n }).unwrap();
    }
    go_on.notify_one();
    run.await.unwrap();
    let values: Vec<u64> = recording.images().iter().map(|r| r.n).collect();
    assert_eq!(values, vec![0, 1, 2, 3, 4, 5]);
    let losses = recording.losses();
    assert!(
        losses
            .iter()
            .any(|l| l.shard_id == parent && l.resumed_at.contains("no longer exists")),
        "{losses:?}"
    );
    let leases = store.list_leases().await.unwrap();
    let parent_lease = leases.iter().find(|l| l.key.shard_id == parent).unwrap();
    assert_eq!(parent_lease.checkpoint, Checkpoint::ShardEnd);
}

#[tokio::test(start_paused = true)]
async fn a_final_checkpoint_that_cannot_be_written_keeps_the_lease() {
    let sim = stream_with(10);
    let inner = Arc::new(InMemoryLeaseStore::new());
    let store = Arc::new(InstrumentedStore::new(inner.clone()));
    let log = Log::default();
    // The first checkpoint is written at once; later ones wait for the hour to pass.
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_checkpoint_interval(Duration::from_secs(3600))
        .build(tester(&log, None, Poison::WholeBatch))
        .unwrap();
    let (watched, writer, cut) = (log.clone(), sim.clone(), store.clone());
    run_until_done(consumer, move || {
        let seen = watched.values().len();
        if seen == 10 && writer.written().len() == 10 {
            for n in 10..20 {
                let pk = format!("k{}", n % 10);
                writer.put_value("t", &Row { pk, n }).unwrap();
            }
        }
        if seen >= 20 {
            // The second batch's checkpoint is pending; the final flush will fail.
            cut.fail_calls(StoreOp::Checkpoint, true);
        }
        seen >= 20
    })
    .await;
    let leases = inner.list_leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| !l.key.is_coordination())
        .expect("the shard's lease");
    assert!(
        lease.owner.is_some(),
        "not released after a failed final checkpoint: {lease:?}"
    );
    let Checkpoint::At(seq) = &lease.checkpoint else {
        panic!("the first checkpoint was written: {lease:?}");
    };
    assert_eq!(*seq, sim.written()[9].sequence_number);
}
