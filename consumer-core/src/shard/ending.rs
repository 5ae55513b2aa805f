//! How a session ends: its source's end (`SHARD_END`; a shard's children's leases, see
//! [`EndOfSource`] for a segment's), a release (shutdown or handoff: flush, then release),
//! or the lease lost (nothing written).

use std::time::SystemTime;

use dynamodb_streams_leases::{Checkpoint, LeaseKey};

use super::progress::is_lease_lost;
use super::session::Session;
use crate::callback::Interrupted;
use crate::error::{Error, Result};
use crate::events::{DataTrimmed, Event, LeaseLost, LeaseReleased, ShardEnded};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor};
use crate::retry;
use crate::runtime::{LeaseTask, ShardOutcome};
use crate::shard_graph::{create_lease_if_absent, new_shard_lease};
use crate::snapshot::outlasted_retention;
use crate::streams::ShardInfo;

/// How a task ends once its source was read to the end, by the lease's kind: a shard
/// writes `SHARD_END` and creates its children's leases; a snapshot segment writes
/// `SHARD_END` and checks the snapshot's duration against the stream's retention.
pub(crate) trait EndOfSource<F: ProcessorFactory>: Send {
    fn end(self, session: &mut Session<'_, F>) -> impl Future<Output = ShardOutcome> + Send;
}

/// A shard's end: `SHARD_END`, then the children's leases, so this or another worker can
/// go on with them at once.
pub(crate) struct ShardEnd;

impl<F: ProcessorFactory> EndOfSource<F> for ShardEnd {
    async fn end(self, session: &mut Session<'_, F>) -> ShardOutcome {
        if let Err(outcome) = session.read_to_end().await {
            return outcome;
        }
        shard_ended(session.task).await;
        ShardOutcome::Ended
    }
}

/// After `SHARD_END` is stored: the children's leases (one lookup of the children per
/// shard, whatever its pipelines), and the event.
pub(crate) async fn shard_ended<F: ProcessorFactory>(task: &LeaseTask<F>) {
    let key = task.key();
    let children = match create_child_leases(task).await {
        Ok(children) => children,
        Err(error) => {
            // The children will still be found by the next full shard sync.
            tracing::warn!(shard_id = %key.shard_id, %error, "could not create the children's leases yet");
            0
        }
    };
    ShardEnded {
        stream_arn: &key.stream,
        shard_id: &key.shard_id,
        children,
    }
    .emit();
}

impl<F: ProcessorFactory> Session<'_, F> {
    /// The source was read to its end: `shard_ended` (retried until `Ok`), then
    /// `SHARD_END`. `Err` with how the task ended if it was stopped first.
    pub(crate) async fn read_to_end(&mut self) -> Result<(), ShardOutcome> {
        let mut backoff = self.processing_backoff();
        loop {
            let called = self
                .callbacks
                .hook("shard_ended", self.processor.shard_ended(self.checkpointer))
                .await;
            let error = match called {
                Err(interrupted) => return Err(self.finish(interrupted).await),
                Ok(Ok(())) => break,
                Ok(Err(error)) => error,
            };
            if let Err(interrupted) = self.pause_after_failure(&error, 0, &mut backoff).await {
                return Err(self.finish(interrupted).await);
            }
        }
        // A checkpoint still being written must not land after `SHARD_END`.
        if let Err(error) = self.checkpointer.settle().await {
            tracing::debug!(shard_id = %self.key().shard_id, %error, "last checkpoint before SHARD_END not written");
        }
        let written = match self.callbacks.unless_lost(write_shard_end(self.task)).await {
            Ok(written) => written,
            Err(interrupted) => return Err(self.finish(interrupted).await),
        };
        match written {
            Ok(()) => Ok(()),
            Err(error) if is_lease_lost(&error) => Err(self.finish(Interrupted::Lost).await),
            Err(error) => Err(ShardOutcome::Failed(error)),
        }
    }

    /// Ends the session: on release, the processor is told, checkpoints are flushed and the
    /// lease is released; on loss (also while releasing), the processor is told and nothing
    /// more is written.
    pub(crate) async fn finish(&mut self, interrupted: Interrupted) -> ShardOutcome {
        if interrupted != Interrupted::Lost {
            let lost = self.callbacks.signals().lost.clone();
            let timed_out = interrupted == Interrupted::ShutdownTimedOut;
            tokio::select! {
                biased;
                _ = lost.cancelled() => {}
                outcome = self.release(timed_out) => return outcome,
            }
        }
        self.report_lost().await;
        ShardOutcome::LeaseLost
    }

    /// `lease_lost`, given at most the shutdown timeout.
    pub(crate) async fn report_lost(&mut self) {
        LeaseLost {
            lease: self.key(),
            reason: "another worker owns it, or this worker was fenced",
        }
        .emit();
        let told = self.processor.lease_lost();
        self.callbacks.last_word("lease_lost", told).await;
    }

