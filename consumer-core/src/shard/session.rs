//! One delivery session: a processor, its checkpointer and the records given to it, for a
//! shard's stream records and a snapshot segment's scanned items alike.
//!
//! The failure policy lives here, once: routing (too old, filtered), decoding, the
//! `process` call under [`crate::callback`]'s rule, retries with backoff, bisection,
//! partial batch responses, the staged writes' commit, the on-failure handler, and the
//! checkpoint that follows the last record done (processed, filtered, or accepted by the
//! handler). Failing ranges are retried in one loop over index ranges, never by recursion.
//!
//! Every record is done exactly once and in order ([`Session::done`]); where the lease's
//! position goes then is [`super::progress`].

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use backon::BackoffBuilder;
use dynamodb_streams_leases::{LeaseKey, SequenceNumber};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fetch::{Fetched, FetchedPage};
use super::progress::{PageEnds, Progress, is_lease_lost, record_seq};
use crate::budget::Reservation;
use crate::callback::{CallbackFailed, Callbacks, Called, Interrupted};
use crate::change::{Change, ChangeBatch, decode_prefix};
use crate::checkpointer::Checkpointer;
use crate::delivery::{DeliveryConfig, Route};
use crate::error::{Error, Result};
use crate::events::{
    BatchProcessed, DecodeFailed, Event, ProcessingFailed, RecordsFailed, RecordsFiltered,
    RecordsSkippedBeforeStart,
};
use crate::failure::{BatchFailure, FailedAt, FailedRecords, FailureReason};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};
use crate::retry;
use crate::runtime::LeaseTask;
use crate::start_time::StartTimeSkip;

/// The item type of a factory's processors.
pub(crate) type ItemOf<F> = <<F as ProcessorFactory>::Processor as RecordProcessor>::Item;

/// The processor and checkpointer of a running lease, and what may interrupt them.
pub(crate) struct Session<'a, F: ProcessorFactory> {
    pub task: &'a LeaseTask<F>,
    pub processor: &'a mut F::Processor,
    pub checkpointer: &'a mut Checkpointer,
    pub callbacks: &'a Callbacks,
    /// Scan positions reached when records taken in are done (a segment's pages).
    pub(super) page_ends: PageEnds,
}

/// Records taken in and not delivered yet, with the shares of the memory budget their
/// pages hold until then.
#[derive(Default)]
pub(crate) struct Gathered {
    pub records: VecDeque<Arc<Record>>,
    held: Vec<Reservation>,
}

impl Gathered {
    pub(crate) fn add(&mut self, records: Vec<Arc<Record>>, reservation: Reservation) {
        self.records.extend(records);
        self.held.push(reservation);
    }

    /// The records were delivered: their pages' budget comes back.
    pub(crate) fn delivered(&mut self) {
        self.held.clear();
    }

    /// Everything, for key parallelism (one page comes in here): the records and the page's
    /// budget (any other page's is given back).
    pub(crate) fn take(&mut self) -> (Vec<Arc<Record>>, Option<Reservation>) {
        let reservation = self.held.drain(..).next();
        (self.records.drain(..).collect(), reservation)
    }
}

/// A failed `process` call.
struct AttemptFailed {
    failed: CallbackFailed,
    /// A partial batch response: the first record that did not succeed, by its place in
    /// the batch (`None`: the whole batch failed) ...
    index: Option<usize>,
    /// ... and its sequence number: the staged writes of the records before it commit.
    at: Option<SequenceNumber>,
}

impl<'a, F: ProcessorFactory> Session<'a, F> {
    pub(crate) fn new(
        task: &'a LeaseTask<F>,
        processor: &'a mut F::Processor,
        checkpointer: &'a mut Checkpointer,
        callbacks: &'a Callbacks,
    ) -> Self {
        Self {
            task,
            processor,
            checkpointer,
            callbacks,
            page_ends: PageEnds::default(),
        }
    }
}

