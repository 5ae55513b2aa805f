//! Every log line worth counting, defined together with its metric: one type per event.
//!
//! An event is a struct holding what happened; [`Event::emit`] writes its log line and
//! bumps its metric, so the two cannot drift apart (the shape of Vector's `InternalEvent`).
//! Metrics go through the `metrics` facade: they cost nothing until the application
//! installs a recorder (e.g. `metrics-exporter-prometheus`). Names share the prefix
//! `ddb_stream_`. Labels stay bounded: the stream (its table name, see
//! [`stream_label`]) where it applies, never shard ids (shards roll over every few hours,
//! so per-shard series would grow without end); the worker is a global label of the
//! exporter (`observability::serve_metrics`). Lag gauges are published by `lag.rs`.
//! The delivery metrics of a named pipeline (`with_pipeline`) carry a `pipeline` label too
//! (bounded: the names in the code); the one unnamed consumer's carry none.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dynamodb_streams_leases::LeaseKey;
use metrics::{counter, gauge, histogram};

use crate::stream_arn::stream_label;
use crate::streams::ApiError;

/// The labels of a delivery metric: the stream (when the metric has it) and the pipeline
/// (when named).
fn delivery_labels(
    stream_arn: Option<&str>,
    pipeline: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut labels = Vec::with_capacity(2);
    if let Some(stream_arn) = stream_arn {
        labels.push(("stream", stream_label(stream_arn).to_owned()));
    }
    if let Some(pipeline) = pipeline {
        labels.push(("pipeline", pipeline.to_owned()));
    }
    labels
}

/// Something the consumer reports: a log line and its metric.
pub(crate) trait Event {
    /// Logs the event and counts it.
    fn emit(self);
}

/// A streams call failed and is retried after `pause`.
pub(crate) struct ApiRetried<'a> {
    pub shard_id: &'a str,
    pub error: &'a ApiError,
    pub pause: Duration,
}

impl Event for ApiRetried<'_> {
    fn emit(self) {
        let (shard_id, error) = (self.shard_id, self.error);
        tracing::warn!(shard_id, %error, pause = ?self.pause, "streams call failed; retrying");
        let kind = error.kind.to_string();
        counter!("ddb_stream_api_retries_total", "operation" => error.operation, "kind" => kind)
            .increment(1);
    }
}

/// A batch was handed to a processor and returned Ok, or failed partially
/// (`BatchFailure`): `records` counts the records processed Ok, the failure's prefix then.
/// The lag gauge is not set here: it is the age of the oldest record still pending,
/// published by `lag.rs` every second.
pub(crate) struct BatchProcessed<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    pub records: usize,
    pub behind_latest: Option<Duration>,
    /// How long `process` took.
    pub duration: Duration,
    pub pipeline: Option<&'a str>,
}

impl Event for BatchProcessed<'_> {
    fn emit(self) {
        let (records, behind_latest) = (self.records, self.behind_latest);
        tracing::debug!(
            shard_id = self.shard_id,
            records,
            ?behind_latest,
            took = ?self.duration,
            "batch processed"
        );
        let labels = delivery_labels(Some(self.stream_arn), self.pipeline);
        counter!("ddb_stream_records_processed_total", &labels).increment(records as u64);
        counter!("ddb_stream_batches_processed_total", &labels).increment(1);
        histogram!("ddb_stream_batch_duration_seconds", &labels)
            .record(self.duration.as_secs_f64());
    }
}

/// A processor (or one of its hooks) returned an error; it is called again after `pause`.
pub(crate) struct ProcessingFailed<'a> {
    pub shard_id: &'a str,
    pub error: &'a crate::Error,
    /// Failed deliveries of this batch so far; 0 for a hook.
    pub attempt: u32,
    pub pause: Duration,
    pub pipeline: Option<&'a str>,
}

impl Event for ProcessingFailed<'_> {
    fn emit(self) {
        let (shard_id, error, attempt) = (self.shard_id, self.error, self.attempt);
        tracing::error!(shard_id, %error, attempt, pause = ?self.pause, "processing failed; the batch will be retried");
        counter!(
            "ddb_stream_processing_failures_total",
            &delivery_labels(None, self.pipeline)
        )
        .increment(1);
    }
}

/// A record did not decode; the shard waits at that record (nothing is skipped).
pub(crate) struct DecodeFailed<'a> {
    pub shard_id: &'a str,
    pub error: &'a crate::Error,
    pub pause: Duration,
    pub pipeline: Option<&'a str>,
}

impl Event for DecodeFailed<'_> {
    fn emit(self) {
        let (shard_id, error) = (self.shard_id, self.error);
        tracing::error!(shard_id, %error, pause = ?self.pause, "a record does not decode; the shard is held at that record and retried");
        counter!(
            "ddb_stream_decode_failures_total",
            &delivery_labels(None, self.pipeline)
        )
        .increment(1);
    }
}

