//! Errors of the simulation's control API: adding tables, writing items, reshaping shards.
//!
//! The [`StreamsApi`](crate::streams::StreamsApi) side of the simulation fails with
//! [`ApiError`](crate::streams::ApiError)s like the real service; these errors are for the
//! test code that drives the simulation and name the table, stream or shard involved.

/// A test asked the simulation for something it cannot do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The table was never added.
    #[error("table {table:?} does not exist in the simulation")]
    NoSuchTable {
        /// The table's name.
        table: String,
    },
    /// The stream ARN is not one of the simulation's.
    #[error("stream {stream} does not exist in the simulation")]
    NoSuchStream {
        /// The stream's ARN.
        stream: String,
    },
    /// The shard is not in the stream.
    #[error("shard {shard} does not exist in stream {stream}")]
    NoSuchShard {
        /// The stream's ARN.
        stream: String,
        /// The shard's id.
        shard: String,
    },
    /// Splitting or rotating needs an open shard.
    #[error("shard {shard} of stream {stream} is already closed")]
    ShardClosed {
        /// The stream's ARN.
        stream: String,
        /// The shard's id.
        shard: String,
    },
    /// An item or key lacks one of the table's key attributes.
    #[error("item for table {table:?} lacks key attribute {attribute:?}")]
    MissingKey {
        /// The table's name.
        table: String,
        /// The missing attribute.
        attribute: String,
    },
    /// A value could not be converted into an item.
    #[error("value for table {table:?} is not an item: {message}")]
    NotAnItem {
        /// The table's name.
        table: String,
        /// What serde_dynamo said.
        message: String,
    },
    /// The simulation broke its own invariants (a bug in the simulation).
    #[error("simulation invariant broken in stream {stream}: {message}")]
    Internal {
        /// The stream's ARN.
        stream: String,
        /// What went wrong.
        message: String,
    },
}

impl SimError {
    pub(crate) fn no_such_table(table: &str) -> Self {
        Self::NoSuchTable {
            table: table.to_owned(),
        }
    }

    pub(crate) fn no_such_stream(stream: &str) -> Self {
        Self::NoSuchStream {
            stream: stream.to_owned(),
        }
    }
}
