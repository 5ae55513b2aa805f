//! One snapshot segment under one lease: what differs from a shard.
//!
//! A segment's items go through the same page loop and delivery session as a shard's
//! records ([`shard::drive`]): batch size and batching window, key parallelism, the
//! filter, the timeouts, the failure policy, partial batch responses
//! ([`BatchFailure::at_index`](crate::BatchFailure::at_index)) and the on-failure handler
//! apply to snapshot records as to stream records. What differs is here:
//!
//! - the source: a scan task reads the segment page by page (consistent reads, resumed
//!   after the last evaluated key) and hands each page over as `SNAPSHOT` records;
//! - the position: after a page, [`Checkpoint::Scan`] (items read so far and the last
//!   evaluated key), stored once every record of the page is done, coalesced like any
//!   checkpoint (`with_checkpoint_interval`);
//! - the end: `SHARD_END` without children (the stream's roots wait for the snapshot's
//!   gate, which the last segment to finish finishes), the snapshot's duration checked
//!   against the stream's retention, and the snapshot's progress logged.
//!
//! It ends like a shard ([`ShardOutcome`]); on `Failed` the worker restarts it later from
//! its last stored position.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use aws_sdk_dynamodbstreams::types::{OperationType, Record, StreamRecord};
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::scan::{Item, PageRequest, Position, TableScan, to_stream_item};
use super::{parse_segment_id, plan_key};
use crate::budget::ByteBudget;
use crate::change::SNAPSHOT_EVENT;
use crate::checkpointer::Checkpointer;
use crate::error::Error;
use crate::events::{Event, ShardEnded, SnapshotPageRead, SnapshotProgressed};
use crate::processor::ProcessorFactory;
use crate::retry;
use crate::runtime::{LeaseTask, PipelineEnd, ShardOutcome, ShardSignals};
use crate::shard::ending::{EndOfSource, report_if_late};
use crate::shard::page::{Fetched, FetchedPage, first_expected_cost};
use crate::shard::pipelines;
use crate::shard::session::Session;
use crate::shard::{self};
use crate::stream_arn::table_of_stream;

/// Runs the segment of `task`'s lease until it ends, is stopped, or fails.
pub(crate) async fn run_segment<F: ProcessorFactory>(
    task: LeaseTask<F>,
    signals: ShardSignals,
) -> ShardOutcome {
    if task.lease.checkpoint.is_shard_end() {
        return ShardOutcome::Ended;
    }
    if !task.runtime.pipelines.is_empty() {
        return run_for_pipelines(task, signals).await;
    }
    let scan = match Scan::new(&task) {
        Ok(scan) => scan,
        Err(error) => return ShardOutcome::Failed(error),
    };
    let runtime = &task.runtime;
    let end = SegmentEnd {
        started_at: read_plan(&task)
            .await
            .and_then(|p| p.checkpoint.skip_before()),
        items: scan.items.clone(),
    };
    let checkpointer = Checkpointer::new(
        runtime.store.clone(),
        task.key().clone(),
        task.ownership.clone(),
        task.lease.checkpoint.clone(),
        runtime.config.checkpoint_interval,
    );
    let stop_scan = signals.lost.child_token();
    let (tx, rx) = mpsc::channel(runtime.config.prefetch_pages.max(1));
    let scanner = tokio::spawn(scan.run(runtime.budget.clone(), tx, stop_scan.clone()));
    let _stop_scan_on_exit = stop_scan.drop_guard();
    let outcome = shard::drive(&task, &signals, checkpointer, rx, end).await;
    scanner.abort();
    outcome
}

