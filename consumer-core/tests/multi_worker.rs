//! Many workers on one stream, in simulation: crashes, joins, pauses longer than the
//! failover time, splits. Afterwards every record is checked against the invariants:
//! delivered at least once, per-key order, parents before children, and no lease owned by
//! two workers (the store enforces it; the test checks the consequence on delivery).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use checkpoint_store::{Checkpoint, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore};
use consumer_core::testkit::{InstrumentedStore, Link, Recording, SimConfig, SimulatedStream};
use consumer_core::{ChangeBatch, Consumer};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

/// (worker, shard, sequence number, key, n)
type Delivery = (String, String, String, String, u64);

/// A running worker: its task, its graceful stop, and its link to the lease table.
struct Running {
    task: tokio::task::JoinHandle<consumer_core::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    gate: Arc<InstrumentedStore<InMemoryLeaseStore>>,
}

struct Cluster {
    sim: SimulatedStream,
    store: Arc<InMemoryLeaseStore>,
    recording: Recording<Row>,
    zombie_deliveries: Arc<Mutex<Vec<String>>>,
    workers: BTreeMap<String, Running>,
}

impl Cluster {
    /// No workers yet; their processors record deliveries, and whether the deliverer still
    /// owned the lease at that moment.
    fn new(sim: &SimulatedStream, store: Arc<InMemoryLeaseStore>) -> Self {
        let zombie_deliveries: Arc<Mutex<Vec<String>>> = Arc::default();
        let (zombies, lease_store) = (zombie_deliveries.clone(), store.clone());
        let recording = Recording::new().with_hook(move |shard, batch: &ChangeBatch<Row>, _| {
            let (zombies, store, shard) = (zombies.clone(), lease_store.clone(), shard.clone());
            let key = LeaseKey::new(batch.stream_arn.clone(), batch.shard_id.clone());
            let records = batch.len();
            Box::pin(async move {
                // Processing takes a little time, so workers overlap and crashes hit
                // mid-batch.
                tokio::time::sleep(Duration::from_millis(20)).await;
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
        Cluster {
            sim: sim.clone(),
            store,
            recording,
            zombie_deliveries,
            workers: BTreeMap::new(),
        }
    }

    /// Every delivery so far, in order.
    fn deliveries(&self) -> Vec<Delivery> {
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

    fn start(&mut self, id: &str) {
        let gate = Arc::new(InstrumentedStore::new(self.store.clone()));
        let consumer = Consumer::builder("app")
            .with_table("orders")
            .with_streams_api(Arc::new(self.sim.clone()))
            .with_lease_store(gate.clone())
            .with_worker_id(id)
            .with_batch_limit(25)
            .with_checkpoint_interval(Duration::from_millis(500))
            .build(self.recording.factory())
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        self.workers
            .insert(id.to_owned(), Running { task, stop, gate });
    }

    fn crash(&mut self, id: &str) {
        if let Some(worker) = self.workers.remove(id) {
            worker.task.abort();
        }
    }

    fn link(&self, id: &str, link: Link) {
        if let Some(worker) = self.workers.get(id) {
            worker.gate.set_link(link);
        }
    }

    async fn stop_all(&mut self) {
        for (id, worker) in std::mem::take(&mut self.workers) {
            worker.gate.set_link(Link::Up);
            let _ = worker.stop.send(());
            let result = tokio::time::timeout(Duration::from_secs(120), worker.task)
                .await
                .unwrap_or_else(|_| panic!("worker {id} did not stop gracefully"));
            result.unwrap().unwrap();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn workers_that_crash_join_and_pause_still_deliver_every_change_in_order() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 48,
        latency: Duration::from_millis(3),
        describe_page_size: 20,
        ..SimConfig::with_seed(42)
    });
    let arn = sim.add_table("orders");
    let mut cluster = Cluster::new(&sim, Arc::new(InMemoryLeaseStore::new()));
    for id in ["w0", "w1", "w2", "w3", "w4"] {
        cluster.start(id);
    }
    let mut rng = SmallRng::seed_from_u64(7);
    let mut n = 0u64;
    for step in 0..120u64 {
        for _ in 0..15 {
            sim.put_value(
                "orders",
                &Row {
                    pk: format!("k{}", rng.random_range(0..200)),
                    n,
                },
            )
            .unwrap();
            n += 1;
        }
        if step % 8 == 3 {
            let open = sim.open_shards(&arn).unwrap();
            let shard = open[rng.random_range(0..open.len())].shard_id.clone();
            sim.split_shard(&arn, &shard).unwrap();
        }
        match step {
            15 => cluster.crash("w1"),
            25 => cluster.start("w5"),
            // Cut off from the lease table for 25 s (longer than the 10 s failover time)
            // while it can still read the stream: w2 must fence itself before others take
            // its leases, or two workers process the same shard at once.
            35 => cluster.link("w2", Link::Partitioned),
            60 => cluster.link("w2", Link::Up),
            // Frozen for 20 s, like a stopped process.
            85 => cluster.link("w4", Link::Frozen),
            105 => cluster.link("w4", Link::Up),
            70 => cluster.crash("w3"),
            80 => cluster.start("w1"),
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let written = sim.written();
    let expected: HashSet<(String, String)> = written
        .iter()
        .map(|w| (w.shard_id.clone(), w.sequence_number.to_string()))
        .collect();
    tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let delivered: HashSet<(String, String)> = cluster
                .deliveries()
                .into_iter()
                .map(|d| (d.1, d.2))
                .collect();
            if expected.is_subset(&delivered) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("some changes were never delivered");
    cluster.stop_all().await;

    let zombies = cluster.zombie_deliveries.lock().unwrap().clone();
    assert!(
        zombies.is_empty(),
        "deliveries by workers that had lost the lease: {zombies:#?}"
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
    for shard in sim.all_shards(&arn).unwrap() {
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
    // After a graceful stop of everyone, no unfinished lease is owned (finished ones may
    // keep a crashed owner: nobody needs to take them).
    for lease in cluster.store.list_leases().await.unwrap() {
        if lease.checkpoint != Checkpoint::ShardEnd && !lease.key.is_coordination() {
            assert!(
                lease.owner.is_none(),
                "{} still owned by {:?}",
                lease.key,
                lease.owner
            );
        }
    }
    let (_, stale) = cluster.store.snapshot().await.unwrap();
    assert!(
        stale.iter().all(|w| w.worker_id.starts_with("w1#")
            || w.worker_id.starts_with("w3#")
            || w.worker_id.starts_with("w2#")
            || w.worker_id.starts_with("w4#")),
        "only crashed or fenced incarnations may be left: {stale:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_joining_worker_gets_its_fair_share_by_handoff() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 12,
        ..SimConfig::with_seed(3)
    });
    sim.add_table("orders");
    let store = Arc::new(InMemoryLeaseStore::new());
    let mut cluster = Cluster::new(&sim, store.clone());
    cluster.start("a");
    let owned_by = |leases: &[Lease], prefix: &str| {
        leases
            .iter()
            .filter(|l| !l.key.is_coordination())
            .filter(|l| l.owner.as_deref().is_some_and(|o| o.starts_with(prefix)))
            .count()
    };
    let wait_until = |want_a: usize, want_b: usize| {
        let store = store.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(120), async {
                loop {
                    let leases = store.list_leases().await.unwrap();
                    if owned_by(&leases, "a#") == want_a && owned_by(&leases, "b#") == want_b {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("never reached a={want_a} b={want_b}"));
        }
    };
    wait_until(12, 0).await;
    cluster.start("b");
    wait_until(6, 6).await;
    cluster.stop_all().await;
}
