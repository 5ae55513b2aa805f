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
//! position goes then is [`super::progress`]. The delivery loop is `attempts.rs`; the records
//! that leave the normal path are `given_up.rs`.

mod attempts;
mod given_up;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use backon::BackoffBuilder;
use dynamodb_streams_leases::LeaseKey;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batching::BatchingWindow;
use super::page::{Fetched, FetchedPage};
use super::progress::{PageEnds, Progress};
use crate::budget::Reservation;
use crate::callback::{Callbacks, Interrupted};
use crate::checkpointer::Checkpointer;
use crate::delivery::{DeliveryConfig, Route};
use crate::error::{Error, Result};
use crate::events::{Event, ProcessingFailed, RecordsFiltered};
use crate::failure::FailureReason;
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};
use crate::retry;
use crate::runtime::LeaseTask;

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

    /// Takes pages into `batch` until it holds `max` records: the pages already fetched,
    /// then more while the batching window's rule says the batch waits
    /// ([`BatchingWindow::waits`]). Anything that is not records ends the wait and is
    /// returned, to be handled after the batch.
    pub(crate) async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Fetched>,
        batch: &mut Gathered,
        max: usize,
    ) -> Result<Option<Fetched>, Interrupted> {
        let window = self.batching_window();
        let since = Instant::now();
        while batch.records.len() < max {
            let next = match rx.try_recv() {
                Ok(next) => next,
                Err(mpsc::error::TryRecvError::Disconnected) => return Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !window.waits(batch.records.len(), max, since, Instant::now(), true) {
                        return Ok(None);
                    }
                    let wait = async {
                        tokio::select! {
                            biased;
                            next = rx.recv() => next,
                            () = window.closes(since) => None,
                        }
                    };
                    match self.callbacks.until_stopped(wait).await? {
                        Some(next) => next,
                        None => return Ok(None),
                    }
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

    /// The batching window of this task's batches ([`super::batching`]).
    pub(crate) fn batching_window(&self) -> BatchingWindow {
        BatchingWindow::new(
            self.delivery().batching_window,
            self.task.runtime.budget.clone(),
        )
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
