//! How a simulation behaves: the knobs of the simulated service and of its tables.
//!
//! Defaults are DynamoDB's own limits (24 h retention, 15 min iterators, 1000 records per
//! GetRecords page, 100 shards per DescribeStream page); tests shrink them to reach
//! pagination, trimming and expiry quickly.

use std::time::Duration;

use aws_sdk_dynamodbstreams::types::StreamViewType;

/// Settings of a [`SimulatedStream`](super::SimulatedStream).
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seeds the RNG behind throttling and iterator nonces: same seed, same run.
    pub seed: u64,
    /// Records older than this are trimmed (DynamoDB: 24 hours).
    pub retention: Duration,
    /// Shard iterators older than this are expired (DynamoDB: 15 minutes).
    pub iterator_lifetime: Duration,
    /// The view type of streams created by [`add_table`](super::SimulatedStream::add_table).
    pub view_type: StreamViewType,
    /// The most records one GetRecords page returns (DynamoDB: 1000); the call's `limit`
    /// lowers it further. Zero counts as one.
    pub max_records_per_page: u32,
    /// How many shards a new stream starts with (DynamoDB Local: 1). Zero counts as one.
    pub initial_shards: usize,
    /// Shards per DescribeStream page (DynamoDB: up to 100). Zero counts as one.
    pub describe_page_size: usize,
    /// The partition key attribute of tables created by `add_table`.
    pub key_attribute: String,
    /// Rotate every open shard once it is this old, as DynamoDB does every few hours.
    /// `None` (the default) rotates only on request. Periods under a minute count as a
    /// minute, so a long time jump cannot create millions of shards.
    pub auto_rotate: Option<Duration>,
    /// Simulated latency of every API call (a `tokio::time::sleep` before it runs).
    pub latency: Duration,
    /// How the end of a closed shard shows. `false`: the page that returns the shard's last
    /// records has no next iterator. `true`: that page still has one, and the following
    /// call returns an empty page without one. DynamoDB does both; consumers must handle
    /// both.
    pub empty_page_before_shard_end: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            retention: Duration::from_secs(24 * 60 * 60),
            iterator_lifetime: Duration::from_secs(15 * 60),
            view_type: StreamViewType::NewAndOldImages,
            max_records_per_page: 1000,
            initial_shards: 1,
            describe_page_size: 100,
            key_attribute: "pk".to_owned(),
            auto_rotate: None,
            latency: Duration::ZERO,
            empty_page_before_shard_end: false,
        }
    }
}

impl SimConfig {
    /// The defaults with this seed.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }
}

/// How one simulated table is keyed and streamed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// The partition key attribute.
    pub partition_key: String,
    /// The sort key attribute, if the table has one.
    pub sort_key: Option<String>,
    /// Whether the table has a stream.
    pub stream_enabled: bool,
    /// The stream's view type; `None` takes [`SimConfig::view_type`].
    pub view_type: Option<StreamViewType>,
}

impl TableSpec {
    /// A streamed table keyed by `partition_key` alone, with the configured view type.
    pub fn new(partition_key: impl Into<String>) -> Self {
        Self {
            partition_key: partition_key.into(),
            sort_key: None,
            stream_enabled: true,
            view_type: None,
        }
    }

    /// Adds a sort key.
    pub fn with_sort_key(mut self, sort_key: impl Into<String>) -> Self {
        self.sort_key = Some(sort_key.into());
        self
    }

    /// Sets the stream's view type.
    pub fn with_view_type(mut self, view_type: StreamViewType) -> Self {
        self.view_type = Some(view_type);
        self
    }

    /// Without a stream: DescribeTable answers `StreamNotEnabled`.
    pub fn without_stream(mut self) -> Self {
        self.stream_enabled = false;
        self
    }

    /// The key attributes, partition key first.
    pub(crate) fn key_attributes(&self) -> Vec<String> {
        let mut keys = vec![self.partition_key.clone()];
        keys.extend(self.sort_key.clone());
        keys
    }
}
