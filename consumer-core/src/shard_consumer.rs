//! One shard under one lease: fetch, decode, deliver, checkpoint, finish.
//!
//! A shard consumer runs while its worker owns the lease. Pages are fetched by a separate
//! task into a small bounded channel, so the next page is on its way while the processor
//! works on the current one. The consumer ends in one of four ways: the shard ended (it wrote
//! `SHARD_END` and created the children's leases), it was stopped gracefully (shutdown or
//! handoff: checkpoints flushed, lease released), the lease was lost (no further writes), or
//! an error it cannot get past.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::Record;
use backon::BackoffBuilder;
use checkpoint_store::{Checkpoint, Lease, LeaseKey, LeaseStore, Ownership};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::change::{ChangeBatch, decode_prefix};
use crate::checkpointer::Checkpointer;
use crate::config::{ConsumerConfig, TrimmedDataPolicy};
use crate::error::{Error, Result};
use crate::events::{
    BatchProcessed, DataTrimmed, DecodeFailed, Event, LeaseLost, LeaseReleased, ProcessingFailed,
    ShardEnded,
};
use crate::poll_loop::{Page, ShardReader};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};
use crate::retry;
use crate::shard_sync::create_lease_if_absent;
use crate::streams::{ApiErrorKind, ShardInfo, StartPosition, StreamsApi};

/// How a shard consumer ended.
#[derive(Debug)]
pub(crate) enum ShardOutcome {
    /// The shard was read to its end; `SHARD_END` is stored and the children have leases.
    Ended,
    /// Stopped on request: checkpoints flushed, lease released.
    Released,
    /// Another worker owns the lease now.
    LeaseLost,
    /// Stopped by an error it cannot get past; the lease is kept (and retried later).
    Failed(Error),
}

/// The signals a worker sends a running shard consumer.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardSignals {
    /// Finish the current batch, then flush, release and stop (shutdown or handoff).
    pub release: CancellationToken,
    /// Stop at once without writing: the lease is gone (fenced, or taken by another).
    pub lost: CancellationToken,
}

/// What a worker and all its shard consumers share.
pub(crate) struct Shared<F> {
    pub api: Arc<dyn StreamsApi>,
    pub store: Arc<dyn LeaseStore>,
    pub factory: F,
    pub config: ConsumerConfig,
    pub worker_id: String,
}

/// Everything one shard consumer needs.
pub(crate) struct ShardConsumer<F: ProcessorFactory> {
    pub shared: Arc<Shared<F>>,
    pub lease: Lease,
    pub ownership: Ownership,
    pub table: Option<String>,
}

/// What the fetch task hands over.
enum Fetched {
    Records(Vec<Arc<Record>>),
    Idle,
    ShardEnd,
    Trimmed(DataLoss),
    Failed(Error),
}

/// Why delivery stopped early.
enum Interrupted {
    Release,
    Lost,
}

impl<F: ProcessorFactory> ShardConsumer<F> {
    pub(crate) async fn run(self, signals: ShardSignals) -> ShardOutcome {
        let key = self.lease.key.clone();
        let ctx = ShardContext {
            table: self.table.clone(),
            stream_arn: key.stream.clone(),
            shard_id: key.shard_id.clone(),
            parent_shard_ids: self.lease.parent_shard_ids.clone(),
            worker_id: self.shared.worker_id.clone(),
            lease_owner: self.ownership.owner.clone(),
            lease_epoch: self.ownership.epoch,
            resumed_from: self.lease.checkpoint.clone(),
        };
        let Some(start) = start_position(&self.lease.checkpoint) else {
            return ShardOutcome::Ended;
        };
        let mut processor = self.shared.factory.create(&ctx);
        let mut checkpointer = Checkpointer::new(
            self.shared.store.clone(),
            key.clone(),
            self.ownership.clone(),
            self.lease.checkpoint.clone(),
            self.shared.config.checkpoint_interval,
        );

        let stop_fetch = signals.lost.child_token();
        let (tx, mut rx) = mpsc::channel(self.shared.config.prefetch_pages.max(1));
        let reader = ShardReader::new(
            self.shared.api.clone(),
            key.stream.clone(),
            key.shard_id.clone(),
            start,
            self.shared.config.poll.clone(),
        );
        let fetcher = tokio::spawn(fetch(
            reader,
            tx,
            self.shared.config.trimmed_data_policy,
            stop_fetch.clone(),
        ));
        let _stop_fetch_on_exit = stop_fetch.drop_guard();

        let mut session = Session {
            consumer: &self,
            processor: &mut processor,
            checkpointer: &mut checkpointer,
            signals: &signals,
        };
        if let Err(interrupted) = session.initialize(&ctx).await {
            return session.finish(interrupted).await;
        }
        let outcome = loop {
            let next = tokio::select! {
                biased;
                _ = signals.lost.cancelled() => break session.finish(Interrupted::Lost).await,
                _ = signals.release.cancelled() => break session.finish(Interrupted::Release).await,
                next = rx.recv() => next,
            };
            let step = match next {
                Some(Fetched::Records(records)) => session.deliver(&records).await,
                Some(Fetched::Idle) => session.flush_if_due().await,
                Some(Fetched::Trimmed(loss)) => {
                    session.processor.data_lost(&loss).await;
                    Ok(())
                }
                Some(Fetched::ShardEnd) => break session.end_shard().await,
                Some(Fetched::Failed(error)) => break ShardOutcome::Failed(error),
                None => {
                    break ShardOutcome::Failed(Error::Internal {
                        shard_id: key.shard_id.clone(),
                        problem: "the fetch task stopped unexpectedly".into(),
                    });
                }
            };
            if let Err(interrupted) = step {
                break session.finish(interrupted).await;
            }
        };
        fetcher.abort();
        outcome
    }
}

