//! Leases: which worker processes which shard, and how far it got.

use std::collections::BTreeMap;
use std::fmt;
use std::time::SystemTime;

use crate::checkpoint::Checkpoint;

/// Identifies a lease: one shard of one stream.
///
/// Coordination leases that are not shards (such as the shard-sync lease) use a stream
/// name that is not an ARN; see [`LeaseKey::coordination`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey {
    /// The stream ARN.
    pub stream: String,
    /// The shard id within the stream.
    pub shard_id: String,
}

impl LeaseKey {
    /// Stream name of leases that coordinate workers instead of covering a shard.
    pub const COORDINATION_STREAM: &'static str = "#coordination";

    /// The key of a shard's lease.
    pub fn new(stream: impl Into<String>, shard_id: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            shard_id: shard_id.into(),
        }
    }

    /// The key of a coordination lease, e.g. `coordination("shard-sync")`.
    pub fn coordination(name: impl Into<String>) -> Self {
        Self::new(Self::COORDINATION_STREAM, name)
    }

    /// Whether this lease coordinates workers rather than covering a shard: a lease of
    /// [`COORDINATION_STREAM`](Self::COORDINATION_STREAM), or one in a stream whose id
    /// starts with `#` (real shard ids never do), such as a [stream gate](Self::stream_gate).
    pub fn is_coordination(&self) -> bool {
        self.stream == Self::COORDINATION_STREAM || self.shard_id.starts_with('#')
    }

    /// Shard ids of stream gates start with this, followed by the older stream's ARN.
    const GATE_PREFIX: &'static str = "#after-stream ";

    /// The gate that holds the root shards of `stream` until `older_stream` is finished:
    /// when a table's stream is disabled and enabled again, the new stream's root leases
    /// name this gate as a parent, and it is deleted once every lease of the older stream
    /// reached `SHARD_END`. It lives in `stream`, so parent lookups find it like a shard.
    pub fn stream_gate(stream: impl Into<String>, older_stream: &str) -> Self {
        Self::new(stream, format!("{}{older_stream}", Self::GATE_PREFIX))
    }

    /// The older stream this gate waits for, if this is a [stream gate](Self::stream_gate).
    pub fn gated_stream(&self) -> Option<&str> {
        self.shard_id.strip_prefix(Self::GATE_PREFIX)
    }
}

impl fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stream, self.shard_id)
    }
}

/// Proof of ownership: conditional writes compare both parts, so a worker that lost a lease
/// (even one that got it back since) cannot write with a stale token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ownership {
    /// The owning worker.
    pub owner: String,
    /// The lease's epoch when this worker took it.
    pub epoch: u64,
}

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Which shard.
    pub key: LeaseKey,
    /// The worker that holds it, if any.
    pub owner: Option<String>,
    /// Bumped on every change of ownership (take and release).
    pub epoch: u64,
    /// How far the shard has been processed.
    pub checkpoint: Checkpoint,
    /// Shards that must reach `ShardEnd` (or be gone) before this one is processed.
    pub parent_shard_ids: Vec<String>,
    /// How many times ownership changed since the last checkpoint: a high number flags a
    /// shard whose processing keeps failing over.
    pub owner_switches_since_checkpoint: u64,
    /// A worker that asked the owner to hand this lease over.
    pub handoff_to: Option<String>,
    /// When the lease was created.
    pub created_at: SystemTime,
    /// When the lease was last written.
    pub updated_at: SystemTime,
    /// The checkpoint of each named pipeline on this shard (see [`crate::pipeline`]); empty
    /// for an application without pipelines, whose one checkpoint is `checkpoint`. With
    /// pipelines, `checkpoint` is the read position: the slowest pipeline's checkpoint.
    pub pipelines: BTreeMap<String, Checkpoint>,
    /// The pipelines the owner runs on this shard, as it wrote them when it started the
    /// shard: what tells an operator whether a live worker still runs a pipeline.
    pub owner_pipelines: Vec<String>,
}

impl Lease {
    /// A fresh, unowned lease.
    pub fn new(key: LeaseKey, checkpoint: Checkpoint, parent_shard_ids: Vec<String>) -> Self {
        let now = SystemTime::now();
        Self {
            key,
            owner: None,
            epoch: 0,
            checkpoint,
            parent_shard_ids,
            owner_switches_since_checkpoint: 0,
            handoff_to: None,
            created_at: now,
            updated_at: now,
            pipelines: BTreeMap::new(),
            owner_pipelines: Vec::new(),
        }
    }

    /// The ownership token of the current owner, if any.
    pub fn ownership(&self) -> Option<Ownership> {
        self.owner.as_ref().map(|owner| Ownership {
            owner: owner.clone(),
            epoch: self.epoch,
        })
    }

    /// Whether `worker` holds this lease.
    pub fn is_owned_by(&self, worker: &str) -> bool {
        self.owner.as_deref() == Some(worker)
    }
}
