//! A take that loses a race (another worker took the lease between this worker's scan and
//! its conditional write) is planned again at once, not a scan interval later: a collision
//! must not add a tick to a takeover. Simulation in paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::Consumer;
use dynamodb_streams_consumer::testkit::{InstrumentedStore, Recording, SimulatedStream};
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
}

#[tokio::test(start_paused = true)]
async fn a_lost_take_is_retried_at_once_not_a_scan_interval_later() {
    let sim = SimulatedStream::with_seed(51);
    let arn = sim.add_table("orders");
    sim.put_value("orders", &Row { pk: "a".into() }).unwrap();
    let shard = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
    let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    store.lose_next_take([LeaseKey::new(arn, shard)]);
    let log = Recording::<Row>::default();
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store)
        .with_scan_interval(Duration::from_secs(10))
        .build(log.factory())
        .unwrap();
    let started = tokio::time::Instant::now();
    let watched = log.clone();
    let delivered = async move {
        while watched.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), consumer.run_until(delivered))
        .await
        .expect("the record was never delivered")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the first change came {took:?} after the start: the lost take waited for the next scan (every 10 s)"
    );
}
