//! The membership item: dead workers' entries are removed by the shard-sync holder once
//! they stopped heartbeating for `failover_time` (and own nothing), so the item does not
//! grow with every crash; a worker that would overflow the item is refused with an error
//! naming the table and the limit. Simulation in paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Row};
use dynamodb_streams_consumer::Consumer;
use dynamodb_streams_consumer::testkit::{Recording, SimulatedStream};
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseStore};

async fn member_ids(store: &InMemoryLeaseStore) -> Vec<String> {
    let membership = store.membership().await.unwrap();
    membership
        .workers
        .into_iter()
        .map(|w| w.worker_id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_entry_is_removed_after_it_stopped_heartbeating() {
    let sim = SimulatedStream::with_seed(41);
    let arn = sim.add_table("orders");
    for n in 0..20 {
        sim.put_value(
            "orders",
            &Row {
                pk: format!("k{n}"),
                n,
            },
        )
        .unwrap();
    }
    let store = Arc::new(InMemoryLeaseStore::new());
    let mut cluster = Cluster::new(&sim, store.clone());
    for id in ["a", "b", "c"] {
        cluster.start(id);
    }
    let joined = async {
        while member_ids(&store).await.len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), joined)
        .await
        .expect("three workers joined");
    cluster.crash("b");
    let crashed = tokio::time::Instant::now();
    let removed = async {
        while member_ids(&store)
            .await
            .iter()
            .any(|id| id.starts_with("b#"))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(180), removed)
        .await
        .expect("the crashed worker's entry was never removed");
    // Not before others could judge it dead (failover time 10 s), and by the next sync
    // after that (every 60 s).
    let after = crashed.elapsed();
    assert!(
        (Duration::from_secs(10)..=Duration::from_secs(80)).contains(&after),
        "removed {after:?} after the crash"
    );
    let left = member_ids(&store).await;
    assert_eq!(left.len(), 2, "{left:?}");
    cluster.finish(&arn).await;
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_would_overflow_the_membership_item_is_refused_clearly() {
    let sim = SimulatedStream::with_seed(42);
    sim.add_table("orders");
    let store = Arc::new(InMemoryLeaseStore::new());
    // Long ids (about 3 KB an entry) fill the 400 KB item with ~130 workers.
    let long = |n: usize| format!("{n:04}-{}", "x".repeat(1_000));
    let mut n = 0;
    while store
        .heartbeat(&long(n), Duration::from_secs(60))
        .await
        .is_ok()
    {
        n += 1;
    }
    // Then short ones, until not even an 8-character id fits.
    while store
        .heartbeat(&format!("f-{n:06}"), Duration::from_secs(60))
        .await
        .is_ok()
    {
        n += 1;
    }
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_worker_id("late")
        .build(Recording::<Row>::new().factory())
        .unwrap();
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        consumer.run_until(std::future::pending()),
    )
    .await
    .expect("a full membership item is not retried forever")
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("membership item of lease table") && error.contains("400 KB"),
        "{error}"
    );
}
