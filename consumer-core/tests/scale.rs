//! Coordination at scale, in simulation (paused time): many shards, many workers, crashes
//! and joins, with records written throughout. Checks the targets of issue 9:
//!
//! - every shard is owned within 2 minutes of a cold start;
//! - workers are balanced within one lease, at start and after every crash and join;
//! - after a crash, the dead worker's leases are taken within `failover_time` + 2 s;
//! - at steady state no lease changes hands;
//! - no lease scan is ever discarded as too slow (metric `ddb_stream_lease_scans_discarded_total`);
//! - invariants 1-4 over every record (see `common::check_deliveries`).
//!
//! `scale_run` runs 1,000 shards and 20 workers in `make test`; the 10,000 shards / 50
//! workers run is `make scale` (release build):
//! `cargo test --release -p dynamodb-streams-consumer --features testkit --test scale -- --ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Row, ownership};
use dynamodb_streams_consumer::testkit::{SimConfig, SimulatedStream};
use dynamodb_streams_leases::InMemoryLeaseStore;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::time::Instant;

const FAILOVER: Duration = Duration::from_secs(10);

#[test]
fn scale_run_1000_shards_20_workers() {
    scale_run(1000, 20);
}

#[test]
#[ignore = "10,000 shards and 50 workers: run in release with `make scale`"]
fn scale_run_10000_shards_50_workers() {
    scale_run(10_000, 50);
}

fn scale_run(shards: usize, workers: usize) {
    // RUST_LOG=dynamodb_streams_consumer=info shows what the workers did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // A thread-local recorder: this test's counters only.
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(run(shards, workers));
    });
    let discarded: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "ddb_stream_lease_scans_discarded_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(discarded, 0, "lease scans were discarded as too slow");
}

async fn run(shards: usize, workers: usize) {
    // Runs are deterministic per seed (the simulation never reads the host's clock);
    // SCALE_SEED=n explores other runs.
    let seed = std::env::var("SCALE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(9);
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: shards,
        ..SimConfig::with_seed(seed)
    });
    let arn = sim.add_table("orders");
    let mut cluster = Cluster::new(&sim, Arc::new(InMemoryLeaseStore::new()));
    let mut live: Vec<String> = (0..workers).map(|i| format!("w{i}")).collect();
    let started = Instant::now();
    for id in &live {
        cluster.start(id);
    }
    // A writer throughout: about 20 changes a second over 2,000 keys.
    let writer = tokio::spawn({
        let sim = sim.clone();
        async move {
            let mut rng = SmallRng::seed_from_u64(seed + 2);
            for n in 0.. {
                let pk = format!("k{}", rng.random_range(0..2000));
                sim.put_value("orders", &Row { pk, n }).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });

    let cold_start = wait_balanced(&cluster, &live, shards, Duration::from_secs(120)).await;
    println!(
        "{shards} shards, {workers} workers: every shard owned and balanced {:?} after a cold start",
        cold_start.duration_since(started)
    );

    // Steady state: nothing changes hands for a minute.
    let takes = cluster.takes();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        cluster.takes(),
        takes,
        "leases changed hands at steady state"
    );

    // A few splits: children are created and started after their parents.
    let mut rng = SmallRng::seed_from_u64(seed ^ 12); // 5 for the default seed
    for _ in 0..5 {
        let open = sim.open_shards(&arn).unwrap();
        let shard = open[rng.random_range(0..open.len())].shard_id.clone();
        sim.split_shard(&arn, &shard).unwrap();
    }

    for round in 0..2 {
        // Crash one worker: its leases move within failover + 2 s.
        let victim = live.remove(round * 3 % live.len());
        cluster.crash(&victim);
        let crashed = Instant::now();
        let takeover = wait_no_orphans(&cluster, &live, FAILOVER + Duration::from_secs(30))
            .await
            .duration_since(crashed);
        let moved = wait_balanced(&cluster, &live, shards, Duration::from_secs(60)).await;
        println!(
            "crash of {victim}: leases taken {takeover:?} after it, balanced {:?} after it",
            moved.duration_since(crashed)
        );
        assert!(
            takeover <= FAILOVER + Duration::from_secs(2),
            "takeover took {takeover:?}"
        );

        // A worker joins: it gets its share by handoff, without any worker going under.
        let joiner = format!("j{round}");
        cluster.start(&joiner);
        live.push(joiner.clone());
        let joined = Instant::now();
        let balanced = wait_balanced(&cluster, &live, shards, Duration::from_secs(60)).await;
        println!(
            "join of {joiner}: balanced {:?} after it",
            balanced.duration_since(joined)
        );
    }

    writer.abort();
    cluster.finish(&arn).await;
}

/// Polls every 100 ms until at least `shards` unfinished shard leases exist, every one is
/// owned by a live worker, and the live workers' counts differ by at most one; returns
/// when. Fails after `limit`.
async fn wait_balanced(
    cluster: &Cluster,
    live: &[String],
    shards: usize,
    limit: Duration,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let (per_worker, orphans) = ownership(&cluster.store, live).await;
        let owned: usize = per_worker.values().sum();
        let (min, max) = (
            per_worker.values().min().copied().unwrap_or(0),
            per_worker.values().max().copied().unwrap_or(0),
        );
        if orphans == 0 && owned >= shards && max - min <= 1 {
            return Instant::now();
        }
        if Instant::now() >= deadline {
            use dynamodb_streams_leases::LeaseStore;
            let marks: Vec<String> = cluster
                .store
                .list_leases()
                .await
                .unwrap()
                .into_iter()
                .filter(|l| {
                    l.handoff_to.is_some() || (l.owner.is_some() && !l.parent_shard_ids.is_empty())
                })
                .map(|l| {
                    format!(
                        "{} {:?} -> {:?} {:?}",
                        l.key.shard_id, l.owner, l.handoff_to, l.checkpoint
                    )
                })
                .collect();
            panic!(
                "not balanced within {limit:?}: {orphans} leases without a live owner, per worker {per_worker:?}; marks {marks:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls every 100 ms until no unfinished shard lease is without a live owner; returns
/// when. Fails after `limit`.
async fn wait_no_orphans(cluster: &Cluster, live: &[String], limit: Duration) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let (_, orphans) = ownership(&cluster.store, live).await;
        if orphans == 0 {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{orphans} leases still without a live owner after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
