//! Simulation tests: the real consumer against the simulated stream and the in-memory lease
//! store, in paused time. They check the invariants over every record: at-least-once delivery,
//! per-key order, parents before children, checkpoints that never pass unprocessed records.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimulatedStream, WrittenRecord};
use dynamodb_streams_consumer::{Consumer, InitialPosition};
use dynamodb_streams_leases::{Checkpoint, InMemoryLeaseStore, LeaseStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

/// One delivered change: (shard, sequence number, key, n).
type Delivery = (String, String, String, Option<u64>);

#[derive(Clone, Default)]
struct Log(Recording<Row>);

impl Log {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn all(&self) -> Vec<Delivery> {
        self.0
            .delivered()
            .into_iter()
            .map(|d| {
                let key = d.change.keys_as::<HashMap<String, String>>().unwrap()["pk"].clone();
                (
                    d.shard.shard_id.clone(),
                    d.change.sequence_number.to_string(),
                    key,
                    d.change.new.as_ref().map(|row| row.n),
                )
            })
            .collect()
    }
    fn processor(&self) -> impl dynamodb_streams_consumer::ProcessorFactory {
        self.0.factory()
    }
}

/// Writes `count` changes over `keys` keys, splitting or rotating a shard every `every`.
fn write_workload(sim: &SimulatedStream, arn: &str, count: u64, keys: u64, every: u64) {
    for i in 0..count {
        let row = Row {
            pk: format!("k{}", i % keys),
            n: i,
        };
        sim.put_value("orders", &row).unwrap();
        if every > 0 && i % every == every - 1 {
            let open = sim.open_shards(arn).unwrap();
            let shard = &open[(i as usize / every as usize) % open.len()].shard_id;
            if i % (2 * every) == every - 1 {
                sim.split_shard(arn, shard).unwrap();
            } else {
                sim.rotate_shard(arn, shard).unwrap();
            }
        }
    }
}

/// Runs one worker until `expected` changes were delivered (or the virtual deadline passes).
async fn run_worker(
    sim: &SimulatedStream,
    store: Arc<InMemoryLeaseStore>,
    log: &Log,
    expected: usize,
    initial: InitialPosition,
) {
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store)
        .with_worker_id("w1")
        .with_initial_position(initial)
        .with_checkpoint_interval(Duration::ZERO)
        .with_batch_limit(7)
        .build(log.processor())
        .unwrap();
    let watched = log.clone();
    let until_done = async move {
        while watched.len() < expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(3600), consumer.run_until(until_done))
        .await
        .expect("not every change was delivered within an hour of virtual time")
        .unwrap();
}

