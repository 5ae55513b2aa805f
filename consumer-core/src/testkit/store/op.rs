//! What a test sets and is told of an [`InstrumentedStore`](super::InstrumentedStore):
//! the operations it counts ([`StoreOp`]), the [`Link`] a test cuts or freezes, and the
//! [`StoreObserver`] told of every lease write. Its own module: the vocabulary of the
//! decorator, apart from how it forwards (`super::forward`) and bills (`super::cost`).

use dynamodb_streams_leases::{Lease, LeaseKey};

/// One lease-store operation, as [`InstrumentedStore`](super::InstrumentedStore) counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // the names are the trait's methods
pub enum StoreOp {
    EnsureTable,
    ListLeases,
    GetLease,
    CreateLease,
    TakeLease,
    Checkpoint,
    ReleaseLease,
    ResetLease,
    RequestHandoff,
    DeleteLease,
    Heartbeat,
    Snapshot,
    DeleteWorker,
    Membership,
    BumpLeasesVersion,
    Coordination,
    RemoveWorker,
    Leadership,
    Notify,
    Notices,
    ClearNotices,
    GetLeases,
}

impl StoreOp {
    /// A short readable name, for tables of counts.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::EnsureTable => "ensure table",
            StoreOp::ListLeases => "scan leases",
            StoreOp::GetLease => "get lease",
            StoreOp::CreateLease => "create lease",
            StoreOp::TakeLease => "take lease",
            StoreOp::Checkpoint => "checkpoint",
            StoreOp::ReleaseLease => "release lease",
            StoreOp::ResetLease => "reset lease",
            StoreOp::RequestHandoff => "request handoff",
            StoreOp::DeleteLease => "delete lease",
            StoreOp::Heartbeat => "heartbeat",
            StoreOp::Snapshot => "scan leases and workers",
            StoreOp::DeleteWorker => "delete worker",
            StoreOp::Membership => "read membership",
            StoreOp::BumpLeasesVersion => "bump leases version",
            StoreOp::Coordination => "read coordination",
            StoreOp::RemoveWorker => "remove dead worker",
            StoreOp::Leadership => "claim, renew or resign leadership",
            StoreOp::Notify => "hint a worker",
            StoreOp::Notices => "read inbox",
            StoreOp::ClearNotices => "clear inbox",
            StoreOp::GetLeases => "get leases",
        }
    }

    /// Whether the operation writes to the store (what DynamoDB bills as write units).
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            StoreOp::EnsureTable
                | StoreOp::ListLeases
                | StoreOp::GetLease
                | StoreOp::Snapshot
                | StoreOp::Membership
                | StoreOp::Coordination
                | StoreOp::Notices
                | StoreOp::GetLeases
        )
    }
}

/// How the code under test reaches the store: the fault an
/// [`InstrumentedStore`](super::InstrumentedStore) injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// Calls go through.
    #[default]
    Up,
    /// Calls hang until the link changes, like a process stopped by the OS.
    Frozen,
    /// Calls fail at once with
    /// [`Error::Unreachable`](dynamodb_streams_leases::Error::Unreachable): a network
    /// partition.
    Partitioned,
    /// Calls fail at once as DynamoDB answers when the table was deleted
    /// (`ResourceNotFoundException`).
    TableDeleted,
    /// About half the calls fail at once with a throttling error (`ThrottlingException`),
    /// the rest go through: a table over its capacity. Which ones is a fixed pseudo-random
    /// sequence of the calls made under this link, so a run replays exactly.
    Throttled,
}

/// Told of every lease write that reached the store, with the lease before and after it,
/// whatever the caller was answered (a lost answer included): the view a test checks
/// invariants on at the moment of each write.
pub trait StoreObserver: Send + Sync {
    /// `op` changed (or kept) the lease `key` from `before` to `after` (`None`: absent).
    fn lease_written(
        &self,
        op: StoreOp,
        key: &LeaseKey,
        before: Option<&Lease>,
        after: Option<&Lease>,
    );
}