/// Records were trimmed before we read them: data was lost to this application.
pub(crate) struct DataTrimmed<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    /// Where reading should have gone on.
    pub wanted: &'a str,
    /// Where it goes on instead.
    pub resumed_at: &'a str,
}

impl Event for DataTrimmed<'_> {
    fn emit(self) {
        let (stream_arn, shard_id) = (self.stream_arn, self.shard_id);
        tracing::error!(
            stream_arn,
            shard_id,
            wanted = self.wanted,
            resumed_at = self.resumed_at,
            "DATA LOSS: records were trimmed from the stream before they were processed"
        );
        let labels = [("stream", stream_label(stream_arn).to_owned())];
        counter!("ddb_stream_data_loss_events_total", &labels).increment(1);
    }
}

/// A checkpoint was written to the lease table. Besides the count, the time of the last
/// write per stream: `time() - ddb_stream_last_checkpoint_timestamp_seconds` is the
/// checkpoint age (how much a crash now would re-deliver, in time).
pub(crate) struct CheckpointWritten<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    pub checkpoint: &'a str,
    pub pipeline: Option<&'a str>,
}

impl Event for CheckpointWritten<'_> {
    fn emit(self) {
        let checkpoint = self.checkpoint;
        tracing::debug!(shard_id = self.shard_id, checkpoint, "checkpoint written");
        let labels = delivery_labels(Some(self.stream_arn), self.pipeline);
        counter!("ddb_stream_checkpoints_total", &labels).increment(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        gauge!("ddb_stream_last_checkpoint_timestamp_seconds", &labels).set(now.as_secs_f64());
    }
}

/// Staged DynamoDB writes were committed with the checkpoint in one transaction.
pub(crate) struct TransactionCommitted<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    pub checkpoint: &'a str,
    /// The staged writes in it (the checkpoint update not counted).
    pub writes: usize,
    pub pipeline: Option<&'a str>,
}

impl Event for TransactionCommitted<'_> {
    fn emit(self) {
        let (checkpoint, writes) = (self.checkpoint, self.writes);
        tracing::debug!(
            shard_id = self.shard_id,
            checkpoint,
            writes,
            "transaction committed"
        );
        let labels = delivery_labels(Some(self.stream_arn), self.pipeline);
        counter!("ddb_stream_transactions_total", &labels).increment(1);
        counter!("ddb_stream_transaction_writes_total", &labels).increment(writes as u64);
        CheckpointWritten {
            stream_arn: self.stream_arn,
            shard_id: self.shard_id,
            checkpoint,
            pipeline: self.pipeline,
        }
        .emit();
    }
}

/// A shard was read to its end and marked `SHARD_END`.
pub(crate) struct ShardEnded<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    /// Child leases created (0 when they are left to the next shard sync).
    pub children: usize,
}

impl Event for ShardEnded<'_> {
    fn emit(self) {
        let (stream_arn, shard_id, children) = (self.stream_arn, self.shard_id, self.children);
        tracing::info!(stream_arn, shard_id, children, "shard finished");
        counter!("ddb_stream_shards_ended_total").increment(1);
    }
}

/// This worker took a lease.
pub(crate) struct LeaseAcquired<'a> {
    pub lease: &'a LeaseKey,
    pub previous_owner: Option<&'a str>,
}

impl Event for LeaseAcquired<'_> {
    fn emit(self) {
        let previous_owner = self.previous_owner;
        tracing::info!(lease = %self.lease, previous_owner, "lease acquired");
        counter!("ddb_stream_leases_acquired_total").increment(1);
    }
}

/// This worker lost a lease it was processing.
pub(crate) struct LeaseLost<'a> {
    pub lease: &'a LeaseKey,
    pub reason: &'a str,
}

impl Event for LeaseLost<'_> {
    fn emit(self) {
        let reason = self.reason;
        tracing::warn!(lease = %self.lease, reason, "lease lost; shard processing stopped");
        counter!("ddb_stream_leases_lost_total").increment(1);
    }
}

/// This worker gave a lease up (shutdown or handoff).
pub(crate) struct LeaseReleased<'a> {
    pub lease: &'a LeaseKey,
    /// The worker that asked for it, on a handoff.
    pub to: Option<&'a str>,
}

impl Event for LeaseReleased<'_> {
    fn emit(self) {
        tracing::info!(lease = %self.lease, to = self.to, "lease released");
        counter!("ddb_stream_leases_released_total").increment(1);
    }
}

/// Records the filter did not want: counted and checkpointed past, not delivered.
pub(crate) struct RecordsFiltered<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    pub records: usize,
    pub pipeline: Option<&'a str>,
}

