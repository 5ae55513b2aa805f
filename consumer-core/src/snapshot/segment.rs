//! One snapshot segment under one lease: scan a page, deliver it as a batch of
//! `Snapshot` changes, checkpoint the last evaluated key, until the segment's end.
//!
//! It ends like a shard consumer ([`ShardOutcome`]): `Ended` once read to its end
//! (`SHARD_END` stored, so the stream leases waiting for every segment may start),
//! `Released` on shutdown or handoff, `LeaseLost` without writing, `Failed` on an error
//! it cannot get past (the worker restarts it later from the last checkpoint).

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::{OperationType, Record, StreamRecord};
use backon::BackoffBuilder;
use checkpoint_store::Checkpoint;
use futures::FutureExt;
use tokio::time::Instant;

use super::scan::{Item, PageRequest, Position, to_stream_item};
use super::{outlasted_retention, parse_segment_id, plan_key};
use crate::change::{Change, ChangeBatch, SNAPSHOT_EVENT, decode_prefix};
use crate::checkpointer::Checkpointer;
use crate::error::{Error, Result};
use crate::events::{
    DataTrimmed, DecodeFailed, Event, LeaseLost, LeaseReleased, ProcessingFailed, RecordsFailed,
    RecordsFiltered, ShardEnded, SnapshotPageDelivered, SnapshotProgressed,
};
use crate::failure::{FailedRecords, FailureReason};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};
use crate::retry;
use crate::runtime::{LeaseTask, ShardOutcome, ShardSignals};
use crate::stream_arn::table_of_stream;

/// Why a segment stopped before its end.
enum Stop {
    /// The lease is gone: stop without writing.
    Lost,
    /// Shutdown or handoff: release.
    Release,
    /// An error the worker retries later.
    Failed(Error),
}

impl From<Error> for Stop {
    fn from(error: Error) -> Self {
        if matches!(&error, Error::LeaseStore(e) if e.is_lease_lost()) {
            Self::Lost
        } else {
            Self::Failed(error)
        }
    }
}

/// Runs the segment of `consumer`'s lease until it ends, is stopped, or fails.
pub(crate) async fn run_segment<F: ProcessorFactory>(
    consumer: LeaseTask<F>,
    signals: ShardSignals,
) -> ShardOutcome {
    let key = consumer.lease.key.clone();
    let ctx = ShardContext {
        table: consumer.table.clone(),
        stream_arn: key.stream.clone(),
        shard_id: key.shard_id.clone(),
        parent_shard_ids: consumer.lease.parent_shard_ids.clone(),
        worker_id: consumer.runtime.worker_id.clone(),
        lease_owner: consumer.ownership.owner.clone(),
        lease_epoch: consumer.ownership.epoch,
        resumed_from: consumer.lease.checkpoint.clone(),
    };
    if consumer.lease.checkpoint.is_shard_end() {
        return ShardOutcome::Ended;
    }
    let mut processor = consumer.runtime.factory.create(&ctx);
    let checkpointer = Checkpointer::new(
        consumer.runtime.store.clone(),
        key.clone(),
        consumer.ownership.clone(),
        consumer.lease.checkpoint.clone(),
        consumer.runtime.config.checkpoint_interval,
    );
    // The framework checkpoints the scan position; the processor's own calls are not
    // written (a snapshot change has no sequence number to checkpoint).
    let mut checkpointer = checkpointer.detached();
    let mut segment = Segment {
        consumer: &consumer,
        signals: &signals,
        processor: &mut processor,
        checkpointer: &mut checkpointer,
    };
    match segment.run(&ctx).await {
        Ok(()) => ShardOutcome::Ended,
        Err(Stop::Release) => segment.release().await,
        Err(Stop::Lost) => segment.lost().await,
        Err(Stop::Failed(error)) => ShardOutcome::Failed(error),
    }
}

