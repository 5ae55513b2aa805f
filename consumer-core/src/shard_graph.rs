//! A stream's shard graph as DescribeStream lists it, in parents-first order, the leases
//! of its shards, and the older streams of its table whose leases it follows: the steps
//! the shard sync, the snapshot plan, a shard's end and the lease-free reader share (here
//! so none of them imports another for them).

use std::collections::{HashMap, HashSet};

use dynamodb_streams_leases::aws::describe_stream_pages;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};

use crate::error::Result;
use crate::retry;
use crate::stream_arn::same_table;
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

/// Whether `stream` is another stream of `current`'s table: `current` is the table's
/// stream now (DescribeTable), so `stream` is one it replaced.
pub(crate) fn is_replaced_by(stream: &str, current: &str) -> bool {
    stream != current && same_table(stream, current)
}

/// Whether this application consumed another stream of `stream_arn`'s table (`stream_arn`
/// being the table's current stream) whose leases are still in `leases`: the new stream
/// then follows the older one's shards (gates as parents, the first sync here), and a
/// snapshot `prepare` must not start it as a new table.
pub(crate) fn replaces_a_consumed_stream(stream_arn: &str, leases: &[Lease]) -> bool {
    !older_streams(stream_arn, leases).is_empty()
}

/// The streams that `stream_arn`, the table's current stream, replaced and that still have
/// shard leases (finished or not: only `retire_replaced_streams` judges them done).
pub(crate) fn older_streams<'a>(stream_arn: &str, leases: &'a [Lease]) -> Vec<&'a str> {
    let mut older: Vec<&str> = Vec::new();
    for lease in leases {
        let stream = lease.key.stream.as_str();
        if !lease.key.is_coordination()
            && is_replaced_by(stream, stream_arn)
            && !older.contains(&stream)
        {
            older.push(stream);
        }
    }
    older
}
