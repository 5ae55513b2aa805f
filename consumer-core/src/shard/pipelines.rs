//! Pipelines: several consumers of one application that share each shard's read
//! (`ConsumerBuilder::with_pipeline`).
//!
//! One fetch task reads the shard from its read position (the slowest pipeline's
//! checkpoint, the lease's `checkpoint`); [`distribute`] hands every page to each pipeline,
//! held once ([`FetchedPage::share`]), and each pipeline runs the same page loop as a
//! single consumer ([`super::drive`]) with its own processors, delivery settings and
//! checkpointer. What makes a pipeline's session write its own checkpoint is the store it
//! is given, [`PipelineStore`]: a checkpoint becomes the pipeline's attribute and the read
//! position in one conditional write, and a release waits for the shard's other pipelines
//! (the lease is released once, by [`run`], after every pipeline flushed).
//!
//! Run-ahead is bounded: each pipeline's queue holds [`RUN_AHEAD_PAGES`] pages, and the
//! fetch waits while the slowest pipeline's queue is full; a page's share of the memory
//! budget comes back when the last pipeline delivered it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use dynamodb_streams_leases::pipeline::slowest;
use dynamodb_streams_leases::{
    Checkpoint, Lease, LeaseKey, LeaseStore, Ownership, PipelineCheckpoints, Result, SequenceNumber,
};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::ending::report_if_late;
use super::ending::{EndOfSource, release_lease, shard_ended};
use super::fetch::{Fetched, fetch, start_position};
use super::session::Session;
use crate::budget::ByteBudget;
use crate::checkpointer::Checkpointer;
use crate::config::ConsumerConfig;
use crate::error::Error;
use crate::observability::Telemetry;
use crate::poll_loop::ShardReader;
use crate::processor::{ProcessorFactory, ShardContext};
use crate::retry;
use crate::runtime::{LeaseTask, Runtime, ShardOutcome, ShardSignals};
use crate::snapshot::scanned_items;
use crate::start_time::InitialPosition;
use crate::streams::{StartPosition, StreamsApi};

/// How many pages a pipeline may be ahead of the slowest one before the shard's read
/// waits (each pipeline's queue of pages not yet taken in).
pub(crate) const RUN_AHEAD_PAGES: usize = 8;

/// A named pipeline: its processor factory and its settings, with the processor type
/// erased so that pipelines of different processors run side by side.
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
    api: Arc<dyn StreamsApi>,
    store: Arc<dyn LeaseStore>,
    worker_id: String,
    telemetry: Arc<Telemetry>,
    budget: ByteBudget,
    /// The lease as this pipeline sees it: its `checkpoint` is the pipeline's own.
    lease: Lease,
    ownership: Ownership,
    table: Option<String>,
    signals: ShardSignals,
    rx: mpsc::Receiver<Fetched>,
    /// How the session ends at the source's end.
    end: PipelineEnd,
}

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
    let key = task.key().clone();
    let runtime = task.runtime.clone();
    let pipelines = &runtime.pipelines;

    // Each pipeline's own position; `LATEST` becomes the time it starts from.
    let mut own: Vec<Checkpoint> = pipelines
        .iter()
        .map(|p| own_start(&task.lease, p.name(), p.config().initial_position))
        .collect();
    let Some(read) = read_position(&own) else {
        return ShardOutcome::Ended;
    };
    let Some(start) = start_position(&read) else {
        return ShardOutcome::Ended;
    };
    let mut reader = ShardReader::new(
        runtime.api.clone(),
        key.stream.clone(),
        key.shard_id.clone(),
        start,
        runtime.config.poll.clone(),
    );
    let all_latest = own.iter().all(|c| *c == Checkpoint::Latest);
    if own.contains(&Checkpoint::Latest) {
        let since = Checkpoint::since(runtime.api.now());
        if all_latest && let Err(error) = reader.open().await {
            tracing::debug!(shard_id = %key.shard_id, %error, "no LATEST iterator; reading from TRIM_HORIZON after the start time");
        }
        for checkpoint in &mut own {
            if *checkpoint == Checkpoint::Latest {
                *checkpoint = since.clone();
            }
        }
    }
    if let Err(outcome) = store_starts(&task, &own).await {
        return outcome;
    }
    if all_latest {
        reader.replace_unread_start(StartPosition::TrimHorizon);
    }
    // The children start where the read did (a time after a snapshot or a `LATEST` start).
    task.lease.checkpoint = read_position(&own).unwrap_or(read);
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
    let written = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        runtime
            .store
            .checkpoint_pipelines(task.key(), &task.ownership, &update)
    })
    .await;
    match written {
        Ok(_) => Ok(()),
        Err(error) if error.is_lease_lost() => Err(ShardOutcome::LeaseLost),
        Err(error) => Err(ShardOutcome::Failed(error.into())),
    }
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