/// A running segment.
struct Segment<'a, F: ProcessorFactory> {
    consumer: &'a LeaseTask<F>,
    signals: &'a ShardSignals,
    processor: &'a mut F::Processor,
    checkpointer: &'a mut Checkpointer,
}

impl<F: ProcessorFactory> Segment<'_, F> {
    fn stream_arn(&self) -> &str {
        &self.consumer.lease.key.stream
    }

    fn segment_id(&self) -> &str {
        &self.consumer.lease.key.shard_id
    }

    /// An error naming the table, stream and segment.
    fn problem(&self, table: &str, problem: String) -> Error {
        Error::Snapshot {
            table: table.to_owned(),
            stream_arn: self.stream_arn().to_owned(),
            problem: format!("segment {}: {problem}", self.segment_id()),
        }
    }

    async fn run(&mut self, ctx: &ShardContext) -> Result<(), Stop> {
        let shared = &self.consumer.runtime;
        let Some(config) = shared.config.snapshot.clone() else {
            return Err(Stop::Failed(Error::Config {
                key: "with_snapshot",
                problem: format!(
                    "this worker holds snapshot segment {} of stream {} but has no snapshot configured: give every worker of the application `with_snapshot`",
                    self.segment_id(),
                    self.stream_arn()
                ),
            }));
        };
        let table = self
            .consumer
            .table
            .clone()
            .or_else(|| table_of_stream(self.stream_arn()).map(str::to_owned))
            .unwrap_or_default();
        let Some(scanner) = config.scanner.clone() else {
            return Err(Stop::Failed(self.problem(&table, "no table reader".into())));
        };
        let (index, total) = parse_segment_id(self.segment_id()).unwrap_or((0, 1));
        let mut position = match &self.consumer.lease.checkpoint {
            Checkpoint::Scan(text) => Position::decode(text)
                .map_err(|problem| Stop::Failed(self.problem(&table, problem)))?,
            _ => Position::default(),
        };
        let started_at = self.started_at().await;
        let signals = self.signals;
        call_hook(
            signals,
            &ctx.shard_id,
            self.processor.initialize(ctx),
            "initialize",
        )
        .await?;
        let keys = self
            .raced(retry::call(
                retry::table_scan(),
                retry::is_retryable_api,
                || scanner.key_attributes(&table),
            ))
            .await?
            .map_err(Error::from)?;
        let mut last_progress = Instant::now();
        loop {
            if self.signals.release.is_cancelled() {
                return Err(Stop::Release);
            }
            if last_progress.elapsed() >= config.progress_interval {
                last_progress = Instant::now();
                self.report_progress(&position).await;
            }
            let request = PageRequest {
                table: &table,
                segment: index,
                total_segments: total,
                start: position.after.as_ref(),
                limit: config.page_size,
            };
            let page = self
                .raced(retry::call(
                    retry::table_scan(),
                    retry::is_retryable_api,
                    || scanner.scan_page(request),
                ))
                .await?
                .map_err(Error::from)?;
            let records = page
                .items
                .iter()
                .map(|item| snapshot_record(item, &keys))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    self.problem(
                        &table,
                        "an item has an attribute type this SDK version does not know".into(),
                    )
                })?;
            if !records.is_empty() {
                self.deliver(&records).await?;
                SnapshotPageDelivered {
                    stream_arn: self.stream_arn(),
                    segment: self.segment_id(),
                    items: records.len(),
                }
                .emit();
            }
            position.items += records.len() as u64;
            position.after = page.last_evaluated_key;
            if position.after.is_none() {
                return self.end(&position, started_at).await;
            }
            self.write(&Checkpoint::Scan(position.encode())).await?;
        }
    }

    /// When the snapshot began, from its plan (`None` if the plan cannot be read: the
    /// retention check is then skipped, with a warning).
    async fn started_at(&mut self) -> Option<SystemTime> {
        let store = &self.consumer.runtime.store;
        let key = plan_key(self.stream_arn());
        match store.get_lease(&key).await {
            Ok(plan) => plan.and_then(|p| p.checkpoint.skip_before()),
            Err(error) => {
                tracing::warn!(segment = self.segment_id(), %error, "cannot read the snapshot's plan; its duration is not checked against the stream's retention");
                None
            }
        }
    }

    /// Delivers one page, as the failure policy says: a failing batch is delivered again
    /// after a pause (the `processing` policy); after `with_max_retries` failed deliveries
    /// it goes to the on-failure handler, if there is one (else it is retried forever). An
    /// item that does not decode goes to the handler (the items around it are delivered);
    /// without a handler it holds the segment (the worker restarts it after
    /// `with_retry_backoff_max`, reporting it each time).
    async fn deliver(&mut self, records: &[Arc<Record>]) -> Result<(), Stop> {
        let kept = self.filter(records).await?;
        let mut rest = kept.as_slice();
        while !rest.is_empty() {
            let (changes, failed) =
                decode_prefix::<<F::Processor as RecordProcessor>::Item>(self.segment_id(), rest);
            let decoded = changes.len();
            if decoded > 0 {
                self.deliver_decoded(&rest[..decoded], changes).await?;
            }
            let Some((error, index)) = failed else {
                return Ok(());
            };
            let handler = self.consumer.runtime.config.delivery.on_failure.clone();
            let pause = self.consumer.runtime.config.processing_backoff_max;
            DecodeFailed {
                shard_id: self.segment_id(),
                error: &error,
                pause: if handler.is_some() {
                    Duration::ZERO
                } else {
                    pause
                },
            }
            .emit();
            raced(self.signals, self.processor.decode_failed(&error)).await?;
            if handler.is_none() {
                return Err(Stop::Failed(error));
            }
            let undecodable = &rest[index..=index];
            self.give_up(undecodable, FailureReason::Undecodable, error.to_string())
                .await?;
            rest = &rest[index + 1..];
        }
        Ok(())
    }

    /// The records `with_filter` keeps; those it drops are counted and told to the
    /// processor (`records_filtered`), and the page's checkpoint passes them.
    async fn filter(&mut self, records: &[Arc<Record>]) -> Result<Vec<Arc<Record>>, Stop> {
        let Some(keep) = self.consumer.runtime.config.delivery.filter.clone() else {
            return Ok(records.to_vec());
        };
        let (kept, filtered): (Vec<Arc<Record>>, Vec<Arc<Record>>) =
            records.iter().cloned().partition(|record| keep(record));
        if !filtered.is_empty() {
            RecordsFiltered {
                stream_arn: self.stream_arn(),
                shard_id: self.segment_id(),
                records: filtered.len(),
            }
            .emit();
            let told = AssertUnwindSafe(self.processor.records_filtered(&filtered));
            if raced(self.signals, told.catch_unwind()).await?.is_err() {
                // Only a notification: the records are filtered out all the same.
                tracing::error!(shard_id = self.segment_id(), "records_filtered panicked");
            }
        }
        Ok(kept)
    }

    /// Delivers records that decode (`changes`, their first decoding; a retry decodes them
    /// again) until `process` returns `Ok`, or until the retries are used up and the
    /// on-failure handler took them. With `with_bisect_on_error`, a failing batch is split
    /// in halves (at once, as a shard's is) until the failing item is alone, so only it
    /// reaches the handler.
    async fn deliver_decoded(
        &mut self,
        records: &[Arc<Record>],
        changes: Vec<Change<<F::Processor as RecordProcessor>::Item>>,
    ) -> Result<(), Stop> {
        let delivery = &self.consumer.runtime.config.delivery;
        let (max_retries, has_handler, bisect) = (
            delivery.max_retries,
            delivery.on_failure.is_some(),
            delivery.bisect_on_error,
        );
        let max = self.consumer.runtime.config.processing_backoff_max;
        let mut pauses = retry::processing(max).build();
        let mut attempt = 0;
        let mut first = Some(changes);
        let mut todo: VecDeque<Range<usize>> = VecDeque::new();
        todo.push_back(0..records.len());
        while let Some(range) = todo.pop_front() {
            if range.is_empty() {
                continue;
            }
            let changes = match first.take() {
                Some(changes) => changes,
                None => decode_prefix(self.segment_id(), &records[range.clone()]).0,
            };
            let batch = ChangeBatch {
                stream_arn: self.stream_arn().to_owned(),
                shard_id: self.segment_id().to_owned(),
                changes,
                behind_latest: None,
            };
            let Some((reason, source)) = self.process(batch).await? else {
                attempt = 0;
                pauses = retry::processing(max).build();
                continue;
            };
            attempt += 1;
            let error = Error::Processor {
                shard_id: self.segment_id().to_owned(),
                source,
            };
            if bisect && range.len() > 1 {
                let mid = range.start + range.len() / 2;
                todo.push_front(mid..range.end);
                todo.push_front(range.start..mid);
                tracing::warn!(shard_id = self.segment_id(), records = range.len(), %error, "batch failed; bisecting it");
                attempt = 0;
                continue;
            }
            if has_handler && max_retries.is_some_and(|retries| attempt > retries) {
                self.give_up(&records[range], reason, error.to_string())
                    .await?;
                attempt = 0;
                pauses = retry::processing(max).build();
                continue;
            }
            let pause = pauses.next().unwrap_or(max);
            ProcessingFailed {
                shard_id: self.segment_id(),
                error: &error,
                attempt,
                pause,
            }
            .emit();
            todo.push_front(range);
            // A shutdown or handoff does not wait out the pause.
            let release = self.signals.release.clone();
            tokio::select! {
                biased;
                _ = self.signals.lost.cancelled() => return Err(Stop::Lost),
                _ = release.cancelled() => return Err(Stop::Release),
                _ = tokio::time::sleep(pause) => {}
            }
        }
        Ok(())
    }

    /// Hands `records` to the on-failure handler (reported first: error log, metric,
    /// `records_failed`), retrying the handler with the processing backoff until it took
    /// them; the segment then moves past them.
    async fn give_up(
        &mut self,
        records: &[Arc<Record>],
        reason: FailureReason,
        error: String,
    ) -> Result<(), Stop> {
        let Some(handler) = self.consumer.runtime.config.delivery.on_failure.clone() else {
            return Err(Stop::Failed(Error::Internal {
                shard_id: self.segment_id().to_owned(),
                problem: "records given up without an on-failure handler".into(),
            }));
        };
        let failed = FailedRecords {
            table: self.consumer.table.clone(),
            stream_arn: self.stream_arn().to_owned(),
            shard_id: self.segment_id().to_owned(),
            reason,
            error,
            records: records.to_vec(),
        };
        RecordsFailed { failed: &failed }.emit();
        raced(self.signals, self.processor.records_failed(&failed)).await?;
        let max = self.consumer.runtime.config.processing_backoff_max;
        let mut pauses = retry::processing(max).build();
        loop {
            let handled = raced(
                self.signals,
                AssertUnwindSafe(handler.handle(&failed)).catch_unwind(),
            )
            .await?;
            let error = match handled {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(error)) => error.to_string(),
                Err(_) => "the on-failure handler panicked".to_owned(),
            };
            let pause = pauses.next().unwrap_or(max);
            tracing::error!(segment = self.segment_id(), %error, ?pause, "the on-failure handler failed; retrying");
            raced(self.signals, tokio::time::sleep(pause)).await?;
        }
    }

    /// One `process` call, raced against lease loss, `with_batch_timeout` and (once
    /// shutdown or a handoff was asked for) the shutdown timeout. `None` when it returned
    /// `Ok`; else why it failed (an error, a panic or the timeout) and the error.
    async fn process(
        &mut self,
        batch: ChangeBatch<<F::Processor as RecordProcessor>::Item>,
    ) -> Result<Option<(FailureReason, crate::BoxError)>, Stop> {
        let timeout = self.consumer.runtime.config.delivery.shutdown_timeout;
        let batch_timeout = self.consumer.runtime.config.delivery.batch_timeout;
        let release = self.signals.release.clone();
        let lost = self.signals.lost.clone();
        let call =
            AssertUnwindSafe(self.processor.process(batch, self.checkpointer)).catch_unwind();
        tokio::select! {
            biased;
            _ = lost.cancelled() => Err(Stop::Lost),
            _ = async { release.cancelled().await; tokio::time::sleep(timeout).await } => Err(Stop::Release),
            _ = async {
                match batch_timeout {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            } => Ok(Some((
                FailureReason::TimedOut,
                format!("process did not return within the batch timeout ({batch_timeout:?})").into(),
            ))),
            called = call => Ok(match called {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some((FailureReason::RetriesExhausted, error)),
                Err(_) => Some((FailureReason::Panicked, "the processor panicked".into())),
            }),
        }
    }

    /// `future`, unless the lease is lost first.
    async fn raced<T>(&mut self, future: impl Future<Output = T>) -> Result<T, Stop> {
        raced(self.signals, future).await
    }

    /// Stores `checkpoint` if the lease is still ours.
    async fn write(&mut self, checkpoint: &Checkpoint) -> Result<(), Stop> {
        let shared = &self.consumer.runtime;
        let key = &self.consumer.lease.key;
        let ownership = &self.consumer.ownership;
        self.raced(retry::call(
            retry::lease_store(),
            retry::is_retryable_store,
            || shared.store.checkpoint(key, ownership, checkpoint),
        ))
        .await?
        .map_err(|e| Stop::from(Error::from(e)))?;
        Ok(())
    }

    /// The segment was read to its end: `shard_ended`, `SHARD_END`, and the retention check.
    async fn end(
        &mut self,
        position: &Position,
        started_at: Option<SystemTime>,
    ) -> Result<(), Stop> {
        let hook = self.processor.shard_ended(self.checkpointer);
        call_hook(
            self.signals,
            &self.consumer.lease.key.shard_id,
            hook,
            "shard_ended",
        )
        .await?;
        self.write(&Checkpoint::ShardEnd).await?;
        ShardEnded {
            stream_arn: self.stream_arn(),
            shard_id: self.segment_id(),
            children: 0,
        }
        .emit();
        tracing::info!(
            stream_arn = self.stream_arn(),
            segment = self.segment_id(),
            items = position.items,
            "snapshot segment finished"
        );
        let margin = self.consumer.runtime.config.creation_time_margin;
        let now = self.consumer.runtime.api.now();
        if started_at.is_some_and(|t0| outlasted_retention(t0, now, margin)) {
            self.report_late(started_at).await;
        }
        self.report_progress(position).await;
        Ok(())
    }

    /// The snapshot outlasted the stream's retention: records created after it began may
    /// be trimmed before the stream is read. Reported as data loss, never silent.
    async fn report_late(&mut self, started_at: Option<SystemTime>) {
        let wanted = format!(
            "records created since the snapshot began ({})",
            started_at.map_or_else(String::new, |t| humantime::format_rfc3339_millis(t)
                .to_string())
        );
        DataTrimmed {
            stream_arn: self.stream_arn(),
            shard_id: self.segment_id(),
            wanted: &wanted,
            resumed_at: "TRIM_HORIZON",
        }
        .emit();
        let loss = DataLoss {
            stream_arn: self.stream_arn().to_owned(),
            shard_id: self.segment_id().to_owned(),
            wanted,
            resumed_at: "TRIM_HORIZON".into(),
        };
        let _ = raced(self.signals, self.processor.data_lost(&loss)).await;
    }

    /// Logs segments done of total and items delivered (read from the lease table).
    async fn report_progress(&mut self, position: &Position) {
        let Ok(leases) = self.consumer.runtime.store.list_leases().await else {
            return;
        };
        if let Some(progress) = super::progress(&leases)
            .into_iter()
            .find(|p| p.stream_arn == self.stream_arn())
        {
            SnapshotProgressed {
                stream_arn: self.stream_arn(),
                segment: self.segment_id(),
                segment_items: position.items,
                progress: &progress,
            }
            .emit();
        }
    }

    /// Shutdown or handoff: `shutdown_requested` (at most the shutdown timeout), then the
    /// lease is released; the position of the last page is already stored.
    async fn release(&mut self) -> ShardOutcome {
        let timeout = self.consumer.runtime.config.delivery.shutdown_timeout;
        let told =
            AssertUnwindSafe(self.processor.shutdown_requested(self.checkpointer)).catch_unwind();
        let _ = tokio::time::timeout(timeout, raced(self.signals, told)).await;
        let shared = &self.consumer.runtime;
        let key = &self.consumer.lease.key;
        let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            shared.store.release_lease(key, &self.consumer.ownership)
        })
        .await;
        match released {
            Ok(_) => {
                LeaseReleased {
                    lease: key,
                    to: None,
                }
                .emit();
                ShardOutcome::Released
            }
            Err(e) if e.is_lease_lost() => self.lost().await,
            Err(e) => ShardOutcome::Failed(e.into()),
        }
    }

    /// The lease is gone: `lease_lost` (at most the shutdown timeout), nothing written.
    async fn lost(&mut self) -> ShardOutcome {
        LeaseLost {
            lease: &self.consumer.lease.key,
            reason: "taken by another worker, or this worker was fenced",
        }
        .emit();
        let timeout = self.consumer.runtime.config.delivery.shutdown_timeout;
        let _ = tokio::time::timeout(
            timeout,
            AssertUnwindSafe(self.processor.lease_lost()).catch_unwind(),
        )
        .await;
        ShardOutcome::LeaseLost
    }
}