    /// `shutdown_requested` (unless the shutdown timeout already passed), the final
    /// checkpoint, the release: each lease-table write retried as the
    /// [`retry::lease_store`] policy says. A final checkpoint that cannot be written keeps
    /// the lease: releasing it would let another worker start from an older checkpoint
    /// while this one believes it finished.
    async fn release(&mut self, timed_out: bool) -> ShardOutcome {
        let key = self.key().clone();
        if timed_out {
            tracing::error!(lease = %key, "the processor did not finish within the shutdown timeout; dropped it");
        } else {
            let told = self.processor.shutdown_requested(self.checkpointer);
            match self.callbacks.hook("shutdown_requested", told).await {
                Err(Interrupted::Lost) => {
                    self.report_lost().await;
                    return ShardOutcome::LeaseLost;
                }
                Err(_) => {
                    tracing::error!(lease = %key, "`shutdown_requested` did not return within the shutdown timeout; dropped");
                }
                Ok(Err(error)) => {
                    tracing::error!(lease = %key, %error, "shutdown_requested failed; releasing anyway");
                }
                Ok(Ok(())) => {}
            }
        }
        self.checkpointer.end(None);
        if let Err(error) = self.checkpointer.flush_retrying().await {
            if is_lease_lost(&error) {
                self.report_lost().await;
                return ShardOutcome::LeaseLost;
            }
            tracing::error!(lease = %key, %error, "final checkpoint not written; keeping the lease (others take it after failover)");
            return ShardOutcome::Failed(error);
        }
        let ownership = self.checkpointer.ownership().clone();
        release_lease(self.task, &key, &ownership).await
    }
}

/// Releases the lease (retried as the [`retry::lease_store`] policy says), for a shard or a
/// segment: others take it on their next scan.
pub(crate) async fn release_lease<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    key: &LeaseKey,
    ownership: &dynamodb_streams_leases::Ownership,
) -> ShardOutcome {
    let store = &task.runtime.store;
    let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        store.release_lease(key, ownership)
    })
    .await;
    match released {
        Ok(lease) => {
            LeaseReleased {
                lease: key,
                to: lease.handoff_to.as_deref(),
            }
            .emit();
            ShardOutcome::Released
        }
        Err(e) if e.is_lease_lost() => ShardOutcome::LeaseLost,
        Err(e) => {
            tracing::warn!(lease = %key, error = %e, "lease not released; others take it after failover");
            ShardOutcome::Released
        }
    }
}

async fn write_shard_end<F: ProcessorFactory>(task: &LeaseTask<F>) -> Result<()> {
    let key = task.key();
    retry::call(retry::lease_store(), retry::is_retryable_store, || {
        task.runtime
            .store
            .checkpoint(key, &task.ownership, &Checkpoint::ShardEnd)
    })
    .await
    .map(|_| ())
    .map_err(Error::from)
}

async fn create_child_leases<F: ProcessorFactory>(task: &LeaseTask<F>) -> Result<usize> {
    let key = task.key();
    let api = &task.runtime.api;
    let children: Vec<ShardInfo> =
        retry::call(retry::describe_stream(), retry::is_retryable_api, || {
            api.child_shards(&key.stream, &key.shard_id)
        })
        .await?;
    // Children of a shard that started at a time skip what is older too (a no-op once the
    // parent delivered anything: its children's records are newer).
    let start = match &task.lease.checkpoint {
        Checkpoint::Since(time) => Checkpoint::Since(*time),
        _ => Checkpoint::TrimHorizon,
    };
    for child in &children {
        let lease = new_shard_lease(
            api.as_ref(),
            LeaseKey::new(key.stream.clone(), child.shard_id.clone()),
            start.clone(),
            child.parent_shard_id.iter().cloned().collect(),
        );
        create_lease_if_absent(task.runtime.store.as_ref(), &lease).await?;
    }
    Ok(children.len())
}

/// If the snapshot that began at `started_at` outlasted the stream's retention, records
/// created after it began may be trimmed before the stream is read: reported to the
/// session's processor as data loss, never silent.
pub(crate) async fn report_if_late<F: ProcessorFactory>(
    session: &mut Session<'_, F>,
    started_at: SystemTime,
) {
    let runtime = &session.task.runtime;
    if !outlasted_retention(
        started_at,
        runtime.api.now(),
        runtime.config.creation_time_margin,
    ) {
        return;
    }
    let key = session.key().clone();
    let wanted = format!(
        "records created since the snapshot began ({})",
        humantime::format_rfc3339_millis(started_at)
    );
    DataTrimmed {
        stream_arn: &key.stream,
        shard_id: &key.shard_id,
        wanted: &wanted,
        resumed_at: "TRIM_HORIZON",
    }
    .emit();
    let loss = DataLoss {
        stream_arn: key.stream.clone(),
        shard_id: key.shard_id.clone(),
        wanted,
        resumed_at: "TRIM_HORIZON".into(),
    };
    // Only a notification: the segment is finished whatever happens to it.
    let _ = session.data_lost(&loss).await;
}
