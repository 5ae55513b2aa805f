//! What the cases share: the stream and leases they use, reads that must succeed, and
//! [`assert_err!`].

pub(super) use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(super) use std::sync::Arc;

pub(super) use crate::{
    Checkpoint, Error, Lease, LeaseKey, LeaseStore, MEMBERS_PER_SHARD, Ownership,
    PipelineCheckpoints, SequenceNumber, WorkerRecord, membership_shard,
};

pub(super) const STREAM: &str =
    "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000";

pub(super) fn key(shard: &str) -> LeaseKey {
    LeaseKey::new(STREAM, shard)
}

/// A time with whole milliseconds, the precision the DynamoDB store keeps.
pub(super) fn at_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// A fresh unowned lease with timestamps a store can keep exactly.
pub(super) fn new_lease(shard: &str) -> Lease {
    let mut lease = Lease::new(key(shard), Checkpoint::TrimHorizon, Vec::new());
    lease.created_at = at_millis(1_767_225_600_123);
    lease.updated_at = lease.created_at;
    lease
}

pub(super) async fn create(store: &dyn LeaseStore, shard: &str) -> LeaseKey {
    let lease = new_lease(shard);
    store.create_lease(&lease).await.unwrap();
    lease.key
}

/// Every worker record, from a snapshot, sorted by id.
pub(super) async fn workers(store: &dyn LeaseStore) -> Vec<WorkerRecord> {
    let (_, mut workers) = store.snapshot().await.unwrap();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    workers
}

pub(super) async fn get(store: &dyn LeaseStore, key: &LeaseKey) -> Lease {
    store
        .get_lease(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lease {key} should exist"))
}

pub(super) fn seq(text: &str) -> Checkpoint {
    Checkpoint::At(SequenceNumber::parse(text).unwrap())
}

pub(super) fn owned(owner: &str, epoch: u64) -> Ownership {
    Ownership {
        owner: owner.to_owned(),
        epoch,
    }
}

/// Asserts that `result` failed with an error matching `pattern`.
macro_rules! assert_err {
    ($result:expr, $pattern:pat $(if $guard:expr)?) => {
        match $result {
            Err($pattern) $(if $guard)? => {}
            Err(other) => panic!(
                "expected {}, got the error {other:?}",
                stringify!($pattern)
            ),
            Ok(value) => panic!("expected {}, got Ok({value:?})", stringify!($pattern)),
        }
    };
}
pub(super) use assert_err;

/// The lease `key`, taken by `worker-a` (epoch 1), then from it by `worker-b` (epoch 2).
pub(super) async fn taken_by_a_then_b(store: &dyn LeaseStore, key: &LeaseKey) -> Lease {
    store.take_lease(key, None, 0, "worker-a").await.unwrap();
    store
        .take_lease(key, Some("worker-a"), 1, "worker-b")
        .await
        .unwrap()
}

/// The leases version, as the membership read (the workers' read) gives it.
pub(super) async fn membership_version(store: &dyn LeaseStore) -> u64 {
    store
        .membership()
        .await
        .unwrap()
        .coordination
        .leases_version
}