/// A scanned item as a stream record of the `SNAPSHOT` kind: keys (the key attributes),
/// the item as its new image, no sequence number; `None` if an attribute's type is unknown.
fn snapshot_record(item: &Item, key_names: &[String]) -> Option<Arc<Record>> {
    let image = to_stream_item(item)?;
    let keys = key_names
        .iter()
        .filter_map(|name| Some((name.clone(), image.get(name)?.clone())))
        .collect();
    let record = StreamRecord::builder()
        .set_keys(Some(keys))
        .set_new_image(Some(image))
        .build();
    Some(Arc::new(
        Record::builder()
            .event_name(OperationType::from(SNAPSHOT_EVENT))
            .dynamodb(record)
            .build(),
    ))
}

/// `future`, unless the lease is lost first.
async fn raced<T>(signals: &ShardSignals, future: impl Future<Output = T>) -> Result<T, Stop> {
    tokio::select! {
        biased;
        _ = signals.lost.cancelled() => Err(Stop::Lost),
        done = future => Ok(done),
    }
}

/// A processor hook (`initialize`, `shard_ended`) of segment `segment`: an error or a
/// panic fails the segment (the worker restarts it later).
async fn call_hook(
    signals: &ShardSignals,
    segment: &str,
    hook: impl Future<Output = Result<(), crate::BoxError>>,
    name: &str,
) -> Result<(), Stop> {
    let failed = |source: String| {
        Stop::Failed(Error::Processor {
            shard_id: segment.to_owned(),
            source: source.into(),
        })
    };
    match raced(signals, AssertUnwindSafe(hook).catch_unwind()).await? {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(failed(format!("{name}: {source}"))),
        Err(_) => Err(failed(format!("{name} panicked"))),
    }
}
