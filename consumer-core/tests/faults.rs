//! The consumer under the faults DynamoDB Streams really produces, in simulation and paused
//! time: throttling and server errors, expired iterators, trimmed data, and a check that an
//! idle stream costs a bounded number of calls.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::streams::ApiErrorKind;
use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimOperation, SimulatedStream};
use dynamodb_streams_consumer::{Consumer, ProcessorFactory, TrimmedDataPolicy};
use dynamodb_streams_leases::{Checkpoint, InMemoryLeaseStore, LeaseStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

#[derive(Clone, Default)]
struct Seen {
    recording: Recording<Row>,
    /// Pause inside the first `process` call of each processor (to outlive iterators).
    first_pause: Duration,
}

impl Seen {
    fn factory(&self) -> impl ProcessorFactory {
        let pause = self.first_pause;
        self.recording
            .clone()
            .with_hook(move |_, _, batches_before| {
                Box::pin(async move {
                    if batches_before == 0 {
                        tokio::time::sleep(pause).await;
                    }
                    Ok(())
                })
            })
            .factory()
    }
    fn count(&self) -> usize {
        self.recording.len()
    }
    fn values(&self) -> Vec<u64> {
        self.recording.images().iter().map(|row| row.n).collect()
    }
}

fn put(sim: &SimulatedStream, range: std::ops::Range<u64>) {
    for n in range {
        sim.put_value("t", &Row { pk: "k".into(), n }).unwrap();
    }
}

/// Runs a consumer until `done` holds (virtual deadline: three days).
async fn run(
    sim: &SimulatedStream,
    seen: &Seen,
    policy: TrimmedDataPolicy,
    done: impl Fn(&Seen) -> bool + Send + 'static,
) {
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_batch_limit(10)
        .with_trimmed_data_policy(policy)
        .build(seen.factory())
        .unwrap();
    let watched = seen.clone();
    tokio::time::timeout(
        Duration::from_secs(72 * 3600),
        consumer.run_until(async move {
            while !done(&watched) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }),
    )
    .await
    .expect("the consumer did not get there")
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn throttling_and_server_errors_delay_but_lose_nothing() {
    let sim = SimulatedStream::with_seed(9);
    sim.add_table("t");
    put(&sim, 0..200);
    sim.set_throttle_rate(SimOperation::GetRecords, 0.4);
    sim.inject(
        SimOperation::GetShardIterator,
        ApiErrorKind::InternalServerError,
        3,
    );
    sim.inject(SimOperation::DescribeStream, ApiErrorKind::Throttled, 2);
    let seen = Seen::default();
    run(&sim, &seen, TrimmedDataPolicy::default(), |s| {
        s.count() >= 200
    })
    .await;
    assert_eq!(seen.values(), (0..200).collect::<Vec<_>>());
    assert!(
        sim.failures(SimOperation::GetRecords) > 0,
        "throttling happened"
    );
}

#[tokio::test(start_paused = true)]
async fn an_iterator_that_expires_while_the_processor_works_is_replaced_without_redelivery() {
    let sim = SimulatedStream::with_seed(4);
    sim.add_table("t");
    put(&sim, 0..50);
    // The first batch takes 20 minutes: the prefetched iterator expires meanwhile.
    let seen = Seen {
        first_pause: Duration::from_secs(20 * 60),
        ..Seen::default()
    };
    run(&sim, &seen, TrimmedDataPolicy::default(), |s| {
        s.count() >= 50
    })
    .await;
    assert_eq!(
        seen.values(),
        (0..50).collect::<Vec<_>>(),
        "no gap, no redelivery"
    );
}

#[tokio::test(start_paused = true)]
async fn trimmed_records_are_reported_and_reading_goes_on_at_the_oldest_record() {
    let sim = SimulatedStream::with_seed(5);
    sim.add_table("t");
    // More than the prefetch holds: what was not fetched before the trim is lost.
    put(&sim, 0..100);
    // The first batch takes 25 hours: records after it are trimmed meanwhile.
    let seen = Seen {
        first_pause: Duration::from_secs(25 * 3600),
        ..Seen::default()
    };
    let writer = sim.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(26 * 3600)).await;
        put(&writer, 100..105);
    });
    run(&sim, &seen, TrimmedDataPolicy::default(), |s| {
        s.values().last() == Some(&104)
    })
    .await;
    let losses = seen.recording.losses();
    assert_eq!(losses.len(), 1, "one gap reported: {losses:?}");
    assert!(
        losses[0].wanted.starts_with("AFTER_SEQUENCE_NUMBER"),
        "{losses:?}"
    );
    assert_eq!(losses[0].resumed_at, "TRIM_HORIZON");
    // Delivered: the old records fetched before the trim (in order, from the first), then
    // the records written after it, from the oldest left.
    let values = seen.values();
    let split = values.iter().position(|v| *v >= 100).unwrap();
    assert_eq!(&values[..split], &(0..split as u64).collect::<Vec<_>>()[..]);
    assert!(split < 100, "some old records were really lost");
    assert_eq!(
        &values[split..],
        &[100, 101, 102, 103, 104],
        "went on at the oldest record left"
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_costs_a_bounded_number_of_calls() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 4,
        ..SimConfig::with_seed(6)
    });
    sim.add_table("t");
    let seen = Seen::default();
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .build(seen.factory())
        .unwrap();
    consumer
        .run_until(tokio::time::sleep(Duration::from_secs(3600)))
        .await
        .unwrap();
    let get_records = sim.calls(SimOperation::GetRecords);
    let describe = sim.calls(SimOperation::DescribeStream);
    // Idle shards are polled at most once per second each after the backoff ramps up.
    assert!(
        get_records <= 4 * 3600 + 100,
        "{get_records} GetRecords calls in an idle hour"
    );
    assert!(
        get_records >= 4 * 3000,
        "{get_records}: idle shards are still polled"
    );
    // One full sync per minute plus the first one.
    assert!(describe <= 62, "{describe} DescribeStream calls in an hour");
}

