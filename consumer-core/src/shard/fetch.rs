//! The fetch task of a shard: where it starts, and the pages it reads ahead.
//!
//! Pages are fetched by a task of their own into a small bounded channel (`prefetch_pages`
//! deep), so the next page is on its way while the processor works on the current one.
//! Each page is paid for from the worker's memory budget before it is asked for (see
//! [`crate::budget`]) and holds its share until its records were delivered. A snapshot
//! segment's scan task hands its pages over the same way ([`Fetched`], [`FetchedPage`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::{Checkpoint, SequenceNumber};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::progress::record_seq;
use crate::budget::{ByteBudget, FULL_PAGE_COST, MIN_RESERVATION, Reservation, page_cost};
use crate::config::TrimmedDataPolicy;
use crate::error::Error;
use crate::events::{DataTrimmed, Event};
use crate::poll_loop::{Page, ShardReader};
use crate::processor::{DataLoss, ProcessorFactory};
use crate::retry;
use crate::runtime::{LeaseTask, ShardOutcome};
use crate::streams::{ApiErrorKind, StartPosition};

/// What the fetch task hands over.
pub(crate) enum Fetched {
    /// A page, and the bytes of the worker's budget it holds until it was delivered.
    Records(FetchedPage),
    Idle,
    ShardEnd,
    Trimmed(DataLoss),
    /// The shard no longer exists (trimmed away entirely): its records are lost to us and
    /// it is finished, so its children can run.
    Vanished(DataLoss),
    Failed(Error),
}

/// A page as the fetch task hands it over: its reservation still holds the estimate it was
/// fetched under. The receiver settles it to the page's cost, off the fetch task's path, so
/// the walk over every attribute overlaps the next GetRecords call instead of delaying it.
#[derive(Debug)]
pub(crate) struct FetchedPage {
    records: Vec<Arc<Record>>,
    reservation: Reservation,
    /// Settled already: a pipeline's share of a page that several deliver
    /// ([`FetchedPage::share`]).
    settled: bool,
    /// What the shard's next page is expected to cost, read by the fetch task.
    expected: Arc<AtomicU64>,
    /// A position that is not a sequence number, reached once every record of the page is
    /// done: a snapshot segment's scan position after the page.
    end: Option<Checkpoint>,
}

impl FetchedPage {
    /// A page fetched under `reservation`; `expected` is where the receiver leaves what the
    /// next page is expected to cost.
    pub(crate) fn new(
        records: Vec<Record>,
        reservation: Reservation,
        expected: Arc<AtomicU64>,
        end: Option<Checkpoint>,
    ) -> Self {
        Self {
            records: records.into_iter().map(Arc::new).collect(),
            reservation,
            settled: false,
            expected,
            end,
        }
    }

    /// A page for a shard's pipelines: settled once, then one page per pipeline with a
    /// share of the reservation. The records are held once, shared; a pipeline whose own
    /// checkpoint is ahead of the shard's read (`done_through`) gets only the records
    /// after it.
    pub(crate) fn share(self, done_through: &[Option<SequenceNumber>]) -> Vec<FetchedPage> {
        // Settled pages never read their expectation: each shares the shard's.
        let expected = Arc::clone(&self.expected);
        let (records, reservation, end) = self.receive();
        done_through
            .iter()
            .zip(reservation.share(done_through.len()))
            .map(|(done, share)| FetchedPage {
                records: records
                    .iter()
                    .filter(|r| done.is_none() || record_seq(r).as_ref() > done.as_ref())
                    .cloned()
                    .collect(),
                reservation: share,
                settled: true,
                expected: Arc::clone(&expected),
                end: end.clone(),
            })
            .collect()
    }

    /// Settles the page's share of the budget to its cost; the records, shared, and the
    /// position after the page if it is not a sequence number.
    pub(crate) fn receive(self) -> (Vec<Arc<Record>>, Reservation, Option<Checkpoint>) {
        let Self {
            records,
            mut reservation,
            settled,
            expected,
            end,
        } = self;
        if !settled {
            let cost = page_cost(records.iter().map(Arc::as_ref));
            // Pages of a shard vary: a margin keeps overdrafts rare.
            expected.store((cost + cost / 4).max(MIN_RESERVATION), Ordering::Relaxed);
            reservation.settle(cost);
        }
        (records, reservation, end)
    }
}

/// What a page is expected to cost before the first one came: a full page, but at most a
/// quarter of the budget. A reservation waits until its bytes are free (and the ones
/// behind it wait for it), so a first page asking for the whole budget of a small one
/// waited for every other shard to give back everything, which a shard whose processor is
/// stuck never does: every shard started later stalled. A page that comes back bigger
/// than the guess is settled as an overdraft (see `crate::budget`).
pub(crate) fn first_expected_cost(budget: &ByteBudget) -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(
        FULL_PAGE_COST.min(budget.total() / 4).max(MIN_RESERVATION),
    ))
}

/// Where a lease's checkpoint says to read from; `None` for a finished shard.
pub(crate) fn start_position(checkpoint: &Checkpoint) -> Option<StartPosition> {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::Since(_) => Some(StartPosition::TrimHorizon),
        Checkpoint::Latest => Some(StartPosition::Latest),
        Checkpoint::At(seq) => Some(StartPosition::AfterSequenceNumber(seq.clone())),
        // A snapshot segment, not a shard: its own task runs it, never a reader.
        Checkpoint::ShardEnd | Checkpoint::Scan(_) => None,
    }
}

/// A `LATEST` lease stores the time it starts from (`Checkpoint::Since`): if it moves
/// before delivering anything, the next owner reads from TRIM_HORIZON and skips only what
/// was created before that time, instead of reopening at a newer tip and missing what was
/// written in between. One write, on the first owner only. Returns the checkpoint now
/// stored.
///
/// The time is taken and the `LATEST` iterator opened before the write: a record written
/// after the time is either read by this iterator or, once the time is stored, by any
/// later reader. (Opening the iterator after the write missed the records written in
/// between, for good: explorer seed 74.) An iterator that cannot be opened, or has to be
/// replaced before anything was read, starts at TRIM_HORIZON and skips what came before
/// the stored time, as a later owner would.
pub(crate) async fn store_latest_start<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    reader: &mut ShardReader,
) -> Result<Checkpoint, ShardOutcome> {
    if task.lease.checkpoint != Checkpoint::Latest {
        return Ok(task.lease.checkpoint.clone());
    }
    let since = Checkpoint::since(task.runtime.api.now());
    if let Err(error) = reader.open().await {
        tracing::debug!(shard_id = %task.key().shard_id, %error, "no LATEST iterator; reading from TRIM_HORIZON after the start time");
    }
    let written = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        task.runtime
            .store
            .checkpoint(task.key(), &task.ownership, &since)
    })
    .await;
    match written {
        Ok(_) => {
            reader.replace_unread_start(StartPosition::TrimHorizon);
            Ok(since)
        }
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
