//! Snapshot segments on the simulated stream, with a fake table behind the `TableScan`
//! trait, in paused time: segments shared by workers, resumed after a crash, finished
//! before the stream; a snapshot that outlasts the retention reported as data loss.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseStore};
use serde::{Deserialize, Serialize};

use super::scan::{Item, PageRequest, ScanPage, TableScan};
use super::*;
use crate::shard_sync::Contention;
use crate::streams::ApiError;
use crate::testkit::{Recording, SimulatedStream};
use crate::{ChangeBatch, ChangeKind, Consumer, ProcessorFactory};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Row {
    pk: String,
    v: i64,
}

/// A table of `pk` strings: segment by a hash of the key, pages in key order.
#[derive(Debug, Default)]
struct FakeTable {
    items: BTreeMap<String, i64>,
    pages: AtomicU64,
    /// An item whose `v` is a string: it does not decode into `Row`.
    undecodable: Option<String>,
}

impl FakeTable {
    fn with_rows(n: usize) -> Arc<Self> {
        Arc::new(Self {
            items: (0..n).map(|i| (format!("r{i:04}"), i as i64)).collect(),
            pages: AtomicU64::new(0),
            undecodable: None,
        })
    }

    /// `n` rows, of which `pk`'s `v` does not decode.
    fn with_rows_and_undecodable(n: usize, pk: &str) -> Arc<Self> {
        Arc::new(Self {
            undecodable: Some(pk.to_owned()),
            ..Arc::try_unwrap(Self::with_rows(n)).unwrap_or_default()
        })
    }
}

/// A simulated stream with table `orders`, an empty lease table, and `rows` rows to scan.
fn orders(seed: u64, rows: usize) -> (SimulatedStream, Arc<InMemoryLeaseStore>, Arc<FakeTable>) {
    let sim = SimulatedStream::with_seed(seed);
    sim.add_table("orders");
    (
        sim,
        Arc::new(InMemoryLeaseStore::new()),
        FakeTable::with_rows(rows),
    )
}

#[async_trait]
impl TableScan for FakeTable {
    async fn key_attributes(&self, _table: &str) -> Result<Vec<String>, ApiError> {
        Ok(vec!["pk".into()])
    }

    async fn scan_page(&self, request: PageRequest<'_>) -> Result<ScanPage, ApiError> {
        self.pages.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let after = request
            .start
            .map(|key| key["pk"].as_s().unwrap().clone())
            .unwrap_or_default();
        let segment = |pk: &str| pk.bytes().map(u32::from).sum::<u32>() % request.total_segments;
        let page: Vec<(&String, &i64)> = self
            .items
            .range(after.clone()..)
            .filter(|(pk, _)| **pk != after && segment(pk) == request.segment)
            .take(request.limit as usize)
            .collect();
        let item = |pk: &str, v: i64| -> Item {
            let v = if self.undecodable.as_deref() == Some(pk) {
                AttributeValue::S("not a number".into())
            } else {
                AttributeValue::N(v.to_string())
            };
            Item::from([
                ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
                ("v".to_owned(), v),
            ])
        };
        let last_evaluated_key = (page.len() == request.limit as usize)
            .then(|| {
                page.last().map(|(pk, _)| {
                    Item::from([("pk".to_owned(), AttributeValue::S((*pk).clone()))])
                })
            })
            .flatten();
        Ok(ScanPage {
            items: page.iter().map(|(pk, v)| item(pk, **v)).collect(),
            last_evaluated_key,
        })
    }
}

fn builder(
    sim: &SimulatedStream,
    store: &Arc<InMemoryLeaseStore>,
    table: &Arc<FakeTable>,
    id: &str,
) -> crate::ConsumerBuilder {
    let mut snapshot = SnapshotConfig::new()
        .with_segments(4)
        .with_page_size(10)
        .with_progress_interval(Duration::from_secs(1));
    snapshot.scanner = Some(table.clone());
    Consumer::builder("app")
        .with_table("orders")
        .with_worker_id(id)
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_checkpoint_interval(Duration::ZERO)
        .with_failover_time(Duration::from_secs(3))
        .with_scan_interval(Duration::from_millis(300))
        .with_snapshot(snapshot)
}

fn consumer(
    sim: &SimulatedStream,
    store: &Arc<InMemoryLeaseStore>,
    table: &Arc<FakeTable>,
    id: &str,
    factory: impl ProcessorFactory,
) -> Consumer<impl ProcessorFactory> {
    builder(sim, store, table, id).build(factory).unwrap()
}

