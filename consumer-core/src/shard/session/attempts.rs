//! A run of records delivered until every one is done: `process` attempts, retries with
//! backoff, bisection, partial batch responses and the staged writes' commit (the failure
//! policy's loop, over index ranges, never by recursion).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::SequenceNumber;
use tokio::time::Instant;

use super::{ItemOf, Session};
use crate::callback::{CallbackFailed, Called, Interrupted};
use crate::change::{Change, ChangeBatch, decode_prefix};
use crate::error::Result;
use crate::events::{BatchProcessed, Event};
use crate::failure::record_seq;
use crate::failure::{BatchFailure, FailedAt, FailureReason};
use crate::processor::{ProcessorFactory, RecordProcessor};
use crate::shard::progress::is_lease_lost;

/// A failed `process` call.
struct AttemptFailed {
    failed: CallbackFailed,
    /// A partial batch response: the first record that did not succeed, by its place in
    /// the batch (`None`: the whole batch failed) ...
    index: Option<usize>,
    /// ... and its sequence number: the staged writes of the records before it commit.
    at: Option<SequenceNumber>,
    /// The records were processed `Ok`, but the commit of their staged writes failed for
    /// a reason of the store's: they are delivered again after a pause, never counted
    /// against `max_retries` nor given up to the on-failure handler.
    store_fault: bool,
}

impl<F: ProcessorFactory> Session<'_, F> {
    /// Delivers records that pass the filter, under the failure policy: retries with
    /// backoff up to `max_retries`, bisection of failing batches, partial batch
    /// responses, and the failure handler for what is given up. An undecodable record
    /// ends the batch before it and is a failure of its own. Held records are retried in
    /// this loop, never by recursion.
    pub(super) async fn deliver_run(&mut self, run: &[Arc<Record>]) -> Result<(), Interrupted> {
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
            let store_fault = failed.store_fault;
            let CallbackFailed { reason, error } = failed.failed;
            let exhausted = !store_fault && max_retries.is_some_and(|max| attempts > max);
            if bisect && !store_fault && partial_at.is_none() && rest.len() > 1 {
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
                        store_fault: false,
                    }
                }
                Err(source) => AttemptFailed {
                    failed: CallbackFailed {
                        reason: FailureReason::RetriesExhausted,
                        error: self.callbacks.failed(source),
                    },
                    index: None,
                    at: None,
                    store_fault: false,
                },
            }),
            called => match self.callbacks.failure("process", called) {
                None => Ok(()),
                Some(failed) => Err(AttemptFailed {
                    failed,
                    index: None,
                    at: None,
                    store_fault: false,
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
    /// uncommitted one fail (a partial batch failure), so the failure policy retries them;
    /// only a commit their own writes broke can give them up (see `CommitFailed`).
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
                let store_fault = !failed.is_the_records();
                Ok(Err(AttemptFailed {
                    failed: CallbackFailed {
                        reason: FailureReason::RetriesExhausted,
                        error: failed.error,
                    },
                    index,
                    at: Some(failed.first_uncommitted),
                    store_fault,
                }))
            }
            Ok(Err(_)) | Err(_) => {
                self.checkpointer.end(None);
                Err(Interrupted::Lost)
            }
        }
    }
}
