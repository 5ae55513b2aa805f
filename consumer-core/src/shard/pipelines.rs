//! Pipelines: several consumers of one application that share each shard's read
//! (`ConsumerBuilder::with_pipeline`).
//!
//! One fetch task reads the shard from its read position (the slowest pipeline's
//! checkpoint, the lease's `checkpoint`); [`distribute`] hands every page to each pipeline,
//! held once ([`FetchedPage::share`](super::page::FetchedPage::share)), and each pipeline runs the same page loop as a
//! single consumer ([`super::drive`]) with its own processors, delivery settings and
//! checkpointer. What makes a pipeline's session write its own checkpoint is the store it
//! is given, [`PipelineStore`]: a checkpoint becomes the pipeline's attribute and the read
//! position in one conditional write, and a release waits for the shard's other pipelines
//! (the lease is released once, by [`run`], after every pipeline flushed).
//!
//! Run-ahead is bounded: each pipeline's queue holds [`RUN_AHEAD_PAGES`] pages, and the
//! fetch waits while the slowest pipeline's queue is full; a page's share of the memory
//! budget comes back when the last pipeline delivered it.

mod checkpoints;
mod distribute;

use std::sync::Arc;

use dynamodb_streams_leases::{Checkpoint, Lease, LeaseStore, PipelineCheckpoints, Result};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::ending::report_if_late;
use super::ending::{EndOfSource, release_lease, shard_ended};
use super::fetch::{begin_read, fetch, write_before_start};
use super::page::Fetched;
use super::session::Session;
use crate::checkpointer::Checkpointer;
use crate::config::ConsumerConfig;
use crate::processor::{ProcessorFactory, ShardContext};
use crate::runtime::{
    LeaseTask, Part, PipelineEnd, PipelineRunner, Runtime, ShardOutcome, ShardSignals,
};
use crate::start_time::InitialPosition;
pub(crate) use checkpoints::read_position;
use checkpoints::{PipelineStore, Positions};
use distribute::{Out, distribute};

/// How many pages a pipeline may be ahead of the slowest one before the shard's read
/// waits (each pipeline's queue of pages not yet taken in).
pub(crate) const RUN_AHEAD_PAGES: usize = 8;

/// A pipeline of processors made by `P`.
pub(crate) struct Pipeline<P> {
    name: String,
    factory: Arc<P>,
    config: ConsumerConfig,
}

impl<P: ProcessorFactory> Pipeline<P> {
    pub(crate) fn new(name: String, factory: P, config: ConsumerConfig) -> Self {
        Self {
            name,
            factory: Arc::new(factory),
            config,
        }
    }
}

/// A pipeline's factory, shared by the sessions of every shard it runs on.
struct SharedFactory<P>(Arc<P>);

impl<P: ProcessorFactory> ProcessorFactory for SharedFactory<P> {
    type Processor = P::Processor;

    fn create(&self, shard: &ShardContext) -> P::Processor {
        self.0.create(shard)
    }
}

impl<P: ProcessorFactory> PipelineRunner for Pipeline<P> {
    fn name(&self) -> &str {
        &self.name
    }

    fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    fn run(&self, part: Part) -> BoxFuture<'static, ShardOutcome> {
        let Part {
            api,
            store,
            worker_id,
            telemetry,
            budget,
            lease,
            ownership,
            table,
            signals,
            rx,
            end,
        } = part;
        let runtime = Arc::new(Runtime {
            api,
            store,
            factory: SharedFactory(self.factory.clone()),
            config: self.config.clone(),
            worker_id,
            telemetry,
            budget,
            pipelines: Vec::new(),
            pipeline: Some(self.name.clone()),
        });
        Box::pin(async move {
            let task = LeaseTask {
                runtime,
                lease,
                ownership,
                table,
            };
            let checkpointer = Checkpointer::new(
                task.runtime.store.clone(),
                task.key().clone(),
                task.ownership.clone(),
                task.lease.checkpoint.clone(),
                task.runtime.config.checkpoint_interval,
            )
            .with_pipeline_label(task.pipeline());
            // Each pipeline's lag is its own: the gauges name the one holding the read back.
            let _lag_tracked = task
                .runtime
                .telemetry
                .lag
                .track(task.key(), task.pipeline());
            super::drive(&task, &signals, checkpointer, rx, end).await
        })
    }
}

/// Where a pipeline starts on a lease: its own checkpoint; on a lease no pipeline wrote
/// yet (a new shard, or an application that had no named pipelines), the lease's
/// checkpoint; on a lease the others already have (a pipeline new to a running
/// application), its initial position.
fn own_start(lease: &Lease, name: &str, initial: InitialPosition) -> Checkpoint {
    match lease.pipelines.get(name) {
        Some(checkpoint) => checkpoint.clone(),
        None if lease.pipelines.is_empty() => lease.checkpoint.clone(),
        None => match initial {
            InitialPosition::TrimHorizon => Checkpoint::TrimHorizon,
            InitialPosition::Latest => Checkpoint::Latest,
        },
    }
}

