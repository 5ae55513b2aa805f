//! Membership at scale, in simulation (paused time): the leader removes a dead worker's
//! entry once it stopped heartbeating for `failover_time`, so the membership items do not
//! grow with every crash; a worker whose membership item is full joins under another
//! incarnation id, and one that finds every item full is refused with an error naming the
//! item and its limit; workers started together read the coordination item evenly over
//! its interval, not all in the same second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, Row};
use dynamodb_streams_consumer::Consumer;
use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimulatedStream};
use dynamodb_streams_leases::{
    InMemoryLeaseStore, LeaseStore, MEMBERS_PER_SHARD, MEMBERSHIP_SHARDS, membership_shard,
};

async fn member_ids(store: &InMemoryLeaseStore) -> Vec<String> {
    let membership = store.membership().await.unwrap();
    membership
        .workers
        .into_iter()
        .map(|w| w.worker_id)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_crashed_workers_entry_is_removed_once_it_stopped_heartbeating() {
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
    // Let the workers settle (leader claimed, leases assigned) before the crash.
    tokio::time::sleep(Duration::from_secs(10)).await;
    for victim in ["b", "a"] {
        cluster.crash(victim);
        let crashed = tokio::time::Instant::now();
        let prefix = format!("{victim}#");
        let removed = async {
            while member_ids(&store)
                .await
                .iter()
                .any(|id| id.starts_with(&prefix))
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), removed)
            .await
            .expect("the crashed worker's entry was never removed");
        // Not before its heartbeat could be judged stopped (failover time 10 s), and as soon
        // as the leader (or a new leader, if it was the leader) judged it dead.
        let after = crashed.elapsed();
        assert!(
            (Duration::from_secs(10)..=Duration::from_secs(14)).contains(&after),
            "{victim} removed {after:?} after its crash"
        );
    }
    let left = member_ids(&store).await;
    assert_eq!(left.len(), 1, "{left:?}");
    cluster.finish(&arn).await;
}

/// Fills `items` membership items with `MEMBERS_PER_SHARD` workers each.
async fn fill(store: &InMemoryLeaseStore, items: impl Fn(u16) -> bool) {
    let mut per_item = vec![0u32; usize::from(MEMBERSHIP_SHARDS)];
    let mut n = 0u64;
    while per_item
        .iter()
        .enumerate()
        .any(|(item, members)| items(item as u16) && *members < MEMBERS_PER_SHARD)
    {
        let id = format!("filler-{n}");
        n += 1;
        let item = membership_shard(&id);
        if items(item) && per_item[usize::from(item)] < MEMBERS_PER_SHARD {
            store
                .heartbeat(&id, Duration::from_secs(600))
                .await
                .unwrap();
            per_item[usize::from(item)] += 1;
        }
    }
}

fn consumer(
    sim: &SimulatedStream,
    store: &Arc<InMemoryLeaseStore>,
) -> Consumer<impl dynamodb_streams_consumer::ProcessorFactory> {
    Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_worker_id("late")
        .build(Recording::<Row>::new().factory())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_membership_item_is_full_joins_under_another_id() {
    let sim = SimulatedStream::with_seed(42);
    sim.add_table("orders");
    let store = Arc::new(InMemoryLeaseStore::new());
    // Half the items full: a random id finds room within a few tries.
    fill(&store, |item| item % 2 == 0).await;
    let running = tokio::spawn(consumer(&sim, &store).run_until(std::future::pending()));
    let joined = async {
        loop {
            let ids = member_ids(&store).await;
            if let Some(id) = ids.iter().find(|id| id.starts_with("late#")) {
                return id.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let id = tokio::time::timeout(Duration::from_secs(30), joined)
        .await
        .expect("the worker joined");
    assert_eq!(membership_shard(&id) % 2, 1, "{id} joined a full item");
    running.abort();
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_finds_every_membership_item_full_is_refused_clearly() {
    let sim = SimulatedStream::with_seed(43);
    sim.add_table("orders");
    let store = Arc::new(InMemoryLeaseStore::new());
    fill(&store, |_| true).await;
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        consumer(&sim, &store).run_until(std::future::pending()),
    )
    .await
    .expect("a full membership is not retried forever")
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("membership item")
            && error.contains(&format!("{MEMBERS_PER_SHARD} workers")),
        "{error}"
    );
}

/// Workers started in the same instant (a cold start, a deployment) read the coordination
/// item evenly over its interval, not all in the same second (issue 17: at 1,000 workers its
/// busiest second was four times its average, 500 read units, past a tenth of a
/// partition). Before the reads were spread, 300 workers started together read it on the
/// same tick: the busiest second was twice the average.
#[test]
fn workers_started_together_read_the_coordination_item_evenly() {
    let ((), _) = common::run_recorded(|_| async {
        let sim = SimulatedStream::new(SimConfig {
            initial_shards: 300,
            ..SimConfig::with_seed(17)
        });
        sim.add_table("orders");
        let store = Arc::new(InMemoryLeaseStore::new());
        let mut cluster = Cluster::new(&sim, store.clone());
        for n in 0..300 {
            cluster.start(&format!("w{n:03}"));
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        cluster.billing.reset_item_units();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let (average, busiest) = cluster.coordination_reads();
        println!(
            "coordination item: {average:.1} read units/s on average, busiest second {busiest:.1}"
        );
        assert!(
            busiest <= 1.5 * average,
            "busiest second {busiest:.1} read units against {average:.1} on average"
        );
        cluster.stop_all().await;
    });
}
