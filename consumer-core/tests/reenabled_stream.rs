//! A table whose stream is disabled and enabled again gets a new stream ARN: the next
//! shard sync picks the new stream up, and its shards start only after every shard of the
//! old stream was read to its end (per-item order across the two streams). Simulation in
//! paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::Consumer;
use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimulatedStream};
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseStore};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

#[tokio::test(start_paused = true)]
async fn a_reenabled_stream_is_picked_up_after_the_old_one_finished() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 2,
        ..SimConfig::with_seed(31)
    });
    let old = sim.add_table("orders");
    let write = |n: u64| {
        sim.put_value(
            "orders",
            &Row {
                pk: format!("k{}", n % 8),
                n,
            },
        )
        .unwrap()
        .unwrap()
    };
    // A backlog on the old stream that takes a while to process.
    for n in 0..1000 {
        write(n);
    }
    let store = Arc::new(InMemoryLeaseStore::new());
    // Each batch takes 100 ms: the old stream's backlog (1,000 records, 5 a batch) lasts 10 s, several shard syncs.
    let log = Recording::<Row>::new().with_hook(|_, _, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        })
    });
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_batch_limit(5)
        .with_shard_sync_interval(Duration::from_secs(1))
        .with_checkpoint_interval(Duration::ZERO)
        .build(log.factory())
        .unwrap();
    let (writer, watched) = (sim.clone(), log.clone());
    let done = async move {
        // The stream is replaced once the consumer reads the old one (its first shard sync
        // waits for a leader, whose first read of the coordination item is spread over a
        // scan interval): a stream replaced before that sync is not this test's case.
        while watched.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let new = writer.reenable_stream("orders").unwrap();
        for n in 1000..1060 {
            writer
                .put_value(
                    "orders",
                    &Row {
                        pk: format!("k{}", n % 8),
                        n,
                    },
                )
                .unwrap()
                .unwrap();
        }
        while watched.len() < 1060 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        new
    };
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    let new = tokio::time::timeout(Duration::from_secs(600), done)
        .await
        .expect("not every change of both streams was delivered");
    assert_ne!(new, old);
    let delivered = log.delivered();
    let last_old = delivered
        .iter()
        .rposition(|d| d.shard.stream_arn == old)
        .unwrap();
    let first_new = delivered
        .iter()
        .position(|d| d.shard.stream_arn == new)
        .unwrap();
    assert!(
        last_old < first_new,
        "the new stream started (delivery {first_new}) before the old one finished (delivery {last_old})"
    );
    let mut seen: Vec<u64> = delivered
        .iter()
        .map(|d| d.change.new.as_ref().unwrap().n)
        .collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (0..1060).collect::<Vec<_>>());

    // The gate opened and the old stream's finished leases were cleaned up.
    let gone = async {
        loop {
            let leases = store.list_leases().await.unwrap();
            if leases
                .iter()
                // The old stream's `#retiring` mark stays (shard_sync.rs says why).
                .all(|l| {
                    (l.key.stream != old || l.key.is_coordination())
                        && l.key.gated_stream().is_none()
                })
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), gone)
        .await
        .expect("the old stream's leases and the gate were not removed");
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}