/// Checks at-least-once delivery, per-key order and parent-before-child order.
fn check_invariants(
    written: &[WrittenRecord],
    delivered: &[Delivery],
    sim: &SimulatedStream,
    arn: &str,
) {
    let seen: std::collections::HashSet<(&str, &str)> = delivered
        .iter()
        .map(|(s, q, _, _)| (s.as_str(), q.as_str()))
        .collect();
    for w in written {
        assert!(
            seen.contains(&(w.shard_id.as_str(), w.sequence_number.as_str())),
            "change {} in shard {} was never delivered",
            w.sequence_number,
            w.shard_id
        );
    }
    // Per key, the delivered values never go backwards (redeliveries repeat a suffix).
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    let mut first_seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (index, (shard, _, key, n)) in delivered.iter().enumerate() {
        first_seen.entry(shard.as_str()).or_insert(index);
        if let Some(n) = n {
            let prev = last.insert(key.as_str(), *n);
            if let Some(prev) = prev {
                assert!(
                    *n > prev
                        || delivered[..index]
                            .iter()
                            .any(|(_, _, k, m)| k == key && *m == Some(*n)),
                    "key {key}: {n} delivered after {prev} without being a redelivery"
                );
            }
        }
    }
    // A child's first record comes after its parent's last.
    for shard in sim.all_shards(arn).unwrap() {
        let (Some(parent), Some(child_first)) = (
            &shard.parent_shard_id,
            first_seen.get(shard.shard_id.as_str()),
        ) else {
            continue;
        };
        let parent_last = delivered.iter().rposition(|(s, _, _, _)| s == parent);
        if let Some(parent_last) = parent_last {
            assert!(
                parent_last < *child_first,
                "shard {} started before its parent {parent} ended",
                shard.shard_id
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn one_worker_delivers_every_change_in_order_across_splits_and_rotations() {
    let sim = SimulatedStream::new(SimConfig {
        describe_page_size: 3,
        latency: Duration::from_millis(5),
        ..SimConfig::with_seed(11)
    });
    let arn = sim.add_table("orders");
    write_workload(&sim, &arn, 400, 17, 50);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    run_worker(&sim, store.clone(), &log, 400, InitialPosition::TrimHorizon).await;
    let written = sim.written();
    let delivered = log.all();
    check_invariants(&written, &delivered, &sim, &arn);
    assert_eq!(
        delivered.len(),
        written.len(),
        "no duplicates without failures"
    );

    // Every closed shard is at SHARD_END, and no lease is left owned after shutdown.
    for lease in store.list_leases().await.unwrap() {
        assert!(
            lease.owner.is_none(),
            "lease {} still owned after shutdown",
            lease.key
        );
    }
    assert!(
        store.snapshot().await.unwrap().1.is_empty(),
        "worker item deleted on shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_resumes_after_the_checkpoint_without_replaying() {
    let sim = SimulatedStream::with_seed(3);
    let arn = sim.add_table("orders");
    write_workload(&sim, &arn, 120, 5, 40);
    let store = Arc::new(InMemoryLeaseStore::new());
    let first = Log::default();
    run_worker(
        &sim,
        store.clone(),
        &first,
        120,
        InitialPosition::TrimHorizon,
    )
    .await;

    write_workload(&sim, &arn, 60, 5, 0);
    let second = Log::default();
    run_worker(
        &sim,
        store.clone(),
        &second,
        60,
        InitialPosition::TrimHorizon,
    )
    .await;
    let replayed: Vec<_> = second
        .all()
        .into_iter()
        .filter(|d| first.all().contains(d))
        .collect();
    assert!(
        replayed.is_empty(),
        "replayed after a graceful restart: {replayed:?}"
    );
    let mut all = first.all();
    all.extend(second.all());
    check_invariants(&sim.written(), &all, &sim, &arn);
}

#[tokio::test(start_paused = true)]
async fn latest_skips_existing_changes_and_marks_closed_shards_done() {
    let sim = SimulatedStream::with_seed(5);
    let arn = sim.add_table("orders");
    write_workload(&sim, &arn, 30, 3, 10);
    let store = Arc::new(InMemoryLeaseStore::new());
    let log = Log::default();
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_initial_position(InitialPosition::Latest)
        .build(log.processor())
        .unwrap();
    let writer_sim = sim.clone();
    let watched = log.clone();
    let shutdown = async move {
        // Let the worker start at LATEST, then write 10 more and wait for them.
        tokio::time::sleep(Duration::from_secs(10)).await;
        for i in 0..10 {
            writer_sim
                .put_value(
                    "orders",
                    &Row {
                        pk: format!("new{i}"),
                        n: 1000 + i,
                    },
                )
                .unwrap();
        }
        while watched.len() < 10 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(600), consumer.run_until(shutdown))
        .await
        .expect("the new changes were not delivered")
        .unwrap();
    let delivered = log.all();
    assert_eq!(delivered.len(), 10);
    assert!(
        delivered
            .iter()
            .all(|(_, _, key, _)| key.starts_with("new"))
    );
    let closed_done = store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| !l.key.is_coordination())
        .filter(|l| {
            sim.all_shards(&arn)
                .unwrap()
                .iter()
                .any(|s| s.shard_id == l.key.shard_id && s.is_closed())
        })
        .all(|l| l.checkpoint == Checkpoint::ShardEnd);
    assert!(closed_done);
}
