//! The conformance suite: the behaviour every [`LeaseStore`] must have.
//!
//! Each case is a public async function taking a fresh, empty store (its table already
//! ensured), so a failure names the case. [`conformance_tests!`](crate::conformance_tests)
//! turns every case into its own `#[tokio::test]`; [`run_all`] runs them one after another.
//!
//! ```text
//! dynamodb_streams_leases::conformance_tests!(|| async {
//!     std::sync::Arc::new(dynamodb_streams_leases::InMemoryLeaseStore::new())
//!         as std::sync::Arc<dyn dynamodb_streams_leases::LeaseStore>
//! });
//! ```

// This is test code: a failed assertion or unwrap is how a case reports a broken store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{
    Checkpoint, Error, Lease, LeaseKey, LeaseStore, MEMBERS_PER_SHARD, Ownership,
    PipelineCheckpoints, SequenceNumber, WorkerRecord, membership_shard,
};

/// Calls `$callback!` with the name of every case: the one list of cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($mode:ident $args:tt) => {
        $crate::__conformance_cases!(@expand $mode $args [
            round_trips_every_field,
            create_twice_fails_with_already_exists,
            take_of_unowned_lease,
            concurrent_takes_have_exactly_one_winner,
            take_with_stale_epoch_or_owner_fails,
            checkpoint_by_owner_succeeds_and_resets_owner_switches,
            checkpoint_after_losing_lease_is_rejected,
            retaken_lease_rejects_the_old_epoch,
            release_then_take_by_another,
            handoff_request_release_and_take,
            missing_lease_is_not_found,
            delete_is_idempotent,
            heartbeats_count_and_show_in_snapshots,
            delete_worker_removes_the_record,
            lists_many_leases_across_pages,
            long_sequence_number_text_round_trips,
            since_checkpoint_round_trips,
            a_full_membership_item_refuses_a_new_worker_clearly,
            snapshot_holds_every_lease_and_worker,
            writes_leave_the_leases_version_to_the_caller,
            a_second_handoff_request_on_a_pending_one_fails,
            a_worker_removed_as_dead_cannot_heartbeat_again,
            membership_reads_workers_of_every_item,
            leadership_is_claimed_once_renewed_and_resigned,
            notices_are_delivered_and_cleared_by_token,
            many_leases_are_read_at_once,
            reset_moves_the_checkpoint_and_frees_the_lease_in_one_write,
            pipeline_checkpoints_are_written_by_the_owner_with_the_read_position,
            a_removed_pipeline_leaves_the_other_pipelines_alone,
        ]);
    };
    (@expand tests ($make_store:expr) [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($make_store)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
    (@expand run_all ($make_store:ident) [$($case:ident),* $(,)?]) => {
        $(
            tracing::info!(case = stringify!($case), "conformance case");
            $case($make_store().await).await;
        )*
    };
}

/// Defines one `#[tokio::test]` (multi-threaded) per conformance case, each calling
/// `$make_store` (a closure or function returning a future of `Arc<dyn LeaseStore>`) for a
/// fresh, empty store. The calling crate needs `tokio` with the `macros` feature.
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:expr) => {
        $crate::__conformance_cases!(tests($make_store));
    };
}

/// Runs every case in turn, each against a fresh, empty store from `make_store`.
pub async fn run_all<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn LeaseStore>>,
{
    crate::__conformance_cases!(run_all(make_store));
}

// ----- helpers -----

const STREAM: &str =
    "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000";

fn key(shard: &str) -> LeaseKey {
    LeaseKey::new(STREAM, shard)
}