fn spawn(
    consumer: Consumer<impl ProcessorFactory>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<crate::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

/// Stops a consumer `spawn` started and waits until it returned `Ok`.
async fn stopped(
    stop: tokio::sync::oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<crate::Result<()>>,
) {
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}

fn snapshot_keys(log: &Recording<Row>) -> Vec<String> {
    log.delivered()
        .iter()
        .filter(|d| d.change.kind == ChangeKind::Snapshot)
        .map(|d| d.change.new.as_ref().unwrap().pk.clone())
        .collect()
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(600), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Until the lease table says every segment of the snapshot is done.
async fn until_segments_done(store: &InMemoryLeaseStore) {
    until("every segment done", || {
        futures::executor::block_on(store.list_leases()).is_ok_and(|leases| {
            let progress = progress(&leases);
            !progress.is_empty() && progress.iter().all(|p| p.is_done())
        })
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn segments_are_shared_resumed_after_a_crash_and_finished_before_the_stream() {
    // Redeliveries are at most the pages in flight when the lease moved: one per segment.
    crash_and_resume(|builder| builder, 2 * 10).await;
}

/// The same with key parallelism and batch shaping: snapshot records go through the same
/// session as stream records.
#[tokio::test(start_paused = true)]
async fn segments_with_key_parallelism_and_batch_shaping_are_resumed_after_a_crash() {
    let shaped = |builder: crate::ConsumerBuilder| {
        builder
            .with_key_parallelism(3)
            .with_max_batch_size(7)
            .with_batching_window(Duration::from_millis(300))
    };
    // In flight per segment: a batch in each of 3 partitions and the pages they came from.
    crash_and_resume(shaped, 4 * 3 * 10).await;
}

async fn crash_and_resume(
    shape: impl Fn(crate::ConsumerBuilder) -> crate::ConsumerBuilder,
    redelivered: usize,
) {
    let (sim, store, table) = orders(7, 400);

    let slow: Recording<Row> = Recording::new().with_hook(|_, _, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(())
        })
    });
    let doomed = shape(builder(&sim, &store, &table, "doomed"));
    let (_stop, doomed) = spawn(doomed.build(slow.factory()).unwrap());
    until("part of the snapshot", || slow.len() >= 100).await;
    // Changes made after the snapshot began: delivered after every snapshot record.
    for i in 0..5 {
        sim.put_value(
            "orders",
            &Row {
                pk: format!("new{i}"),
                v: 1_000 + i,
            },
        )
        .unwrap();
    }
    doomed.abort();
    let before: BTreeSet<String> = snapshot_keys(&slow).into_iter().collect();
    assert!(before.len() < 400, "finished before the crash");

    let log: Recording<Row> = Recording::new();
    let survivors: Vec<_> = ["s1", "s2"]
        .iter()
        .map(|id| {
            spawn(
                shape(builder(&sim, &store, &table, id))
                    .build(log.factory())
                    .unwrap(),
            )
        })
        .collect();
    until("every row and the stream's changes", || {
        let mut all = before.clone();
        all.extend(snapshot_keys(&log));
        all.len() == 400
            && log
                .delivered()
                .iter()
                .filter(|d| d.change.kind != ChangeKind::Snapshot)
                .count()
                >= 5
    })
    .await;

    let after = snapshot_keys(&log);
    assert!(after.len() < 400, "the survivors scanned from scratch");
    // Redeliveries are pages in flight when a lease moved (at least once), never a rescan.
    assert!(
        after.len() < 400 + redelivered,
        "{} rows delivered by the survivors",
        after.len()
    );
    let workers: BTreeSet<String> = log
        .delivered()
        .iter()
        .filter(|d| d.change.kind == ChangeKind::Snapshot)
        .map(|d| d.shard.worker_id.clone())
        .collect();
    assert_eq!(
        workers.len(),
        2,
        "the segments were not shared: {workers:?}"
    );
    assert!(log.snapshot_before_stream());
    let progress = progress(&store.list_leases().await.unwrap());
    assert!(progress[0].is_done(), "{progress:?}");

    for (stop, handle) in survivors {
        stopped(stop, handle).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_that_outlasts_the_retention_is_reported_as_data_loss() {
    let (sim, store, table) = orders(8, 40);
    // The first batch takes a (simulated) day.
    let clock = sim.clone();
    let log: Recording<Row> = Recording::new().with_hook(move |_, _, before| {
        if before == 0 {
            clock.advance_clock(STREAM_RETENTION);
        }
        Box::pin(async { Ok(()) })
    });
    let (stop, handle) = spawn(consumer(&sim, &store, &table, "w", log.factory()));
    until("the loss to be reported", || !log.losses().is_empty()).await;
    let loss = &log.losses()[0];
    assert!(loss.shard_id.starts_with("snapshot-"), "{loss:?}");
    assert!(loss.wanted.contains("since the snapshot began"), "{loss:?}");
    stopped(stop, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_is_delivered_again_not_skipped() {
    let (sim, store, table) = orders(9, 40);
    // Every segment's first batch fails twice.
    let log: Recording<Row> = Recording::new().with_hook(|_, _, before| {
        Box::pin(async move {
            if before < 2 {
                return Err("the sink is down".into());
            }
            Ok(())
        })
    });
    let (stop, handle) = spawn(consumer(&sim, &store, &table, "w", log.factory()));
    until("every row", || snapshot_keys(&log).len() == 40).await;
    let rows: BTreeSet<String> = snapshot_keys(&log).into_iter().collect();
    assert_eq!(rows.len(), 40);
    stopped(stop, handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_outlives_the_batch_timeout_is_dropped_and_delivered_again() {
    let (sim, store, table) = orders(10, 40);
    // Every segment's first batch never returns.
    let log: Recording<Row> = Recording::new().with_hook(|_, _, before| {
        Box::pin(async move {
            if before == 0 {
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    });
    let consumer = builder(&sim, &store, &table, "w")
        .with_batch_timeout(Duration::from_secs(1))
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until("every row", || snapshot_keys(&log).len() == 40).await;
    stopped(stop, handle).await;
}

/// An on-failure handler that keeps what it was given.
#[derive(Clone, Default)]
struct Collected(Arc<std::sync::Mutex<Vec<crate::FailedRecords>>>);

#[async_trait]
impl crate::FailureHandler for Collected {
    async fn handle(&self, failed: &crate::FailedRecords) -> Result<(), crate::BoxError> {
        self.0.lock().unwrap().push(failed.clone());
        Ok(())
    }
}

impl Collected {
    fn reasons_and_keys(&self) -> Vec<(crate::FailureReason, Vec<String>)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|f| {
                let keys = f
                    .records
                    .iter()
                    .map(
                        |r| match &r.dynamodb().unwrap().keys.as_ref().unwrap()["pk"] {
                            aws_sdk_dynamodbstreams::types::AttributeValue::S(pk) => pk.clone(),
                            other => panic!("{other:?}"),
                        },
                    )
                    .collect();
                (f.reason, keys)
            })
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn an_undecodable_item_goes_to_the_handler_and_the_segment_goes_on() {
    let (sim, store, _) = orders(11, 0);
    let table = FakeTable::with_rows_and_undecodable(40, "r0007");
    let handler = Collected::default();
    let log: Recording<Row> = Recording::new();
    let consumer = builder(&sim, &store, &table, "w")
        .with_on_failure(handler.clone())
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until("every other row", || snapshot_keys(&log).len() == 39).await;
    until_segments_done(&store).await;
    assert_eq!(
        handler.reasons_and_keys(),
        [(crate::FailureReason::Undecodable, vec!["r0007".to_owned()])]
    );
    assert_eq!(log.decode_errors().len(), 1);
    assert!(!snapshot_keys(&log).contains(&"r0007".to_owned()));
    stopped(stop, handle).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_handler_an_undecodable_item_holds_its_segment() {
    let (sim, store, _) = orders(12, 0);
    let table = FakeTable::with_rows_and_undecodable(40, "r0007");
    let log: Recording<Row> = Recording::new();
    let (stop, handle) = spawn(consumer(&sim, &store, &table, "w", log.factory()));
    until("the failure reported", || !log.decode_errors().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let progress = progress(&store.list_leases().await.unwrap());
    assert_eq!(progress[0].segments_done, 3, "{progress:?}");
    assert!(!snapshot_keys(&log).contains(&"r0007".to_owned()));
    // Reported again at each restart of the segment (every `with_retry_backoff_max`).
    assert!(log.decode_errors().len() >= 2, "{:?}", log.decode_errors());
    stopped(stop, handle).await;
}

/// A recording processor for which any batch holding item `pk` fails.
fn failing_on(pk: &'static str) -> Recording<Row> {
    Recording::new().with_hook(move |_, batch: &ChangeBatch<Row>, _| {
        let poisoned = batch.iter().any(|c| c.new.as_ref().unwrap().pk == pk);
        Box::pin(async move {
            if poisoned {
                return Err(format!("{pk} is poison").into());
            }
            Ok(())
        })
    })
}

#[tokio::test(start_paused = true)]
async fn a_batch_failing_past_max_retries_goes_to_the_handler() {
    let (sim, store, table) = orders(13, 40);
    let handler = Collected::default();
    let log = failing_on("r0007");
    let consumer = builder(&sim, &store, &table, "w")
        .with_max_retries(2)
        .with_on_failure(handler.clone())
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until("the poisoned page handed over", || {
        !handler.reasons_and_keys().is_empty()
    })
    .await;
    let given = handler.reasons_and_keys();
    assert_eq!(given.len(), 1);
    assert_eq!(given[0].0, crate::FailureReason::RetriesExhausted);
    assert!(given[0].1.contains(&"r0007".to_owned()));
    let page = given[0].1.len();
    until("every other row", || snapshot_keys(&log).len() == 40 - page).await;
    stopped(stop, handle).await;
}

/// `with_filter` judges snapshot records too (event name `SNAPSHOT`): the items it drops
/// are not delivered, and every segment still finishes.
#[tokio::test(start_paused = true)]
async fn the_filter_applies_to_snapshot_records() {
    let (sim, store, table) = orders(9, 60);
    let log = Recording::<Row>::default();
    let keep_even = |record: &aws_sdk_dynamodbstreams::types::Record| {
        let pk = record
            .dynamodb()
            .and_then(|d| d.keys())
            .and_then(|keys| keys.get("pk"))
            .and_then(|pk| pk.as_s().ok());
        pk.is_some_and(|pk| pk.ends_with(['0', '2', '4', '6', '8']))
    };
    let worker = builder(&sim, &store, &table, "w1")
        .with_filter(keep_even)
        .build(log.factory())
        .unwrap();
    let (stop, run) = spawn(worker);
    until_segments_done(&store).await;
    stopped(stop, run).await;
    let mut delivered = snapshot_keys(&log);
    delivered.sort();
    let expected: Vec<String> = (0..60)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("r{i:04}"))
        .collect();
    assert_eq!(delivered, expected);
}

/// With bisect, a poison item among a page's items ends alone in the handler; every other
/// item of its page is delivered.
#[tokio::test(start_paused = true)]
async fn with_bisect_only_the_poison_item_goes_to_the_handler() {
    let (sim, store, table) = orders(14, 40);
    let handler = Collected::default();
    let log = failing_on("r0007");
    let consumer = builder(&sim, &store, &table, "w")
        .with_max_retries(1)
        .with_bisect_on_error(true)
        .with_on_failure(handler.clone())
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until("every other row", || snapshot_keys(&log).len() == 39).await;
    assert_eq!(
        handler.reasons_and_keys(),
        [(
            crate::FailureReason::RetriesExhausted,
            vec!["r0007".to_owned()]
        )]
    );
    let mut delivered = snapshot_keys(&log);
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 39, "each other item delivered");
    stopped(stop, handle).await;
}

/// Batch shaping gathers snapshot records across Scan pages (a batch holds more than a
/// page), and key parallelism runs several batches of one segment at once, each item in
/// one partition; every segment finishes.
#[tokio::test(start_paused = true)]
async fn batch_shaping_and_key_parallelism_apply_to_snapshot_records() {
    let (sim, store, table) = orders(15, 300);
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let running = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let (seen, now, peak) = (sizes.clone(), running.clone(), most.clone());
    let log: Recording<Row> = Recording::new().with_hook(move |_, batch, _| {
        seen.lock().unwrap().push(batch.changes.len());
        let (now, peak) = (now.clone(), peak.clone());
        Box::pin(async move {
            peak.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            now.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    });
    let worker = builder(&sim, &store, &table, "w")
        .with_max_batch_size(25)
        .with_batching_window(Duration::from_secs(1))
        .with_key_parallelism(4)
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(worker);
    until("every row", || {
        snapshot_keys(&log)
            .into_iter()
            .collect::<BTreeSet<_>>()
            .len()
            == 300
    })
    .await;
    until_segments_done(&store).await;
    stopped(stop, handle).await;
    let sizes = sizes.lock().unwrap().clone();
    assert!(sizes.iter().all(|n| *n <= 25), "{sizes:?}");
    assert!(
        sizes.iter().any(|n| *n > 10),
        "no batch gathered across pages of 10: {sizes:?}"
    );
    // 4 segments with 4 partitions each: more calls at once than segments.
    assert!(most.load(Ordering::SeqCst) > 4, "{most:?}");
    // One item, one partition: no item was delivered twice (nothing failed).
    assert_eq!(snapshot_keys(&log).len(), 300);
}

/// A partial batch response names a snapshot record by its place in the batch: the records
/// before it are done, and only it goes to the handler once its retries are used up.
#[tokio::test(start_paused = true)]
async fn a_partial_failure_names_a_snapshot_record_by_its_place_in_the_batch() {
    let (sim, store, table) = orders(16, 40);
    let handler = Collected::default();
    // What the processor finished: whole batches, and the records before a partial failure.
    let finished = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let done = finished.clone();
    let log: Recording<Row> = Recording::new().with_hook(move |_, batch: &ChangeBatch<Row>, _| {
        let keys: Vec<String> = batch
            .iter()
            .map(|c| c.new.as_ref().unwrap().pk.clone())
            .collect();
        let poison = keys.iter().position(|pk| pk == "r0007");
        let before = &keys[..poison.unwrap_or(keys.len())];
        done.lock().unwrap().extend(before.iter().cloned());
        Box::pin(async move {
            match poison {
                Some(at) => Err(crate::BatchFailure::at_index(at, "r0007 is poison").into()),
                None => Ok(()),
            }
        })
    });
    let consumer = builder(&sim, &store, &table, "w")
        .with_max_retries(1)
        .with_on_failure(handler.clone())
        .build(log.factory())
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until_segments_done(&store).await;
    assert_eq!(
        handler.reasons_and_keys(),
        [(
            crate::FailureReason::RetriesExhausted,
            vec!["r0007".to_owned()]
        )]
    );
    let finished = finished.lock().unwrap().clone();
    assert_eq!(finished.len(), 39, "{finished:?}");
    assert!(!finished.contains("r0007"));
    stopped(stop, handle).await;
}

// Lease creation by `prepare` and the shard sync (issue 15).

/// Two roots, one split twice: a stream with parents and children (7 shards).
fn split_stream(seed: u64) -> (SimulatedStream, String) {
    let sim = SimulatedStream::new(crate::testkit::SimConfig {
        initial_shards: 2,
        ..crate::testkit::SimConfig::with_seed(seed)
    });
    let arn = sim.add_table("orders");
    let roots = sim.open_shards(&arn).unwrap();
    let (left, _) = sim.split_shard(&arn, &roots[0].shard_id).unwrap();
    sim.split_shard(&arn, &left).unwrap();
    sim.rotate_shard(&arn, &roots[1].shard_id).unwrap();
    (sim, arn)
}

/// The shard sync of `arn` from the trim horizon, given the `leases` it knows.
async fn sync_from_trim_horizon(
    api: &dyn crate::streams::StreamsApi,
    store: &Arc<dyn LeaseStore>,
    arn: &str,
    leases: &[Lease],
    contention: Contention,
) {
    crate::shard_sync::sync_stream(
        api,
        store,
        arn,
        leases,
        crate::InitialPosition::TrimHorizon,
        contention,
    )
    .await
    .unwrap();
}

/// The leases the leader's sync sees: those of the stream (it leaves coordination out).
async fn stream_leases(store: &Arc<dyn LeaseStore>, arn: &str) -> Vec<Lease> {
    let mut leases = store.list_leases().await.unwrap();
    leases.retain(|l| l.key.stream == arn);
    leases
}

/// A first worker's `prepare` stopped after one stream lease (a crash; or it is still
/// writing them): the second worker's `prepare` leaves the rest to the shard sync, which
/// must start them as `prepare` would, at `Since(T0)` and after every segment (they were
/// created at the initial position, readable before the snapshot finished).
#[tokio::test(start_paused = true)]
async fn stream_leases_missing_after_an_interrupted_prepare_wait_for_the_snapshot() {
    let (sim, arn) = split_stream(21);
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let config = SnapshotConfig::new().with_segments(3);
    prepare(&sim, &store, &config, &arn, Some("orders"), &[])
        .await
        .unwrap();
    let plan = store.get_lease(&plan_key(&arn)).await.unwrap().unwrap();
    // The crash: one root's lease written, none of the others.
    let mut kept_one = false;
    for lease in stream_leases(&store, &arn).await {
        if is_segment(&lease.key) || is_gate(&lease.key) {
            continue;
        }
        let root = lease.parent_shard_ids.iter().any(|p| p == GATE_ID);
        if root && !kept_one {
            kept_one = true;
            continue;
        }
        store.delete_lease(&lease.key).await.unwrap();
    }
    prepare(&sim, &store, &config, &arn, Some("orders"), &[])
        .await
        .unwrap();
    let leases = stream_leases(&store, &arn).await;
    sync_from_trim_horizon(&sim, &store, &arn, &leases, Contention::Alone).await;
    let shards = sim.all_shards(&arn).unwrap();
    let leases = stream_leases(&store, &arn).await;
    let shard_leases = || {
        leases
            .iter()
            .filter(|l| !is_segment(&l.key) && !l.key.is_coordination())
    };
    assert_eq!(
        shard_leases().count(),
        shards.len(),
        "every shard has a lease"
    );
    for lease in shard_leases() {
        assert_eq!(
            lease.checkpoint, plan.checkpoint,
            "{} starts at T0",
            lease.key
        );
        let shard = shards
            .iter()
            .find(|s| s.shard_id == lease.key.shard_id)
            .unwrap();
        if shard.parent_shard_id.is_none() {
            assert_eq!(
                lease.parent_shard_ids,
                [GATE_ID],
                "root {} waits for the gate",
                lease.key
            );
        }
    }
}

/// DescribeStream with every shard on one page, children before their parents.
#[derive(Debug)]
struct ChildrenFirst(SimulatedStream);

#[async_trait]
impl crate::streams::StreamsWrapper for ChildrenFirst {
    type Inner = SimulatedStream;

    fn wrapped(&self) -> &SimulatedStream {
        &self.0
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        _exclusive_start_shard_id: Option<&str>,
    ) -> Result<crate::streams::StreamPage, ApiError> {
        let mut page = self.0.describe_stream(stream_arn, None).await?;
        let mut shards = describe_all_shards(&self.0, stream_arn).await.unwrap();
        shards.reverse();
        page.shards = shards;
        page.last_evaluated_shard_id = None;
        Ok(page)
    }
}

/// The lease creations a store saw, in order.
#[derive(Default)]
struct Creations(std::sync::Mutex<Vec<LeaseKey>>);

impl crate::testkit::StoreObserver for Creations {
    fn lease_written(
        &self,
        op: crate::testkit::StoreOp,
        key: &LeaseKey,
        before: Option<&Lease>,
        after: Option<&Lease>,
    ) {
        if op == crate::testkit::StoreOp::CreateLease && before.is_none() && after.is_some() {
            self.0.lock().unwrap().push(key.clone());
        }
    }
}

/// Asserts that every lease of a listed shard was created after its listed parent's.
fn parents_created_first(shards: &[crate::streams::ShardInfo], created: &[LeaseKey], what: &str) {
    let place = |id: &str| created.iter().position(|k| k.shard_id == id);
    for shard in shards {
        let Some(parent) = &shard.parent_shard_id else {
            continue;
        };
        let (Some(child_at), Some(parent_at)) = (place(&shard.shard_id), place(parent)) else {
            continue;
        };
        assert!(
            parent_at < child_at,
            "{what}: {} created before its parent {parent}: {created:?}",
            shard.shard_id
        );
    }
}

/// Children listed before their parents: `prepare` and the shard sync still write every
/// parent's lease first (a scan between the two writes would take the missing parent for
/// a finished one and start the child).
#[tokio::test(start_paused = true)]
async fn prepare_and_the_shard_sync_create_parents_before_children() {
    for snapshot in [true, false] {
        let (sim, arn) = split_stream(22);
        let api = ChildrenFirst(sim.clone());
        let creations = Arc::new(Creations::default());
        let instrumented =
            crate::testkit::InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new()));
        instrumented.observe(creations.clone());
        let store: Arc<dyn LeaseStore> = Arc::new(instrumented);
        if snapshot {
            prepare(
                &api,
                &store,
                &SnapshotConfig::new(),
                &arn,
                Some("orders"),
                &[],
            )
            .await
            .unwrap();
        } else {
            sync_from_trim_horizon(&api, &store, &arn, &[], Contention::Alone).await;
        }
        let created = creations.0.lock().unwrap().clone();
        let shards = sim.all_shards(&arn).unwrap();
        assert!(created.len() >= shards.len(), "{created:?}");
        parents_created_first(
            &shards,
            &created,
            if snapshot { "prepare" } else { "shard sync" },
        );
    }
}

/// A root lease names the snapshot's gate, not every segment: its size is the same with 3
/// segments as with 10,000 (it was about 230 KB at 10,000, read by every scan and written
/// on every take and checkpoint).
#[tokio::test(start_paused = true)]
async fn a_root_lease_does_not_grow_with_the_segments() {
    let mut sizes = Vec::new();
    for segments in [3, 10_000] {
        let (sim, arn) = split_stream(23);
        let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
        let config = SnapshotConfig::new().with_segments(segments);
        prepare(&sim, &store, &config, &arn, Some("orders"), &[])
            .await
            .unwrap();
        let roots: Vec<Lease> = stream_leases(&store, &arn)
            .await
            .into_iter()
            .filter(|l| !is_segment(&l.key) && !l.key.is_coordination())
            .filter(|l| l.parent_shard_ids.iter().any(|p| p == GATE_ID))
            .collect();
        assert!(
            !roots.is_empty(),
            "{segments} segments: no root waits for the gate"
        );
        let size = roots
            .iter()
            .map(dynamodb_streams_leases::billing::lease_item_size)
            .max()
            .unwrap();
        sizes.push(size);
    }
    assert_eq!(
        sizes[0], sizes[1],
        "root lease bytes at 3 and 10,000 segments"
    );
    assert!(sizes[1] < 1024, "a root lease of {} bytes", sizes[1]);
}

/// The gate is finished once every segment is, by whoever checks first, and a crash at
/// any step leaves a state the next check completes: a gate missing (prepare stopped
/// before it) is created by the next `prepare` and stays open while a segment is open;
/// segments finished and deleted count as done; a second finisher changes nothing.
#[tokio::test(start_paused = true)]
async fn the_gate_is_finished_once_every_segment_is_and_only_then() {
    let (sim, arn) = split_stream(24);
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let config = SnapshotConfig::new().with_segments(3);
    prepare(&sim, &store, &config, &arn, Some("orders"), &[])
        .await
        .unwrap();
    // The crash: the gate and the stream leases never written.
    for lease in stream_leases(&store, &arn).await {
        if !is_segment(&lease.key) {
            store.delete_lease(&lease.key).await.unwrap();
        }
    }
    prepare(&sim, &store, &config, &arn, Some("orders"), &[])
        .await
        .unwrap();
    let gate = || async { store.get_lease(&gate_key(&arn)).await.unwrap() };
    assert_eq!(gate().await.unwrap().checkpoint, Checkpoint::TrimHorizon);

    let segments: Vec<LeaseKey> = stream_leases(&store, &arn)
        .await
        .into_iter()
        .filter(|l| is_segment(&l.key))
        .map(|l| l.key)
        .collect();
    assert_eq!(segments.len(), 3);
    let finish = |key: LeaseKey| {
        let store = store.clone();
        async move {
            let lease = store.get_lease(&key).await.unwrap().unwrap();
            store
                .reset_lease(&key, None, lease.epoch, &Checkpoint::ShardEnd)
                .await
                .unwrap();
        }
    };
    let all = || async { store.list_leases().await.unwrap() };
    // Two of three done, the third deleted after it finished would count; open, it holds.
    finish(segments[0].clone()).await;
    store.delete_lease(&segments[1]).await.unwrap();
    assert!(
        !finish_gate(store.as_ref(), &arn, &all().await)
            .await
            .unwrap()
    );
    assert_eq!(gate().await.unwrap().checkpoint, Checkpoint::TrimHorizon);
    let p = progress(&all().await);
    assert_eq!((p[0].segments_done, p[0].gate), (2, GateState::Open));

    finish(segments[2].clone()).await;
    let seen = all().await;
    assert!(finish_gate(store.as_ref(), &arn, &seen).await.unwrap());
    assert_eq!(gate().await.unwrap().checkpoint, Checkpoint::ShardEnd);
    // A second finisher with the same (now stale) view: nothing to do, no error.
    assert!(!finish_gate(store.as_ref(), &arn, &seen).await.unwrap());
    let p = progress(&all().await);
    assert_eq!(p[0].gate, GateState::Finished);
    assert!(p[0].is_done());
}

/// A scan that shows the gate open and misses a segment (written after the scan read its
/// page) does not finish the gate: the consistent read of the segments says no.
#[tokio::test(start_paused = true)]
async fn a_segment_missing_from_a_stale_scan_keeps_the_gate_open() {
    let (sim, arn) = split_stream(25);
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let config = SnapshotConfig::new().with_segments(2);
    prepare(&sim, &store, &config, &arn, Some("orders"), &[])
        .await
        .unwrap();
    let stale: Vec<Lease> = store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !is_segment(&l.key))
        .collect();
    assert!(!finish_gate(store.as_ref(), &arn, &stale).await.unwrap());
    let gate = store.get_lease(&gate_key(&arn)).await.unwrap().unwrap();
    assert_eq!(gate.checkpoint, Checkpoint::TrimHorizon);
}

/// A table whose stream was snapshotted, then disabled and enabled again: the simulated
/// stream, the lease store, the snapshot settings, the older stream and the new one.
async fn reenabled_after_a_snapshot() -> (
    SimulatedStream,
    Arc<dyn LeaseStore>,
    SnapshotConfig,
    String,
    String,
) {
    let (sim, old) = split_stream(26);
    let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
    let config = SnapshotConfig::new().with_segments(2);
    prepare(&sim, &store, &config, &old, Some("orders"), &[])
        .await
        .unwrap();
    let new = sim.reenable_stream("orders").unwrap();
    (sim, store, config, old, new)
}

/// A table's stream disabled and enabled again while the application consumes the older
/// one (explorer seeds 1329, 1519, 1920, 1942): a worker starting then must not snapshot the
/// new stream, whose roots would wait for that snapshot's gate only and deliver the new
/// stream's records before the older stream's; the shard sync starts them behind the older
/// stream's gate.
#[tokio::test(start_paused = true)]
async fn a_reenabled_stream_follows_the_older_one_without_a_snapshot() {
    let (sim, store, config, old, new) = reenabled_after_a_snapshot().await;
    prepare(&sim, &store, &config, &new, Some("orders"), &[])
        .await
        .unwrap();
    assert_eq!(store.get_lease(&plan_key(&new)).await.unwrap(), None);
    assert_eq!(stream_leases(&store, &new).await, []);
    let leases = store.list_leases().await.unwrap();
    sync_from_trim_horizon(&sim, &store, &new, &leases, Contention::Alone).await;
    let older_gate = LeaseKey::stream_gate(&new, &old).shard_id;
    let roots: Vec<Lease> = stream_leases(&store, &new)
        .await
        .into_iter()
        .filter(|l| !l.key.is_coordination())
        .collect();
    assert!(!roots.is_empty());
    for root in roots {
        assert_eq!(
            root.parent_shard_ids,
            std::slice::from_ref(&older_gate),
            "{}",
            root.key
        );
    }
}

/// A table's stream disabled and enabled again (the explorer's seeds 1184 and 1804): the
/// application that consumed the older stream after its snapshot follows the new stream
/// from its first record, after the older one (the sync's `#after-stream` gate). A worker
/// starting then plans no second snapshot, whether the older stream's leases are still
/// there or already retired (its plan is kept): one would skip the new stream's records
/// made before it, deletions included, so the sink would keep an item deleted meanwhile.
#[tokio::test(start_paused = true)]
async fn a_stream_enabled_again_gets_no_second_snapshot() {
    let (sim, store, config, old, new) = reenabled_after_a_snapshot().await;
    for retired in [false, true] {
        if retired {
            for lease in stream_leases(&store, &old).await {
                store.delete_lease(&lease.key).await.unwrap();
            }
        }
        prepare(&sim, &store, &config, &new, Some("orders"), &[])
            .await
            .unwrap();
        assert!(
            store.get_lease(&plan_key(&new)).await.unwrap().is_none(),
            "no plan for the new stream (older stream retired: {retired})"
        );
        assert!(
            stream_leases(&store, &new).await.is_empty(),
            "the shard sync creates the new stream's leases (older stream retired: {retired})"
        );
    }
    let mut leases = store.list_leases().await.unwrap();
    leases.extend(stream_leases(&store, &old).await);
    sync_from_trim_horizon(&sim, &store, &new, &leases, Contention::Racing).await;
    let roots = stream_leases(&store, &new).await;
    assert!(!roots.is_empty());
    for root in roots {
        assert_eq!(root.checkpoint, Checkpoint::TrimHorizon, "{}", root.key);
    }
}

mod pipelines;