/// Runs the shard of `task`'s lease for every pipeline of the consumer, over one read.
pub(crate) async fn run<F: ProcessorFactory>(
    mut task: LeaseTask<F>,
    signals: ShardSignals,
) -> ShardOutcome {
    let runtime = task.runtime.clone();
    let pipelines = &runtime.pipelines;

    // Each pipeline's own position; `LATEST` becomes the time it starts from.
    let mut own: Vec<Checkpoint> = pipelines
        .iter()
        .map(|p| own_start(&task.lease, p.name(), p.config().initial_position))
        .collect();
    let reader = match begin_read(&task, &mut own, async |own: &[Checkpoint]| {
        store_starts(&task, own).await
    })
    .await
    {
        Ok(Some(reader)) => reader,
        Ok(None) => return ShardOutcome::Ended,
        Err(outcome) => return outcome,
    };
    // The children start where the read did (a time after a snapshot or a `LATEST` start).
    if let Some(read) = read_position(&own) {
        task.lease.checkpoint = read;
    }
    let budget = runtime.budget.clone();
    let policy = runtime.config.trimmed_data_policy;
    let outcome = deliver(
        &task,
        &signals,
        &own,
        PipelineEnd::Shard,
        move |tx, stop| Box::pin(fetch(reader, budget, tx, policy, stop)),
    )
    .await;
    if matches!(outcome, ShardOutcome::Ended) {
        // Once per shard, after the last pipeline's `SHARD_END`: not once per pipeline.
        shard_ended(&task).await;
    }
    outcome
}

/// Stores every pipeline's start with the read position, before anything is read: a
/// pipeline new to the lease gets its attribute, a `LATEST` one its start time, and the
/// owner's running pipelines are listed.
pub(crate) async fn store_starts<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    own: &[Checkpoint],
) -> Result<(), ShardOutcome> {
    let runtime = &task.runtime;
    let names: Vec<String> = runtime
        .pipelines
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    let Some(read) = read_position(own) else {
        return Ok(());
    };
    let update = PipelineCheckpoints {
        read_position: read,
        pipelines: names.iter().cloned().zip(own.iter().cloned()).collect(),
        running: Some(names),
    };
    write_before_start(|| {
        runtime
            .store
            .checkpoint_pipelines(task.key(), &task.ownership, &update)
    })
    .await
    .map(|_| ())
}

/// Delivers what `source` reads (once) to every pipeline of the consumer that has not
/// finished the lease (its start in `own`, in the order of the runtime's pipelines, already
/// stored), each in its own session, and ends when they all did. `Ended` when every
/// pipeline reached the source's end; the lease-wide end (a shard's children, a segment's
/// progress) is the caller's.
pub(crate) async fn deliver<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    signals: &ShardSignals,
    own: &[Checkpoint],
    end: PipelineEnd,
    source: impl FnOnce(mpsc::Sender<Fetched>, CancellationToken) -> BoxFuture<'static, ()>,
) -> ShardOutcome {
    let key = task.key().clone();
    let runtime = &task.runtime;
    let pipelines = &runtime.pipelines;
    let names = pipelines.iter().map(|p| p.name().to_owned());
    let positions = Arc::new(Positions::new(names.zip(own.iter().cloned()).collect()));
    let lost = signals.lost.child_token();
    let release = signals.release.child_token();
    let local = ShardSignals {
        release: release.clone(),
        lost: lost.clone(),
    };
    let mut outs = Vec::new();
    let mut sessions = FuturesUnordered::new();
    for (pipeline, start) in pipelines.iter().zip(own) {
        if start.is_shard_end() {
            continue; // this pipeline finished the lease before (or skips it)
        }
        let (tx, rx) = mpsc::channel(RUN_AHEAD_PAGES);
        outs.push(Out {
            tx,
            done_through: start.sequence_number().cloned(),
        });
        let mut lease = task.lease.clone();
        lease.checkpoint = start.clone();
        let store: Arc<dyn LeaseStore> = Arc::new(PipelineStore {
            inner: runtime.store.clone(),
            name: pipeline.name().to_owned(),
            positions: positions.clone(),
            lease: task.lease.clone(),
        });
        sessions.push(pipeline.run(Part {
            api: runtime.api.clone(),
            store,
            worker_id: runtime.worker_id.clone(),
            telemetry: runtime.telemetry.clone(),
            budget: runtime.budget.clone(),
            lease,
            ownership: task.ownership.clone(),
            table: task.table.clone(),
            signals: local.clone(),
            rx,
            end,
        }));
    }
    if sessions.is_empty() {
        // Every pipeline had finished the lease: the read position says so too.
        return ShardOutcome::Ended;
    }

    let stop_source = lost.child_token();
    let (tx, rx) = mpsc::channel(runtime.config.prefetch_pages.max(1));
    let _source = AbortOnDropHandle::new(tokio::spawn(source(tx, stop_source.clone())));
    let _stop_source_on_exit = stop_source.drop_guard();
    let _distributor =
        AbortOnDropHandle::new(tokio::spawn(distribute(rx, outs, key.shard_id.clone())));

    // A lost lease stops every pipeline at once; a pipeline that fails makes the others
    // stop gracefully (the lease is kept and retried, as for a single consumer).
    let mut outcomes = Vec::new();
    while let Some(outcome) = sessions.next().await {
        match &outcome {
            ShardOutcome::LeaseLost => lost.cancel(),
            ShardOutcome::Failed(_) => release.cancel(),
            ShardOutcome::Ended | ShardOutcome::Released => {}
        }
        outcomes.push(outcome);
    }
    if outcomes
        .iter()
        .any(|o| matches!(o, ShardOutcome::LeaseLost))
    {
        return ShardOutcome::LeaseLost;
    }
    if let Some(position) = outcomes
        .iter()
        .position(|o| matches!(o, ShardOutcome::Failed(_)))
    {
        return outcomes.swap_remove(position);
    }
    if outcomes.iter().all(|o| matches!(o, ShardOutcome::Ended)) {
        return ShardOutcome::Ended;
    }
    release_lease(task, &key, &task.ownership).await
}

impl<F: ProcessorFactory> EndOfSource<F> for PipelineEnd {
    async fn end(self, session: &mut Session<'_, F>) -> ShardOutcome {
        if let Err(outcome) = session.read_to_end().await {
            return outcome;
        }
        if let PipelineEnd::Segment {
            started_at: Some(started_at),
        } = self
        {
            report_if_late(session, started_at).await;
        }
        ShardOutcome::Ended
    }
}
