//! The fetch task of a shard: where it starts, and the pages it reads ahead.
//!
//! Pages are fetched by a task of their own into a small bounded channel (`prefetch_pages`
//! deep), so the next page is on its way while the processor works on the current one.
//! Each page is paid for from the worker's memory budget before it is asked for (see
//! [`crate::budget`]) and holds its share until its records were delivered (a
//! [`FetchedPage`], as a snapshot segment's scan task hands its pages over too).

use std::sync::atomic::Ordering;

use dynamodb_streams_leases::Checkpoint;
use dynamodb_streams_leases::pipeline::slowest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::page::{Fetched, FetchedPage, first_expected_cost};
use crate::budget::ByteBudget;
use crate::config::TrimmedDataPolicy;
use crate::error::Error;
use crate::events::{DataTrimmed, Event};
use crate::poll_loop::{Page, ShardReader};
use crate::processor::{DataLoss, ProcessorFactory};
use crate::retry;
use crate::runtime::{LeaseTask, ShardOutcome};
use crate::streams::{ApiErrorKind, StartPosition};

/// Where a lease's checkpoint says to read from; `None` for a finished shard.
fn start_position(checkpoint: &Checkpoint) -> Option<StartPosition> {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::Since(_) => Some(StartPosition::TrimHorizon),
        Checkpoint::Latest => Some(StartPosition::Latest),
        Checkpoint::At(seq) => Some(StartPosition::AfterSequenceNumber(seq.clone())),
        // A snapshot segment, not a shard: its own task runs it, never a reader.
        Checkpoint::ShardEnd | Checkpoint::Scan(_) => None,
    }
}

/// The reader of `task`'s shard from `start`, polling as the settings say.
fn shard_reader<F: ProcessorFactory>(task: &LeaseTask<F>, start: StartPosition) -> ShardReader {
    let key = task.key();
    ShardReader::new(
        task.runtime.api.clone(),
        key.stream.clone(),
        key.shard_id.clone(),
        start,
        task.runtime.config.poll.clone(),
    )
}

/// Begins the read of a lease: where it starts, and the starts stored first. `starts` are
/// the positions of the lease's consumers (the lease's checkpoint, or each pipeline's);
/// `store` writes them (with [`write_before_start`]) and is given them with every `LATEST`
/// made the time it starts from. `None` when the shard is finished for every consumer.
///
/// The rule for a `LATEST` start, once for a single consumer and for pipelines: the start
/// is stored as a time (`Checkpoint::Since`), so that a lease that moves before delivering
/// anything is read by its next owner from TRIM_HORIZON, skipping only what was created
/// before that time, instead of reopened at a newer tip, missing what was written in
/// between. When every consumer starts at `LATEST`, the read opens a `LATEST` iterator,
/// after the time is taken and before it is stored: a record written after the time is
/// either read by this iterator or, once the time is stored, by any later reader.
/// (Opening the iterator after the write missed the records written in between, for
/// good: explorer seed 74.) An iterator that cannot be opened, or has to be replaced
/// before anything was read, starts at TRIM_HORIZON and skips what came before the stored
/// time, as a later owner would. When only some start at `LATEST` (a pipeline new to a
/// running application), the read starts where the slowest of the others is, and the new
/// one skips what came before its time.
pub(crate) async fn begin_read<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    starts: &mut [Checkpoint],
    store: impl AsyncFnOnce(&[Checkpoint]) -> Result<(), ShardOutcome>,
) -> Result<Option<ShardReader>, ShardOutcome> {
    let every_latest = !starts.is_empty() && starts.iter().all(|s| *s == Checkpoint::Latest);
    if starts.contains(&Checkpoint::Latest) {
        let since = Checkpoint::since(task.runtime.api.now());
        for start in starts.iter_mut().filter(|s| **s == Checkpoint::Latest) {
            *start = since.clone();
        }
    }
    // A shard's positions are never scan positions: their slowest is the read position.
    let read = match every_latest {
        true => Some(Checkpoint::Latest),
        false => slowest(starts.iter()),
    };
    let Some(position) = read.as_ref().and_then(start_position) else {
        return Ok(None);
    };
    let mut reader = shard_reader(task, position);
    if every_latest && let Err(error) = reader.open().await {
        tracing::debug!(shard_id = %task.key().shard_id, %error, "no LATEST iterator; reading from TRIM_HORIZON after the start time");
    }
    store(starts).await?;
    if every_latest {
        reader.replace_unread_start(StartPosition::TrimHorizon);
    }
    Ok(Some(reader))
}