/// A time with whole milliseconds, the precision the DynamoDB store keeps.
fn at_millis(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// A fresh unowned lease with timestamps a store can keep exactly.
fn new_lease(shard: &str) -> Lease {
    let mut lease = Lease::new(key(shard), Checkpoint::TrimHorizon, Vec::new());
    lease.created_at = at_millis(1_767_225_600_123);
    lease.updated_at = lease.created_at;
    lease
}

async fn create(store: &dyn LeaseStore, shard: &str) -> LeaseKey {
    let lease = new_lease(shard);
    store.create_lease(&lease).await.unwrap();
    lease.key
}

/// Every worker record, from a snapshot, sorted by id.
async fn workers(store: &dyn LeaseStore) -> Vec<WorkerRecord> {
    let (_, mut workers) = store.snapshot().await.unwrap();
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    workers
}

async fn get(store: &dyn LeaseStore, key: &LeaseKey) -> Lease {
    store
        .get_lease(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("lease {key} should exist"))
}

fn seq(text: &str) -> Checkpoint {
    Checkpoint::At(SequenceNumber::parse(text).unwrap())
}

fn owned(owner: &str, epoch: u64) -> Ownership {
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

// ----- cases -----

/// Every field survives create, get and list, with empty and non-empty optional parts.
pub async fn round_trips_every_field(store: Arc<dyn LeaseStore>) {
    let plain = new_lease("shardId-00000001");
    let full = Lease {
        key: key("shardId-00000002"),
        owner: Some("worker-a".to_owned()),
        epoch: 42,
        checkpoint: seq("000000000000000000001234567890"),
        parent_shard_ids: vec!["shardId-parent-1".to_owned(), "shardId-parent-2".to_owned()],
        owner_switches_since_checkpoint: 3,
        handoff_to: Some("worker-b".to_owned()),
        created_at: at_millis(1_700_000_000_001),
        updated_at: at_millis(1_700_000_123_456),
        pipelines: [
            ("search".to_owned(), seq("000000000000000000001234567891")),
            ("audit-log.v2".to_owned(), Checkpoint::ShardEnd),
        ]
        .into(),
        owner_pipelines: vec!["audit-log.v2".to_owned(), "search".to_owned()],
    };
    let coordination = Lease {
        key: LeaseKey::coordination("shard-sync"),
        checkpoint: Checkpoint::Latest,
        ..new_lease("unused")
    };
    for lease in [&plain, &full, &coordination] {
        store.create_lease(lease).await.unwrap();
    }
    for lease in [&plain, &full, &coordination] {
        assert_eq!(&get(store.as_ref(), &lease.key).await, lease);
    }
    let mut listed = store.list_leases().await.unwrap();
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let mut expected = vec![plain, full, coordination];
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(listed, expected);
    assert!(store.get_lease(&key("absent")).await.unwrap().is_none());
}

/// Creating a lease whose key exists fails and leaves the stored lease alone.
pub async fn create_twice_fails_with_already_exists(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let mut again = new_lease("shard-1");
    again.checkpoint = Checkpoint::Latest;
    assert_err!(
        store.create_lease(&again).await,
        Error::AlreadyExists { key: k } if k == key
    );
    assert_eq!(
        get(store.as_ref(), &key).await.checkpoint,
        Checkpoint::TrimHorizon
    );
}

/// Taking an unowned lease makes the taker the owner and bumps epoch and switch count.
pub async fn take_of_unowned_lease(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let taken = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    assert_eq!(taken.owner.as_deref(), Some("worker-a"));
    assert_eq!(taken.epoch, 1);
    assert_eq!(taken.owner_switches_since_checkpoint, 1);
    assert_eq!(taken.checkpoint, Checkpoint::TrimHorizon);
    assert_eq!(taken.ownership(), Some(owned("worker-a", 1)));
    assert_eq!(get(store.as_ref(), &key).await, taken);
}

/// Ten workers race for one lease: exactly one wins, the others see `LeaseChanged`.
pub async fn concurrent_takes_have_exactly_one_winner(store: Arc<dyn LeaseStore>) {
    const RACERS: usize = 10;
    let key = create(store.as_ref(), "shard-1").await;
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..RACERS {
        let (store, key, barrier) = (store.clone(), key.clone(), barrier.clone());
        tasks.spawn(async move {
            let worker = format!("worker-{i}");
            barrier.wait().await;
            (
                worker.clone(),
                store.take_lease(&key, None, 0, &worker).await,
            )
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (worker, result) = joined.unwrap();
        match result {
            Ok(lease) => {
                assert_eq!(lease.owner.as_deref(), Some(worker.as_str()));
                winners.push(worker);
            }
            Err(Error::LeaseChanged { .. }) => {}
            Err(other) => panic!("{worker}: expected LeaseChanged, got {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = get(store.as_ref(), &key).await;
    assert_eq!(stored.owner.as_ref(), winners.first());
    assert_eq!(stored.epoch, 1);
}

/// A take based on an outdated view (epoch or owner) fails; an up-to-date one steals.
pub async fn take_with_stale_epoch_or_owner_fails(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    assert_err!(
        store.take_lease(&key, None, 0, "worker-b").await,
        Error::LeaseChanged {
            seen_owner: None,
            seen_epoch: 0,
            ..
        }
    );
    assert_err!(
        store
            .take_lease(&key, Some("worker-a"), 0, "worker-b")
            .await,
        Error::LeaseChanged { .. }
    );
    assert_err!(
        store.take_lease(&key, None, 1, "worker-b").await,
        Error::LeaseChanged { .. }
    );
    assert_err!(
        store
            .take_lease(&key, Some("worker-c"), 1, "worker-b")
            .await,
        Error::LeaseChanged { .. }
    );
    let stolen = store
        .take_lease(&key, Some("worker-a"), 1, "worker-b")
        .await
        .unwrap();
    assert_eq!(stolen.owner.as_deref(), Some("worker-b"));
    assert_eq!(stolen.epoch, 2);
    assert_eq!(stolen.owner_switches_since_checkpoint, 2);
}

/// The owner's checkpoint is stored and resets the switch count.
pub async fn checkpoint_by_owner_succeeds_and_resets_owner_switches(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let lease = store
        .take_lease(&key, Some("worker-a"), 1, "worker-b")
        .await
        .unwrap();
    assert_eq!(lease.owner_switches_since_checkpoint, 2);
    let me = lease.ownership().unwrap();

    let position = seq("100000000000000000001");
    let done = store.checkpoint(&key, &me, &position).await.unwrap();
    assert_eq!(done.checkpoint, position);
    assert_eq!(done.owner_switches_since_checkpoint, 0);
    assert_eq!(done.ownership(), Some(me.clone()));
    assert_eq!(get(store.as_ref(), &key).await, done);

    let end = store
        .checkpoint(&key, &me, &Checkpoint::ShardEnd)
        .await
        .unwrap();
    assert!(end.checkpoint.is_shard_end());
}

/// After another worker took the lease, the old owner's writes fail with `LeaseLost` and
/// change nothing.
pub async fn checkpoint_after_losing_lease_is_rejected(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let a = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let a = a.ownership().unwrap();
    store
        .checkpoint(&key, &a, &seq("100000000000000000005"))
        .await
        .unwrap();
    store
        .take_lease(&key, Some("worker-a"), a.epoch, "worker-b")
        .await
        .unwrap();
    let before = get(store.as_ref(), &key).await;

    assert_err!(
        store.checkpoint(&key, &a, &seq("100000000000000000009")).await,
        Error::LeaseLost { owner, epoch: 1, .. } if owner == "worker-a"
    );
    assert_err!(store.release_lease(&key, &a).await, Error::LeaseLost { .. });
    let after = get(store.as_ref(), &key).await;
    assert_eq!(after, before);
    assert_eq!(after.checkpoint, seq("100000000000000000005"));
}

/// A worker that lost a lease and took it back cannot write with its old token.
pub async fn retaken_lease_rejects_the_old_epoch(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let first = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let old = first.ownership().unwrap();
    store
        .take_lease(&key, Some("worker-a"), 1, "worker-b")
        .await
        .unwrap();
    let again = store
        .take_lease(&key, Some("worker-b"), 2, "worker-a")
        .await
        .unwrap();
    assert_eq!(again.epoch, 3);
    assert_err!(
        store
            .checkpoint(&key, &old, &seq("100000000000000000001"))
            .await,
        Error::LeaseLost { epoch: 1, .. }
    );
    assert_err!(
        store.release_lease(&key, &old).await,
        Error::LeaseLost { .. }
    );
    let current = again.ownership().unwrap();
    let written = store
        .checkpoint(&key, &current, &seq("100000000000000000002"))
        .await
        .unwrap();
    assert_eq!(written.checkpoint, seq("100000000000000000002"));
}

/// Releasing removes the owner and bumps the epoch; another worker can then take it.
pub async fn release_then_take_by_another(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let a = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let released = store
        .release_lease(&key, &a.ownership().unwrap())
        .await
        .unwrap();
    assert_eq!(released.owner, None);
    assert_eq!(released.epoch, 2);
    assert_eq!(released.handoff_to, None);
    assert_eq!(get(store.as_ref(), &key).await, released);
    assert_err!(
        store
            .take_lease(&key, Some("worker-a"), 1, "worker-b")
            .await,
        Error::LeaseChanged { .. }
    );
    // Unowned now, but a view from before the release has a stale epoch.
    assert_err!(
        store.take_lease(&key, None, 0, "worker-b").await,
        Error::LeaseChanged { .. }
    );
    let b = store.take_lease(&key, None, 2, "worker-b").await.unwrap();
    assert_eq!(b.owner.as_deref(), Some("worker-b"));
    assert_eq!(b.epoch, 3);
}

/// A handoff request marks the lease without changing owner or epoch; the owner releases
/// (clearing the mark) and the requester takes it. Stale requests fail.
pub async fn handoff_request_release_and_take(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let a = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let a = a.ownership().unwrap();

    let marked = store.request_handoff(&key, &a, "worker-b").await.unwrap();
    assert_eq!(marked.handoff_to.as_deref(), Some("worker-b"));
    assert_eq!(marked.ownership(), Some(a.clone()));
    assert_eq!(get(store.as_ref(), &key).await, marked);
    assert_err!(
        store
            .request_handoff(&key, &owned("worker-a", 0), "worker-c")
            .await,
        Error::LeaseChanged { .. }
    );
    assert_err!(
        store
            .request_handoff(&key, &owned("worker-x", 1), "worker-c")
            .await,
        Error::LeaseChanged { .. }
    );

    // The owner can still checkpoint while a handoff is pending; the mark stays.
    let checkpointed = store
        .checkpoint(&key, &a, &seq("100000000000000000007"))
        .await
        .unwrap();
    assert_eq!(checkpointed.handoff_to.as_deref(), Some("worker-b"));

    let released = store.release_lease(&key, &a).await.unwrap();
    assert_eq!(released.handoff_to, None);
    assert_eq!(released.owner, None);
    let b = store
        .take_lease(&key, None, released.epoch, "worker-b")
        .await
        .unwrap();
    assert_eq!(b.owner.as_deref(), Some("worker-b"));
    assert_eq!(b.checkpoint, seq("100000000000000000007"));

    // A take (forced, after a handoff timeout) clears a pending request too.
    let b = b.ownership().unwrap();
    store.request_handoff(&key, &b, "worker-c").await.unwrap();
    let c = store
        .take_lease(&key, Some("worker-b"), b.epoch, "worker-c")
        .await
        .unwrap();
    assert_eq!(c.handoff_to, None);
}

/// Takes and handoff requests on a missing lease fail with `LeaseNotFound`; owner writes
/// with `LeaseLost`.
pub async fn missing_lease_is_not_found(store: Arc<dyn LeaseStore>) {
    let missing = key("missing");
    assert_err!(
        store.take_lease(&missing, None, 0, "worker-a").await,
        Error::LeaseNotFound { key } if key == missing
    );
    assert_err!(
        store
            .take_lease(&missing, Some("worker-b"), 3, "worker-a")
            .await,
        Error::LeaseNotFound { .. }
    );
    assert_err!(
        store
            .request_handoff(&missing, &owned("worker-a", 1), "worker-b")
            .await,
        Error::LeaseNotFound { .. }
    );
    let token = owned("worker-a", 1);
    assert_err!(
        store
            .checkpoint(&missing, &token, &Checkpoint::ShardEnd)
            .await,
        Error::LeaseLost { .. }
    );
    assert_err!(
        store.release_lease(&missing, &token).await,
        Error::LeaseLost { .. }
    );
    // None of this created the lease.
    assert!(store.get_lease(&missing).await.unwrap().is_none());
    assert!(store.list_leases().await.unwrap().is_empty());
}

/// Deleting removes the lease; deleting a missing lease succeeds.
pub async fn delete_is_idempotent(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let other = create(store.as_ref(), "shard-2").await;
    store.delete_lease(&key).await.unwrap();
    assert!(store.get_lease(&key).await.unwrap().is_none());
    store.delete_lease(&key).await.unwrap();
    store
        .delete_lease(&LeaseKey::new("never", "was"))
        .await
        .unwrap();
    let listed = store.list_leases().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, other);
    // The key can be used again.
    create(store.as_ref(), "shard-1").await;
}

/// Heartbeats create the worker record, count up and push the expiry forward.
pub async fn heartbeats_count_and_show_in_snapshots(store: Arc<dyn LeaseStore>) {
    let ttl = Duration::from_secs(600);
    let before = SystemTime::now() - Duration::from_secs(2);
    let first = store.heartbeat("worker-a", ttl).await.unwrap();
    assert_eq!(first.worker_id, "worker-a");
    assert_eq!(first.heartbeat, 1);
    let second = store.heartbeat("worker-a", ttl).await.unwrap();
    assert_eq!(second.heartbeat, 2);
    store.heartbeat("worker-b", ttl).await.unwrap();
    let after = SystemTime::now() + Duration::from_secs(2);
    for record in [&first, &second] {
        assert!(
            record.updated_at >= before && record.updated_at <= after,
            "{record:?}"
        );
        assert!(
            record.expires_at >= before + ttl && record.expires_at <= after + ttl,
            "{record:?}"
        );
    }

    let workers = workers(store.as_ref()).await;
    let counters: Vec<(&str, u64)> = workers
        .iter()
        .map(|w| (w.worker_id.as_str(), w.heartbeat))
        .collect();
    assert_eq!(counters, [("worker-a", 2), ("worker-b", 1)]);
    assert_eq!(workers[0], second);
    // Worker records are not leases.
    assert!(store.list_leases().await.unwrap().is_empty());
    assert!(store.snapshot().await.unwrap().0.is_empty());
}

/// Deleting a worker record removes it; deleting a missing one succeeds.
pub async fn delete_worker_removes_the_record(store: Arc<dyn LeaseStore>) {
    let ttl = Duration::from_secs(60);
    store.heartbeat("worker-a", ttl).await.unwrap();
    store.heartbeat("worker-b", ttl).await.unwrap();
    store.delete_worker("worker-a").await.unwrap();
    store.delete_worker("worker-a").await.unwrap();
    store.delete_worker("never-was").await.unwrap();
    let workers = workers(store.as_ref()).await;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].worker_id, "worker-b");
    // An id that left never comes back: a new incarnation has a new id.
    assert_err!(
        store.heartbeat("worker-a", ttl).await,
        Error::WorkerRemoved { worker_id, .. } if worker_id == "worker-a"
    );
}

/// 1,500 leases (and some workers in between) are all listed: listing follows every page.
pub async fn lists_many_leases_across_pages(store: Arc<dyn LeaseStore>) {
    const LEASES: usize = 1_500;
    const CHUNK: usize = 50;
    let ids: Vec<String> = (0..LEASES).map(|i| format!("shardId-{i:08}")).collect();
    for chunk in ids.chunks(CHUNK) {
        let mut tasks = tokio::task::JoinSet::new();
        for id in chunk {
            let (store, lease) = (store.clone(), new_lease(id));
            tasks.spawn(async move { store.create_lease(&lease).await });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap().unwrap();
        }
    }
    for i in 0..5 {
        store
            .heartbeat(&format!("worker-{i}"), Duration::from_secs(60))
            .await
            .unwrap();
    }
    let leases = store.list_leases().await.unwrap();
    let mut listed: Vec<String> = leases.iter().map(|l| l.key.shard_id.clone()).collect();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), LEASES, "every lease, once");
    assert_eq!(listed, ids);
    assert_eq!(workers(store.as_ref()).await.len(), 5);
}

/// A 40-digit sequence number with leading zeros comes back with its exact text.
pub async fn long_sequence_number_text_round_trips(store: Arc<dyn LeaseStore>) {
    let text = "0000000000000000000012345678901234567890";
    assert_eq!(text.len(), 40);
    let mut lease = new_lease("shard-1");
    lease.checkpoint = seq(text);
    store.create_lease(&lease).await.unwrap();
    let stored = get(store.as_ref(), &lease.key).await;
    assert_eq!(stored.checkpoint.sequence_number().unwrap().as_str(), text);

    let me = store
        .take_lease(&lease.key, None, 0, "worker-a")
        .await
        .unwrap()
        .ownership()
        .unwrap();
    let longer = "0000000000000000000112345678901234567890";
    store
        .checkpoint(&lease.key, &me, &seq(longer))
        .await
        .unwrap();
    let stored = get(store.as_ref(), &lease.key).await;
    assert_eq!(
        stored.checkpoint.sequence_number().unwrap().as_str(),
        longer
    );
    assert!(stored.checkpoint.sequence_number() > Some(&SequenceNumber::parse(text).unwrap()));
}

/// A `Since` checkpoint (start time of a `Latest` lease or a snapshot) round-trips when
/// created and when written by the owner over `Latest`, and gives way to a sequence number.
pub async fn since_checkpoint_round_trips(store: Arc<dyn LeaseStore>) {
    let created = Checkpoint::since(at_millis(1_795_758_219_123));
    let mut lease = new_lease("shard-1");
    lease.checkpoint = created.clone();
    store.create_lease(&lease).await.unwrap();
    assert_eq!(get(store.as_ref(), &lease.key).await.checkpoint, created);

    let mut latest = new_lease("shard-2");
    latest.checkpoint = Checkpoint::Latest;
    store.create_lease(&latest).await.unwrap();
    let me = store
        .take_lease(&latest.key, None, 0, "worker-a")
        .await
        .unwrap()
        .ownership()
        .unwrap();
    let started = Checkpoint::since(at_millis(1_795_758_300_001));
    store.checkpoint(&latest.key, &me, &started).await.unwrap();
    let stored = get(store.as_ref(), &latest.key).await;
    assert_eq!(stored.checkpoint, started);
    assert_eq!(
        stored.checkpoint.skip_before(),
        Some(at_millis(1_795_758_300_001))
    );
    store
        .checkpoint(&latest.key, &me, &seq("000000000000000000077"))
        .await
        .unwrap();
    let stored = get(store.as_ref(), &latest.key).await;
    assert_eq!(stored.checkpoint, seq("000000000000000000077"));
}

/// Ids whose membership item is the same as `worker-0`'s, in order.
fn ids_sharing_an_item(count: usize) -> Vec<String> {
    let shard = membership_shard("worker-0");
    (0..)
        .map(|n| format!("worker-{n}"))
        .filter(|id| membership_shard(id) == shard)
        .take(count)
        .collect()
}

/// A membership item holds at most `MEMBERS_PER_SHARD` workers: one more whose id hashes to
/// it gets `MembershipFull` (naming the table, the item and the limit), workers already
/// in keep heartbeating, workers of other items join, and a removed entry makes room.
pub async fn a_full_membership_item_refuses_a_new_worker_clearly(store: Arc<dyn LeaseStore>) {
    let limit = MEMBERS_PER_SHARD as usize;
    let ids = ids_sharing_an_item(limit + 1);
    let ttl = Duration::from_secs(60);
    for id in &ids[..limit] {
        store.heartbeat(id, ttl).await.unwrap();
    }
    let refused = store.heartbeat(&ids[limit], ttl).await;
    assert_err!(
        refused,
        Error::MembershipFull { ref worker_id, shard, limit: l, .. }
            if *worker_id == ids[limit] && shard == membership_shard(&ids[0]) && l as usize == limit
    );
    let text = store
        .heartbeat(&ids[limit], ttl)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("membership item") && text.contains(&format!("{limit} workers")),
        "{text}"
    );
    store.heartbeat(&ids[0], ttl).await.unwrap();
    let elsewhere = (0..)
        .map(|n| format!("other-{n}"))
        .find(|id| membership_shard(id) != membership_shard(&ids[0]))
        .unwrap();
    store.heartbeat(&elsewhere, ttl).await.unwrap();
    store.delete_worker(&ids[1]).await.unwrap();
    store.heartbeat(&ids[limit], ttl).await.unwrap();
    assert_eq!(workers(store.as_ref()).await.len(), limit + 1);
}

/// A snapshot holds every lease (exactly the lease listing) and every worker, across pages.
pub async fn snapshot_holds_every_lease_and_worker(store: Arc<dyn LeaseStore>) {
    for i in 0..150 {
        let key = LeaseKey::new("arn:snapshot", format!("shard-{i:04}"));
        store
            .create_lease(&Lease::new(key, Checkpoint::TrimHorizon, vec![]))
            .await
            .unwrap();
    }
    for worker in ["a", "b", "c"] {
        store
            .heartbeat(worker, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let (mut leases, mut workers) = store.snapshot().await.unwrap();
    let mut listed_leases = store.list_leases().await.unwrap();
    leases.sort_by(|a, b| a.key.cmp(&b.key));
    listed_leases.sort_by(|a, b| a.key.cmp(&b.key));
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    assert_eq!(leases.len(), 150);
    assert_eq!(leases, listed_leases);
    let ids: Vec<&str> = workers.iter().map(|w| w.worker_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
}

/// No write bumps the leases version by itself (callers bump once for a batch of
/// changes); `bump_leases_version` bumps it by one, and the coordination item and the
/// membership read show it.
pub async fn writes_leave_the_leases_version_to_the_caller(store: Arc<dyn LeaseStore>) {
    let version = || async { store.coordination().await.unwrap().leases_version };
    let start = version().await;
    let ttl = Duration::from_secs(60);
    store.heartbeat("worker-a", ttl).await.unwrap();
    let key = create(store.as_ref(), "shard-1").await;
    let taken = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let mine = taken.ownership().unwrap();
    store.checkpoint(&key, &mine, &seq("100")).await.unwrap();
    store
        .request_handoff(&key, &mine, "worker-b")
        .await
        .unwrap();
    let released = store.release_lease(&key, &mine).await.unwrap();
    let again = store
        .take_lease(&key, None, released.epoch, "worker-b")
        .await
        .unwrap();
    store
        .checkpoint(&key, &again.ownership().unwrap(), &Checkpoint::ShardEnd)
        .await
        .unwrap();
    store.delete_lease(&key).await.unwrap();
    assert_eq!(version().await, start, "a write bumped the leases version");
    let bumped = store.bump_leases_version().await.unwrap();
    assert_eq!(bumped, start + 1);
    assert_eq!(version().await, start + 1);
    let membership = store.membership().await.unwrap();
    assert_eq!(membership.coordination.leases_version, start + 1);
    assert_eq!(membership.workers.len(), 1);
    assert_eq!(membership.workers[0].worker_id, "worker-a");
}

/// Of two handoff requests for one lease, the second fails with `LeaseChanged` while the
/// first is pending (issue 15: two requesters both "succeeded"); the mark stays the first's.
pub async fn a_second_handoff_request_on_a_pending_one_fails(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let a = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let a = a.ownership().unwrap();
    store.request_handoff(&key, &a, "worker-b").await.unwrap();
    assert_err!(
        store.request_handoff(&key, &a, "worker-c").await,
        Error::LeaseChanged { .. }
    );
    assert_eq!(
        get(store.as_ref(), &key).await.handoff_to.as_deref(),
        Some("worker-b")
    );
}

/// A worker removed as dead (conditional on the counter its judge saw) is gone from the
/// membership and its next heartbeat fails with `WorkerRemoved`; a removal with a stale
/// counter (the worker heartbeat since) removes nothing.
pub async fn a_worker_removed_as_dead_cannot_heartbeat_again(store: Arc<dyn LeaseStore>) {
    let ttl = Duration::from_secs(60);
    let seen = store.heartbeat("worker-a", ttl).await.unwrap();
    store.heartbeat("worker-a", ttl).await.unwrap();
    assert!(
        !store
            .remove_worker("worker-a", seen.heartbeat)
            .await
            .unwrap()
    );
    assert!(!store.remove_worker("never-was", 1).await.unwrap());
    let now = store.heartbeat("worker-a", ttl).await.unwrap();
    store.notify("worker-a", &[key("shard-1")]).await.unwrap();
    assert!(
        store
            .remove_worker("worker-a", now.heartbeat)
            .await
            .unwrap()
    );
    assert!(workers(store.as_ref()).await.is_empty());
    assert!(
        store.notices("worker-a").await.unwrap().is_empty(),
        "the inbox goes too"
    );
    assert_err!(
        store.heartbeat("worker-a", ttl).await,
        Error::WorkerRemoved { worker_id, .. } if worker_id == "worker-a"
    );
}

/// The membership read holds the workers of every membership item (ids hashing to
/// different items, some sharing one) and the coordination item.
pub async fn membership_reads_workers_of_every_item(store: Arc<dyn LeaseStore>) {
    let ttl = Duration::from_secs(60);
    let mut ids: Vec<String> = (0..40).map(|n| format!("member-{n:02}")).collect();
    ids.extend(ids_sharing_an_item(3));
    ids.sort();
    ids.dedup();
    for id in &ids {
        store.heartbeat(id, ttl).await.unwrap();
    }
    let items: std::collections::BTreeSet<u16> =
        ids.iter().map(|id| membership_shard(id)).collect();
    assert!(
        items.len() > 10,
        "the ids spread over {} items",
        items.len()
    );
    let membership = store.membership().await.unwrap();
    let read: Vec<&str> = membership
        .workers
        .iter()
        .map(|w| w.worker_id.as_str())
        .collect();
    assert_eq!(read, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        items
            .iter()
            .all(|item| membership.coordination.shards.contains(item)),
        "every item with a member is listed: {:?}",
        membership.coordination.shards
    );
    // A second read (the items known) sees a heartbeat and a departure.
    store.heartbeat(&ids[0], ttl).await.unwrap();
    store.delete_worker(&ids[1]).await.unwrap();
    let again = store.membership().await.unwrap();
    assert_eq!(again.workers.len(), ids.len() - 1);
    assert_eq!(again.workers[0].heartbeat, 2);
}

/// The leader's name: claimed when none is named (or the named one is being replaced),
/// refused while another is named, renewed only by the named leader (with the worker
/// count), and cleared by its own resignation only.
pub async fn leadership_is_claimed_once_renewed_and_resigned(store: Arc<dyn LeaseStore>) {
    assert_eq!(store.coordination().await.unwrap().leader, None);
    assert!(store.claim_leadership("a", None).await.unwrap());
    assert!(!store.claim_leadership("b", None).await.unwrap());
    assert!(!store.claim_leadership("b", Some("c")).await.unwrap());
    assert!(!store.renew_leadership("b", 3).await.unwrap());
    let before = store.coordination().await.unwrap().leader.unwrap();
    assert_eq!(before.worker_id, "a");
    assert!(store.renew_leadership("a", 3).await.unwrap());
    let renewed = store.coordination().await.unwrap();
    let leader = renewed.leader.unwrap();
    assert!(leader.heartbeat > before.heartbeat);
    assert_eq!(renewed.workers, 3);
    assert!(store.claim_leadership("b", Some("a")).await.unwrap());
    assert_eq!(
        store
            .coordination()
            .await
            .unwrap()
            .leader
            .unwrap()
            .worker_id,
        "b"
    );
    assert!(!store.renew_leadership("a", 3).await.unwrap());
    store.resign_leadership("a").await.unwrap();
    assert!(store.coordination().await.unwrap().leader.is_some());
    store.resign_leadership("b").await.unwrap();
    assert_eq!(store.coordination().await.unwrap().leader, None);
}

/// Hints reach the worker's inbox, each with its own token (the same lease twice is two
/// hints); clearing the hints read leaves those added since.
pub async fn notices_are_delivered_and_cleared_by_token(store: Arc<dyn LeaseStore>) {
    assert!(store.notices("worker-a").await.unwrap().is_empty());
    store
        .notify("worker-a", &[key("shard-1"), key("shard-2")])
        .await
        .unwrap();
    store.notify("worker-b", &[key("shard-3")]).await.unwrap();
    let read = store.notices("worker-a").await.unwrap();
    let mut keys: Vec<&str> = read.iter().map(|n| n.key.shard_id.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["shard-1", "shard-2"]);
    assert_eq!(read[0].key.stream, STREAM);
    store.notify("worker-a", &[key("shard-1")]).await.unwrap();
    store.clear_notices("worker-a", &read).await.unwrap();
    let left = store.notices("worker-a").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key, key("shard-1"));
    assert!(!read.iter().any(|n| n.token == left[0].token));
    assert_eq!(store.notices("worker-b").await.unwrap().len(), 1);
    store.clear_notices("worker-a", &left).await.unwrap();
    assert!(store.notices("worker-a").await.unwrap().is_empty());
}

/// `get_leases` reads many leases at once (more than one request's worth), leaving out
/// the keys that have no lease.
pub async fn many_leases_are_read_at_once(store: Arc<dyn LeaseStore>) {
    let mut keys = Vec::new();
    for i in 0..150 {
        keys.push(create(store.as_ref(), &format!("shard-{i:03}")).await);
    }
    keys.push(key("missing"));
    let mut read = store.get_leases(&keys).await.unwrap();
    read.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(read.len(), 150);
    assert_eq!(read[0], new_lease("shard-000"));
}

/// An operator's reset sets the checkpoint and frees the lease in one conditional write:
/// the owner it read is fenced, a view that is no longer current changes nothing, and
/// workers learn of it from the leases version.
pub async fn reset_moves_the_checkpoint_and_frees_the_lease_in_one_write(
    store: Arc<dyn LeaseStore>,
) {
    let key = create(store.as_ref(), "shard-1").await;
    store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let held = store
        .take_lease(&key, Some("worker-a"), 1, "worker-b")
        .await
        .unwrap();
    let b = held.ownership().unwrap();
    store.checkpoint(&key, &b, &seq("300")).await.unwrap();
    store
        .take_lease(&key, Some("worker-b"), 2, "worker-b")
        .await
        .unwrap();
    let b = owned("worker-b", 3);
    let asked = store.request_handoff(&key, &b, "worker-c").await.unwrap();
    assert_eq!(asked.owner_switches_since_checkpoint, 1);

    // A view that is no longer current: refused, nothing changed.
    let before = get(store.as_ref(), &key).await;
    for (owner, epoch) in [(Some("worker-a"), 3), (Some("worker-b"), 2), (None, 3)] {
        assert_err!(
            store.reset_lease(&key, owner, epoch, &seq("100")).await,
            Error::LeaseChanged { seen_epoch, .. } if seen_epoch == epoch
        );
    }
    assert_eq!(get(store.as_ref(), &key).await, before);

    let version = store.coordination().await.unwrap().leases_version;
    let moved = store
        .reset_lease(&key, Some("worker-b"), 3, &seq("100"))
        .await
        .unwrap();
    assert_eq!(moved.checkpoint, seq("100"));
    assert_eq!(moved.owner, None);
    assert_eq!(moved.handoff_to, None);
    assert_eq!(moved.epoch, 4);
    assert_eq!(moved.owner_switches_since_checkpoint, 0);
    assert_eq!(moved.parent_shard_ids, before.parent_shard_ids);
    assert_eq!(moved.created_at, before.created_at);
    assert_eq!(get(store.as_ref(), &key).await, moved);
    assert!(
        store.coordination().await.unwrap().leases_version > version,
        "a reset changes ownership: it bumps the leases version"
    );

    // The owner it was read from is fenced.
    assert_err!(
        store.checkpoint(&key, &b, &seq("400")).await,
        Error::LeaseLost { .. }
    );
    assert_err!(store.release_lease(&key, &b).await, Error::LeaseLost { .. });
    assert_eq!(get(store.as_ref(), &key).await.checkpoint, seq("100"));

    // Unowned: moved again (to a position name), then a worker takes it as usual.
    let again = store
        .reset_lease(&key, None, 4, &Checkpoint::TrimHorizon)
        .await
        .unwrap();
    assert_eq!(
        (again.checkpoint, again.epoch),
        (Checkpoint::TrimHorizon, 5)
    );
    let taken = store.take_lease(&key, None, 5, "worker-c").await.unwrap();
    assert_eq!(taken.owner.as_deref(), Some("worker-c"));

    assert_err!(
        store
            .reset_lease(&LeaseKey::new(STREAM, "gone"), None, 0, &Checkpoint::Latest)
            .await,
        Error::LeaseNotFound { .. }
    );
}

/// A pipeline checkpoint write stores the pipelines' checkpoints, the read position (the
/// lease's `checkpoint`) and the pipelines the owner runs, under the owner-and-epoch
/// condition; pipelines it does not name keep theirs; a read position of `SHARD_END` bumps
/// the leases version.
pub async fn pipeline_checkpoints_are_written_by_the_owner_with_the_read_position(
    store: Arc<dyn LeaseStore>,
) {
    let key = create(store.as_ref(), "shard-1").await;
    let taken = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let mine = taken.ownership().unwrap();
    let running = vec!["cache".to_owned(), "search".to_owned()];
    let first = PipelineCheckpoints {
        read_position: seq("100000000000000000005"),
        pipelines: vec![
            ("search".to_owned(), seq("100000000000000000009")),
            ("cache".to_owned(), seq("100000000000000000005")),
        ],
        running: Some(running.clone()),
    };
    let written = store
        .checkpoint_pipelines(&key, &mine, &first)
        .await
        .unwrap();
    assert_eq!(written.checkpoint, seq("100000000000000000005"));
    assert_eq!(written.pipelines.len(), 2);
    assert_eq!(written.pipelines["search"], seq("100000000000000000009"));
    assert_eq!(written.owner_pipelines, running);
    assert_eq!(written.owner_switches_since_checkpoint, 0);
    assert_eq!(get(store.as_ref(), &key).await, written);

    // One pipeline moves; the other keeps its checkpoint, and so does the running set.
    let version = store
        .membership()
        .await
        .unwrap()
        .coordination
        .leases_version;
    let second = PipelineCheckpoints {
        read_position: seq("100000000000000000009"),
        pipelines: vec![("cache".to_owned(), Checkpoint::ShardEnd)],
        running: None,
    };
    let moved = store
        .checkpoint_pipelines(&key, &mine, &second)
        .await
        .unwrap();
    assert_eq!(moved.pipelines["cache"], Checkpoint::ShardEnd);
    assert_eq!(moved.pipelines["search"], seq("100000000000000000009"));
    assert_eq!(moved.checkpoint, seq("100000000000000000009"));
    assert_eq!(moved.owner_pipelines, running);
    assert_eq!(
        store
            .membership()
            .await
            .unwrap()
            .coordination
            .leases_version,
        version
    );

    // Another owner's token is refused and changes nothing.
    let before = get(store.as_ref(), &key).await;
    assert_err!(
        store
            .checkpoint_pipelines(&key, &owned("worker-b", mine.epoch), &first)
            .await,
        Error::LeaseLost { .. }
    );
    assert_eq!(get(store.as_ref(), &key).await, before);

    let end = PipelineCheckpoints {
        read_position: Checkpoint::ShardEnd,
        pipelines: vec![("search".to_owned(), Checkpoint::ShardEnd)],
        running: Some(vec!["search".to_owned()]),
    };
    let ended = store.checkpoint_pipelines(&key, &mine, &end).await.unwrap();
    assert!(ended.checkpoint.is_shard_end());
    assert_eq!(ended.owner_pipelines, ["search"]);
    assert_eq!(
        store
            .membership()
            .await
            .unwrap()
            .coordination
            .leases_version,
        version,
        "writes never bump the leases version by themselves: the worker announces, coalesced"
    );
}

/// Removing a pipeline takes its checkpoint and its name off the lease and leaves the rest;
/// with an ownership token only while it is current; without, on any lease that exists.
pub async fn a_removed_pipeline_leaves_the_other_pipelines_alone(store: Arc<dyn LeaseStore>) {
    let key = create(store.as_ref(), "shard-1").await;
    let taken = store.take_lease(&key, None, 0, "worker-a").await.unwrap();
    let mine = taken.ownership().unwrap();
    let update = PipelineCheckpoints {
        read_position: seq("100000000000000000001"),
        pipelines: vec![
            ("old".to_owned(), seq("100000000000000000001")),
            ("kept".to_owned(), seq("100000000000000000002")),
        ],
        running: Some(vec!["kept".to_owned(), "old".to_owned()]),
    };
    store
        .checkpoint_pipelines(&key, &mine, &update)
        .await
        .unwrap();
    assert_err!(
        store
            .remove_pipeline(&key, "old", Some(&owned("worker-b", mine.epoch)))
            .await,
        Error::LeaseLost { .. }
    );
    let removed = store
        .remove_pipeline(&key, "old", Some(&mine))
        .await
        .unwrap();
    assert_eq!(removed.pipelines.keys().collect::<Vec<_>>(), ["kept"]);
    assert_eq!(removed.owner_pipelines, ["kept"]);
    assert_eq!(removed.checkpoint, seq("100000000000000000001"));
    assert_eq!(removed.ownership(), Some(mine.clone()));
    assert_eq!(get(store.as_ref(), &key).await, removed);

    // Without a token, whoever owns it; removing what is not there changes nothing more.
    let again = store.remove_pipeline(&key, "kept", None).await.unwrap();
    assert!(again.pipelines.is_empty());
    assert!(again.owner_pipelines.is_empty());
    let twice = store.remove_pipeline(&key, "kept", None).await.unwrap();
    assert!(twice.pipelines.is_empty());
    assert_err!(
        store
            .remove_pipeline(&self::key("absent"), "kept", None)
            .await,
        Error::LeaseNotFound { .. }
    );
}