impl Event for RecordsFiltered<'_> {
    fn emit(self) {
        let records = self.records;
        tracing::debug!(shard_id = self.shard_id, records, "records filtered out");
        counter!(
            "ddb_stream_records_filtered_total",
            &delivery_labels(Some(self.stream_arn), self.pipeline)
        )
        .increment(records as u64);
    }
}

/// Records created before a shard's start time (`Checkpoint::Since`): counted and
/// checkpointed past, not delivered. Not a loss: the lease asked to start after them, as
/// `LATEST` does, so the log is at info level.
pub(crate) struct RecordsSkippedBeforeStart<'a> {
    pub stream_arn: &'a str,
    pub shard_id: &'a str,
    pub records: usize,
    /// The last record skipped.
    pub last: &'a str,
    pub pipeline: Option<&'a str>,
}

impl Event for RecordsSkippedBeforeStart<'_> {
    fn emit(self) {
        let records = self.records;
        tracing::info!(
            shard_id = self.shard_id,
            records,
            last = self.last,
            "records created before the shard's start time skipped"
        );
        counter!(
            "ddb_stream_records_skipped_before_start_total",
            &delivery_labels(Some(self.stream_arn), self.pipeline)
        )
        .increment(records as u64);
    }
}

/// Records left the normal path (retries exhausted, too old, undecodable, panicked, timed
/// out) and go to the on-failure handler. Names shard and sequence numbers, never values.
pub(crate) struct RecordsFailed<'a> {
    pub failed: &'a crate::failure::FailedRecords,
    pub pipeline: Option<&'a str>,
}

impl Event for RecordsFailed<'_> {
    fn emit(self) {
        let failed = self.failed;
        let mut seqs = failed.sequence_numbers();
        let first = seqs.next();
        let last = seqs.last().or(first);
        let reason = failed.reason.as_str();
        tracing::error!(
            stream_arn = %failed.stream_arn,
            shard_id = %failed.shard_id,
            reason,
            records = failed.records.len(),
            first,
            last,
            error = %failed.error,
            "records taken off the normal path; handing them to the on-failure handler"
        );
        let mut labels = delivery_labels(Some(&failed.stream_arn), self.pipeline);
        labels.push(("reason", reason.to_owned()));
        counter!("ddb_stream_records_failed_total", &labels).increment(failed.records.len() as u64);
    }
}

/// The worker was fenced (its heartbeat could not be written for too long) while it ran a
/// leader's round: the round's view of ownership may be stale, so the leases it found for
/// this worker are not acted on. Scans are never discarded for being slow (the leader's
/// writes are conditional on what it read), so this counts only fenced rounds.
pub(crate) struct LeaseScanDiscarded {
    pub took: Duration,
}

impl Event for LeaseScanDiscarded {
    fn emit(self) {
        tracing::warn!(took = ?self.took, "worker fenced during a leader's round; its results are discarded");
        counter!("ddb_stream_lease_scans_discarded_total").increment(1);
    }
}

/// A snapshot segment read a page of items (`with_snapshot`), handed to its delivery.
pub(crate) struct SnapshotPageRead<'a> {
    pub stream_arn: &'a str,
    pub segment: &'a str,
    pub items: usize,
}

impl Event for SnapshotPageRead<'_> {
    fn emit(self) {
        let (segment, items) = (self.segment, self.items);
        tracing::debug!(segment, items, "snapshot page read");
        let labels = [("stream", stream_label(self.stream_arn).to_owned())];
        counter!("ddb_stream_snapshot_items_total", &labels).increment(items as u64);
    }
}

/// Where a snapshot stands, logged by each running segment every progress interval and when
/// it finishes: segments done of total (from the lease table) and items read.
pub(crate) struct SnapshotProgressed<'a> {
    pub stream_arn: &'a str,
    pub segment: &'a str,
    /// Items this segment read so far.
    pub segment_items: u64,
    /// Segments read to their end, of all.
    pub segments_done: u32,
    pub segments: u32,
    /// Items delivered by the segments not finished yet (as their leases say).
    pub items_in_open_segments: u64,
}

impl Event for SnapshotProgressed<'_> {
    fn emit(self) {
        let (done, segments) = (self.segments_done, self.segments);
        tracing::info!(
            stream_arn = self.stream_arn,
            segment = self.segment,
            segment_items = self.segment_items,
            segments_done = done,
            segments,
            items_in_open_segments = self.items_in_open_segments,
            "snapshot progress: {done} of {segments} segments done",
        );
        let labels = [("stream", stream_label(self.stream_arn).to_owned())];
        gauge!("ddb_stream_snapshot_segments_done", &labels).set(f64::from(done));
        gauge!("ddb_stream_snapshot_segments", &labels).set(f64::from(segments));
    }
}