/// A consumer over one 4-shard table whose lease-store link the test controls.
fn gated_consumer(
    sim: &SimulatedStream,
    gate: Arc<dynamodb_streams_consumer::testkit::InstrumentedStore<InMemoryLeaseStore>>,
) -> Consumer<impl ProcessorFactory> {
    Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(gate)
        .build(Recording::<Row>::new().factory())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_lease_table_deleted_under_a_running_worker_stops_it_with_a_clear_error() {
    use dynamodb_streams_consumer::testkit::{InstrumentedStore, Link};
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 4,
        ..SimConfig::with_seed(2)
    });
    sim.add_table("t");
    let gate = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    let consumer = gated_consumer(&sim, gate.clone());
    let worker = tokio::spawn(consumer.run_until(std::future::pending()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        !worker.is_finished(),
        "the worker runs while the table exists"
    );
    gate.set_link(Link::TableDeleted);
    let error = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker kept retrying against a deleted lease table")
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("instrumented") && error.contains("not found"),
        "the error names the table and what happened: {error}"
    );
}

#[tokio::test(start_paused = true)]
async fn sigterm_is_honoured_while_a_fenced_worker_retries_its_comeback() {
    use dynamodb_streams_consumer::testkit::{InstrumentedStore, Link};
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 4,
        ..SimConfig::with_seed(3)
    });
    sim.add_table("t");
    let gate = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    let consumer = gated_consumer(&sim, gate.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Cut off for good: the worker fences itself and retries its comeback forever.
    gate.set_link(Link::Partitioned);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!worker.is_finished());
    stop.send(()).unwrap();
    // Stopping gives up the comeback; the release and the worker-item removal it then
    // tries are retried a bounded number of times against the partition.
    tokio::time::timeout(Duration::from_secs(300), worker)
        .await
        .expect("SIGTERM was not honoured during the comeback")
        .unwrap()
        .unwrap();
}

