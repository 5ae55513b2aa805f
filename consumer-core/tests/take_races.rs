//! A take that loses a race (another worker took the lease between this worker's scan and
//! its conditional write) is planned again at once, not a scan interval later: a collision
//! must not add a tick to a takeover. Simulation in paused time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use checkpoint_store::{
    Checkpoint, Error, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore, Membership, Ownership,
    Result, WorkerRecord,
};
use consumer_core::Consumer;
use consumer_core::testkit::{Recording, SimulatedStream};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
}

/// The in-memory store, except that the first take of each shard lease fails as if
/// another worker had won it.
#[derive(Debug, Default)]
struct FirstTakeLoses {
    inner: InMemoryLeaseStore,
    lost: Mutex<HashSet<LeaseKey>>,
}

#[async_trait]
impl LeaseStore for FirstTakeLoses {
    async fn ensure_table(&self) -> Result<()> {
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>> {
        self.inner.list_leases().await
    }
    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        self.inner.get_lease(key).await
    }
    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        self.inner.create_lease(lease).await
    }
    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        if !key.is_coordination() && self.lost.lock().unwrap().insert(key.clone()) {
            return Err(Error::LeaseLost {
                key: key.clone(),
                owner: new_owner.to_owned(),
                epoch: seen_epoch,
            });
        }
        self.inner
            .take_lease(key, seen_owner, seen_epoch, new_owner)
            .await
    }
    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        self.inner.checkpoint(key, ownership, checkpoint).await
    }
    async fn release_lease(&self, key: &LeaseKey, ownership: &Ownership) -> Result<Lease> {
        self.inner.release_lease(key, ownership).await
    }
    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease> {
        self.inner.request_handoff(key, current, requester).await
    }
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.inner.delete_lease(key).await
    }
    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        self.inner.heartbeat(worker_id, ttl).await
    }
    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        self.inner.snapshot().await
    }
    async fn membership(&self) -> Result<Membership> {
        self.inner.membership().await
    }
    async fn bump_leases_version(&self) -> Result<u64> {
        self.inner.bump_leases_version().await
    }
    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.inner.delete_worker(worker_id).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_take_is_retried_at_once_not_a_scan_interval_later() {
    let sim = SimulatedStream::with_seed(51);
    sim.add_table("orders");
    sim.put_value("orders", &Row { pk: "a".into() }).unwrap();
    let log = Recording::<Row>::default();
    let consumer = Consumer::builder("app")
        .with_table("orders")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(FirstTakeLoses::default()))
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
