//! A stream's shard graph as DescribeStream lists it, in parents-first order, and the
//! leases of its shards: the steps the shard sync, the snapshot plan, a shard's end and the
//! lease-free reader share (here so none of them imports another for them).

use std::collections::{HashMap, HashSet};

use dynamodb_streams_leases::aws::describe_stream_pages;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};

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

/// `shards` with every shard after its parent (when its parent is listed), otherwise in
/// DescribeStream order: leases are created in this order, so a sync that stops midway
/// never leaves a child whose parent's lease is missing, which a scan would take for a
/// finished parent and start the child before it.
pub(crate) fn parents_first(shards: &[ShardInfo]) -> Vec<&ShardInfo> {
    let by_id: HashMap<&str, &ShardInfo> =
        shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut placed: HashSet<&str> = HashSet::new();
    let mut ordered = Vec::with_capacity(shards.len());
    for shard in shards {
        let mut line = Vec::new();
        let mut next = Some(shard);
        while let Some(s) = next.filter(|s| !placed.contains(s.shard_id.as_str())) {
            placed.insert(s.shard_id.as_str());
            line.push(s);
            next = s
                .parent_shard_id
                .as_deref()
                .and_then(|p| by_id.get(p).copied());
        }
        ordered.extend(line.into_iter().rev());
    }
    ordered
}

/// A new shard lease, its creation time from the stream's clock ([`StreamsApi::now`]): the
/// protocol takes the oldest leases first, and in simulations the order must follow the
/// simulated time, not how long the host took, or runs of one seed would differ.
pub(crate) fn new_shard_lease(
    api: &dyn StreamsApi,
    key: LeaseKey,
    checkpoint: Checkpoint,
    parent_shard_ids: Vec<String>,
) -> Lease {
    let mut lease = Lease::new(key, checkpoint, parent_shard_ids);
    lease.created_at = api.now();
    lease.updated_at = lease.created_at;
    lease
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
        Err(dynamodb_streams_leases::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
