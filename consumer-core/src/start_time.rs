//! Where reading starts: the initial position of shards nobody processed yet, and
//! skipping records created before a start time (`Checkpoint::Since`).
//!
//! A shard whose checkpoint is `Since(t)` is read from `TRIM_HORIZON`, and the records at
//! its beginning that were created before `t` are counted and checkpointed past instead of
//! delivered. That is how a `Latest` lease keeps its start position when it moves before
//! reading anything, and how a stream is picked up where a snapshot began.
//!
//! `ApproximateCreationDateTime` is rounded down (to the second on AWS), so a record made
//! just after `t` may carry a time just before it. Only records older than `t - margin`
//! are skipped: the margin must be at least the rounding, and a record inside the margin is
//! delivered (a possible duplicate, never a loss). Records without a creation time are
//! delivered: what cannot be dated is never skipped. Skipping stops at the first record
//! delivered; records after it are newer, and from then on the checkpoint is a sequence
//! number anyway.
//!
//! The stored position stays `Since(t)` for as long as skipping goes on: the checkpoint
//! moves past the skipped records only once a record is kept. A sequence number says
//! nothing of `t`, so a checkpoint written in the middle of the skipped records (a page
//! boundary) would make the next owner of the lease deliver the rest of them, older than
//! `t` (after a snapshot, older than the images the snapshot gave: a sink would go back in
//! time; explorer seeds 8991 and 27627). A move while skipping reads the skipped records
//! again, and skips them again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::Checkpoint;

/// Where a consumer starts on shards nobody has processed yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialPosition {
    /// From the oldest record still in the stream (up to 24 hours back).
    #[default]
    TrimHorizon,
    /// Only changes made after the consumer starts; shards already closed are marked done.
    Latest,
}

/// The default margin for the rounding of `ApproximateCreationDateTime` (DynamoDB Streams
/// on AWS rounds it down to the second) plus a clock skew of up to 4 s between the worker
/// that stores a start time and DynamoDB. Too small a margin loses records; too large one
/// only delivers a few more seconds of changes again.
pub(crate) const DEFAULT_CREATION_TIME_MARGIN: Duration = Duration::from_secs(5);

/// The skip state of one shard: active until the first record that is not skipped.
#[derive(Clone, Debug)]
pub(crate) struct StartTimeSkip {
    /// Records created before this are skipped; `None` once skipping is over.
    cutoff: Option<SystemTime>,
    /// The last record skipped while skipping goes on: the position moves past it only
    /// once skipping ends.
    held: Option<Arc<Record>>,
}

/// What [`StartTimeSkip::take_skipped`] took off the front of a page.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    /// The page's records created before the start time (counted and reported).
    pub(crate) records: Vec<Arc<Record>>,
    /// The record the position may now move past: the last one skipped (of this page or
    /// an earlier one) once skipping ended; `None` while it goes on.
    pub(crate) passed: Option<Arc<Record>>,
}

impl StartTimeSkip {
    /// The skip for a shard resuming from `checkpoint`: none unless it is `Since(t)`, in
    /// which case records created before `t - margin` are skipped.
    pub(crate) fn new(checkpoint: &Checkpoint, margin: Duration) -> Self {
        let cutoff = checkpoint
            .skip_before()
            .map(|t| t.checked_sub(margin).unwrap_or(SystemTime::UNIX_EPOCH));
        Self { cutoff, held: None }
    }

    /// Whether records may still be skipped.
    pub(crate) fn is_active(&self) -> bool {
        self.cutoff.is_some()
    }

    /// Takes the leading records created before the cutoff out of `records` (in order).
    /// Skipping ends at the first record kept; only then may the position move past the
    /// records skipped ([`Skipped::passed`]).
    pub(crate) fn take_skipped(&mut self, records: &mut Vec<Arc<Record>>) -> Skipped {
        let Some(cutoff) = self.cutoff else {
            return Skipped::default();
        };
        let count = records
            .iter()
            .take_while(|record| created(record).is_some_and(|t| t < cutoff))
            .count();
        let skipped: Vec<Arc<Record>> = records.drain(..count).collect();
        if let Some(last) = skipped.last() {
            self.held = Some(last.clone());
        }
        let passed = if records.is_empty() {
            None
        } else {
            self.cutoff = None;
            self.held.take()
        };
        Skipped {
            records: skipped,
            passed,
        }
    }
}

