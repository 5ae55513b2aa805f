//! Every log line worth counting, defined together with its metric.
//!
//! Metrics go through the `metrics` facade: they cost nothing until the application
//! installs a recorder (e.g. `metrics-exporter-prometheus`). Names share the prefix
//! `ddb_stream_`; labels are the stream (ARN) and shard where they apply.

use std::time::Duration;

use metrics::{counter, gauge};

use crate::streams::ApiError;

/// A streams call failed and is retried after `pause`.
pub(crate) fn api_retry(shard_id: &str, error: &ApiError, pause: Duration) {
    tracing::warn!(shard_id, %error, ?pause, "streams call failed; retrying");
    counter!("ddb_stream_api_retries_total", "operation" => error.operation, "kind" => error.kind.to_string())
        .increment(1);
}

/// A batch was handed to a processor and returned Ok.
pub(crate) fn batch_processed(
    stream_arn: &str,
    shard_id: &str,
    records: usize,
    behind_latest: Option<Duration>,
) {
    tracing::debug!(shard_id, records, ?behind_latest, "batch processed");
    let labels = [
        ("stream", stream_arn.to_owned()),
        ("shard", shard_id.to_owned()),
    ];
    counter!("ddb_stream_records_processed_total", &labels).increment(records as u64);
    if let Some(behind) = behind_latest {
        gauge!("ddb_stream_millis_behind_latest", &labels).set(behind.as_millis() as f64);
    }
}

/// A processor returned an error; the batch will be delivered again.
pub(crate) fn processing_failed(
    shard_id: &str,
    error: &crate::Error,
    attempt: u32,
    pause: Duration,
) {
    tracing::error!(shard_id, %error, attempt, ?pause, "processing failed; the batch will be retried");
    counter!("ddb_stream_processing_failures_total", "shard" => shard_id.to_owned()).increment(1);
}

/// A record did not decode; the shard waits at that record (nothing is skipped).
pub(crate) fn decode_failed(shard_id: &str, error: &crate::Error, pause: Duration) {
    tracing::error!(shard_id, %error, ?pause, "a record does not decode; the shard is held at that record and retried");
    counter!("ddb_stream_decode_failures_total", "shard" => shard_id.to_owned()).increment(1);
}

/// Records were trimmed before we read them: data was lost to this application.
pub(crate) fn data_trimmed(stream_arn: &str, shard_id: &str, wanted: &str, resumed_at: &str) {
    tracing::error!(
        stream_arn,
        shard_id,
        wanted,
        resumed_at,
        "DATA LOSS: records were trimmed from the stream before they were processed"
    );
    counter!("ddb_stream_data_loss_events_total", "stream" => stream_arn.to_owned(), "shard" => shard_id.to_owned())
        .increment(1);
}

/// A checkpoint was written to the lease table.
pub(crate) fn checkpoint_written(shard_id: &str, checkpoint: &str) {
    tracing::debug!(shard_id, checkpoint, "checkpoint written");
    counter!("ddb_stream_checkpoints_total").increment(1);
}

/// A shard was read to its end and marked `SHARD_END`.
pub(crate) fn shard_ended(stream_arn: &str, shard_id: &str, children: usize) {
    tracing::info!(stream_arn, shard_id, children, "shard finished");
    counter!("ddb_stream_shards_ended_total").increment(1);
}

/// This worker took a lease.
pub(crate) fn lease_acquired(lease: &checkpoint_store::LeaseKey, previous_owner: Option<&str>) {
    tracing::info!(lease = %lease, previous_owner, "lease acquired");
    counter!("ddb_stream_leases_acquired_total").increment(1);
}

/// This worker lost a lease it was processing.
pub(crate) fn lease_lost(lease: &checkpoint_store::LeaseKey, reason: &str) {
    tracing::warn!(lease = %lease, reason, "lease lost; shard processing stopped");
    counter!("ddb_stream_leases_lost_total").increment(1);
}

/// This worker gave a lease up (shutdown or handoff).
pub(crate) fn lease_released(lease: &checkpoint_store::LeaseKey, to: Option<&str>) {
    tracing::info!(lease = %lease, to, "lease released");
    counter!("ddb_stream_leases_released_total").increment(1);
}
