//! Who is alive, who leads, and what a worker should look at: the coordination items
//! besides the leases.
//!
//! - Heartbeats live in [`MEMBERSHIP_SHARDS`] membership items; a worker's item is a pure
//!   function of its id ([`membership_shard`]), and each holds at most
//!   [`MEMBERS_PER_SHARD`] workers, so no item is written by more than that many workers
//!   and an item stays under about 6 KB with 25-character ids.
//! - One small [`Coordination`] item holds the leases version (bumped, coalesced, after
//!   ownership changes), the leader's id and its own heartbeat counter, and how many
//!   workers the leader counts: what every worker polls.
//! - One inbox per worker holds [`Notice`]s: leases it should read again (assigned to it,
//!   asked of it, handed to it), so no worker scans every lease to learn about its own.

use std::time::SystemTime;

use crate::lease::LeaseKey;

/// How many membership items heartbeats are spread over.
pub const MEMBERSHIP_SHARDS: u16 = 128;

/// How many workers one membership item holds at most. A worker whose item is full does
/// not join (`MembershipFull`); its next incarnation (a new id) hashes elsewhere.
pub const MEMBERS_PER_SHARD: u32 = 64;

/// The membership item a worker heartbeats into: FNV-1a of its id (stable across hosts,
/// runs and versions) modulo [`MEMBERSHIP_SHARDS`].
pub fn membership_shard(worker_id: &str) -> u16 {
    let hash = worker_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // The remainder is below MEMBERSHIP_SHARDS, so it fits.
    u16::try_from(hash % u64::from(MEMBERSHIP_SHARDS)).unwrap_or(0)
}

/// A worker's liveness record: the counter goes up on every heartbeat.
///
/// Liveness is judged by observers on their own monotonic clocks ("has the counter moved in
/// the last `failover_time`?"), so the timestamps here are for operators only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRecord {
    /// The worker's id (one per incarnation).
    pub worker_id: String,
    /// Incremented by every heartbeat.
    pub heartbeat: u64,
    /// When the last heartbeat was written (the writer's clock).
    pub updated_at: SystemTime,
    /// When the entry counts as abandoned for operators (`ddbsc status`) if the worker
    /// stops heartbeating; the leader removes dead workers' entries long before.
    pub expires_at: SystemTime,
}

/// The leader as the coordination item names it: the holder of the shard-sync lease, which
/// judges every worker's liveness and assigns leases. Workers judge the leader by this
/// counter, on their own clocks, like the leader judges them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderRecord {
    /// The leader's worker id (an incarnation).
    pub worker_id: String,
    /// Bumped with every heartbeat of the leader.
    pub heartbeat: u64,
}

/// The coordination item: what every worker polls, one small read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coordination {
    /// Bumped (coalesced) after ownership changes: create, take, release, handoff request,
    /// `SHARD_END`, delete. The leader rescans the leases when it moves.
    pub leases_version: u64,
    /// The current leader, if one has claimed the role.
    pub leader: Option<LeaderRecord>,
    /// Live workers as the leader last counted them: how often workers may poll this item
    /// without making it a hot item.
    pub workers: u64,
    /// The membership items that ever had a member (a joining worker adds its own), sorted:
    /// the leader reads these, not all [`MEMBERSHIP_SHARDS`], so a small application reads
    /// few items.
    pub shards: Vec<u16>,
}

/// Every worker record and the coordination item, read together: what the leader reads
/// on every tick, and what `ddbsc status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// The coordination item.
    pub coordination: Coordination,
    /// The worker records of every membership item, sorted by id.
    pub workers: Vec<WorkerRecord>,
}

/// A hint in a worker's inbox: read this lease again (it was assigned to you, someone asked
/// you for it, it was handed to you, or a parent of it finished). Hints carry no state:
/// the lease, read consistently, says what to do, so a stale or repeated hint is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Notice {
    /// Makes each hint unique, so clearing the hints read never clears a newer one.
    pub token: String,
    /// The lease to read.
    pub key: LeaseKey,
}