/// The lease table answers the start-up check, then cannot be reached (a partition, as
/// real transport errors and timeouts are reported): the start waits the outage out, however
/// long, instead of failing the way a wrong endpoint does at the first contact; the worker
/// joins and delivers once the link is back, and SIGTERM during such a wait stops it cleanly.
#[tokio::test(start_paused = true)]
async fn a_lease_table_outage_right_after_the_start_up_check_is_waited_out() {
    use dynamodb_streams_consumer::testkit::{InstrumentedStore, StoreOp};
    let sim = SimulatedStream::with_seed(5);
    sim.add_table("t");
    put(&sim, 0..5);
    let gate = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    gate.fail_calls(StoreOp::Heartbeat, true);
    let seen = Seen::default();
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(gate.clone())
        .build(seen.factory())
        .unwrap();
    let watched = seen.clone();
    let worker = tokio::spawn(consumer.run_until(async move {
        while watched.count() < 5 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(
        !worker.is_finished(),
        "a transient failure after the start-up check stopped the worker: {:?}",
        worker.await
    );
    assert!(
        gate.calls()[&StoreOp::Heartbeat] > 10,
        "the heartbeat is tried again"
    );
    gate.fail_calls(StoreOp::Heartbeat, false);
    tokio::time::timeout(Duration::from_secs(120), worker)
        .await
        .expect("the worker did not deliver once the link was back")
        .unwrap()
        .unwrap();
    assert_eq!(seen.values(), [0, 1, 2, 3, 4]);

    // Asked to stop while the heartbeat still fails: it stops at once, with no error.
    let gate = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    gate.fail_calls(StoreOp::Heartbeat, true);
    let consumer = gated_consumer(&sim, gate);
    tokio::time::timeout(
        Duration::from_secs(61),
        consumer.run_until(tokio::time::sleep(Duration::from_secs(60))),
    )
    .await
    .expect("shutdown was not honoured while the first heartbeat was retried")
    .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_parent_missing_from_scans_holds_its_children_until_a_consistent_read_says_done() {
    use dynamodb_streams_consumer::testkit::InstrumentedStore;
    use dynamodb_streams_leases::LeaseKey;
    let sim = SimulatedStream::with_seed(4);
    let arn = sim.add_table("t");
    let parent = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
    put(&sim, 0..5);
    let (left, right) = sim.split_shard(&arn, &parent).unwrap();
    put(&sim, 5..10);
    // The parent's lease exists but scans skip it, as they skip an item that does not
    // decode: the scan alone must not count the parent as done.
    let gate = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    gate.hide_from_scans([LeaseKey::new(arn.clone(), parent.clone())]);
    let recording = Recording::<Row>::new();
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(gate.clone())
        .build(recording.factory())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let children: Vec<_> = recording
        .delivered()
        .into_iter()
        .filter(|d| d.shard.shard_id == left || d.shard.shard_id == right)
        .collect();
    assert!(
        children.is_empty(),
        "children started while their parent was unfinished: {} records",
        children.len()
    );
    gate.unhide_all();
    while recording.len() < 10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shards: Vec<String> = recording
        .delivered()
        .iter()
        .map(|d| d.shard.shard_id.clone())
        .collect();
    let last_parent = shards.iter().rposition(|s| *s == parent).unwrap();
    let first_child = shards.iter().position(|s| *s != parent).unwrap();
    assert!(
        last_parent < first_child,
        "parent before children: {shards:?}"
    );
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// Issue 15: a shard task that ends on an error is restarted by the same worker (the lease
/// still its own) from the newest checkpoint, not from the lease as first taken: the
/// worker's copy of the lease is not moved by its own checkpoint writes.
#[tokio::test(start_paused = true)]
async fn a_shard_restarted_after_an_error_resumes_at_its_latest_checkpoint() {
    let sim = SimulatedStream::with_seed(12);
    sim.add_table("t");
    put(&sim, 0..100);
    let store = Arc::new(InMemoryLeaseStore::new());
    let seen = Seen::default();
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_batch_limit(10)
        .with_checkpoint_interval(Duration::ZERO)
        .build(seen.factory())
        .unwrap();
    let (watched, faulty) = (seen.clone(), sim.clone());
    let leases = store.clone();
    tokio::time::timeout(
        Duration::from_secs(3600),
        consumer.run_until(async move {
            // Everything delivered and checkpointed; then the shard's reads fail once (not
            // a retryable error: the shard task ends) and more records come.
            loop {
                let listed = leases.list_leases().await.unwrap();
                let checkpointed = listed
                    .iter()
                    .any(|l| matches!(l.checkpoint, Checkpoint::At(_)));
                if watched.count() >= 100 && checkpointed {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            faulty.inject(SimOperation::GetRecords, ApiErrorKind::InvalidRequest, 1);
            put(&faulty, 100..150);
            while watched.count() < 150 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }),
    )
    .await
    .expect("the consumer did not get there")
    .unwrap();
    assert_eq!(
        sim.failures(SimOperation::GetRecords),
        1,
        "the injected failure happened"
    );
    assert_eq!(
        seen.values(),
        (0..150).collect::<Vec<_>>(),
        "the restarted shard delivered nothing before its latest checkpoint again"
    );
}
