//! The one error type of the consumer.

use dynamodb_streams_leases::SequenceNumber;

use crate::streams::ApiError;

/// A `Result` whose error defaults to the consumer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error returned by user code (processors and hooks).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong, naming the table, stream, shard, sequence number or setting involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A DynamoDB Streams call failed.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// The lease store failed or refused a write.
    #[error(transparent)]
    LeaseStore(#[from] dynamodb_streams_leases::Error),

    /// A stream record's image does not decode into the processor's item type. The record
    /// was not delivered and is not checkpointed past.
    #[error(
        "cannot decode the {image} of record {sequence_number} in shard {shard_id}: at `{path}`: {message}"
    )]
    Decode {
        /// The shard.
        shard_id: String,
        /// The record.
        sequence_number: SequenceNumber,
        /// `NewImage`, `OldImage` or `Keys`.
        image: &'static str,
        /// Where in the item the problem is (`.` for the whole item).
        path: String,
        /// What serde said.
        message: String,
    },

    /// A stream record lacks something every record must have.
    #[error("malformed record in shard {shard_id}: {problem}")]
    MalformedRecord {
        /// The shard.
        shard_id: String,
        /// What is missing or wrong.
        problem: String,
    },

    /// A checkpoint request was refused before reaching the store.
    #[error("cannot checkpoint shard {shard_id} at {requested}: {reason}")]
    InvalidCheckpoint {
        /// The shard.
        shard_id: String,
        /// The requested sequence number.
        requested: SequenceNumber,
        /// Why it was refused.
        reason: String,
    },

    /// Records were trimmed from the stream before we read them, and the
    /// [`TrimmedDataPolicy`](crate::TrimmedDataPolicy) says to stop.
    #[error(
        "records of shard {shard_id} were trimmed before they were read (wanted {wanted}); stopping as the trimmed-data policy says"
    )]
    DataTrimmed {
        /// The shard.
        shard_id: String,
        /// The position we tried to read from.
        wanted: String,
    },

    /// A processor (or hook) returned an error.
    #[error("processor failed on shard {shard_id}: {source}")]
    Processor {
        /// The shard.
        shard_id: String,
        /// The processor's error.
        #[source]
        source: BoxError,
    },

    /// Something that should not happen inside the consumer (a task ended early).
    #[error("internal error on shard {shard_id}: {problem}")]
    Internal {
        /// The shard.
        shard_id: String,
        /// What went wrong.
        problem: String,
    },

    /// A table's snapshot (`with_snapshot`) cannot be taken, or cannot go on.
    #[error("snapshot of table {table} (stream {stream_arn}): {problem}")]
    Snapshot {
        /// The table.
        table: String,
        /// Its stream.
        stream_arn: String,
        /// What is wrong (never an item's values).
        problem: String,
    },
    /// The consumer was configured wrongly; nothing was started.
    #[error("invalid configuration `{key}`: {problem}")]
    Config {
        /// The setting, as named by its builder method.
        key: &'static str,
        /// What is wrong.
        problem: String,
    },
}
