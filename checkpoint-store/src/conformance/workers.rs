//! The cases of the items besides leases: membership (heartbeats), leadership, notices,
//! the leases version, snapshots and batched reads.

use super::fixtures::*;

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