impl<F: ProcessorFactory> Session<'_, F> {
    pub(crate) fn key(&self) -> &LeaseKey {
        self.task.key()
    }

    pub(crate) fn delivery(&self) -> &DeliveryConfig {
        &self.task.runtime.config.delivery
    }

    /// `initialize`, retried (with the processing backoff) until it returns `Ok`.
    pub(crate) async fn initialize(&mut self, ctx: &ShardContext) -> Result<(), Interrupted> {
        let mut backoff = self.processing_backoff();
        loop {
            let called = self
                .callbacks
                .hook("initialize", self.processor.initialize(ctx));
            match called.await? {
                Ok(()) => return Ok(()),
                Err(error) => self.pause_after_failure(&error, 0, &mut backoff).await?,
            }
        }
    }

    /// Tells the processor about lost data (trimmed records, a vanished shard).
    pub(crate) async fn data_lost(&mut self, loss: &DataLoss) -> Result<(), Interrupted> {
        let told = self.processor.data_lost(loss);
        self.callbacks.notify("data_lost", told).await
    }

    /// Waits for more pages until `batch` holds `max` records: only pages already fetched
    /// without a batching window, else up to the window. Anything that is not records
    /// ends the wait and is returned, to be handled after the batch.
    pub(crate) async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Fetched>,
        batch: &mut Gathered,
        max: usize,
    ) -> Result<Option<Fetched>, Interrupted> {
        let window = self.delivery().batching_window;
        let deadline = Instant::now() + window;
        while batch.records.len() < max {
            let next = if window.is_zero() {
                match rx.try_recv() {
                    Ok(next) => next,
                    Err(_) => return Ok(None),
                }
            } else {
                let wait = tokio::time::timeout_at(deadline, rx.recv());
                match self.callbacks.until_stopped(wait).await? {
                    Ok(Some(next)) => next,
                    Ok(None) | Err(_) => return Ok(None),
                }
            };
            match next {
                Fetched::Records(page) => {
                    let (records, reservation) = self.take_in(page).await?;
                    batch.add(records, reservation);
                }
                // Only a hint to flush; the batch will checkpoint anyway.
                Fetched::Idle => {}
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// A page from the fetch task, taken in ([`Progress::take_in`]).
    pub(crate) async fn take_in(
        &mut self,
        page: FetchedPage,
    ) -> Result<(Vec<Arc<Record>>, Reservation), Interrupted> {
        self.progress().take_in(page).await
    }

    /// Every record of `records` (and before) is done ([`Progress::done`]).
    pub(crate) async fn done(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        self.progress().done(records).await
    }

    fn progress(&mut self) -> Progress<'_, F> {
        Progress::new(self.task, self.checkpointer, &mut self.page_ends)
    }

    /// Delivers what was gathered, `max` records at a time.
    pub(crate) async fn deliver_all(
        &mut self,
        batch: &mut VecDeque<Arc<Record>>,
        max: usize,
    ) -> Result<(), Interrupted> {
        while !batch.is_empty() {
            let take = batch.len().min(max);
            let records: Vec<Arc<Record>> = batch.drain(..take).collect();
            self.deliver(&records).await?;
        }
        Ok(())
    }

    /// Delivers consecutive records in order: runs too old for the maximum record age go to
    /// the failure handler; of the others, those the filter keeps go to the processor under
    /// the failure policy (as one batch: filtered records in between do not split it) and
    /// those it drops are counted and checkpointed past.
    async fn deliver(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        if self.delivery().filter.is_none() && self.delivery().max_record_age.is_none() {
            // Nothing to route: every record goes to the processor.
            return self.deliver_run(records).await;
        }
        // The records' creation times are the service's: measure their age on its clock.
        let now = self.task.runtime.api.now();
        let routes: Vec<Route> = records
            .iter()
            .map(|record| self.delivery().route(record, now))
            .collect();
        let mut start = 0;
        while start < records.len() {
            let too_old = routes[start] == Route::TooOld;
            let end = (start..records.len())
                .find(|&i| (routes[i] == Route::TooOld) != too_old)
                .unwrap_or(records.len());
            let run = &records[start..end];
            let routes = &routes[start..end];
            if too_old {
                let max_age = self.delivery().max_record_age.unwrap_or_default();
                let error = format!("older than the maximum record age ({max_age:?}) when fetched");
                self.give_up(run, FailureReason::TooOld, error).await?;
            } else {
                let pick = |route: Route| -> Vec<Arc<Record>> {
                    run.iter()
                        .zip(routes)
                        .filter(|(_, r)| **r == route)
                        .map(|(record, _)| record.clone())
                        .collect()
                };
                let kept = pick(Route::Deliver);
                if kept.len() < run.len() {
                    let filtered = pick(Route::Filtered);
                    RecordsFiltered {
                        stream_arn: &self.key().stream,
                        shard_id: &self.key().shard_id,
                        records: filtered.len(),
                        pipeline: self.task.pipeline(),
                    }
                    .emit();
                    let told = self.processor.records_filtered(&filtered);
                    self.callbacks.notify("records_filtered", told).await?;
                }
                self.deliver_run(&kept).await?;
                if kept.len() < run.len() {
                    // The filtered records among them are done too.
                    self.done(run).await?;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Delivers records that pass the filter, under the failure policy: retries with
    /// backoff up to `max_retries`, bisection of failing batches, partial batch
    /// responses, and the failure handler for what is given up. An undecodable record
    /// ends the batch before it and is a failure of its own. Held records are retried in
    /// this loop, never by recursion.
    async fn deliver_run(&mut self, run: &[Arc<Record>]) -> Result<(), Interrupted> {
        let shard_id = self.key().shard_id.clone();
        let (max_retries, bisect) = (self.delivery().max_retries, self.delivery().bisect_on_error);
        let mut todo: VecDeque<Range<usize>> = VecDeque::new();
        todo.push_back(0..run.len());
        let mut attempts: u32 = 0;
        let mut backoff = self.processing_backoff();
        while let Some(range) = todo.pop_front() {
            if range.is_empty() {
                continue;
            }
            let (changes, undecodable) = decode_prefix::<ItemOf<F>>(&shard_id, &run[range.clone()]);
            let decoded_end = range.start + changes.len();
            if changes.is_empty() {
                if let Some((error, _)) = undecodable {
                    self.undecodable(&run[range.start], error).await?;
                }
                todo.push_front(range.start + 1..range.end);
                attempts = 0;
                continue;
            }
            todo.push_front(decoded_end..range.end);
            let tried = range.start..decoded_end;
            let failed = match self.attempt(changes, &run[tried.clone()]).await? {
                Ok(()) => {
                    self.done(&run[tried]).await?;
                    attempts = 0;
                    backoff = self.processing_backoff();
                    continue;
                }
                Err(failed) => failed,
            };
            // Where the failure starts: a partial batch response names the record.
            let partial_at = failed.index.map(|index| tried.start + index);
            let from = partial_at.unwrap_or(tried.start);
            if from > tried.start {
                self.done(&run[tried.start..from]).await?;
                attempts = 0;
            }
            attempts += 1;
            let rest = from..tried.end;
            let CallbackFailed { reason, error } = failed.failed;
            let exhausted = max_retries.is_some_and(|max| attempts > max);
            if bisect && partial_at.is_none() && rest.len() > 1 {
                let mid = rest.start + rest.len() / 2;
                todo.push_front(mid..rest.end);
                todo.push_front(rest.start..mid);
                tracing::warn!(%shard_id, records = rest.len(), %error, "batch failed; bisecting it");
                attempts = 0;
                continue;
            }
            if exhausted && self.delivery().on_failure.is_some() {
                let gone = if partial_at.is_some() {
                    from..from + 1
                } else {
                    rest.clone()
                };
                todo.push_front(gone.end..rest.end);
                self.give_up(&run[gone], reason, error.to_string()).await?;
                attempts = 0;
                backoff = self.processing_backoff();
                continue;
            }
            todo.push_front(rest);
            if exhausted {
                // No handler to take them: the shard holds here, retried at the longest pause.
                let mut held = std::iter::repeat(self.task.runtime.config.processing_backoff_max);
                self.pause_after_failure(&error, attempts, &mut held)
                    .await?;
            } else {
                self.pause_after_failure(&error, attempts, &mut backoff)
                    .await?;
            }
        }
        Ok(())
    }

    /// One `process` call with `changes` (decoded from `records`), under the callback rule;
    /// a panic or a timeout is a failure like an error. What `process` staged for the
    /// records that succeeded is committed with the checkpoint (stream records only:
    /// snapshot records have no sequence number to commit with).
    async fn attempt(
        &mut self,
        changes: Vec<Change<ItemOf<F>>>,
        records: &[Arc<Record>],
    ) -> Result<Result<(), AttemptFailed>, Interrupted> {
        let shard_id = self.key().shard_id.clone();
        if changes.is_empty() {
            return Ok(Ok(()));
        }
        let last_seq = records.last().and_then(|r| record_seq(r));
        let behind_latest = changes
            .last()
            .and_then(|c| c.approximate_creation_time)
            .and_then(|t| self.task.runtime.api.now().duration_since(t).ok());
        let count = changes.len();
        let batch = ChangeBatch {
            stream_arn: self.key().stream.clone(),
            shard_id: shard_id.clone(),
            changes,
            behind_latest,
        };
        let timeout = self.delivery().batch_timeout;
        if let Some(last) = &last_seq {
            self.checkpointer.begin(last);
        }
        let started = Instant::now();
        let call = self.processor.process(batch, self.checkpointer);
        let called = match self.callbacks.call(timeout, call).await {
            Ok(called) => called,
            Err(interrupted) => {
                self.checkpointer.end(None);
                return Err(interrupted);
            }
        };
        let result = match called {
            Called::Returned(Err(source)) => Err(match source.downcast::<BatchFailure>() {
                Ok(partial) => {
                    // A record outside the batch fails the whole batch, and nothing it
                    // staged commits: it is delivered again (before, the writes before
                    // an outside sequence number committed, and again on redelivery).
                    let index = match partial.at {
                        FailedAt::SequenceNumber(seq) => records
                            .iter()
                            .position(|r| record_seq(r).as_ref() == Some(&seq)),
                        FailedAt::Index(index) => (index < records.len()).then_some(index),
                    };
                    let at = index
                        .and_then(|i| records.get(i))
                        .and_then(|r| record_seq(r));
                    AttemptFailed {
                        failed: CallbackFailed {
                            reason: FailureReason::RetriesExhausted,
                            error: self.callbacks.failed(partial.source),
                        },
                        index,
                        at,
                    }
                }
                Err(source) => AttemptFailed {
                    failed: CallbackFailed {
                        reason: FailureReason::RetriesExhausted,
                        error: self.callbacks.failed(source),
                    },
                    index: None,
                    at: None,
                },
            }),
            called => match self.callbacks.failure("process", called) {
                None => Ok(()),
                Some(failed) => Err(AttemptFailed {
                    failed,
                    index: None,
                    at: None,
                }),
            },
        };
        // Processed Ok: the whole batch, or the records before a partial batch failure.
        let processed = match &result {
            Ok(()) => count,
            Err(failed) => failed.index.unwrap_or(0),
        };
        if processed > 0 {
            BatchProcessed {
                stream_arn: &self.key().stream,
                shard_id: &shard_id,
                records: processed,
                behind_latest,
                duration: started.elapsed(),
                pipeline: self.task.pipeline(),
            }
            .emit();
        }
        let result = match &last_seq {
            Some(last) => self.commit_staged(result, records, last).await?,
            None => result,
        };
        // Done records are marked by the caller; a failed call leaves nothing covered.
        self.checkpointer.end(None);
        Ok(result)
    }

    /// Commits the DynamoDB writes `process` staged (exactly-once) for the records that
    /// succeeded, with the checkpoint. A commit that fails makes the records from the first
    /// uncommitted one fail (a partial batch failure), so the failure policy retries them.
    async fn commit_staged(
        &mut self,
        result: Result<(), AttemptFailed>,
        records: &[Arc<Record>],
        last: &SequenceNumber,
    ) -> Result<Result<(), AttemptFailed>, Interrupted> {
        let failed_at = match &result {
            Ok(()) => None,
            Err(AttemptFailed { at: Some(at), .. }) => Some(at.clone()),
            // Nothing succeeded: the staged writes are dropped.
            Err(_) => return Ok(result),
        };
        let commit = self.checkpointer.commit_staged(failed_at.as_ref(), last);
        match self.callbacks.unless_lost(commit).await {
            Ok(Ok(())) => Ok(result),
            Ok(Err(failed)) if !is_lease_lost(&failed.error) => {
                let index = records
                    .iter()
                    .position(|r| record_seq(r).as_ref() == Some(&failed.first_uncommitted));
                Ok(Err(AttemptFailed {
                    failed: CallbackFailed {
                        reason: FailureReason::RetriesExhausted,
                        error: failed.error,
                    },
                    index,
                    at: Some(failed.first_uncommitted),
                }))
            }
            Ok(Err(_)) | Err(_) => {
                self.checkpointer.end(None);
                Err(Interrupted::Lost)
            }
        }
    }

    /// Takes the records created before the shard's start time off the front of `records`,
    /// counts them and checkpoints past them (`start_time`).
    pub(crate) async fn skip_before_start(
        &mut self,
        skip: &mut StartTimeSkip,
        records: &mut Vec<Arc<Record>>,
    ) -> Result<(), Interrupted> {
        let skipped = skip.take_skipped(records);
        let Some(last) = skipped.last().and_then(|r| record_seq(r)) else {
            return Ok(());
        };
        RecordsSkippedBeforeStart {
            stream_arn: &self.key().stream,
            shard_id: &self.key().shard_id,
            records: skipped.len(),
            last: last.as_str(),
            pipeline: self.task.pipeline(),
        }
        .emit();
        self.done(&skipped).await
    }

    /// A record whose image does not decode: to the failure handler if there is one (the
    /// shard moves on once it accepted it); else the shard holds here, reporting it on each
    /// retry, until the lease moves to a worker whose item type fits.
    async fn undecodable(&mut self, record: &Arc<Record>, error: Error) -> Result<(), Interrupted> {
        let shard_id = self.key().shard_id.clone();
        let has_handler = self.delivery().on_failure.is_some();
        let pause = if has_handler {
            Duration::ZERO
        } else {
            self.task.runtime.config.processing_backoff_max
        };
        loop {
            DecodeFailed {
                shard_id: &shard_id,
                error: &error,
                pause,
                pipeline: self.task.pipeline(),
            }
            .emit();
            let told = self.processor.decode_failed(&error);
            self.callbacks.notify("decode_failed", told).await?;
            if has_handler {
                let records = std::slice::from_ref(record);
                return self
                    .give_up(records, FailureReason::Undecodable, error.to_string())
                    .await;
            }
            self.callbacks.pause(pause).await?;
        }
    }

    /// Hands `records` to the failure handler, retrying it (with the processing backoff)
    /// until it accepts them, then checkpoints past them. Reported first: error log,
    /// metric, `RecordProcessor::records_failed`.
    async fn give_up(
        &mut self,
        records: &[Arc<Record>],
        reason: FailureReason,
        error: String,
    ) -> Result<(), Interrupted> {
        let Some(handler) = self.delivery().on_failure.clone() else {
            // `build` refuses settings that lead here without a handler; hold if it happens.
            let pause = self.task.runtime.config.processing_backoff_max;
            tracing::error!(shard_id = %self.key().shard_id, %reason, "no on-failure handler: the shard holds at these records");
            loop {
                self.callbacks.pause(pause).await?;
            }
        };
        let failed = FailedRecords {
            table: self.task.table.clone(),
            stream_arn: self.key().stream.clone(),
            shard_id: self.key().shard_id.clone(),
            reason,
            error,
            records: records.to_vec(),
        };
        RecordsFailed {
            failed: &failed,
            pipeline: self.task.pipeline(),
        }
        .emit();
        let told = self.processor.records_failed(&failed);
        self.callbacks.notify("records_failed", told).await?;
        let mut backoff = self.processing_backoff();
        loop {
            let handled = self
                .callbacks
                .hook("FailureHandler::handle", handler.handle(&failed));
            match handled.await? {
                Ok(()) => break,
                Err(error) => self.pause_after_failure(&error, 0, &mut backoff).await?,
            }
        }
        self.done(records).await
    }

    pub(crate) async fn flush_if_due(&mut self) -> Result<(), Interrupted> {
        self.progress().flush_if_due().await
    }

    /// Reports a failed delivery or hook and waits as the [`retry::processing`] policy
    /// says; `attempt` counts failed deliveries of a batch (0 for a hook).
    pub(crate) async fn pause_after_failure(
        &mut self,
        error: &Error,
        attempt: u32,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), Interrupted> {
        let pause = backoff
            .next()
            .unwrap_or(self.task.runtime.config.processing_backoff_max);
        ProcessingFailed {
            shard_id: &self.key().shard_id,
            error,
            attempt,
            pause,
            pipeline: self.task.pipeline(),
        }
        .emit();
        self.callbacks.pause(pause).await
    }

    pub(crate) fn processing_backoff(&self) -> impl Iterator<Item = Duration> + use<F> {
        retry::processing(self.task.runtime.config.processing_backoff_max).build()
    }
}
