//! Where a shard's processing stands.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sequence::SequenceNumber;

/// The stored position of a shard.
///
/// `TrimHorizon`, `Latest` and `Since(t)` are starting points for a shard nobody has
/// processed yet; `At(seq)` means every record up to and including `seq` is done, so processing resumes
/// with an `AFTER_SEQUENCE_NUMBER` iterator; `ShardEnd` means the shard is finished and its
/// children may start.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Start from the oldest record still in the stream.
    TrimHorizon,
    /// Start from records written after the consumer first reads the shard.
    Latest,
    /// Start from the oldest record, but skip (count, do not deliver) records created
    /// before this time.
    ///
    /// A position that survives a move: a `Latest` lease stores the time it started from
    /// before it reads anything, so the next owner does not reopen at a newer tip; a
    /// snapshot stores when it began. Stored with millisecond precision (make it with
    /// [`Checkpoint::since`] so a round trip through the table compares equal).
    Since(SystemTime),
    /// Everything up to and including this sequence number has been processed.
    At(SequenceNumber),
    /// The shard is closed and fully processed.
    ShardEnd,
    /// A snapshot segment's position (not a shard's): how far its Scan got, as text the
    /// consumer writes and reads (the item count and the last evaluated key). The lease
    /// starts at `TrimHorizon` (nothing scanned) and ends at `ShardEnd`.
    Scan(String),
}

impl Checkpoint {
    const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    const LATEST: &'static str = "LATEST";
    const SHARD_END: &'static str = "SHARD_END";
    /// Prefix of `Since`: letters, so the text is never mistaken for a sequence number.
    const SINCE: &'static str = "SINCE:";
    /// Prefix of `Scan`.
    const SCAN: &'static str = "SCAN:";

    /// `Since(time)`, truncated to the millisecond the lease table keeps.
    pub fn since(time: SystemTime) -> Self {
        let millis = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::Since(UNIX_EPOCH + Duration::from_millis(millis))
    }

    /// The text stored in the lease table.
    pub fn encode(&self) -> String {
        match self {
            Self::TrimHorizon => Self::TRIM_HORIZON.to_owned(),
            Self::Latest => Self::LATEST.to_owned(),
            Self::At(seq) => seq.as_str().to_owned(),
            Self::ShardEnd => Self::SHARD_END.to_owned(),
            Self::Since(time) => {
                format!("{}{}", Self::SINCE, humantime::format_rfc3339_millis(*time))
            }
            Self::Scan(position) => format!("{}{position}", Self::SCAN),
        }
    }

    /// The checkpoint `text` (as stored in the lease table) stands for, if any; the public
    /// `decode`, with its error, is in `parse.rs`.
    pub(crate) fn from_text(text: &str) -> Option<Self> {
        match text {
            Self::TRIM_HORIZON => Some(Self::TrimHorizon),
            Self::LATEST => Some(Self::Latest),
            Self::SHARD_END => Some(Self::ShardEnd),
            other if other.starts_with(Self::SCAN) => {
                Some(Self::Scan(other[Self::SCAN.len()..].to_owned()))
            }
            other if other.starts_with(Self::SINCE) => {
                humantime::parse_rfc3339(&other[Self::SINCE.len()..])
                    .ok()
                    .map(Self::since)
            }
            other => SequenceNumber::checked(other.to_owned()).ok().map(Self::At),
        }
    }

    /// Whether the shard is finished.
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Self::ShardEnd)
    }

    /// The time before which records are skipped, for a `Since` checkpoint.
    pub fn skip_before(&self) -> Option<SystemTime> {
        match self {
            Self::Since(time) => Some(*time),
            _ => None,
        }
    }

    /// The sequence number, if the checkpoint is one.
    pub fn sequence_number(&self) -> Option<&SequenceNumber> {
        match self {
            Self::At(seq) => Some(seq),
            _ => None,
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

impl From<SequenceNumber> for Checkpoint {
    fn from(seq: SequenceNumber) -> Self {
        Self::At(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for cp in [
            Checkpoint::TrimHorizon,
            Checkpoint::Latest,
            Checkpoint::ShardEnd,
            Checkpoint::Scan("{\"items\":3}".into()),
            Checkpoint::At(SequenceNumber::parse("000000000000000000042").unwrap()),
            Checkpoint::since(UNIX_EPOCH + Duration::from_millis(1_795_758_219_123)),
        ] {
            assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        }
    }

    #[test]
    fn rejects_unknown_text() {
        let err = Checkpoint::decode("SOMEWHERE").unwrap_err();
        assert!(err.to_string().contains("SOMEWHERE"));
        let err = Checkpoint::decode("SINCE:yesterday").unwrap_err();
        assert!(err.to_string().contains("SINCE:yesterday"), "{err}");
    }

    #[test]
    fn since_is_readable_text_kept_to_the_millisecond() {
        let time = UNIX_EPOCH + Duration::from_nanos(1_795_758_219_123_456_789);
        let cp = Checkpoint::since(time);
        assert_eq!(cp.encode(), "SINCE:2026-11-27T05:43:39.123Z");
        assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        assert_eq!(
            cp.skip_before(),
            Some(UNIX_EPOCH + Duration::from_millis(1_795_758_219_123))
        );
        assert_eq!(cp.sequence_number(), None);
    }
}
