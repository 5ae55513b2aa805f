//! Records that leave the normal path, each reported and done exactly once: skipped before
//! the shard's start time, undecodable, or given up to the on-failure handler.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;

use super::Session;
use crate::callback::Interrupted;
use crate::error::{Error, Result};
use crate::events::{DecodeFailed, Event, RecordsFailed, RecordsSkippedBeforeStart};
use crate::failure::record_seq;
use crate::failure::{FailedRecords, FailureReason};
use crate::processor::{ProcessorFactory, RecordProcessor};
use crate::start_time::StartTimeSkip;

impl<F: ProcessorFactory> Session<'_, F> {
    /// Takes the records created before the shard's start time off the front of `records`
    /// and counts them; checkpoints past them once skipping ends (`start_time`: until
    /// then the stored position keeps the start time).
    pub(crate) async fn skip_before_start(
        &mut self,
        skip: &mut StartTimeSkip,
        records: &mut Vec<Arc<Record>>,
    ) -> Result<(), Interrupted> {
        let skipped = skip.take_skipped(records);
        if let Some(last) = skipped.records.last().and_then(|r| record_seq(r)) {
            RecordsSkippedBeforeStart {
                stream_arn: &self.key().stream,
                shard_id: &self.key().shard_id,
                records: skipped.records.len(),
                last: last.as_str(),
                pipeline: self.task.pipeline(),
            }
            .emit();
            // Not lag: skipped records are not waiting for the processor.
            let lag = &self.task.runtime.telemetry.lag;
            lag.processed(self.key(), self.task.pipeline(), &last);
        }
        match skipped.passed {
            Some(passed) => self.done(std::slice::from_ref(&passed)).await,
            None => Ok(()),
        }
    }

    /// A record whose image does not decode: to the failure handler if there is one (the
    /// shard moves on once it accepted it); else the shard holds here, reporting it on each
    /// retry, until the lease moves to a worker whose item type fits.
    pub(super) async fn undecodable(
        &mut self,
        record: &Arc<Record>,
        error: Error,
    ) -> Result<(), Interrupted> {
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
    pub(super) async fn give_up(
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
}