/// How one pipeline's session ends once the source was read to its end: the pipeline's
/// `SHARD_END` (with the read position, `SHARD_END` once it is the last); for a snapshot
/// segment, also the snapshot's duration checked and a loss told to the pipeline's
/// processor. What the lease's end does once (a shard's children, a segment's progress)
/// follows in [`run`] (or the segment's task) after the last pipeline ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PipelineEnd {
    /// A shard of the stream.
    Shard,
    /// A snapshot segment of a snapshot that began at `started_at` (if known).
    Segment { started_at: Option<SystemTime> },
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

/// A pipeline's queue of pages, and the last record it had done when the read started
/// (records up to it are not handed to it again).
struct Out {
    tx: mpsc::Sender<Fetched>,
    done_through: Option<SequenceNumber>,
}

/// Hands what the fetch task reads to every pipeline still running: pages shared, the
/// rest copied. Waits while a pipeline's queue is full (the run-ahead bound).
async fn distribute(mut rx: mpsc::Receiver<Fetched>, mut outs: Vec<Out>, shard_id: String) {
    while let Some(fetched) = rx.recv().await {
        outs.retain(|out| !out.tx.is_closed());
        if outs.is_empty() {
            return;
        }
        let last = matches!(
            fetched,
            Fetched::ShardEnd | Fetched::Vanished(_) | Fetched::Failed(_)
        );
        let copies: Vec<Fetched> = match fetched {
            Fetched::Records(page) => {
                let done: Vec<Option<SequenceNumber>> =
                    outs.iter().map(|out| out.done_through.clone()).collect();
                page.share(&done)
                    .into_iter()
                    .map(Fetched::Records)
                    .collect()
            }
            Fetched::Idle => {
                for out in &outs {
                    let _ = out.tx.try_send(Fetched::Idle);
                }
                continue;
            }
            Fetched::ShardEnd => outs.iter().map(|_| Fetched::ShardEnd).collect(),
            Fetched::Trimmed(loss) => outs
                .iter()
                .map(|_| Fetched::Trimmed(loss.clone()))
                .collect(),
            Fetched::Vanished(loss) => outs
                .iter()
                .map(|_| Fetched::Vanished(loss.clone()))
                .collect(),
            Fetched::Failed(error) => {
                let problem = error.to_string();
                let mut first = Some(error);
                outs.iter()
                    .map(|_| {
                        Fetched::Failed(first.take().unwrap_or_else(|| Error::Internal {
                            shard_id: shard_id.clone(),
                            problem: problem.clone(),
                        }))
                    })
                    .collect()
            }
        };
        for (out, copy) in outs.iter_mut().zip(copies) {
            // A pipeline that stopped takes nothing more.
            let _ = out.tx.send(copy).await;
        }
        if last {
            return;
        }
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
struct Positions {
    durable: Mutex<BTreeMap<String, Checkpoint>>,
    /// Held by a pipeline's write from computing the read position until it is stored.
    writing: tokio::sync::Mutex<()>,
}

impl Positions {
    fn new(durable: BTreeMap<String, Checkpoint>) -> Self {
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
/// by [`run`]); everything else is the store.
#[derive(Debug)]
struct PipelineStore {
    inner: Arc<dyn LeaseStore>,
    name: String,
    positions: Arc<Positions>,
    /// The lease as the task started: what a deferred release answers.
    lease: Lease,
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
