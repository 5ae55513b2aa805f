//! The lease store interface: every coordination write goes through it.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::lease::{Lease, LeaseKey, Membership, Ownership, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;

/// Persistent leases, checkpoints and worker heartbeats.
///
/// Every write that depends on ownership is conditional in the store itself (not checked
/// by the caller and then written), so the invariants hold under any interleaving of
/// workers: at most one owner per lease, and no write from a worker that lost its lease.
/// Implementations: [`crate::DynamoDbLeaseStore`] and [`crate::InMemoryLeaseStore`], held
/// to identical semantics by the conformance suite.
///
/// Writes that change ownership (`create_lease`, `take_lease`, `release_lease`,
/// `reset_lease`, `request_handoff`, `delete_lease`, and `checkpoint` to `ShardEnd`) bump the leases version
/// of the [`Membership`] item after their own write succeeded, so idle workers learn of
/// changes from one small read. A lost bump is caught by an audit scan; safety never rests
/// on the version, only on the conditional writes.
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
    /// `LeaseChanged` when another worker got there first.
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
    /// still `current` (else `LeaseChanged`).
    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease>;

    /// Removes a lease (finished shards, once their children started). Deleting a lease
    /// that is already gone succeeds.
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()>;

    /// Bumps the worker's heartbeat counter in the membership item, creating its record if
    /// needed, and pushes its expiry `ttl` into the future. Returns the record as written.
    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord>;

    /// Every lease and every worker record, read consistently in one go. Workers read it
    /// only when [`LeaseStore::membership`] says ownership changed (and on a slow audit).
    /// An item that does not decode (written by a newer version, or damaged) is reported
    /// and skipped, so it cannot stop every worker from taking leases.
    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)>;

    /// The membership item (worker records and the leases version), one small read that
    /// may be eventually consistent: what a worker reads on every tick.
    async fn membership(&self) -> Result<Membership>;

    /// Bumps the leases version by hand: for an audit that found an ownership change whose
    /// own bump was lost. Returns the new version.
    async fn bump_leases_version(&self) -> Result<u64>;

    /// Removes a worker record (graceful shutdown, cleanup of dead workers). Deleting a
    /// record that is already gone succeeds.
    async fn delete_worker(&self, worker_id: &str) -> Result<()>;

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
