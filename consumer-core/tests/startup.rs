//! A worker's start-up path, in simulation and paused time: what it asks DynamoDB Streams
//! before the first records flow, for a new application and for a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimOperation, SimulatedStream};
use dynamodb_streams_consumer::{Consumer, InitialPosition};
use dynamodb_streams_leases::InMemoryLeaseStore;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
}

/// Runs one worker of `app` over table `t` for 10 s (less than the 60 s shard-sync
/// interval), returning what it delivered.
async fn run_for_10s(sim: &SimulatedStream, store: &Arc<InMemoryLeaseStore>) -> Vec<String> {
    let recording = Recording::<Row>::new();
    Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_initial_position(InitialPosition::TrimHorizon)
        .build(recording.factory())
        .unwrap()
        .run_until(tokio::time::sleep(Duration::from_secs(10)))
        .await
        .unwrap();
    recording.images().into_iter().map(|row| row.pk).collect()
}

#[tokio::test(start_paused = true)]
async fn a_new_application_lists_its_shards_once_while_starting() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 4,
        ..SimConfig::with_seed(7)
    });
    sim.add_table("t");
    for n in 0..20 {
        sim.put_value("t", &json!({ "pk": format!("item-{n}") }))
            .unwrap();
    }
    let store = Arc::new(InMemoryLeaseStore::new());

    // The first worker creates every lease from a full DescribeStream: that listing counts
    // as the shard-sync holder's first sync, not done again a moment later.
    let delivered = run_for_10s(&sim, &store).await;
    assert_eq!(delivered.len(), 20, "{delivered:?}");
    assert_eq!(
        sim.calls(SimOperation::DescribeStream),
        1,
        "one listing of the shards while a new application starts"
    );

    // A restart finds the leases there: its start-up lists nothing, so the holder syncs
    // at once (shards may have changed while no worker ran).
    sim.put_value("t", &json!({ "pk": "after-restart" }))
        .unwrap();
    let delivered = run_for_10s(&sim, &store).await;
    assert_eq!(delivered, vec!["after-restart".to_owned()]);
    assert_eq!(
        sim.calls(SimOperation::DescribeStream),
        2,
        "the restarted holder syncs at once"
    );
}
