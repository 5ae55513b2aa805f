//! The cases of writes that carry more than one checkpoint: an operator's reset, and named
//! pipelines' checkpoints with the read position.

use super::fixtures::*;

/// An operator's reset sets the checkpoint and frees the lease in one conditional write:
/// the owner it read is fenced, a view that is no longer current changes nothing, and
/// workers learn of it from the leases version.
pub async fn reset_moves_the_checkpoint_and_frees_the_lease_in_one_write(
    store: Arc<dyn LeaseStore>,
) {
    let key = create(store.as_ref(), "shard-1").await;
    let held = taken_by_a_then_b(store.as_ref(), &key).await;
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
    let version = membership_version(store.as_ref()).await;
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
    assert_eq!(membership_version(store.as_ref()).await, version);

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
        membership_version(store.as_ref()).await,
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
