//! `Consumer::health` (what `/healthz` answers) follows the worker: unhealthy until the first
//! heartbeat is confirmed, healthy while heartbeats are confirmed, unhealthy ("fenced") while
//! the lease table cannot be reached for longer than the fencing deadline, healthy again once
//! a new incarnation's heartbeat is confirmed, and unhealthy after shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_consumer::Consumer;
use dynamodb_streams_consumer::observability::Health;
use dynamodb_streams_consumer::testkit::{
    InMemoryLeaseStore, InstrumentedStore, Link, Recording, SimulatedStream,
};
use serde::de::IgnoredAny;

/// Polls `health` (simulated time) until `done` holds for its answer.
async fn wait_for(health: &Health, what: &str, done: impl Fn(&Result<(), String>) -> bool) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while !done(&health.check()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("health never became {what}: {:?}", health.check()));
}

#[tokio::test(start_paused = true)]
async fn health_is_ok_between_the_first_heartbeat_and_fencing_or_shutdown() {
    let sim = SimulatedStream::with_seed(3);
    sim.add_table("t");
    let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
    let seen: Recording<IgnoredAny> = Recording::new();
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_failover_time(Duration::from_secs(3))
        .build(seen.factory())
        .unwrap();
    let health = consumer.health();
    let starting = health.check().unwrap_err();
    assert!(starting.contains("no heartbeat"), "{starting}");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    wait_for(&health, "ok", Result::is_ok).await;

    store.set_link(Link::Partitioned);
    wait_for(&health, "fenced", |h| {
        h.as_ref().is_err_and(|reason| reason.starts_with("fenced"))
    })
    .await;

    store.set_link(Link::Up);
    wait_for(&health, "ok again", Result::is_ok).await;

    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let reason = health.check().unwrap_err();
    assert!(reason.contains("stopped"), "{reason}");
}
