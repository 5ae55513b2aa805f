//! The one error type of this crate.

use std::time::Duration;

use crate::aws::ErrorClass;
use crate::lease::LeaseKey;

/// A `Result` whose error defaults to this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, naming the table, lease or input involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Text that should be a DynamoDB Streams sequence number is not one.
    #[error("invalid sequence number {input:?}: {reason}")]
    InvalidSequenceNumber {
        /// The rejected text.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A stored checkpoint is neither a position name nor a sequence number.
    #[error(
        "invalid checkpoint {input:?}: expected TRIM_HORIZON, LATEST, SHARD_END, SINCE:<RFC 3339 time> or a sequence number"
    )]
    InvalidCheckpoint {
        /// The rejected text.
        input: String,
    },

    /// The membership item a worker's id hashes to already holds its maximum of workers
    /// ([`crate::MEMBERS_PER_SHARD`]): the worker does not join under this id. A worker
    /// retries with a new incarnation id, which hashes to another item.
    #[error(
        "worker {worker_id} cannot join: membership item {shard} of lease table {table:?} already holds {limit} workers (the most one item takes, so that no item is written by more workers; a new incarnation id hashes to another item)"
    )]
    MembershipFull {
        /// The lease table.
        table: String,
        /// The worker that could not join.
        worker_id: String,
        /// The membership item its id hashes to.
        shard: u16,
        /// How many workers one membership item holds.
        limit: u32,
    },

    /// A worker's membership entry is gone: the leader judged it dead (its heartbeat had not
    /// moved for the failover time) and removed it, or it left. The worker must stop every
    /// shard at once and come back as a new incarnation.
    #[error(
        "worker {worker_id} is no longer a member of lease table {table:?}: the leader judged it dead and removed its entry"
    )]
    WorkerRemoved {
        /// The lease table.
        table: String,
        /// The worker whose entry is gone.
        worker_id: String,
    },

    /// A lease table name breaks DynamoDB's naming rules; nothing was sent.
    #[error("invalid lease table name {name:?}: {reason}")]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A table with the lease table's name exists but is not shaped like one.
    #[error("table {table:?} exists but is not a lease table: {found}")]
    NotALeaseTable {
        /// The table.
        table: String,
        /// What was found instead of the expected key schema.
        found: String,
    },

    /// The lease table did not become ACTIVE in time.
    #[error("lease table {table:?} did not become ACTIVE within {waited:?}")]
    TableNotActive {
        /// The table.
        table: String,
        /// How long we waited.
        waited: Duration,
    },

    /// A lease that should be new is already in the table.
    #[error("lease {key} already exists")]
    AlreadyExists {
        /// The lease.
        key: LeaseKey,
    },

    /// The lease is not in the table.
    #[error("lease {key} does not exist")]
    LeaseNotFound {
        /// The lease.
        key: LeaseKey,
    },

    /// A write that needs our ownership failed: another worker took the lease, or it was
    /// released. The caller must stop processing the shard.
    #[error("lease {key} is no longer owned by {owner:?} at epoch {epoch}")]
    LeaseLost {
        /// The lease.
        key: LeaseKey,
        /// The owner the write was made for.
        owner: String,
        /// The epoch the write was made for.
        epoch: u64,
    },

    /// A take lost a race: the lease no longer has the owner and epoch the caller saw.
    #[error(
        "lease {key} changed since it was read (expected owner {seen_owner:?}, epoch {seen_epoch})"
    )]
    LeaseChanged {
        /// The lease.
        key: LeaseKey,
        /// The owner the caller saw.
        seen_owner: Option<String>,
        /// The epoch the caller saw.
        seen_epoch: u64,
    },

    /// An item in the lease table could not be read back into our model.
    #[error("corrupt item {item:?} in lease table {table:?}: attribute {attribute:?} {problem}")]
    CorruptItem {
        /// The table.
        table: String,
        /// The item's partition key.
        item: String,
        /// The attribute at fault.
        attribute: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// A transactional pipeline checkpoint did not carry the checkpoint of the pipeline it
    /// is conditional on (a caller's mistake); nothing was sent.
    #[error(
        "lease {key}: the transactional checkpoint of pipeline {pipeline:?} does not hold that pipeline's checkpoint"
    )]
    InvalidPipelineUpdate {
        /// The lease.
        key: LeaseKey,
        /// The pipeline.
        pipeline: String,
    },

    /// The store cannot commit other writes together with a checkpoint (only the DynamoDB
    /// store can: its checkpoints live in DynamoDB).
    #[error("the lease store {store} does not support transactions (exactly-once commits)")]
    TransactionsUnsupported {
        /// The store, as it describes itself.
        store: String,
    },

    /// One record's staged writes cannot be committed in one transaction with the checkpoint
    /// (too many, too large, an item written twice): nothing was sent.
    #[error(
        "record {sequence_number} of lease {key} cannot be committed in one transaction: {problem}"
    )]
    TransactionTooLarge {
        /// The lease (stream and shard).
        key: LeaseKey,
        /// The record.
        sequence_number: crate::SequenceNumber,
        /// What does not fit, naming writes by position and tables by name, never key or
        /// item values (the text reaches logs and dead-letter items).
        problem: String,
    },

    /// DynamoDB cancelled a transaction because of one of the staged writes (its condition
    /// failed, or it was invalid); none of it, checkpoint included, was applied.
    #[error(
        "transaction with the checkpoint of lease {key} in table {table:?} was cancelled: {reasons}"
    )]
    TransactionCanceled {
        /// The lease table.
        table: String,
        /// The lease.
        key: LeaseKey,
        /// Each refused write: its position, table and DynamoDB's reason.
        reasons: String,
    },

    /// A transactional checkpoint expected another stored checkpoint: the lease is still
    /// ours, but its checkpoint moved (an earlier write that seemed to fail did commit).
    #[error("checkpoint of lease {key} is {found}, expected {expected}; nothing was written")]
    CheckpointMoved {
        /// The lease.
        key: LeaseKey,
        /// The checkpoint the transaction was conditional on.
        expected: crate::Checkpoint,
        /// The checkpoint found by a consistent read.
        found: crate::Checkpoint,
    },

    /// DynamoDB could not be reached (connection refused, DNS, timeout).
    #[error("cannot reach DynamoDB at {endpoint} for {operation} on table {table:?}: {source}")]
    Unreachable {
        /// The endpoint, or "the default AWS endpoint".
        endpoint: String,
        /// The DynamoDB operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// DynamoDB answered with an error.
    #[error("DynamoDB {operation} on table {table:?}{} failed: {source}", key.as_ref().map(|k| format!(" (lease {k})")).unwrap_or_default())]
    DynamoDb {
        /// The DynamoDB operation.
        operation: &'static str,
        /// The table.
        table: String,
        /// The lease concerned, if any.
        key: Option<LeaseKey>,
        /// What kind of failure, which decides whether a retry may help.
        class: ErrorClass,
        /// The SDK error, with its message and code.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// Whether the error means this worker no longer owns a lease (and must stop the shard).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost { .. } | Self::LeaseNotFound { .. })
    }

    /// Whether retrying the same call later may succeed: an unreachable endpoint,
    /// throttling or a service failure. A missing table or a rejected request is not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::DynamoDb { class, .. } => class.is_retryable(),
            _ => false,
        }
    }

    /// Whether the lease table itself is gone (deleted under running workers): no retry
    /// helps, so workers stop with this error instead of retrying forever.
    pub fn is_table_missing(&self) -> bool {
        matches!(
            self,
            Self::DynamoDb {
                class: ErrorClass::NotFound,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dynamodb(class: ErrorClass) -> Error {
        Error::DynamoDb {
            operation: "Scan",
            table: "t".to_owned(),
            key: None,
            class,
            source: "failed".into(),
        }
    }

    #[test]
    fn only_retryable_classes_are_transient() {
        assert!(dynamodb(ErrorClass::Throttling).is_transient());
        assert!(dynamodb(ErrorClass::Transient).is_transient());
        for class in [
            ErrorClass::NotFound,
            ErrorClass::Validation,
            ErrorClass::ConditionFailed,
            ErrorClass::Other,
        ] {
            assert!(!dynamodb(class).is_transient(), "{class}");
        }
        assert!(dynamodb(ErrorClass::NotFound).is_table_missing());
        assert!(!dynamodb(ErrorClass::Throttling).is_table_missing());
    }
}
