//! [`SimulatedStream`]: the cloneable handle tests drive and consumers read.
//!
//! Test code writes items, reshapes shards, injects faults and inspects what was written;
//! the consumer under test sees only [`StreamsApi`]. The state sits behind one std mutex
//! that is never held across an `.await`, so the handle works on any tokio runtime.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::Record;
use serde::Serialize;

use super::config::{SimConfig, TableSpec};
use super::error::SimError;
use super::faults::SimOperation;
use super::items::Item;
use super::state::{Simulation, WriteOp, WrittenRecord};
use crate::streams::{
    ApiError, ApiErrorKind, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi,
};

/// An in-memory, deterministic DynamoDB Streams service (see the [module docs](super)).
///
/// Clones share one simulation.
#[derive(Clone)]
pub struct SimulatedStream {
    inner: Arc<Mutex<Simulation>>,
}

impl fmt::Debug for SimulatedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sim = self.lock();
        f.debug_struct("SimulatedStream")
            .field("seed", &sim.config().seed)
            .field("written", &sim.written().len())
            .finish_non_exhaustive()
    }
}

impl SimulatedStream {
    /// A simulation with no tables; its clock starts now.
    pub fn new(config: SimConfig) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Simulation::new(config))),
        }
    }

    /// A default simulation with this seed.
    pub fn with_seed(seed: u64) -> Self {
        Self::new(SimConfig::with_seed(seed))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Simulation> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The simulation's settings.
    pub fn config(&self) -> SimConfig {
        self.lock().config().clone()
    }

    // ---- tables and writes -------------------------------------------------------

    /// Adds a streamed table keyed by [`SimConfig::key_attribute`] and returns its stream
    /// ARN. Adding an existing table returns its stream, enabling one if it had none.
    pub fn add_table(&self, name: &str) -> String {
        let spec = TableSpec::new(self.lock().config().key_attribute.clone());
        let arn = self.add_table_with(name, spec);
        arn.unwrap_or_default()
    }

    /// Adds a table without a stream: DescribeTable answers `StreamNotEnabled`.
    pub fn add_table_without_stream(&self, name: &str) {
        let spec = TableSpec::new(self.lock().config().key_attribute.clone()).without_stream();
        self.add_table_with(name, spec);
    }

    /// Adds a table as `spec` says and returns its stream ARN, if it has a stream. An
    /// existing table keeps its key schema and items; a stream is enabled on it if `spec`
    /// asks for one and it had none.
    pub fn add_table_with(&self, name: &str, spec: TableSpec) -> Option<String> {
        self.lock().add_table(name, spec)
    }

    /// PutItem: replaces the item. Returns the stream record written, or `None` when the
    /// item did not change (DynamoDB writes no record then) or the table has no stream.
    pub fn put(&self, table: &str, item: Item) -> Result<Option<WrittenRecord>, SimError> {
        self.lock().write(table, WriteOp::Put(item))
    }

    /// [`put`](Self::put) of any serde value, converted with `serde_dynamo`.
    pub fn put_value<T: Serialize>(
        &self,
        table: &str,
        value: &T,
    ) -> Result<Option<WrittenRecord>, SimError> {
        let item = to_item(table, value)?;
        self.put(table, item)
    }

    /// UpdateItem: sets the given attributes (which include the key), creating the item if
    /// absent. Returns the record written, if any (see [`put`](Self::put)).
    pub fn update(&self, table: &str, item: Item) -> Result<Option<WrittenRecord>, SimError> {
        self.lock().write(table, WriteOp::Update(item))
    }

    /// [`update`](Self::update) of any serde value, converted with `serde_dynamo`.
    pub fn update_value<T: Serialize>(
        &self,
        table: &str,
        value: &T,
    ) -> Result<Option<WrittenRecord>, SimError> {
        let item = to_item(table, value)?;
        self.update(table, item)
    }

    /// DeleteItem by key (extra attributes are ignored). Returns the REMOVE record, or
    /// `None` if there was no such item or the table has no stream.
    pub fn delete(&self, table: &str, key: Item) -> Result<Option<WrittenRecord>, SimError> {
        self.lock().write(table, WriteOp::Delete(key))
    }

    /// A deletion by DynamoDB's TTL process: a REMOVE whose user identity is the service
    /// (`dynamodb.amazonaws.com`, type `Service`).
    pub fn delete_by_ttl(&self, table: &str, key: Item) -> Result<Option<WrittenRecord>, SimError> {
        self.lock().write(table, WriteOp::DeleteByTtl(key))
    }

    /// The current state of an item.
    pub fn item(&self, table: &str, key: &Item) -> Result<Option<Item>, SimError> {
        self.lock().item(table, key)
    }

    // ---- shards ------------------------------------------------------------------

    /// Disables the table's stream and enables it again (UpdateTable
    /// StreamSpecification twice): the old stream's open shards close, and a new stream
    /// with a new ARN takes the writes. Returns the new ARN.
    pub fn reenable_stream(&self, table: &str) -> Result<String, SimError> {
        self.lock().reenable_stream(table)
    }

    /// Closes an open shard and opens two children of it; the parent's keys route to the
    /// children from now on. Returns the children's ids.
    pub fn split_shard(
        &self,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<(String, String), SimError> {
        self.lock().split_shard(stream_arn, shard_id)
    }

    /// Closes an open shard and opens one child of it, as DynamoDB does every few hours.
    /// Returns the child's id.
    pub fn rotate_shard(&self, stream_arn: &str, shard_id: &str) -> Result<String, SimError> {
        self.lock().rotate_shard(stream_arn, shard_id)
    }

    /// The shards taking writes now.
    pub fn open_shards(&self, stream_arn: &str) -> Result<Vec<ShardInfo>, SimError> {
        self.lock().open_shards(stream_arn)
    }

    /// Every shard ever created in the stream, in creation order, including closed shards
    /// that have aged out of DescribeStream.
    pub fn all_shards(&self, stream_arn: &str) -> Result<Vec<ShardInfo>, SimError> {
        self.lock().all_shards(stream_arn)
    }

    // ---- observation -------------------------------------------------------------

    /// Every record ever written to the shard, trimmed ones included.
    pub fn records(&self, stream_arn: &str, shard_id: &str) -> Result<Vec<Record>, SimError> {
        self.lock().records(stream_arn, shard_id)
    }

    /// Every stream record written, in write order: the ground truth for at-least-once
    /// delivery and per-key order.
    pub fn written(&self) -> Vec<WrittenRecord> {
        self.lock().written()
    }

    /// How many calls of `operation` were made, failed ones included.
    pub fn calls(&self, operation: SimOperation) -> u64 {
        self.lock().faults().calls(operation)
    }

    /// How many calls of `operation` failed by injection or throttling.
    pub fn failures(&self, operation: SimOperation) -> u64 {
        self.lock().faults().failures(operation)
    }

    // ---- faults and time ---------------------------------------------------------

    /// Makes the next `times` calls of `operation` fail with `kind` (after failures already
    /// queued for it).
    pub fn inject(&self, operation: SimOperation, kind: ApiErrorKind, times: usize) {
        self.lock().faults_mut().inject(operation, kind, times);
    }

    /// Throttles each call of `operation` with this probability (clamped to 0..=1), drawn
    /// from the seeded RNG.
    pub fn set_throttle_rate(&self, operation: SimOperation, probability: f64) {
        self.lock()
            .faults_mut()
            .set_throttle_rate(operation, probability);
    }

    /// Removes queued failures and throttle rates.
    pub fn clear_faults(&self) {
        self.lock().faults_mut().clear();
    }

    /// Ages the simulation by `by` without moving tokio time: records, iterators and
    /// shards get older as if the consumer had been away. With paused tokio time,
    /// `tokio::time::advance` ages the simulation too.
    pub fn advance_clock(&self, by: Duration) {
        self.lock().advance_clock(by);
    }

    pub(crate) async fn latency(&self) {
        let latency = self.lock().config().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

fn to_item<T: Serialize>(table: &str, value: &T) -> Result<Item, SimError> {
    serde_dynamo::aws_sdk_dynamodbstreams_1::to_item(value).map_err(|e| SimError::NotAnItem {
        table: table.to_owned(),
        message: e.to_string(),
    })
}

#[async_trait]
impl StreamsApi for SimulatedStream {
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError> {
        self.latency().await;
        self.lock().latest_stream_arn(table)
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        self.latency().await;
        self.lock()
            .describe_stream(stream_arn, exclusive_start_shard_id)
    }

    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        self.latency().await;
        self.lock().child_shards(stream_arn, parent_shard_id)
    }

    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        self.latency().await;
        self.lock().shard_iterator(stream_arn, shard_id, position)
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        self.latency().await;
        self.lock().get_records(iterator, limit)
    }

    fn now(&self) -> std::time::SystemTime {
        self.lock().wall_now()
    }

    fn random_u64(&self) -> u64 {
        self.lock().random_u64()
    }
}