impl<F: ProcessorFactory> ShardConsumer<F> {
    async fn write_shard_end(&self) -> Result<()> {
        let key = &self.lease.key;
        retry::call(retry::lease_store(), retry::is_retryable_store, || {
            self.shared
                .store
                .checkpoint(key, &self.ownership, &Checkpoint::ShardEnd)
        })
        .await
        .map(|_| ())
        .map_err(Error::from)
    }

    async fn create_child_leases(&self) -> Result<usize> {
        let key = &self.lease.key;
        let children: Vec<ShardInfo> =
            retry::call(retry::describe_stream(), retry::is_retryable_api, || {
                self.shared.api.child_shards(&key.stream, &key.shard_id)
            })
            .await?;
        for child in &children {
            let lease = Lease::new(
                LeaseKey::new(key.stream.clone(), child.shard_id.clone()),
                Checkpoint::TrimHorizon,
                child.parent_shard_id.iter().cloned().collect(),
            );
            create_lease_if_absent(self.shared.store.as_ref(), &lease).await?;
        }
        Ok(children.len())
    }
}

/// The processor and checkpointer of a running shard, and what may interrupt them.
struct Session<'a, F: ProcessorFactory> {
    consumer: &'a ShardConsumer<F>,
    processor: &'a mut F::Processor,
    checkpointer: &'a mut Checkpointer,
    signals: &'a ShardSignals,
}