/// Runs the segment of `task`'s lease for every named pipeline over one Scan: each page
/// read once and handed to every pipeline (as a shard's pages are), each pipeline's scan
/// position its own attribute of the segment lease, the lease's `checkpoint` the slowest
/// one (`SHARD_END` once every pipeline finished the segment, which is what lets the
/// stream's leases start: no stream record reaches any pipeline before that).
///
/// Where each pipeline starts: its own position; on a segment no pipeline wrote yet, the
/// lease's (every pipeline of the snapshot's plan scans it, as an application moving from
/// one unnamed consumer to pipelines goes on from where that consumer was); a pipeline the
/// plan does not name, or new to a segment the others already scan, gets no snapshot (its
/// position is `SHARD_END` at once): it joined after the snapshot began, and a snapshot of
/// only the segments still open would miss items without saying so. The Scan resumes from
/// the slowest position; a pipeline that was ahead is given the pages between again (at
/// least once) and does not write a position behind its own.
async fn run_for_pipelines<F: ProcessorFactory>(
    mut task: LeaseTask<F>,
    signals: ShardSignals,
) -> ShardOutcome {
    let plan = read_plan(&task).await;
    let started_at = plan.as_ref().and_then(|p| p.checkpoint.skip_before());
    let planned = plan.map(|p| p.pipelines).unwrap_or_default();
    let own: Vec<Checkpoint> = task
        .runtime
        .pipelines
        .iter()
        .map(|p| {
            let start = pipeline_start(&task.lease, p.name(), &planned);
            if start.is_shard_end() && !task.lease.pipelines.contains_key(p.name()) {
                tracing::warn!(pipeline = p.name(), stream_arn = %task.key().stream, segment = %task.key().shard_id, "this pipeline joined after the snapshot began: it gets no snapshot, and starts on the stream at its initial position");
            }
            start
        })
        .collect();
    if let Err(outcome) = pipelines::store_starts(&task, &own).await {
        return outcome;
    }
    let Some(read) = pipelines::read_position(&own) else {
        return ShardOutcome::Ended;
    };
    if read.is_shard_end() {
        return ShardOutcome::Ended;
    }
    task.lease.checkpoint = read;
    let scan = match Scan::new(&task) {
        Ok(scan) => scan,
        Err(error) => return ShardOutcome::Failed(error),
    };
    let items = scan.items.clone();
    let budget = task.runtime.budget.clone();
    let end = PipelineEnd::Segment { started_at };
    let outcome = pipelines::deliver(&task, &signals, &own, end, move |tx, stop| {
        Box::pin(scan.run(budget, tx, stop))
    })
    .await;
    if matches!(outcome, ShardOutcome::Ended) {
        segment_finished(
            &task.runtime.store,
            task.key(),
            items.load(Ordering::Relaxed),
        )
        .await;
    }
    outcome
}

/// Where pipeline `name` starts on segment `lease`, given the pipelines the snapshot's
/// plan names (`planned`, empty for a plan written without pipelines).
fn pipeline_start(
    lease: &dynamodb_streams_leases::Lease,
    name: &str,
    planned: &std::collections::BTreeMap<String, Checkpoint>,
) -> Checkpoint {
    match lease.pipelines.get(name) {
        Some(own) => own.clone(),
        None if !planned.is_empty() && !planned.contains_key(name) => Checkpoint::ShardEnd,
        None if lease.pipelines.is_empty() => lease.checkpoint.clone(),
        None => Checkpoint::ShardEnd,
    }
}

/// The snapshot's plan (`None` if it cannot be read: the retention check is then skipped,
/// with a warning).
async fn read_plan<F: ProcessorFactory>(task: &LeaseTask<F>) -> Option<Lease> {
    match task
        .runtime
        .store
        .get_lease(&plan_key(&task.key().stream))
        .await
    {
        Ok(plan) => plan,
        Err(error) => {
            tracing::warn!(segment = %task.key().shard_id, %error, "cannot read the snapshot's plan; its duration is not checked against the stream's retention");
            None
        }
    }
}

/// The scan task of a segment: reads its pages and hands them over as snapshot records.
struct Scan {
    scanner: Arc<dyn TableScan>,
    store: Arc<dyn LeaseStore>,
    table: String,
    stream_arn: String,
    segment_id: String,
    index: u32,
    total: u32,
    page_size: u32,
    progress_interval: std::time::Duration,
    /// The position after the last page read.
    position: Position,
    /// Items read so far (the position's count), for the end's log.
    items: Arc<AtomicU64>,
}

