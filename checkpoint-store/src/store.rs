//! The lease store interface: every coordination write goes through it.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::lease::{Lease, LeaseKey, Ownership};
use crate::membership::{Coordination, Membership, Notice, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;

/// Persistent leases, checkpoints and worker heartbeats.
///
/// Every write that depends on ownership is conditional in the store itself (not checked
/// by the caller and then written), so the invariants hold under any interleaving of
/// workers: at most one owner per lease, and no write from a worker that lost its lease.
/// Implementations: [`crate::DynamoDbLeaseStore`] and [`crate::InMemoryLeaseStore`], held
/// to identical semantics by the conformance suite.
///
/// Writes do not bump the leases version themselves: a caller that changes ownership
/// (create, take, release, handoff request, `SHARD_END`, delete) calls
/// [`LeaseStore::bump_leases_version`] afterwards, once for a batch of writes, so that a
/// shard sync creating 2,000 leases or a worker releasing 100 at shutdown costs one write
/// to the coordination item, not one each. A lost bump is caught by the leader's audit
/// scan; safety never rests on the version, only on the conditional writes. The one
/// exception is [`LeaseStore::reset_lease`], an operator's move made outside any worker:
/// it bumps the version itself, so workers see it at their next version read.
///
/// Worker records are spread over [`crate::MEMBERSHIP_SHARDS`] membership items (a
/// worker's item is [`crate::membership_shard`] of its id), each holding at most
/// [`crate::MEMBERS_PER_SHARD`] workers, so no item is written by more than that many.
#[async_trait]
pub trait LeaseStore: Send + Sync + fmt::Debug {
    /// Creates the backing table if it is missing and waits until it can be used.
    async fn ensure_table(&self) -> Result<()>;

    /// Every lease, read consistently (all pages).
    async fn list_leases(&self) -> Result<Vec<Lease>>;

    /// One lease, read consistently.
    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>>;

    /// Stores a new lease; fails with `AlreadyExists` if the key is taken. Owner, epoch and
    /// counters are stored as given, so callers normally pass [`Lease::new`].
    async fn create_lease(&self, lease: &Lease) -> Result<()>;

    /// Makes `new_owner` the owner, provided the lease still has the owner (or none) and the
    /// epoch the caller saw; bumps the epoch and clears any handoff request. Fails with
    /// `LeaseChanged` when another worker got there first. The taker may be another worker
    /// than `new_owner`: the leader assigns leases, and an owner hands a lease over.
    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease>;

    /// Stores a checkpoint if `ownership` is still current (else `LeaseLost`); clears the
    /// owner-switch counter.
    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease>;

    /// Stores checkpoints of named pipelines and the read position they leave the shard at
    /// ([`PipelineCheckpoints`]), in one write, if `ownership` is still current (else
    /// `LeaseLost`); clears the owner-switch counter. A read position of `ShardEnd` bumps
    /// the leases version, as a `ShardEnd` checkpoint does.
    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease>;

    /// Removes `pipeline`'s checkpoint from the lease, and the pipeline from the ones its
    /// owner runs: an operator dropping a pipeline that left the code. With `ownership`,
    /// only if it is still current (else `LeaseLost`); without, whoever owns it
    /// (`LeaseNotFound` if the lease is gone). The read position is left alone.
    async fn remove_pipeline(
        &self,
        key: &LeaseKey,
        pipeline: &str,
        ownership: Option<&Ownership>,
    ) -> Result<Lease>;

    /// Gives the lease up: removes the owner and any handoff request and bumps the epoch,
    /// if `ownership` is still current (else `LeaseLost`).
    async fn release_lease(&self, key: &LeaseKey, ownership: &Ownership) -> Result<Lease>;

    /// An operator's move (`ddbsc reset`), in one write: sets the checkpoint and frees the
    /// lease (owner and handoff request removed, epoch bumped, owner-switch counter
    /// cleared), provided the lease still has the owner (or none) and the epoch the caller
    /// saw; else `LeaseChanged` (`LeaseNotFound` when it is gone) and nothing changed. The
    /// previous owner is fenced as by a take: its next write is `LeaseLost`.
    async fn reset_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        checkpoint: &Checkpoint,
    ) -> Result<Lease>;

    /// Asks the current owner to hand the lease to `requester`, if the owner and epoch are
    /// still `current` and no other handoff is pending (else `LeaseChanged`): of two
    /// requests for one lease, one wins.
    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease>;

    /// Removes a lease (finished shards, once their children started). Deleting a lease
    /// that is already gone succeeds.
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()>;

    /// Bumps the worker's heartbeat counter in its membership item and pushes its expiry
    /// `ttl` into the future; returns the record as written. The first heartbeat of an id
    /// (through this store) joins: it creates the entry, or fails with `MembershipFull` if
    /// the id's membership item holds [`crate::MEMBERS_PER_SHARD`] workers already. A later
    /// one fails with `WorkerRemoved` once the entry is gone (the leader judged the worker
    /// dead, or it left): a worker never comes back under an id that was declared dead.
    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord>;

    /// Every lease (read consistently) and every worker record: what `ddbsc status` shows.
    /// An item that does not decode (written by a newer version, or damaged) is reported
    /// and skipped, so it cannot stop every worker from taking leases.
    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)>;

    /// The coordination item and every membership item (eventually consistent): what the
    /// leader reads on every tick to judge liveness.
    async fn membership(&self) -> Result<Membership>;

    /// The coordination item alone (eventually consistent): what every worker polls.
    async fn coordination(&self) -> Result<Coordination>;

    /// Bumps the leases version after ownership changes (coalesced by the caller). Returns
    /// the new version.
    async fn bump_leases_version(&self) -> Result<u64>;

    /// Removes a worker record and its inbox (graceful shutdown). Removing a record that is
    /// already gone succeeds.
    async fn delete_worker(&self, worker_id: &str) -> Result<()>;

    /// Removes a dead worker's record and inbox, if its heartbeat counter is still `seen`
    /// (the value the caller judged stopped); returns whether it was removed. A worker that
    /// heartbeats after its record was removed gets `WorkerRemoved`.
    async fn remove_worker(&self, worker_id: &str, seen: u64) -> Result<bool>;

    /// Names `worker_id` the leader in the coordination item and bumps the leader's
    /// counter, if the item names no leader, or names `replacing` (a leader the caller
    /// judged dead), or names `worker_id` already; returns whether it did. The caller holds
    /// the shard-sync lease: that lease, taken conditionally, is what makes one leader.
    async fn claim_leadership(&self, worker_id: &str, replacing: Option<&str>) -> Result<bool>;

    /// The leader's heartbeat in the coordination item, with the live workers it counts;
    /// returns `false` (and changes nothing) if the item names another leader.
    async fn renew_leadership(&self, worker_id: &str, workers: u64) -> Result<bool>;

    /// Clears the leader's name if it is `worker_id` (a leader shutting down), so that
    /// another worker claims the role at once instead of after the failover time.
    async fn resign_leadership(&self, worker_id: &str) -> Result<()>;

    /// Adds hints to `worker_id`'s inbox: read these leases again.
    async fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()>;

    /// The hints in `worker_id`'s inbox (eventually consistent: a hint may show a tick
    /// late, or once more after it was cleared).
    async fn notices(&self, worker_id: &str) -> Result<Vec<Notice>>;

    /// Removes these hints from `worker_id`'s inbox (hints added since stay).
    async fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()>;

    /// These leases, read consistently (those that exist).
    async fn get_leases(&self, keys: &[LeaseKey]) -> Result<Vec<Lease>> {
        let mut leases = Vec::with_capacity(keys.len());
        for key in keys {
            leases.extend(self.get_lease(key).await?);
        }
        Ok(leases)
    }

    /// Commits `writes` (items of other tables) and the checkpoint of `key` in one
    /// transaction, all or nothing: the exactly-once path. The checkpoint update has the
    /// condition of [`LeaseStore::checkpoint`] (`ownership` still current, else `LeaseLost`
    /// and none of the writes applied) and also requires the stored checkpoint to still be
    /// `previous`, so a transaction sent again after an ambiguous failure cannot apply
    /// twice: when that condition fails and a consistent read finds `checkpoint` stored
    /// under `ownership`, the earlier attempt committed, and this returns `Ok`; another
    /// stored checkpoint is `CheckpointMoved`. The caller fits the writes in one transaction
    /// ([`crate::transaction::split`]). Stores without transactions refuse with
    /// `TransactionsUnsupported` (the default).
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let _ = (key, ownership, previous, checkpoint, writes);
        Err(crate::Error::TransactionsUnsupported {
            store: format!("{self:?}"),
        })
    }

    /// [`checkpoint_with_writes`](Self::checkpoint_with_writes) for one named pipeline: the
    /// writes commit with `update` (the pipeline's checkpoint and the read position), and
    /// the condition on the stored checkpoint is on the pipeline's own: it must still be
    /// `previous` (`None`: the lease holds none for it yet). Stores without transactions
    /// refuse with `TransactionsUnsupported` (the default).
    async fn checkpoint_pipeline_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        pipeline: &str,
        previous: Option<&Checkpoint>,
        update: &PipelineCheckpoints,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let _ = (key, ownership, pipeline, previous, update, writes);
        Err(crate::Error::TransactionsUnsupported {
            store: format!("{self:?}"),
        })
    }

    /// The key attribute names of `table` (partition key first), so that a caller can
    /// tell which item a `Put` in a transaction writes: DynamoDB refuses two actions on one
    /// item in a transaction. Stores without transactions refuse with
    /// `TransactionsUnsupported` (the default).
    async fn key_attribute_names(&self, table: &str) -> Result<Vec<String>> {
        let _ = table;
        Err(crate::Error::TransactionsUnsupported {
            store: format!("{self:?}"),
        })
    }
}
