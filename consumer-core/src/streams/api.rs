//! The Streams API as the consumer sees it: the trait, its pages and positions, its error.
//!
//! Apart from the SDK version (`sdk.rs`), so that version and the simulated stream import
//! these types without a circle through the module that re-exports both.

use std::fmt;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::{Record, StreamStatus, StreamViewType};
use dynamodb_streams_leases::SequenceNumber;
use dynamodb_streams_leases::aws::{CursorStalled, ErrorClass};

/// Errors of the streams API, already classified for the caller.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where to start reading a shard (the four iterator types of GetShardIterator).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    /// The oldest record still in the shard.
    TrimHorizon,
    /// Only records written after the iterator was created.
    Latest,
    /// The record with this sequence number, then the rest.
    AtSequenceNumber(SequenceNumber),
    /// The records after this sequence number: how processing resumes from a checkpoint.
    AfterSequenceNumber(SequenceNumber),
}

impl fmt::Display for StartPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TrimHorizon => f.write_str("TRIM_HORIZON"),
            Self::Latest => f.write_str("LATEST"),
            Self::AtSequenceNumber(seq) => write!(f, "AT_SEQUENCE_NUMBER {seq}"),
            Self::AfterSequenceNumber(seq) => write!(f, "AFTER_SEQUENCE_NUMBER {seq}"),
        }
    }
}

/// One shard as DescribeStream reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// The shard's id.
    pub shard_id: String,
    /// The shard it was split or rotated from, if any.
    pub parent_shard_id: Option<String>,
    /// The first sequence number in the shard.
    pub starting_sequence_number: Option<SequenceNumber>,
    /// The last sequence number, present once the shard is closed.
    pub ending_sequence_number: Option<SequenceNumber>,
}

impl ShardInfo {
    /// A closed shard receives no new records; reading it to the end ends it.
    pub fn is_closed(&self) -> bool {
        self.ending_sequence_number.is_some()
    }
}

/// One page of DescribeStream.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamPage {
    /// The stream.
    pub stream_arn: String,
    /// The table the stream belongs to.
    pub table_name: Option<String>,
    /// ENABLING, ENABLED, DISABLING or DISABLED.
    pub status: Option<StreamStatus>,
    /// Which images the stream records carry.
    pub view_type: Option<StreamViewType>,
    /// The shards of this page.
    pub shards: Vec<ShardInfo>,
    /// Where the next page starts; `None` on the last page.
    pub last_evaluated_shard_id: Option<String>,
}

/// One page of GetRecords.
#[derive(Clone, Debug, Default)]
pub struct RecordsPage {
    /// The records, in sequence order.
    pub records: Vec<Record>,
    /// The iterator for the next call; `None` once a closed shard has been read to its end.
    pub next_iterator: Option<String>,
}

/// What kind of failure a streams call met: the poll loop decides by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ApiErrorKind {
    /// The shard iterator is older than 15 minutes (or otherwise used up): get a new one.
    ExpiredIterator,
    /// The requested position was trimmed (older than 24 hours): data was lost to us.
    TrimmedDataAccess,
    /// Request rate too high (LimitExceededException or throttling): back off.
    Throttled,
    /// The table, stream or shard does not exist.
    ResourceNotFound,
    /// The table exists but has no stream enabled.
    StreamNotEnabled,
    /// The service failed (InternalServerError, 5xx): retry with backoff.
    InternalServerError,
    /// The request never got an answer (connection refused, DNS, timeout).
    Transport,
    /// The request was rejected as invalid (ValidationException and the like).
    InvalidRequest,
    /// Anything else the service said.
    Other,
}

impl ApiErrorKind {
    /// Whether the same call may succeed if retried after a pause.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::Throttled | Self::InternalServerError | Self::Transport
        )
    }
}

/// The kinds shared by every AWS call; the two stream-specific ones (`ExpiredIterator`,
/// `TrimmedDataAccess`) come from their error codes, and `StreamNotEnabled` from
/// DescribeTable's answer.
impl From<ErrorClass> for ApiErrorKind {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Throttling => Self::Throttled,
            ErrorClass::Transient => Self::InternalServerError,
            ErrorClass::Transport => Self::Transport,
            ErrorClass::NotFound => Self::ResourceNotFound,
            ErrorClass::Validation => Self::InvalidRequest,
            ErrorClass::ConditionFailed | ErrorClass::Other => Self::Other,
        }
    }
}

impl fmt::Display for ApiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::ExpiredIterator => "expired iterator",
            Self::TrimmedDataAccess => "trimmed data",
            Self::Throttled => "throttled",
            Self::ResourceNotFound => "not found",
            Self::StreamNotEnabled => "stream not enabled",
            Self::InternalServerError => "internal server error",
            Self::Transport => "unreachable",
            Self::InvalidRequest => "invalid request",
            Self::Other => "service error",
        };
        f.write_str(text)
    }
}

/// A failed streams call: which operation, on what, and why.
#[derive(Debug, thiserror::Error)]
#[error("{operation} on {resource} failed ({kind}): {message}")]
pub struct ApiError {
    /// What kind of failure.
    pub kind: ApiErrorKind,
    /// The API operation, e.g. `GetRecords`.
    pub operation: &'static str,
    /// What the call was about, e.g. `table "orders"`, `stream arn:...`, `shard shardId-...`.
    pub resource: String,
    /// The service's (or transport's) message.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<BoxError>,
}

impl ApiError {
    /// An error without an underlying cause (used by fakes and simulations).
    pub fn new(
        kind: ApiErrorKind,
        operation: &'static str,
        resource: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            operation,
            resource: resource.into(),
            message: message.into(),
            source: None,
        }
    }
}

/// A DescribeStream listing whose cursor did not advance: an error naming the stream.
impl From<CursorStalled> for ApiError {
    fn from(stalled: CursorStalled) -> Self {
        Self::new(
            ApiErrorKind::Other,
            "DescribeStream",
            format!("stream {}", stalled.stream_arn),
            format!("pagination did not advance past shard {}", stalled.cursor),
        )
    }
}

/// The DynamoDB Streams calls the consumer makes, one page per call.
#[async_trait]
pub trait StreamsApi: Send + Sync + fmt::Debug + 'static {
    /// The ARN of the table's current stream (DescribeTable). Fails with
    /// `ResourceNotFound` for a missing table and `StreamNotEnabled` for a table without
    /// a stream.
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError>;

    /// One page of the stream's shards, starting after `exclusive_start_shard_id`.
    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError>;

    /// The children of a shard (DescribeStream with `ShardFilter{CHILD_SHARDS}`), all
    /// pages: used at shard end so a child starts without waiting for a full sync.
    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError>;

    /// A shard iterator at `position`.
    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError>;

    /// Up to `limit` records (1-1000) from `iterator`.
    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError>;

    /// The wall-clock time that records written now would be stamped with: the start time
    /// a `LATEST` lease stores (`Checkpoint::Since`) is compared with the records'
    /// `ApproximateCreationDateTime`. This host's clock for AWS (NTP keeps it within the
    /// creation-time margin); the simulated stream's own clock in simulations.
    fn now(&self) -> std::time::SystemTime {
        std::time::SystemTime::now()
    }

    /// A random number, for what must differ between workers started at the same moment
    /// (worker incarnation ids, the delay before claiming the leader's role). The OS's
    /// randomness for AWS; the simulated stream's seeded generator in simulations, so a
    /// seed replays exactly.
    fn random_u64(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // std's hasher keys come from the OS's randomness, fresh per process (and per call
        // in their low bits); the time and a counter make each call differ.
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        hasher.finish()
    }
}