impl Scan {
    fn new<F: ProcessorFactory>(task: &LeaseTask<F>) -> Result<Self, Error> {
        let key = task.key();
        let Some(config) = task.runtime.config.snapshot.clone() else {
            return Err(Error::Config {
                key: "with_snapshot",
                problem: format!(
                    "this worker holds snapshot segment {} of stream {} but has no snapshot configured: give every worker of the application `with_snapshot`",
                    key.shard_id, key.stream
                ),
            });
        };
        let table = task
            .table
            .clone()
            .or_else(|| table_of_stream(&key.stream).map(str::to_owned))
            .unwrap_or_default();
        let problem = |problem| segment_problem(&table, &key.stream, &key.shard_id, problem);
        let scanner = config
            .scanner
            .ok_or_else(|| problem("no table reader".into()))?;
        let position = match &task.lease.checkpoint {
            Checkpoint::Scan(text) => Position::decode(text).map_err(problem)?,
            _ => Position::default(),
        };
        let (index, total) = parse_segment_id(&key.shard_id).unwrap_or((0, 1));
        Ok(Self {
            scanner,
            store: task.runtime.store.clone(),
            table,
            stream_arn: key.stream.clone(),
            segment_id: key.shard_id.clone(),
            index,
            total,
            page_size: config.page_size,
            progress_interval: config.progress_interval,
            items: Arc::new(AtomicU64::new(position.items)),
            position,
        })
    }

    /// An error naming the table, stream and segment.
    fn problem(&self, problem: String) -> Error {
        segment_problem(&self.table, &self.stream_arn, &self.segment_id, problem)
    }

    /// Reads pages into `tx` until the segment's end, an error, or `cancel`. Each page is
    /// paid for from the worker's `budget` before it is asked for, as a shard's.
    async fn run(
        mut self,
        budget: ByteBudget,
        tx: mpsc::Sender<Fetched>,
        cancel: CancellationToken,
    ) {
        let last = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            last = self.read(&budget, &tx) => last,
        };
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    }

    /// Reads and hands over pages; returns what ends the segment's source (`None`: nobody
    /// receives any more).
    async fn read(&mut self, budget: &ByteBudget, tx: &mpsc::Sender<Fetched>) -> Option<Fetched> {
        let keys = retry::call(retry::table_scan(), retry::is_retryable_api, || {
            self.scanner.key_attributes(&self.table)
        })
        .await;
        let keys = match keys {
            Ok(keys) => keys,
            Err(error) => return Some(Fetched::Failed(error.into())),
        };
        let expected = first_expected_cost(budget);
        let mut last_progress = Instant::now();
        loop {
            if last_progress.elapsed() >= self.progress_interval {
                last_progress = Instant::now();
                self.report_progress().await;
            }
            let reservation = budget.reserve(expected.load(Ordering::Relaxed)).await;
            let request = PageRequest {
                table: &self.table,
                segment: self.index,
                total_segments: self.total,
                start: self.position.after.as_ref(),
                limit: self.page_size,
            };
            let page = retry::call(retry::table_scan(), retry::is_retryable_api, || {
                self.scanner.scan_page(request)
            })
            .await;
            let page = match page {
                Ok(page) => page,
                Err(error) => return Some(Fetched::Failed(error.into())),
            };
            let Some(records) = page
                .items
                .iter()
                .map(|item| snapshot_record(item, &keys))
                .collect::<Option<Vec<Record>>>()
            else {
                let problem = "an item has an attribute type this SDK version does not know";
                return Some(Fetched::Failed(self.problem(problem.into())));
            };
            self.position.items += records.len() as u64;
            self.position.after = page.last_evaluated_key;
            self.items.store(self.position.items, Ordering::Relaxed);
            SnapshotPageRead {
                stream_arn: &self.stream_arn,
                segment: &self.segment_id,
                items: records.len(),
            }
            .emit();
            // The last page needs no position: `SHARD_END` follows it.
            let end =
                (self.position.after.is_some()).then(|| Checkpoint::Scan(self.position.encode()));
            let page = FetchedPage::new(records, reservation, expected.clone(), end);
            tx.send(Fetched::Records(page)).await.ok()?;
            if self.position.after.is_none() {
                return Some(Fetched::ShardEnd);
            }
        }
    }

    async fn report_progress(&self) {
        report_progress(
            &self.store,
            &self.stream_arn,
            &self.segment_id,
            self.position.items,
        )
        .await;
    }
}

