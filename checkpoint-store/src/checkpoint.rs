//! Where a shard's processing stands.

use std::fmt;

use crate::error::{Error, Result};
use crate::sequence::SequenceNumber;

/// The stored position of a shard.
///
/// `TrimHorizon` and `Latest` are starting points for a shard nobody has processed yet;
/// `At(seq)` means every record up to and including `seq` is done, so processing resumes
/// with an `AFTER_SEQUENCE_NUMBER` iterator; `ShardEnd` means the shard is finished and its
/// children may start.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Checkpoint {
    /// Start from the oldest record still in the stream.
    TrimHorizon,
    /// Start from records written after the consumer first reads the shard.
    Latest,
    /// Everything up to and including this sequence number has been processed.
    At(SequenceNumber),
    /// The shard is closed and fully processed.
    ShardEnd,
}

impl Checkpoint {
    const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    const LATEST: &'static str = "LATEST";
    const SHARD_END: &'static str = "SHARD_END";

    /// The text stored in the lease table.
    pub fn encode(&self) -> String {
        match self {
            Self::TrimHorizon => Self::TRIM_HORIZON.to_owned(),
            Self::Latest => Self::LATEST.to_owned(),
            Self::At(seq) => seq.as_str().to_owned(),
            Self::ShardEnd => Self::SHARD_END.to_owned(),
        }
    }

    /// Reads the text stored in the lease table.
    pub fn decode(text: &str) -> Result<Self> {
        match text {
            Self::TRIM_HORIZON => Ok(Self::TrimHorizon),
            Self::LATEST => Ok(Self::Latest),
            Self::SHARD_END => Ok(Self::ShardEnd),
            other => {
                SequenceNumber::parse(other)
                    .map(Self::At)
                    .map_err(|_| Error::InvalidCheckpoint {
                        input: other.to_owned(),
                    })
            }
        }
    }

    /// Whether the shard is finished.
    pub fn is_shard_end(&self) -> bool {
        matches!(self, Self::ShardEnd)
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
            Checkpoint::At(SequenceNumber::parse("000000000000000000042").unwrap()),
        ] {
            assert_eq!(Checkpoint::decode(&cp.encode()).unwrap(), cp);
        }
    }

    #[test]
    fn rejects_unknown_text() {
        let err = Checkpoint::decode("SOMEWHERE").unwrap_err();
        assert!(err.to_string().contains("SOMEWHERE"));
    }
}
