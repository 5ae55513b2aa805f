//! One simulated shard: its records, its place in the lineage, and how it ages.
//!
//! Sequence numbers come from one counter per simulation, so they increase strictly in
//! every shard and a child always starts after its parent's end. Internally they are
//! `u128`; as text they are 26 zero-padded digits above `u64::MAX`, as real ones are
//! (21-40 digits), which catches consumers that parse them into machine integers.
//! Trimming only ever removes a prefix of a shard's records, so record indexes are stable
//! positions for iterators; trimmed records stay stored for the tests' own checks.

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::SequenceNumber;
use std::time::Duration;
use tokio::time::Instant;

use crate::streams::ShardInfo;

/// Sequence numbers count up from just above this (10^24 > `u64::MAX`).
pub(crate) const SEQUENCE_BASE: u128 = 1_000_000_000_000_000_000_000_000;

/// The text of an internal sequence number.
pub(crate) fn sequence_text(value: u128) -> String {
    format!("{value:026}")
}

/// An internal sequence number as a [`SequenceNumber`].
pub(crate) fn sequence_number(
    value: u128,
) -> Result<SequenceNumber, dynamodb_streams_leases::Error> {
    SequenceNumber::parse(sequence_text(value))
}

/// The internal value of a sequence number, `None` if it exceeds every simulated one.
pub(crate) fn sequence_value(seq: &SequenceNumber) -> Option<u128> {
    let digits = seq.as_str().trim_start_matches('0');
    if digits.is_empty() {
        Some(0)
    } else if digits.len() > 38 {
        None
    } else {
        digits.parse().ok()
    }
}

/// A stored record.
#[derive(Debug)]
pub(crate) struct StoredRecord {
    pub(crate) seq: u128,
    pub(crate) written_at: Instant,
    pub(crate) record: Record,
}

/// Why a sequence number cannot position an iterator in a shard.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PositionError {
    /// Outside the shard's range (ValidationException in DynamoDB).
    OutOfRange,
    /// The record there was trimmed.
    Trimmed,
}

/// A simulated shard.
#[derive(Debug)]
pub(crate) struct Shard {
    pub(crate) id: String,
    pub(crate) parent: Option<String>,
    pub(crate) children: Vec<String>,
    pub(crate) created_at: Instant,
    pub(crate) starting: u128,
    pub(crate) ending: Option<u128>,
    pub(crate) closed_at: Option<Instant>,
    pub(crate) records: Vec<StoredRecord>,
    /// How many records (a prefix) are trimmed.
    pub(crate) trimmed: usize,
    /// Closed, fully trimmed and older than retention: gone from DescribeStream.
    pub(crate) gone: bool,
}

impl Shard {
    /// An open, empty shard.
    pub(crate) fn new(
        id: String,
        parent: Option<String>,
        created_at: Instant,
        starting: u128,
    ) -> Self {
        Self {
            id,
            parent,
            children: Vec::new(),
            created_at,
            starting,
            ending: None,
            closed_at: None,
            records: Vec::new(),
            trimmed: 0,
            gone: false,
        }
    }

    /// Whether the shard still takes writes.
    pub(crate) fn is_open(&self) -> bool {
        self.ending.is_none()
    }

    /// The sequence number of the last record, if any.
    pub(crate) fn last_seq(&self) -> Option<u128> {
        self.records.last().map(|r| r.seq)
    }

    /// Trims records older than `retention` and retires the shard once closed, empty of
    /// live records and closed for longer than `retention`.
    pub(crate) fn trim(&mut self, now: Instant, retention: Duration) {
        let expired = |at: Instant| now.saturating_duration_since(at) > retention;
        while let Some(record) = self.records.get(self.trimmed) {
            if !expired(record.written_at) {
                break;
            }
            self.trimmed += 1;
        }
        if let Some(closed_at) = self.closed_at
            && self.trimmed == self.records.len()
            && expired(closed_at)
        {
            self.gone = true;
        }
    }

    /// The index of the first record to return for AT (`after == false`) or AFTER
    /// `seq`.
    pub(crate) fn position_for(
        &self,
        seq: Option<u128>,
        after: bool,
    ) -> Result<usize, PositionError> {
        let Some(seq) = seq else {
            return Err(PositionError::OutOfRange);
        };
        let upper = self
            .ending
            .unwrap_or_else(|| self.last_seq().unwrap_or(self.starting).max(self.starting));
        if seq < self.starting || seq > upper {
            return Err(PositionError::OutOfRange);
        }
        let position = self
            .records
            .partition_point(|r| if after { r.seq <= seq } else { r.seq < seq });
        if position < self.trimmed {
            return Err(PositionError::Trimmed);
        }
        Ok(position)
    }

    /// The shard as DescribeStream shows it.
    pub(crate) fn info(&self) -> Result<ShardInfo, dynamodb_streams_leases::Error> {
        Ok(ShardInfo {
            shard_id: self.id.clone(),
            parent_shard_id: self.parent.clone(),
            starting_sequence_number: Some(sequence_number(self.starting)?),
            ending_sequence_number: self.ending.map(sequence_number).transpose()?,
        })
    }
}