/// An error naming the table, stream and segment.
fn segment_problem(table: &str, stream_arn: &str, segment: &str, problem: String) -> Error {
    Error::Snapshot {
        table: table.to_owned(),
        stream_arn: stream_arn.to_owned(),
        problem: format!("segment {segment}: {problem}"),
    }
}

/// A segment's end: `SHARD_END` (no children: the stream's roots wait for the snapshot's
/// gate, finished here after the last segment), the retention check, the progress.
struct SegmentEnd {
    started_at: Option<SystemTime>,
    items: Arc<AtomicU64>,
}

impl<F: ProcessorFactory> EndOfSource<F> for SegmentEnd {
    async fn end(self, session: &mut Session<'_, F>) -> ShardOutcome {
        if let Err(outcome) = session.read_to_end().await {
            return outcome;
        }
        if let Some(t0) = self.started_at {
            report_if_late(session, t0).await;
        }
        let key = session.key().clone();
        let store = session.task.runtime.store.clone();
        segment_finished(&store, &key, self.items.load(Ordering::Relaxed)).await;
        ShardOutcome::Ended
    }
}

/// After the segment's `SHARD_END` (every pipeline's, with pipelines): the event, the log
/// line and the snapshot's progress, once per segment.
async fn segment_finished(store: &Arc<dyn LeaseStore>, key: &LeaseKey, items: u64) {
    ShardEnded {
        stream_arn: &key.stream,
        shard_id: &key.shard_id,
        children: 0,
    }
    .emit();
    tracing::info!(stream_arn = %key.stream, segment = %key.shard_id, items, "snapshot segment finished");
    report_progress(store, &key.stream, &key.shard_id, items).await;
}

/// Logs segments done of total and items read (the segments' counts from the lease table);
/// a segment's end also finishes the snapshot's gate if this was the last segment.
async fn report_progress(store: &Arc<dyn LeaseStore>, stream_arn: &str, segment: &str, items: u64) {
    let Ok(leases) = store.list_leases().await else {
        return;
    };
    if let Err(error) = super::finish_gate(store.as_ref(), stream_arn, &leases).await {
        // The shard-sync holder finishes it on its next sync.
        tracing::warn!(stream_arn, %error, "cannot finish the snapshot's gate yet");
    }
    if let Some(progress) = super::progress(&leases)
        .into_iter()
        .find(|p| p.stream_arn == stream_arn)
    {
        SnapshotProgressed {
            stream_arn,
            segment,
            segment_items: items,
            segments_done: progress.segments_done,
            segments: progress.segments,
            items_in_open_segments: progress.items_in_open_segments,
        }
        .emit();
    }
}

/// A scanned item as a stream record of the `SNAPSHOT` kind: keys (the key attributes),
/// the item as its new image, no sequence number; `None` if an attribute's type is unknown.
fn snapshot_record(item: &Item, key_names: &[String]) -> Option<Record> {
    let image = to_stream_item(item)?;
    let keys = key_names
        .iter()
        .filter_map(|name| Some((name.clone(), image.get(name)?.clone())))
        .collect();
    let record = StreamRecord::builder()
        .set_keys(Some(keys))
        .set_new_image(Some(image))
        .build();
    Some(
        Record::builder()
            .event_name(OperationType::from(SNAPSHOT_EVENT))
            .dynamodb(record)
            .build(),
    )
}