/// A lease write a task cannot start without (where it starts), retried as the
/// [`retry::lease_store`] policy says: a lost lease ends the task, another failure fails
/// it (the lease is kept and tried again later).
pub(crate) async fn write_before_start<T, Fut>(
    write: impl FnMut() -> Fut,
) -> Result<T, ShardOutcome>
where
    Fut: Future<Output = dynamodb_streams_leases::Result<T>>,
{
    match retry::call(retry::lease_store(), retry::is_retryable_store, write).await {
        Ok(written) => Ok(written),
        Err(error) if error.is_lease_lost() => Err(ShardOutcome::LeaseLost),
        Err(error) => Err(ShardOutcome::Failed(error.into())),
    }
}

/// The fetch task: polls the shard and hands pages over until the shard ends, an error
/// stops it, or it is cancelled. Each page is paid for from the worker's `budget` before
/// it is asked for (see [`crate::budget`]).
pub(crate) async fn fetch(
    mut reader: ShardReader,
    budget: ByteBudget,
    tx: mpsc::Sender<Fetched>,
    policy: TrimmedDataPolicy,
    cancel: CancellationToken,
) {
    // What the next page is expected to cost: the last page received, and a margin (see
    // `FetchedPage::receive`).
    let expected = first_expected_cost(&budget);
    loop {
        let (polled, reservation) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            polled = async {
                reader.pause().await;
                let reservation = budget.reserve(expected.load(Ordering::Relaxed)).await;
                (reader.poll().await, reservation)
            } => polled,
        };
        let fetched = match polled {
            Ok(Page::Records(records)) => Fetched::Records(FetchedPage::new(
                records,
                reservation,
                expected.clone(),
                None,
            )),
            Ok(Page::Empty) => {
                // Only a hint to flush checkpoints; skip it when the consumer is busy.
                let _ = tx.try_send(Fetched::Idle);
                continue;
            }
            Ok(Page::ShardEnd) => Fetched::ShardEnd,
            Err(Error::Api(e))
                if e.kind == ApiErrorKind::ResourceNotFound
                    && e.operation == "GetShardIterator" =>
            {
                Fetched::Vanished(vanished(&reader))
            }
            Err(Error::Api(e)) if e.kind == ApiErrorKind::TrimmedDataAccess => {
                trimmed(&mut reader, policy)
            }
            Err(error) => Fetched::Failed(error),
        };
        let last = matches!(
            fetched,
            Fetched::ShardEnd | Fetched::Vanished(_) | Fetched::Failed(_)
        );
        if tx.send(fetched).await.is_err() || last {
            return;
        }
    }
}

/// The shard no longer exists: reported as data loss; the shard is finished.
fn vanished(reader: &ShardReader) -> DataLoss {
    let loss = DataLoss {
        stream_arn: reader.stream_arn().to_owned(),
        shard_id: reader.shard_id().to_owned(),
        wanted: reader.resume_position().to_string(),
        resumed_at: "nowhere: the shard no longer exists; it is finished so its children run"
            .to_owned(),
    };
    DataTrimmed {
        stream_arn: &loss.stream_arn,
        shard_id: &loss.shard_id,
        wanted: &loss.wanted,
        resumed_at: &loss.resumed_at,
    }
    .emit();
    loss
}

/// Records were trimmed before they were read: reported, then as the policy says.
fn trimmed(reader: &mut ShardReader, policy: TrimmedDataPolicy) -> Fetched {
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