impl<F: ProcessorFactory> Session<'_, F> {
    fn key(&self) -> &LeaseKey {
        &self.consumer.lease.key
    }

    async fn initialize(&mut self, ctx: &ShardContext) -> Result<(), Interrupted> {
        let mut backoff = self.processing_backoff();
        loop {
            match self.processor.initialize(ctx).await {
                Ok(()) => return Ok(()),
                Err(source) => {
                    let error = Error::Processor {
                        shard_id: ctx.shard_id.clone(),
                        source,
                    };
                    self.pause_after_failure(&error, 0, &mut backoff).await?;
                }
            }
        }
    }

    /// Delivers the records in order: the decodable prefix as one batch (retried until
    /// the processor accepts it), then holds at an undecodable record.
    async fn deliver(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        let shard_id = self.key().shard_id.clone();
        let mut attempt: u32 = 0;
        let mut backoff = self.processing_backoff();
        loop {
            let (changes, undecodable) =
                decode_prefix::<<F::Processor as RecordProcessor>::Item>(&shard_id, records);
            if let Some(last) = changes.last() {
                let last_seq = last.sequence_number.clone();
                let behind_latest = last
                    .approximate_creation_time
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                let count = changes.len();
                let batch = ChangeBatch {
                    stream_arn: self.key().stream.clone(),
                    shard_id: shard_id.clone(),
                    changes,
                    behind_latest,
                };
                self.checkpointer.delivered(&last_seq);
                match self.processor.process(batch, self.checkpointer).await {
                    Ok(()) => {
                        BatchProcessed {
                            stream_arn: &self.key().stream,
                            shard_id: &shard_id,
                            records: count,
                            behind_latest,
                        }
                        .emit();
                        if self.consumer.shared.config.auto_checkpoint {
                            self.checkpoint_delivered().await?;
                        }
                    }
                    Err(source) => {
                        attempt += 1;
                        let error = Error::Processor {
                            shard_id: shard_id.clone(),
                            source,
                        };
                        self.pause_after_failure(&error, attempt, &mut backoff)
                            .await?;
                        continue;
                    }
                }
            }
            let Some((error, index)) = undecodable else {
                return Ok(());
            };
            // The prefix is done; hold at the record that does not decode. Nothing after
            // it is delivered, nothing is skipped.
            let rest = &records[index..];
            let pause = self.consumer.shared.config.processing_backoff_max;
            DecodeFailed {
                shard_id: &shard_id,
                error: &error,
                pause,
            }
            .emit();
            self.processor.decode_failed(&error).await;
            sleep_unless_stopped(self.signals, pause).await?;
            return Box::pin(self.deliver(rest)).await;
        }
    }

    async fn checkpoint_delivered(&mut self) -> Result<(), Interrupted> {
        match self.checkpointer.checkpoint().await {
            Ok(()) => Ok(()),
            Err(e) => self.checkpoint_failed(e),
        }
    }

    async fn flush_if_due(&mut self) -> Result<(), Interrupted> {
        match self.checkpointer.flush_if_due().await {
            Ok(()) => Ok(()),
            Err(e) => self.checkpoint_failed(e),
        }
    }

    /// A lost lease stops the shard; anything else is retried by the next flush.
    fn checkpoint_failed(&self, error: Error) -> Result<(), Interrupted> {
        match &error {
            Error::LeaseStore(e) if e.is_lease_lost() => Err(Interrupted::Lost),
            _ => {
                tracing::warn!(shard_id = %self.key().shard_id, %error, "checkpoint not written; will retry");
                Ok(())
            }
        }
    }

    async fn end_shard(&mut self) -> ShardOutcome {
        let shard_id = self.key().shard_id.clone();
        let mut backoff = self.processing_backoff();
        loop {
            match self.processor.shard_ended(self.checkpointer).await {
                Ok(()) => break,
                Err(source) => {
                    let error = Error::Processor {
                        shard_id: shard_id.clone(),
                        source,
                    };
                    if let Err(interrupted) =
                        self.pause_after_failure(&error, 0, &mut backoff).await
                    {
                        return self.finish(interrupted).await;
                    }
                }
            }
        }
        let (consumer, lost) = (self.consumer, self.signals.lost.clone());
        let written = tokio::select! {
            biased;
            _ = lost.cancelled() => return self.finish(Interrupted::Lost).await,
            written = consumer.write_shard_end() => written,
        };
        if let Err(error) = written {
            return if is_lease_lost(&error) {
                self.finish(Interrupted::Lost).await
            } else {
                ShardOutcome::Failed(error)
            };
        }
        let children = match self.consumer.create_child_leases().await {
            Ok(children) => children,
            Err(error) => {
                // The children will still be found by the next full shard sync.
                tracing::warn!(%shard_id, %error, "could not create the children's leases yet");
                0
            }
        };
        ShardEnded {
            stream_arn: &self.key().stream,
            shard_id: &shard_id,
            children,
        }
        .emit();
        ShardOutcome::Ended
    }

    /// Ends the session: on release, the processor is told, checkpoints are flushed and the
    /// lease is released; on loss (also while releasing), the processor is told and nothing
    /// more is written.
    async fn finish(&mut self, interrupted: Interrupted) -> ShardOutcome {
        if let Interrupted::Release = interrupted {
            let lost = self.signals.lost.clone();
            tokio::select! {
                biased;
                _ = lost.cancelled() => {}
                outcome = self.release() => return outcome,
            }
        }
        LeaseLost {
            lease: self.key(),
            reason: "another worker owns it, or this worker was fenced",
        }
        .emit();
        self.processor.lease_lost().await;
        ShardOutcome::LeaseLost
    }

    /// `shutdown_requested`, the final checkpoint, the release: each lease-table write
    /// retried as the [`retry::lease_store`] policy says.
    async fn release(&mut self) -> ShardOutcome {
        let key = self.key().clone();
        if let Err(source) = self.processor.shutdown_requested(self.checkpointer).await {
            tracing::error!(lease = %key, error = %source, "shutdown_requested failed; releasing anyway");
        }
        if let Err(error) = self.checkpointer.flush_retrying().await {
            if is_lease_lost(&error) {
                self.processor.lease_lost().await;
                return ShardOutcome::LeaseLost;
            }
            tracing::error!(lease = %key, %error, "final checkpoint not written");
        }
        let ownership = self.checkpointer.ownership().clone();
        let store = &self.consumer.shared.store;
        let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.release_lease(&key, &ownership)
        })
        .await;
        match released {
            Ok(lease) => {
                LeaseReleased {
                    lease: &key,
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

    /// Reports a failed delivery or hook and waits as the [`retry::processing`] policy
    /// says; `attempt` counts failed deliveries of a batch (0 for a hook).
    async fn pause_after_failure(
        &mut self,
        error: &Error,
        attempt: u32,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), Interrupted> {
        let pause = backoff
            .next()
            .unwrap_or(self.consumer.shared.config.processing_backoff_max);
        ProcessingFailed {
            shard_id: &self.key().shard_id,
            error,
            attempt,
            pause,
        }
        .emit();
        sleep_unless_stopped(self.signals, pause).await
    }

    fn processing_backoff(&self) -> impl Iterator<Item = Duration> + use<F> {
        retry::processing(self.consumer.shared.config.processing_backoff_max).build()
    }
}

async fn sleep_unless_stopped(signals: &ShardSignals, pause: Duration) -> Result<(), Interrupted> {
    tokio::select! {
        biased;
        _ = signals.lost.cancelled() => Err(Interrupted::Lost),
        _ = signals.release.cancelled() => Err(Interrupted::Release),
        _ = tokio::time::sleep(pause) => Ok(()),
    }
}

fn is_lease_lost(error: &Error) -> bool {
    matches!(error, Error::LeaseStore(e) if e.is_lease_lost())
}

/// Where a lease's checkpoint says to read from; `None` for a finished shard.
pub(crate) fn start_position(checkpoint: &Checkpoint) -> Option<StartPosition> {
    match checkpoint {
        Checkpoint::TrimHorizon => Some(StartPosition::TrimHorizon),
        Checkpoint::Latest => Some(StartPosition::Latest),
        Checkpoint::At(seq) => Some(StartPosition::AfterSequenceNumber(seq.clone())),
        Checkpoint::ShardEnd => None,
    }
}

/// The fetch task: polls the shard and hands pages over until the shard ends, an error
/// stops it, or it is cancelled.
async fn fetch(
    mut reader: ShardReader,
    tx: mpsc::Sender<Fetched>,
    policy: TrimmedDataPolicy,
    cancel: CancellationToken,
) {
    loop {
        let polled = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            polled = reader.poll() => polled,
        };
        let fetched = match polled {
            Ok(Page::Records(records)) => {
                Fetched::Records(records.into_iter().map(Arc::new).collect())
            }
            Ok(Page::Empty) => {
                // Only a hint to flush checkpoints; skip it when the consumer is busy.
                let _ = tx.try_send(Fetched::Idle);
                continue;
            }
            Ok(Page::ShardEnd) => Fetched::ShardEnd,
            Err(Error::Api(e)) if e.kind == ApiErrorKind::TrimmedDataAccess => {
                let loss = DataLoss {
                    stream_arn: reader.stream_arn().to_owned(),
                    shard_id: reader.shard_id().to_owned(),
                    wanted: reader.resume_position().to_string(),
                    resumed_at: StartPosition::TrimHorizon.to_string(),
                };
                let resumed_at = match policy {
                    TrimmedDataPolicy::ContinueFromTrimHorizon => loss.resumed_at.as_str(),
                    TrimmedDataPolicy::Stop => "nowhere: the policy stops the shard",
                };
                DataTrimmed {
                    stream_arn: &loss.stream_arn,
                    shard_id: &loss.shard_id,
                    wanted: &loss.wanted,
                    resumed_at,
                }
                .emit();
                match policy {
                    TrimmedDataPolicy::ContinueFromTrimHorizon => {
                        reader.restart_at(StartPosition::TrimHorizon);
                        Fetched::Trimmed(loss)
                    }
                    TrimmedDataPolicy::Stop => Fetched::Failed(Error::DataTrimmed {
                        shard_id: loss.shard_id,
                        wanted: loss.wanted,
                    }),
                }
            }
            Err(error) => Fetched::Failed(error),
        };
        let last = matches!(fetched, Fetched::ShardEnd | Fetched::Failed(_));
        if tx.send(fetched).await.is_err() || last {
            return;
        }
    }
}
