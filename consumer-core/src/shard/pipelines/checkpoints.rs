//! A pipeline's checkpoints: the read position of a lease (the slowest pipeline's), and the
//! lease store as one pipeline's session sees it ([`PipelineStore`]: its checkpoint is the
//! pipeline's attribute written with the read position, its release deferred). Its own
//! module: what a pipeline writes is apart from how the read fans out (`super::distribute`)
//! and how the sessions start and end (`super`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use dynamodb_streams_leases::pipeline::slowest;
use dynamodb_streams_leases::{
    Checkpoint, Lease, LeaseKey, LeaseStore, Ownership, PipelineCheckpoints, Result,
};

use crate::snapshot::scanned_items;

/// The read position of a lease: the slowest pipeline's checkpoint
/// ([`slowest`]), where snapshot segment positions are ordered by the items scanned.
pub(crate) fn read_position<'a>(
    checkpoints: impl IntoIterator<Item = &'a Checkpoint>,
) -> Option<Checkpoint> {
    checkpoints
        .into_iter()
        .fold(None, |slowest: Option<&Checkpoint>, next| match slowest {
            Some(current) if !is_behind(next, current) => Some(current),
            _ => Some(next),
        })
        .cloned()
}

/// Whether checkpoint `a` is strictly behind `b` on the same lease.
fn is_behind(a: &Checkpoint, b: &Checkpoint) -> bool {
    match (scanned_items(a), scanned_items(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a != b && slowest([a, b]).as_ref() == Some(a),
    }
}

/// The checkpoints of a lease's pipelines as stored (acknowledged writes only): the read
/// position written with a pipeline's checkpoint is the slowest of these, so it never gets
/// ahead of a checkpoint that is not stored yet.
///
/// The pipelines' writes to the lease take turns ([`Positions::turn`]): each computes the
/// read position from the others' stored checkpoints and writes it, so two writes at once
/// would each take the other's previous checkpoint, and the last to land would leave the
/// read position behind both (behind `SHARD_END` when they were the pipelines' last: a
/// segment, or a shard, that never ends for the lease table, so the stream never starts
/// after a snapshot, or children never do). In turns, the last write knows every other.
#[derive(Debug)]
pub(super) struct Positions {
    durable: Mutex<BTreeMap<String, Checkpoint>>,
    /// Held by a pipeline's write from computing the read position until it is stored.
    writing: tokio::sync::Mutex<()>,
}

impl Positions {
    /// The pipelines' checkpoints as stored when the lease's delivery starts.
    pub(super) fn new(durable: BTreeMap<String, Checkpoint>) -> Self {
        Self {
            durable: Mutex::new(durable),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for this pipeline's turn to write to the lease (see [`Positions`]).
    async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.writing.lock().await
    }

    /// Whether `checkpoint` is behind the pipeline's stored one: a pipeline that was ahead
    /// of the read position when a segment's Scan resumed from it is given pages it had
    /// done again, and its position never moves back (such a checkpoint is not written).
    fn is_behind(&self, name: &str, checkpoint: &Checkpoint) -> bool {
        let durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        durable
            .get(name)
            .is_some_and(|stored| is_behind(checkpoint, stored))
    }

    /// The write of `name` at `checkpoint`: with the read position it leaves the shard at.
    fn update(&self, name: &str, checkpoint: &Checkpoint) -> PipelineCheckpoints {
        let durable = self.durable.lock().unwrap_or_else(PoisonError::into_inner);
        let read = read_position(
            durable
                .iter()
                .map(|(n, c)| if n == name { checkpoint } else { c }),
        )
        .unwrap_or_else(|| checkpoint.clone());
        PipelineCheckpoints {
            read_position: read,
            pipelines: vec![(name.to_owned(), checkpoint.clone())],
            running: None,
        }
    }

    fn written(&self, name: &str, checkpoint: &Checkpoint) {
        self.durable
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), checkpoint.clone());
    }
}

/// The lease store as one pipeline's session sees it: its checkpoints are the pipeline's
/// (written with the read position), its release waits for the other pipelines (done once
/// by `super::run`); everything else is the store.
#[derive(Debug)]
pub(super) struct PipelineStore {
    pub inner: Arc<dyn LeaseStore>,
    pub name: String,
    pub positions: Arc<Positions>,
    /// The lease as the task started: what a deferred release answers.
    pub lease: Lease,
}

#[async_trait]
impl dynamodb_streams_leases::StoreWrapper for PipelineStore {
    type Inner = dyn LeaseStore;

    fn wrapped(&self) -> &Self::Inner {
        &*self.inner
    }

    /// The pipeline's checkpoint, with the read position, in one conditional write. The
    /// lease returned carries the pipeline's checkpoint as its `checkpoint`.
    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        let _turn = self.positions.turn().await;
        if self.positions.is_behind(&self.name, checkpoint) {
            let mut lease = self.lease.clone();
            lease.checkpoint = checkpoint.clone();
            return Ok(lease);
        }
        let update = self.positions.update(&self.name, checkpoint);
        let mut lease = self
            .inner
            .checkpoint_pipelines(key, ownership, &update)
            .await?;
        self.positions.written(&self.name, checkpoint);
        lease.checkpoint = checkpoint.clone();
        Ok(lease)
    }

    /// Deferred: the lease is released once every pipeline of the shard stopped.
    async fn release_lease(&self, _key: &LeaseKey, _ownership: &Ownership) -> Result<Lease> {
        let mut lease = self.lease.clone();
        lease.handoff_to = None;
        Ok(lease)
    }

    /// Exactly-once per pipeline: the transaction's condition is on the pipeline's own
    /// attribute, and it writes the read position too.
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let _turn = self.positions.turn().await;
        let update = self.positions.update(&self.name, checkpoint);
        self.inner
            .checkpoint_pipeline_with_writes(
                key,
                ownership,
                &self.name,
                Some(previous),
                &update,
                writes,
            )
            .await?;
        self.positions.written(&self.name, checkpoint);
        Ok(())
    }
}
