//! Records that leave the normal path: why, who is told, and how a processor reports a
//! partial batch failure.
//!
//! The shard consumer gives up on records only as the failure policy says (retries
//! exhausted, too old, undecodable, panicked, timed out), and only into an
//! [`FailureHandler`]: the checkpoint moves past them once the handler returned `Ok`.
//! Without a handler the shard holds at them, as it always did.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::SequenceNumber;

use crate::error::BoxError;

/// Why records were taken off the normal path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// `process` kept failing until `with_max_retries` was used up.
    RetriesExhausted,
    /// Older than `with_max_record_age` when fetched; never given to the processor.
    TooOld,
    /// An image does not decode into the processor's item type.
    Undecodable,
    /// `process` panicked (on its last attempt).
    Panicked,
    /// `process` ran longer than `with_batch_timeout` (on its last attempt).
    TimedOut,
}

impl FailureReason {
    /// The reason as written in dead-letter items and the example's JSON lines:
    /// `retries-exhausted`, `too-old`, `undecodable`, `panicked`, `timed-out`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries-exhausted",
            Self::TooOld => "too-old",
            Self::Undecodable => "undecodable",
            Self::Panicked => "panicked",
            Self::TimedOut => "timed-out",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Consecutive records of one shard that the framework gives up delivering.
///
/// The records are raw (as DynamoDB Streams returned them): they may not decode.
#[derive(Clone, Debug)]
pub struct FailedRecords {
    /// The table whose stream this is, when the consumer was given a table name.
    pub table: Option<String>,
    /// The stream.
    pub stream_arn: String,
    /// The shard.
    pub shard_id: String,
    /// Why they left the normal path.
    pub reason: FailureReason,
    /// The last error, as text that names shard, sequence number and field, never item
    /// values.
    pub error: String,
    /// The records, in order (at least one).
    pub records: Vec<Arc<Record>>,
}

impl FailedRecords {
    /// The sequence number of each record, in order (records without one are left out).
    pub fn sequence_numbers(&self) -> impl Iterator<Item = &str> {
        self.records.iter().filter_map(|r| sequence_text(r))
    }
}

/// The sequence number of a raw record, as text.
pub(crate) fn sequence_text(record: &Record) -> Option<&str> {
    record.dynamodb().and_then(|d| d.sequence_number())
}

/// A record's sequence number, parsed.
pub(crate) fn record_seq(record: &Record) -> Option<SequenceNumber> {
    sequence_text(record).and_then(|text| SequenceNumber::parse(text).ok())
}

/// Where records go that the framework gives up on (Lambda's on-failure destination).
///
/// The shard's checkpoint moves past the records only after `handle` returned `Ok`; an
/// error is retried (with the processing backoff) and holds the shard meanwhile. Built in:
/// [`DeadLetterTable`](crate::DeadLetterTable), a DynamoDB table.
#[async_trait]
pub trait FailureHandler: Send + Sync + 'static {
    /// Stores or reports `failed`; `Ok` lets the shard move on past them.
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError>;
}

/// A partial batch response: returned by `process` (as its error) to say that every record
/// before one succeeded. The framework checkpoints before it and delivers again from it;
/// the failure counts toward `with_max_retries` for that record.
///
/// [`at`](Self::at) names the record by its sequence number; [`at_index`](Self::at_index)
/// by its place in the batch, which also works for snapshot records (they have no sequence
/// number). A record that is not in the batch fails the whole batch.
#[derive(Debug, thiserror::Error)]
#[error("processing failed at {at}: {source}")]
pub struct BatchFailure {
    /// The first record that did not succeed.
    pub at: FailedAt,
    /// Why.
    #[source]
    pub source: BoxError,
}

/// The first record of a batch that did not succeed, as a [`BatchFailure`] names it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailedAt {
    /// The record with this sequence number.
    SequenceNumber(SequenceNumber),
    /// The record at this place in the batch (0 is the first), stream or snapshot record.
    Index(usize),
}

impl fmt::Display for FailedAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SequenceNumber(seq) => write!(f, "record {seq}"),
            Self::Index(index) => write!(f, "record {index} of the batch (from 0)"),
        }
    }
}

impl BatchFailure {
    /// Everything before `sequence_number` succeeded; it failed because of `source`.
    pub fn at(sequence_number: SequenceNumber, source: impl Into<BoxError>) -> Self {
        Self {
            at: FailedAt::SequenceNumber(sequence_number),
            source: source.into(),
        }
    }

    /// Everything before the batch's record at `index` (0 is the first) succeeded; it failed
    /// because of `source`. Works for snapshot records too.
    pub fn at_index(index: usize, source: impl Into<BoxError>) -> Self {
        Self {
            at: FailedAt::Index(index),
            source: source.into(),
        }
    }
}
