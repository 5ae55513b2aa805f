//! The model types read from text: the public parsers of [`SequenceNumber`] and
//! [`Checkpoint`], which return the crate's [`Error`]. Apart from the types, so that they do
//! not import the error that names them (the error carries lease keys, sequence numbers and
//! checkpoints).

use std::str::FromStr;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::sequence::SequenceNumber;

impl SequenceNumber {
    /// Parses a sequence number, rejecting empty input, non-digits and absurd lengths.
    pub fn parse(text: impl Into<String>) -> Result<Self> {
        Self::checked(text.into())
            .map_err(|(input, reason)| Error::InvalidSequenceNumber { input, reason })
    }
}

impl FromStr for SequenceNumber {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for SequenceNumber {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<&str> for SequenceNumber {
    type Error = Error;

    fn try_from(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl Checkpoint {
    /// Reads the text stored in the lease table.
    pub fn decode(text: &str) -> Result<Self> {
        Self::from_text(text).ok_or_else(|| Error::InvalidCheckpoint {
            input: text.to_owned(),
        })
    }
}
