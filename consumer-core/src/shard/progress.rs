//! Where a session's position goes: the one place its checkpoints come from.
//!
//! Every record is done exactly once and in the order it was taken in
//! ([`Progress::done`]): that is where the lease's position moves, to the sequence number
//! of a stream record, or to a snapshot segment's scan position once the last record of
//! its page is done ([`PageEnds`]). The checkpointer writes either (coalesced, in the
//! background); a lost lease surfaces here and stops the session.

use std::collections::VecDeque;
use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::{Checkpoint, LeaseKey, SequenceNumber};

use super::page::FetchedPage;
use crate::budget::Reservation;
use crate::callback::Interrupted;
use crate::checkpointer::Checkpointer;
use crate::error::{Error, Result};
use crate::failure::record_seq;
use crate::processor::ProcessorFactory;
use crate::runtime::LeaseTask;

/// Positions a lease stores that are not sequence numbers: a snapshot segment's scan
/// position after each page, reached once the page's last record (and every record before
/// it) is done. Each is tied to that record by identity: snapshot records have no sequence
/// number, and records are done in the order they were taken in.
#[derive(Default)]
pub(crate) struct PageEnds(VecDeque<(Arc<Record>, Checkpoint)>);

impl PageEnds {
    /// Records of a page were taken in; `end` is the position after the page. A page
    /// without records moves the position of the page before it (or is reached at once).
    pub(super) fn taken_in(
        &mut self,
        records: &[Arc<Record>],
        end: Checkpoint,
    ) -> Option<Checkpoint> {
        match (records.last(), self.0.back_mut()) {
            (Some(last), _) => self.0.push_back((last.clone(), end)),
            (None, Some((_, before))) => *before = end,
            (None, None) => return Some(end),
        }
        None
    }

    /// `done` were done, in order: the last position they reach.
    pub(super) fn passed(&mut self, done: &[Arc<Record>]) -> Option<Checkpoint> {
        let mut done = done.iter();
        let mut reached = None;
        while let Some((last, _)) = self.0.front() {
            if !done.any(|record| Arc::ptr_eq(record, last)) {
                break;
            }
            reached = self.0.pop_front().map(|(_, end)| end);
        }
        reached
    }
}

/// Where a session's position goes, the one place its checkpoints come from: the
/// checkpointer, and a segment's page ends.
pub(crate) struct Progress<'s, F: ProcessorFactory> {
    task: &'s LeaseTask<F>,
    checkpointer: &'s mut Checkpointer,
    page_ends: &'s mut PageEnds,
}

impl<'s, F: ProcessorFactory> Progress<'s, F> {
    pub(crate) fn new(
        task: &'s LeaseTask<F>,
        checkpointer: &'s mut Checkpointer,
        page_ends: &'s mut PageEnds,
    ) -> Self {
        Self {
            task,
            checkpointer,
            page_ends,
        }
    }

    fn key(&self) -> &LeaseKey {
        self.task.key()
    }

    /// A page from the fetch task: its budget settled, its records counted for the lag and
    /// its end noted (a segment's scan position, reached once its records are done).
    pub(crate) async fn take_in(
        &mut self,
        page: FetchedPage,
    ) -> Result<(Vec<Arc<Record>>, Reservation), Interrupted> {
        let (records, reservation, end) = page.receive();
        let lag = &self.task.runtime.telemetry.lag;
        lag.fetched(self.key(), self.task.pipeline(), &records);
        if let Some(end) = end
            && let Some(reached) = self.page_ends.taken_in(&records, end)
        {
            self.moved_to(None, Some(reached)).await?;
        }
        Ok((records, reservation))
    }

    /// Every record of `records` (and before) is done: the position moves past them.
    pub(crate) async fn done(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        let last = records.iter().rev().find_map(|r| record_seq(r));
        let scanned = self.page_ends.passed(records);
        self.moved_to(last, scanned).await
    }

