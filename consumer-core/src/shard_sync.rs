//! Shard discovery: list a stream's shards and give each new one a lease.

use std::collections::HashSet;
use std::sync::Arc;

use checkpoint_store::aws::describe_stream_pages;
use checkpoint_store::{Checkpoint, Lease, LeaseKey, LeaseStore};

use crate::config::InitialPosition;
use crate::error::Result;
use crate::retry;
use crate::streams::{ApiError, ShardInfo, StreamsApi};

/// Every shard of a stream, through the one DescribeStream pager, each page retried by the
/// `describe_stream` policy. A cursor that does not advance is an error, not a partial list.
pub(crate) async fn describe_all_shards(
    api: &dyn StreamsApi,
    stream_arn: &str,
) -> Result<Vec<ShardInfo>> {
    let shards = describe_stream_pages(stream_arn, |start| async move {
        let page = retry::call(retry::describe_stream(), retry::is_retryable_api, || {
            api.describe_stream(stream_arn, start.as_deref())
        })
        .await?;
        Ok::<_, ApiError>((page.shards, page.last_evaluated_shard_id))
    })
    .await?;
    Ok(shards)
}

/// The checkpoint a new shard's lease starts with.
///
/// The first sync of a stream applies the initial position: with `Latest`, closed shards
/// are done and open ones start at their tip. Shards that appear later are descendants of
/// shards we process, so they start at `TRIM_HORIZON`: nothing between parent and child
/// may be skipped.
fn initial_checkpoint(shard: &ShardInfo, first_sync: bool, initial: InitialPosition) -> Checkpoint {
    match (first_sync, initial) {
        (true, InitialPosition::Latest) if shard.is_closed() => Checkpoint::ShardEnd,
        (true, InitialPosition::Latest) => Checkpoint::Latest,
        _ => Checkpoint::TrimHorizon,
    }
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    /// Leases created for new shards.
    pub created: usize,
    /// Finished leases deleted.
    pub deleted: usize,
}

/// Who else may be creating the same leases right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contention {
    /// Only the shard-sync holder syncs: create every missing lease.
    Alone,
    /// Every starting worker may sync a new stream at once: the first lease found already
    /// created means another worker is at it, so stop (its sync, or the holder's next
    /// one, creates the rest) instead of paying a failed write per shard per worker.
    Racing,
}

/// Creates leases for the stream's shards that have none, and deletes finished leases that
/// are no longer needed. `leases` is the current content of the lease table.
pub(crate) async fn sync_stream(
    api: &dyn StreamsApi,
    store: &Arc<dyn LeaseStore>,
    stream_arn: &str,
    leases: &[Lease],
    initial: InitialPosition,
    contention: Contention,
) -> Result<SyncReport> {
    let shards = describe_all_shards(api, stream_arn).await?;
    let known: HashSet<&LeaseKey> = leases.iter().map(|l| &l.key).collect();
    let first_sync = !known.iter().any(|key| key.stream == stream_arn);
    let mut created = 0;
    for shard in &shards {
        let key = LeaseKey::new(stream_arn, shard.shard_id.clone());
        if known.contains(&key) {
            continue;
        }
        let lease = Lease::new(
            key,
            initial_checkpoint(shard, first_sync, initial),
            shard.parent_shard_id.iter().cloned().collect(),
        );
        if create_lease_if_absent(store.as_ref(), &lease).await? {
            created += 1;
        } else if contention == Contention::Racing {
            tracing::debug!(
                stream_arn,
                created,
                "another worker is creating this stream's leases"
            );
            return Ok(SyncReport {
                created,
                deleted: 0,
            });
        }
    }
    let described: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let mut deleted = 0;
    for key in finished_and_gone(stream_arn, leases, &described) {
        store.delete_lease(&key).await?;
        deleted += 1;
    }
    if created + deleted > 0 {
        tracing::info!(
            stream_arn,
            created,
            deleted,
            shards = shards.len(),
            "lease table synced with the stream's shards"
        );
    }
    Ok(SyncReport { created, deleted })
}

/// Finished leases that may be deleted: the shard has left the stream (so no sync will
/// recreate its lease) and every child has started. A deleted parent counts as finished
/// for the children, so deleting changes nothing for them; it keeps the table small.
fn finished_and_gone(
    stream_arn: &str,
    leases: &[Lease],
    described: &HashSet<&str>,
) -> Vec<LeaseKey> {
    let stream: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.key.stream == stream_arn)
        .collect();
    stream
        .iter()
        .filter(|l| {
            l.checkpoint == Checkpoint::ShardEnd && !described.contains(l.key.shard_id.as_str())
        })
        .filter(|parent| {
            stream
                .iter()
                .filter(|c| c.parent_shard_ids.contains(&parent.key.shard_id))
                .all(|child| matches!(child.checkpoint, Checkpoint::At(_) | Checkpoint::ShardEnd))
        })
        .map(|l| l.key.clone())
        .collect()
}

/// Creates `lease` unless it exists (another worker may have been first); returns whether
/// this call created it. Retried as the [`retry::lease_store`] policy says.
pub(crate) async fn create_lease_if_absent(store: &dyn LeaseStore, lease: &Lease) -> Result<bool> {
    let created = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        store.create_lease(lease)
    })
    .await;
    match created {
        Ok(()) => Ok(true),
        Err(checkpoint_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use checkpoint_store::SequenceNumber;

    fn shard(closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: "s".into(),
            parent_shard_id: None,
            starting_sequence_number: None,
            ending_sequence_number: closed.then(|| SequenceNumber::parse("9").unwrap()),
        }
    }

    #[test]
    fn only_finished_shards_that_left_the_stream_and_whose_children_started_are_deleted() {
        let lease = |id: &str, checkpoint: Checkpoint, parents: &[&str]| {
            Lease::new(
                LeaseKey::new("arn", id),
                checkpoint,
                parents.iter().map(|p| p.to_string()).collect(),
            )
        };
        let at = Checkpoint::At(SequenceNumber::parse("5").unwrap());
        let leases = vec![
            lease("gone-done", Checkpoint::ShardEnd, &[]),
            lease("child-started", at.clone(), &["gone-done"]),
            lease("gone-waiting", Checkpoint::ShardEnd, &[]),
            lease(
                "child-not-started",
                Checkpoint::TrimHorizon,
                &["gone-waiting"],
            ),
            lease("present-done", Checkpoint::ShardEnd, &[]),
            lease("gone-open", at, &[]),
        ];
        let described: HashSet<&str> =
            ["present-done", "child-started", "child-not-started"].into();
        let deleted = finished_and_gone("arn", &leases, &described);
        assert_eq!(deleted, [LeaseKey::new("arn", "gone-done")]);
    }

    #[test]
    fn latest_marks_closed_shards_done_only_on_the_first_sync() {
        let latest = InitialPosition::Latest;
        assert_eq!(
            initial_checkpoint(&shard(true), true, latest),
            Checkpoint::ShardEnd
        );
        assert_eq!(
            initial_checkpoint(&shard(false), true, latest),
            Checkpoint::Latest
        );
        assert_eq!(
            initial_checkpoint(&shard(false), false, latest),
            Checkpoint::TrimHorizon
        );
        let trim = InitialPosition::TrimHorizon;
        assert_eq!(
            initial_checkpoint(&shard(true), true, trim),
            Checkpoint::TrimHorizon
        );
    }
}
