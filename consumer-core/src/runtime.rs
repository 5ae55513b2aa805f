//! What every task of a worker shares (a shard's or a snapshot segment's), what the worker
//! tells a running task, and how a task ends.
//!
//! The worker starts one task per lease it owns and runs: [`crate::shard`] for a shard,
//! [`crate::snapshot`]'s segment task for a Scan segment, picked by the lease's kind. Both
//! take a [`LeaseTask`] and the [`ShardSignals`], and end with a [`ShardOutcome`].
//!
//! With named pipelines, each pipeline's session on a lease is given a [`Part`] by the
//! engine (`shard::pipelines`) through the [`PipelineRunner`] boundary declared here.

use std::sync::Arc;
use std::time::SystemTime;

use dynamodb_streams_leases::{Lease, LeaseKey, LeaseStore, Ownership};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::budget::ByteBudget;
use crate::config::ConsumerConfig;
use crate::error::Error;
use crate::observability::Telemetry;
use crate::processor::{ProcessorFactory, ShardContext};
use crate::shard::page::Fetched;
use crate::streams::StreamsApi;

/// What a worker and all its tasks share.
pub(crate) struct Runtime<F> {
    pub api: Arc<dyn StreamsApi>,
    pub store: Arc<dyn LeaseStore>,
    pub factory: F,
    pub config: ConsumerConfig,
    pub worker_id: String,
    /// Health and lag for operators (`observability`).
    pub telemetry: Arc<Telemetry>,
    /// Bytes of fetched pages not yet delivered, across every task of the worker.
    pub budget: ByteBudget,
    /// The named pipelines (`with_pipeline`); empty: the one unnamed pipeline, `factory`.
    pub pipelines: Vec<Arc<dyn PipelineRunner>>,
    /// The named pipeline this runtime delivers to (a session of `shard::pipelines`):
    /// the `pipeline` label of its metrics. `None`: the one unnamed consumer.
    pub pipeline: Option<String>,
}

/// One lease a task runs under, as the worker owned it when it started the task.
pub(crate) struct LeaseTask<F> {
    pub runtime: Arc<Runtime<F>>,
    pub lease: Lease,
    pub ownership: Ownership,
    /// The table whose stream this is, when the consumer was given a table name.
    pub table: Option<String>,
}

impl<F: ProcessorFactory> LeaseTask<F> {
    pub(crate) fn key(&self) -> &LeaseKey {
        &self.lease.key
    }

    /// The named pipeline the task delivers to, if any (its metrics label).
    pub(crate) fn pipeline(&self) -> Option<&str> {
        self.runtime.pipeline.as_deref()
    }

    /// What the processors of this lease are told about it.
    pub(crate) fn context(&self) -> ShardContext {
        ShardContext {
            table: self.table.clone(),
            stream_arn: self.lease.key.stream.clone(),
            shard_id: self.lease.key.shard_id.clone(),
            parent_shard_ids: self.lease.parent_shard_ids.clone(),
            worker_id: self.runtime.worker_id.clone(),
            lease_owner: self.ownership.owner.clone(),
            lease_epoch: self.ownership.epoch,
            resumed_from: self.lease.checkpoint.clone(),
        }
    }
}

/// The signals a worker sends a running task.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardSignals {
    /// Finish the current batch, then flush, release and stop (shutdown or handoff).
    pub release: CancellationToken,
    /// Stop at once without writing: the lease is gone (fenced, or taken by another).
    pub lost: CancellationToken,
}

/// How a task ended.
#[derive(Debug)]
pub(crate) enum ShardOutcome {
    /// The shard (or segment) was read to its end; `SHARD_END` is stored and a shard's
    /// children have leases.
    Ended,
    /// Stopped on request: checkpoints flushed, lease released.
    Released,
    /// Another worker owns the lease now.
    LeaseLost,
    /// Stopped by an error it cannot get past; the lease is kept (and retried later).
    Failed(Error),
}

/// A named pipeline: its processor factory and its settings, with the processor type
/// erased so that pipelines of different processors run side by side. Implemented by
/// `shard::pipelines::Pipeline`, which runs the page loop; declared here, with what it is
/// given, so that the runtime holding the pipelines does not import the engine that runs
/// them (the engine's tasks import the runtime).
pub(crate) trait PipelineRunner: Send + Sync + 'static {
    /// The pipeline's name, stable across deployments: its attribute in the lease items.
    fn name(&self) -> &str;
    /// Its settings (the consumer's, with the pipeline's own where they differ).
    fn config(&self) -> &ConsumerConfig;
    /// Runs the pipeline's session on one shard.
    fn run(&self, part: Part) -> BoxFuture<'static, ShardOutcome>;
}

/// What a pipeline's session on one shard is given.
pub(crate) struct Part {
    pub api: Arc<dyn StreamsApi>,
    pub store: Arc<dyn LeaseStore>,
    pub worker_id: String,
    pub telemetry: Arc<Telemetry>,
    pub budget: ByteBudget,
    /// The lease as this pipeline sees it: its `checkpoint` is the pipeline's own.
    pub lease: Lease,
    pub ownership: Ownership,
    pub table: Option<String>,
    pub signals: ShardSignals,
    pub rx: mpsc::Receiver<Fetched>,
    /// How the session ends at the source's end.
    pub end: PipelineEnd,
}

/// How one pipeline's session ends once the source was read to its end: the pipeline's
/// `SHARD_END` (with the read position, `SHARD_END` once it is the last); for a snapshot
/// segment, also the snapshot's duration checked and a loss told to the pipeline's
/// processor. What the lease's end does once (a shard's children, a segment's progress)
/// follows in `shard::pipelines::run` (or the segment's task) after the last pipeline ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PipelineEnd {
    /// A shard of the stream.
    Shard,
    /// A snapshot segment of a snapshot that began at `started_at` (if known).
    Segment { started_at: Option<SystemTime> },
}
