//! What a source hands the page loop ([`super::drive`]): a shard's fetch task and a
//! snapshot segment's scan task both send [`Fetched`] over a bounded channel, each page
//! holding its share of the worker's memory budget ([`crate::budget`]) until its records
//! were delivered.
//!
//! A module of its own, below the tasks: the pipelines' boundary in [`crate::runtime`]
//! names it (a pipeline's session is given a channel of these), and nothing here knows
//! a task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::{Checkpoint, SequenceNumber};

use crate::budget::{ByteBudget, FULL_PAGE_COST, Reservation, page_cost};
use crate::error::Error;
use crate::failure::record_seq;
use crate::processor::DataLoss;

/// What a source (the fetch task, a segment's scan task) hands over.
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
            let least = reservation.least_reservation();
            expected.store((cost + cost / 4).max(least), Ordering::Relaxed);
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
        FULL_PAGE_COST
            .min(budget.total() / 4)
            .max(budget.least_reservation()),
    ))
}
