//! The cases of one lease: create, take, checkpoint, release, hand-over, delete, and
//! every field and checkpoint kind read back as written.

use super::fixtures::*;

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
    let lease = taken_by_a_then_b(store.as_ref(), &key).await;
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