/// A record's `ApproximateCreationDateTime`, if it has one.
fn created(record: &Record) -> Option<SystemTime> {
    record
        .dynamodb()
        .and_then(|d| d.approximate_creation_date_time())
        .and_then(|t| SystemTime::try_from(*t).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::StreamRecord;
    use aws_smithy_types::DateTime;
    use std::time::UNIX_EPOCH;

    fn record(seq: u32, created_secs: Option<i64>) -> Arc<Record> {
        let mut data = StreamRecord::builder().sequence_number(format!("{seq:021}"));
        if let Some(secs) = created_secs {
            data = data.approximate_creation_date_time(DateTime::from_secs(secs));
        }
        Arc::new(Record::builder().dynamodb(data.build()).build())
    }

    fn seqs(records: &[Arc<Record>]) -> Vec<String> {
        records
            .iter()
            .map(|r| r.dynamodb().unwrap().sequence_number().unwrap()[18..].to_owned())
            .collect()
    }

    fn since(secs: u64) -> Checkpoint {
        Checkpoint::since(UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn passed(skipped: &Skipped) -> Option<String> {
        skipped
            .passed
            .as_ref()
            .map(|r| seqs(std::slice::from_ref(r))[0].clone())
    }

    #[test]
    fn skips_records_older_than_the_start_minus_the_margin_then_stops() {
        let mut skip = StartTimeSkip::new(&since(1_000), Duration::from_secs(1));
        let mut page = vec![record(1, Some(990)), record(2, Some(998))];
        let skipped = skip.take_skipped(&mut page);
        assert_eq!(seqs(&skipped.records), ["001", "002"]);
        assert!(page.is_empty());
        assert!(skip.is_active(), "a page skipped entirely keeps skipping");
        assert_eq!(
            passed(&skipped),
            None,
            "the position keeps the start time while skipping goes on"
        );

        // 999 is inside the margin (rounded down from after the start): delivered.
        let mut page = vec![
            record(3, Some(998)),
            record(4, Some(999)),
            record(5, Some(10)),
        ];
        let skipped = skip.take_skipped(&mut page);
        assert_eq!(seqs(&skipped.records), ["003"]);
        assert_eq!(passed(&skipped).as_deref(), Some("003"));
        assert_eq!(seqs(&page), ["004", "005"]);
        assert!(!skip.is_active());
        let mut page = vec![record(6, Some(10))];
        let skipped = skip.take_skipped(&mut page);
        assert!(
            skipped.records.is_empty() && skipped.passed.is_none(),
            "over after the first kept record"
        );
    }

    #[test]
    fn the_position_moves_past_every_skipped_page_once_a_record_is_kept() {
        let mut skip = StartTimeSkip::new(&since(1_000), Duration::from_secs(1));
        for seq in 1..=3 {
            let mut page = vec![record(seq, Some(990))];
            assert_eq!(passed(&skip.take_skipped(&mut page)), None);
        }
        // A page that starts with a kept record passes what earlier pages skipped.
        let mut page = vec![record(4, Some(1_000))];
        let skipped = skip.take_skipped(&mut page);
        assert!(skipped.records.is_empty());
        assert_eq!(passed(&skipped).as_deref(), Some("003"));
        assert_eq!(seqs(&page), ["004"]);
    }

    #[test]
    fn never_skips_a_record_without_a_creation_time() {
        let mut skip = StartTimeSkip::new(&since(1_000), Duration::from_secs(1));
        let mut page = vec![record(1, None), record(2, Some(10))];
        let skipped = skip.take_skipped(&mut page);
        assert!(skipped.records.is_empty() && skipped.passed.is_none());
        assert_eq!(page.len(), 2);
    }

    #[test]
    fn only_since_checkpoints_skip() {
        for checkpoint in [Checkpoint::TrimHorizon, Checkpoint::Latest] {
            let mut skip = StartTimeSkip::new(&checkpoint, Duration::from_secs(1));
            let mut page = vec![record(1, Some(10))];
            assert!(skip.take_skipped(&mut page).records.is_empty());
            assert!(!skip.is_active());
        }
        // A margin wider than the rounding of DynamoDB Local (a minute) keeps a record
        // stamped at the start of the minute.
        let mut skip = StartTimeSkip::new(&since(1_030), Duration::from_secs(61));
        let mut page = vec![record(1, Some(960)), record(2, Some(1_020))];
        assert_eq!(seqs(&skip.take_skipped(&mut page).records), ["001"]);
    }
}