    /// The lease's position moved: to the sequence number `last` (a stream record), or to
    /// the scan position `scanned` (a segment's page).
    async fn moved_to(
        &mut self,
        last: Option<SequenceNumber>,
        scanned: Option<Checkpoint>,
    ) -> Result<(), Interrupted> {
        if last.is_none() && scanned.is_none() {
            return Ok(());
        }
        if let Some(last) = &last {
            self.checkpointer.delivered(last);
            let lag = &self.task.runtime.telemetry.lag;
            lag.processed(self.key(), self.task.pipeline(), last);
        }
        if let Some(position) = scanned {
            self.checkpointer.scanned(position);
        }
        if self.task.runtime.config.auto_checkpoint {
            self.checkpoint_delivered().await?;
        }
        Ok(())
    }

    /// The checkpoint after a batch, written while the next one is processed.
    pub(crate) async fn checkpoint_delivered(&mut self) -> Result<(), Interrupted> {
        let written = self.checkpointer.checkpoint_in_background().await;
        self.written(written)
    }

    /// Writes what is pending if the checkpoint interval passed (a hint from an idle poll).
    pub(crate) async fn flush_if_due(&mut self) -> Result<(), Interrupted> {
        let flushed = self.checkpointer.flush_in_background().await;
        self.written(flushed)
    }

    /// A lost lease stops the shard; anything else is retried by the next flush.
    fn written(&self, written: Result<()>) -> Result<(), Interrupted> {
        let Err(error) = written else {
            return Ok(());
        };
        if is_lease_lost(&error) {
            return Err(Interrupted::Lost);
        }
        tracing::warn!(shard_id = %self.key().shard_id, %error, "checkpoint not written; will retry");
        Ok(())
    }
}

pub(crate) fn is_lease_lost(error: &Error) -> bool {
    matches!(error, Error::LeaseStore(e) if e.is_lease_lost())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snapshot_record() -> Arc<Record> {
        Arc::new(Record::builder().build())
    }

    fn scan(n: u32) -> Checkpoint {
        Checkpoint::Scan(format!("page {n}"))
    }

    #[test]
    fn a_pages_position_is_reached_once_its_last_record_is_done() {
        let mut ends = PageEnds::default();
        let first: Vec<Arc<Record>> = (0..3).map(|_| snapshot_record()).collect();
        let second: Vec<Arc<Record>> = (0..2).map(|_| snapshot_record()).collect();
        assert_eq!(ends.taken_in(&first, scan(1)), None);
        assert_eq!(ends.taken_in(&second, scan(2)), None);
        assert_eq!(ends.passed(&first[..2]), None);
        // A batch across both pages reaches the first page's end only.
        let across = [first[2].clone(), second[0].clone()];
        assert_eq!(ends.passed(&across), Some(scan(1)));
        assert_eq!(ends.passed(&second[1..]), Some(scan(2)));
        assert_eq!(ends.passed(&second), None);
    }

    #[test]
    fn several_pages_done_at_once_reach_the_last_and_an_empty_page_moves_the_one_before() {
        let mut ends = PageEnds::default();
        let first = vec![snapshot_record()];
        let second = vec![snapshot_record()];
        ends.taken_in(&first, scan(1));
        ends.taken_in(&second, scan(2));
        // A page without records: its position is reached with the page before it.
        assert_eq!(ends.taken_in(&[], scan(3)), None);
        let both = [first[0].clone(), second[0].clone()];
        assert_eq!(ends.passed(&both), Some(scan(3)));
        // With nothing outstanding, an empty page's position is reached at once.
        assert_eq!(ends.taken_in(&[], scan(4)), Some(scan(4)));
    }

    #[test]
    fn a_later_pages_records_do_not_pass_an_earlier_page_that_is_not_done() {
        let mut ends = PageEnds::default();
        let first = vec![snapshot_record(), snapshot_record()];
        let second = vec![snapshot_record()];
        ends.taken_in(&first, scan(1));
        ends.taken_in(&second, scan(2));
        // Only the records done are given: the first page's last one is not among them.
        assert_eq!(ends.passed(&second), None);
        assert_eq!(ends.passed(&first[1..]), Some(scan(1)));
    }
}
