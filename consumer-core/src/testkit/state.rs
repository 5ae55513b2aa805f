//! The simulated service's state: tables, streams, shards, iterators, faults, history.
//!
//! Every operation first brings the simulation up to the current instant ("tick"):
//! due automatic rotations happen, old records are trimmed and expired shards retire.
//! Keys are routed by lineage: a key hashes onto one of the stream's root shards and,
//! while that shard is closed, onto one of its children, so all records of a key stay in
//! one shard family and per-key order is parent-then-child, as in DynamoDB.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{OperationType, Record, StreamStatus, StreamViewType};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use dynamodb_streams_leases::SequenceNumber;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::clock::{EPOCH_MILLIS, SimClock};
use super::config::{SimConfig, TableSpec};
use super::error::SimError;
use super::faults::{Faults, SimOperation};
use super::items::{Item, fnv1a, key_of, remix, slot};
use super::iterators::{IteratorError, IteratorState, Iterators};
use super::record::{Change, REGION};
use super::shard::{
    PositionError, SEQUENCE_BASE, Shard, StoredRecord, sequence_text, sequence_value,
};
use crate::streams::{ApiError, ApiErrorKind, RecordsPage, ShardInfo, StartPosition, StreamPage};

/// The most records GetRecords accepts as `limit`.
const MAX_LIMIT: u32 = 1000;
/// The shortest automatic rotation period.
const MIN_ROTATION: Duration = Duration::from_secs(60);

/// One stream record as it was written: the ground truth simulation tests check
/// delivery against.
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenRecord {
    /// The table written to.
    pub table: String,
    /// The table's stream.
    pub stream_arn: String,
    /// The shard the record went to.
    pub shard_id: String,
    /// The record's sequence number.
    pub sequence_number: SequenceNumber,
    /// The record's event id.
    pub event_id: String,
    /// INSERT, MODIFY or REMOVE.
    pub event_name: OperationType,
    /// The item's key attributes in key-schema order, as a stable string such as
    /// `pk=S("a")`: group by it to check per-key order.
    pub key: String,
    /// The item's key attributes.
    pub keys: Item,
    /// Whether TTL deleted the item.
    pub by_ttl: bool,
}

/// A write to a simulated table.
#[derive(Debug)]
pub(crate) enum WriteOp {
    /// PutItem: replaces the whole item.
    Put(Item),
    /// UpdateItem: sets the given attributes, creating the item if absent.
    Update(Item),
    /// DeleteItem by key.
    Delete(Item),
    /// A deletion by DynamoDB's TTL process.
    DeleteByTtl(Item),
}

#[derive(Debug)]
struct Table {
    key_attributes: Vec<String>,
    view_type: StreamViewType,
    stream_arn: Option<String>,
    items: HashMap<String, Item>,
}

#[derive(Debug)]
struct Counters {
    last_seq: u128,
    shards: u64,
    events: u64,
}

impl Counters {
    fn next_seq(&mut self) -> u128 {
        self.last_seq += 1;
        self.last_seq
    }

    fn peek_seq(&self) -> u128 {
        self.last_seq + 1
    }
}

#[derive(Debug)]
struct Stream {
    arn: String,
    table: String,
    view_type: StreamViewType,
    shards: Vec<Shard>,
    index: HashMap<String, usize>,
    roots: Vec<String>,
}

impl Stream {
    fn internal(&self, message: impl Into<String>) -> SimError {
        SimError::Internal {
            stream: self.arn.clone(),
            message: message.into(),
        }
    }

    fn shard(&self, id: &str) -> Option<&Shard> {
        self.index.get(id).and_then(|&i| self.shards.get(i))
    }

    /// Opens a shard. Ids are `shardId-<epoch millis>-<ordinal>` with a fixed epoch, so
    /// they sort in creation order and do not depend on how fast a test ran.
    fn open_shard(
        &mut self,
        counters: &mut Counters,
        parent: Option<String>,
        at: Instant,
    ) -> String {
        counters.shards += 1;
        let id = format!("shardId-{EPOCH_MILLIS:020}-{:08}", counters.shards);
        self.index.insert(id.clone(), self.shards.len());
        self.shards
            .push(Shard::new(id.clone(), parent, at, counters.peek_seq()));
        id
    }

    /// Closes an open shard at `at` and opens `children` children of it.
    fn close(
        &mut self,
        counters: &mut Counters,
        shard_id: &str,
        children: usize,
        at: Instant,
    ) -> Result<Vec<String>, SimError> {
        let no_such_shard = || SimError::NoSuchShard {
            stream: self.arn.clone(),
            shard: shard_id.to_owned(),
        };
        let index = *self.index.get(shard_id).ok_or_else(no_such_shard)?;
        let shard = self.shards.get_mut(index).ok_or_else(no_such_shard)?;
        if !shard.is_open() {
            return Err(SimError::ShardClosed {
                stream: self.arn.clone(),
                shard: shard_id.to_owned(),
            });
        }
        let ending = match shard.last_seq() {
            Some(seq) => seq,
            None => counters.next_seq(),
        };
        shard.ending = Some(ending);
        shard.closed_at = Some(at);
        let ids: Vec<String> = (0..children)
            .map(|_| self.open_shard(counters, Some(shard_id.to_owned()), at))
            .collect();
        if let Some(shard) = self.shards.get_mut(index) {
            shard.children.clone_from(&ids);
        }
        Ok(ids)
    }

    /// Rotates every open shard that is older than `period`, at the instant it became due.
    fn auto_rotate(&mut self, counters: &mut Counters, now: Instant, period: Duration) {
        loop {
            let due = self
                .shards
                .iter()
                .filter(|s| s.is_open())
                .map(|s| (s.created_at + period, s.id.clone()))
                .filter(|(at, _)| *at <= now)
                .min_by_key(|(at, _)| *at);
            let Some((at, id)) = due else { break };
            if self.close(counters, &id, 1, at).is_err() {
                break;
            }
        }
    }

    /// The index of the open shard of `hash`'s shard family.
    fn route(&self, hash: u64) -> Result<usize, SimError> {
        let root = self
            .roots
            .get(slot(hash, self.roots.len()))
            .ok_or_else(|| self.internal("the stream has no shards"))?;
        let mut index = *self
            .index
            .get(root)
            .ok_or_else(|| self.internal(format!("root shard {root} is not indexed")))?;
        let mut hash = hash;
        loop {
            let shard = self
                .shards
                .get(index)
                .ok_or_else(|| self.internal("shard index out of range"))?;
            if shard.is_open() {
                return Ok(index);
            }
            hash = remix(hash);
            let child = shard
                .children
                .get(slot(hash, shard.children.len()))
                .ok_or_else(|| {
                    self.internal(format!("closed shard {} has no children", shard.id))
                })?;
            index = *self
                .index
                .get(child)
                .ok_or_else(|| self.internal(format!("child shard {child} is not indexed")))?;
        }
    }

    fn infos<'a>(
        &self,
        shards: impl Iterator<Item = &'a Shard>,
    ) -> Result<Vec<ShardInfo>, SimError> {
        shards
            .map(|s| s.info().map_err(|e| self.internal(e.to_string())))
            .collect()
    }
}

/// The whole simulated service.
#[derive(Debug)]
pub(crate) struct Simulation {
    config: SimConfig,
    rng: SmallRng,
    /// Random numbers the consumer asks for (`StreamsApi::random_u64`), from the seed but
    /// apart from `rng`, so that asking does not change the faults a seed draws.
    ids: SmallRng,
    clock: SimClock,
    tables: BTreeMap<String, Table>,
    streams: BTreeMap<String, Stream>,
    iterators: Iterators,
    faults: Faults,
    counters: Counters,
    written: Vec<WrittenRecord>,
    /// Until when trimming can change nothing (see [`Simulation::tick`]): every call
    /// ticks, and passing over every shard on each call made the simulation quadratic in
    /// shards (the slowest part of a 100,000-shard run).
    trim_idle_until: Option<Instant>,
}

/// The stream `stream_arn` of `streams` (a borrow of that field alone, so the simulation's
/// other fields stay usable next to it).
fn stream_in<'a>(
    streams: &'a mut BTreeMap<String, Stream>,
    stream_arn: &str,
) -> Result<&'a mut Stream, SimError> {
    streams
        .get_mut(stream_arn)
        .ok_or_else(|| SimError::no_such_stream(stream_arn))
}

impl Simulation {
    pub(crate) fn new(config: SimConfig) -> Self {
        Self {
            rng: SmallRng::seed_from_u64(config.seed),
            ids: SmallRng::seed_from_u64(config.seed ^ 0x1d5_5eed),
            config,
            clock: SimClock::new(),
            tables: BTreeMap::new(),
            streams: BTreeMap::new(),
            iterators: Iterators::default(),
            faults: Faults::default(),
            counters: Counters {
                last_seq: SEQUENCE_BASE,
                shards: 0,
                events: 0,
            },
            written: Vec::new(),
            trim_idle_until: None,
        }
    }

    pub(crate) fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Brings the simulation to the current instant and returns it.
    fn tick(&mut self) -> Instant {
        let now = self.clock.now();
        if let Some(period) = self.config.auto_rotate {
            let period = period.max(MIN_ROTATION);
            for stream in self.streams.values_mut() {
                stream.auto_rotate(&mut self.counters, now, period);
            }
        }
        let retention = self.config.retention;
        if self.trim_idle_until.is_some_and(|until| now <= until) {
            return now;
        }
        // The next change is the earliest expiry (a record's write or a shard's close, plus
        // the retention): anything written or closed later expires later than now plus
        // the retention, so that bound stays valid until then without being told.
        let mut next = now + retention;
        for stream in self.streams.values_mut() {
            for shard in &mut stream.shards {
                shard.trim(now, retention);
                if let Some(record) = shard.records.get(shard.trimmed) {
                    next = next.min(record.written_at + retention);
                }
                if let Some(closed_at) = shard.closed_at.filter(|_| !shard.gone) {
                    next = next.min(closed_at + retention);
                }
            }
        }
        self.trim_idle_until = Some(next);
        now
    }

    // ---- control API -------------------------------------------------------------

    pub(crate) fn add_table(&mut self, name: &str, spec: TableSpec) -> Option<String> {
        let now = self.tick();
        let view_type = spec
            .view_type
            .clone()
            .unwrap_or_else(|| self.config.view_type.clone());
        let table = self.tables.entry(name.to_owned()).or_insert_with(|| Table {
            key_attributes: spec.key_attributes(),
            view_type,
            stream_arn: None,
            items: HashMap::new(),
        });
        if table.stream_arn.is_some() || !spec.stream_enabled {
            return table.stream_arn.clone();
        }
        self.open_stream(name, now).ok()
    }

    /// Disables the table's stream and enables it again: every open shard of the old
    /// stream is closed (it can be read to its end), and a new stream with a new ARN and
    /// new root shards takes the table's writes.
    pub(crate) fn reenable_stream(&mut self, table_name: &str) -> Result<String, SimError> {
        let now = self.tick();
        let table = self
            .tables
            .get(table_name)
            .ok_or_else(|| SimError::no_such_table(table_name))?;
        if let Some(old) = table.stream_arn.clone() {
            let stream = stream_in(&mut self.streams, &old)?;
            let open: Vec<String> = stream
                .shards
                .iter()
                .filter(|s| s.is_open())
                .map(|s| s.id.clone())
                .collect();
            for shard in open {
                stream.close(&mut self.counters, &shard, 0, now)?;
            }
        }
        self.open_stream(table_name, now)
    }

    /// A new stream for table `name`, with its initial shards, taking the table's writes.
    fn open_stream(&mut self, name: &str, now: Instant) -> Result<String, SimError> {
        let table = self
            .tables
            .get_mut(name)
            .ok_or_else(|| SimError::no_such_table(name))?;
        // Real stream labels are creation timestamps; a fixed epoch plus the stream's
        // ordinal (in milliseconds) keeps them unique and independent of test speed.
        let ordinal = i64::try_from(self.streams.len()).unwrap_or(i64::MAX);
        let label_millis = EPOCH_MILLIS.saturating_add(ordinal);
        let label = DateTime::from_millis(label_millis)
            .fmt(Format::DateTime)
            .unwrap_or_else(|_| label_millis.to_string());
        let arn = format!("arn:aws:dynamodb:{REGION}:000000000000:table/{name}/stream/{label}");
        let mut stream = Stream {
            arn: arn.clone(),
            table: name.to_owned(),
            view_type: table.view_type.clone(),
            shards: Vec::new(),
            index: HashMap::new(),
            roots: Vec::new(),
        };
        for _ in 0..self.config.initial_shards.max(1) {
            let id = stream.open_shard(&mut self.counters, None, now);
            stream.roots.push(id);
        }
        table.stream_arn = Some(arn.clone());
        self.streams.insert(arn.clone(), stream);
        Ok(arn)
    }

    pub(crate) fn write(
        &mut self,
        table_name: &str,
        op: WriteOp,
    ) -> Result<Option<WrittenRecord>, SimError> {
        let now = self.tick();
        let table = self
            .tables
            .get_mut(table_name)
            .ok_or_else(|| SimError::no_such_table(table_name))?;
        let source = match &op {
            WriteOp::Put(item)
            | WriteOp::Update(item)
            | WriteOp::Delete(item)
            | WriteOp::DeleteByTtl(item) => item,
        };
        let (keys, key) =
            key_of(source, &table.key_attributes).map_err(|attribute| SimError::MissingKey {
                table: table_name.to_owned(),
                attribute,
            })?;
        let old = table.items.get(&key).cloned();
        let (new, by_ttl) = match op {
            WriteOp::Put(item) => (Some(item), false),
            WriteOp::Update(item) => {
                let mut merged = old.clone().unwrap_or_default();
                merged.extend(item);
                (Some(merged), false)
            }
            WriteOp::Delete(_) => (None, false),
            WriteOp::DeleteByTtl(_) => (None, true),
        };
        // DynamoDB writes no stream record for a write that changes nothing.
        if old == new {
            return Ok(None);
        }
        match &new {
            Some(item) => table.items.insert(key.clone(), item.clone()),
            None => table.items.remove(&key),
        };
        let Some(stream_arn) = table.stream_arn.clone() else {
            return Ok(None);
        };
        let stream = stream_in(&mut self.streams, &stream_arn)?;
        let index = stream.route(fnv1a(key.as_bytes()))?;
        let seq = self.counters.next_seq();
        let text = sequence_text(seq);
        let sequence_number =
            SequenceNumber::parse(text.clone()).map_err(|e| stream.internal(e.to_string()))?;
        self.counters.events += 1;
        let change = Change {
            event_id: format!("{:032x}", self.counters.events),
            keys: &keys,
            old: old.as_ref(),
            new: new.as_ref(),
            view_type: &stream.view_type,
            sequence_number: &text,
            wall_millis: self.clock.wall_millis(now),
            by_ttl,
        };
        let record = change.build();
        let Some(shard) = stream.shards.get_mut(index) else {
            return Err(stream.internal("a key was routed to a missing shard"));
        };
        let written = WrittenRecord {
            table: table_name.to_owned(),
            stream_arn,
            shard_id: shard.id.clone(),
            sequence_number,
            event_id: change.event_id.clone(),
            event_name: change.operation(),
            key,
            keys: keys.clone(),
            by_ttl,
        };
        shard.records.push(StoredRecord {
            seq,
            written_at: now,
            record,
        });
        self.written.push(written.clone());
        Ok(Some(written))
    }

    pub(crate) fn item(&mut self, table_name: &str, key: &Item) -> Result<Option<Item>, SimError> {
        let table = self
            .tables
            .get(table_name)
            .ok_or_else(|| SimError::no_such_table(table_name))?;
        let (_, key) =
            key_of(key, &table.key_attributes).map_err(|attribute| SimError::MissingKey {
                table: table_name.to_owned(),
                attribute,
            })?;
        Ok(table.items.get(&key).cloned())
    }

    fn stream_mut(&mut self, stream_arn: &str) -> Result<&mut Stream, SimError> {
        stream_in(&mut self.streams, stream_arn)
    }

    fn reshape(
        &mut self,
        stream_arn: &str,
        shard_id: &str,
        children: usize,
    ) -> Result<Vec<String>, SimError> {
        let now = self.tick();
        stream_in(&mut self.streams, stream_arn)?.close(&mut self.counters, shard_id, children, now)
    }

    pub(crate) fn split_shard(
        &mut self,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<(String, String), SimError> {
        let ids = self.reshape(stream_arn, shard_id, 2)?;
        match <[String; 2]>::try_from(ids) {
            Ok([left, right]) => Ok((left, right)),
            Err(_) => Err(self
                .stream_mut(stream_arn)?
                .internal("a split did not open two children")),
        }
    }

    pub(crate) fn rotate_shard(
        &mut self,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<String, SimError> {
        let ids = self.reshape(stream_arn, shard_id, 1)?;
        match <[String; 1]>::try_from(ids) {
            Ok([child]) => Ok(child),
            Err(_) => Err(self
                .stream_mut(stream_arn)?
                .internal("a rotation did not open one child")),
        }
    }

    pub(crate) fn open_shards(&mut self, stream_arn: &str) -> Result<Vec<ShardInfo>, SimError> {
        self.tick();
        let stream = self.stream_mut(stream_arn)?;
        stream.infos(stream.shards.iter().filter(|s| s.is_open()))
    }

    pub(crate) fn all_shards(&mut self, stream_arn: &str) -> Result<Vec<ShardInfo>, SimError> {
        self.tick();
        let stream = self.stream_mut(stream_arn)?;
        stream.infos(stream.shards.iter())
    }

    pub(crate) fn records(
        &mut self,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<Vec<Record>, SimError> {
        self.tick();
        let stream = self.stream_mut(stream_arn)?;
        let shard = stream
            .shard(shard_id)
            .ok_or_else(|| SimError::NoSuchShard {
                stream: stream_arn.to_owned(),
                shard: shard_id.to_owned(),
            })?;
        Ok(shard.records.iter().map(|r| r.record.clone()).collect())
    }

    pub(crate) fn written(&self) -> Vec<WrittenRecord> {
        self.written.clone()
    }

    pub(crate) fn faults_mut(&mut self) -> &mut Faults {
        &mut self.faults
    }

    pub(crate) fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A number from the seeded generator of what the consumer asks for.
    pub(crate) fn random_u64(&mut self) -> u64 {
        self.ids.random()
    }

    /// The simulated wall clock now (what a record written now is stamped with, before
    /// rounding to the second).
    pub(crate) fn wall_now(&self) -> std::time::SystemTime {
        let millis = self.clock.wall_millis(self.clock.now());
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
    }

    pub(crate) fn advance_clock(&mut self, by: Duration) {
        self.clock.skew_by(by);
        self.tick();
    }

    // ---- the streams API ---------------------------------------------------------

    /// Ticks, counts the call and applies faults.
    fn begin(&mut self, operation: SimOperation, resource: &str) -> Result<Instant, ApiError> {
        let now = self.tick();
        match self.faults.on_call(operation, &mut self.rng) {
            Some((kind, message)) => Err(ApiError::new(kind, operation.name(), resource, message)),
            None => Ok(now),
        }
    }

    pub(crate) fn latest_stream_arn(&mut self, table: &str) -> Result<String, ApiError> {
        let op = SimOperation::DescribeTable.name();
        let resource = format!("table {table:?}");
        self.begin(SimOperation::DescribeTable, &resource)?;
        let table = self.tables.get(table).ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::ResourceNotFound,
                op,
                &resource,
                "Requested resource not found",
            )
        })?;
        table.stream_arn.clone().ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::StreamNotEnabled,
                op,
                &resource,
                "the table has no stream",
            )
        })
    }

    /// One page of a parallel Scan segment of `table`: the items whose key hashes to
    /// `segment` of `total`, in key order, after the item with key `after` (a key's
    /// canonical form), at most `limit`; and the canonical key to resume after, if more
    /// may follow (`None` once the segment is read to its end). The items' state is the
    /// one at the call, like a consistent Scan's.
    pub(crate) fn scan_segment(
        &self,
        table: &str,
        (segment, total): (u32, u32),
        after: Option<&Item>,
        limit: u32,
    ) -> Result<(Vec<Item>, Option<Item>), ApiError> {
        let resource = format!("table {table:?}");
        let not_found = || {
            ApiError::new(
                ApiErrorKind::ResourceNotFound,
                "Scan",
                &resource,
                "Requested resource not found",
            )
        };
        let table = self.tables.get(table).ok_or_else(not_found)?;
        let after = match after {
            Some(key) => Some(
                key_of(key, &table.key_attributes)
                    .map_err(|attribute| {
                        ApiError::new(
                            ApiErrorKind::InvalidRequest,
                            "Scan",
                            &resource,
                            format!("the ExclusiveStartKey lacks the key attribute {attribute}"),
                        )
                    })?
                    .1,
            ),
            None => None,
        };
        let mut keys: Vec<&String> = table
            .items
            .keys()
            .filter(|k| {
                slot(fnv1a(k.as_bytes()), total as usize) == segment as usize
                    && after.as_ref().is_none_or(|after| *k > after)
            })
            .collect();
        keys.sort();
        let limit = limit.max(1) as usize;
        let more = keys.len() > limit;
        keys.truncate(limit);
        let items: Vec<Item> = keys
            .iter()
            .filter_map(|k| table.items.get(*k).cloned())
            .collect();
        let resume = if more {
            items
                .last()
                .and_then(|item| key_of(item, &table.key_attributes).ok())
                .map(|(key, _)| key)
        } else {
            None
        };
        Ok((items, resume))
    }

    /// The key attributes of `table`, in key-schema order.
    pub(crate) fn key_attributes(&self, table: &str) -> Result<Vec<String>, ApiError> {
        self.tables
            .get(table)
            .map(|t| t.key_attributes.clone())
            .ok_or_else(|| {
                ApiError::new(
                    ApiErrorKind::ResourceNotFound,
                    "DescribeTable",
                    format!("table {table:?}"),
                    "Requested resource not found",
                )
            })
    }

    fn stream_for_api(
        &self,
        operation: SimOperation,
        stream_arn: &str,
    ) -> Result<&Stream, ApiError> {
        self.streams.get(stream_arn).ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::ResourceNotFound,
                operation.name(),
                format!("stream {stream_arn}"),
                "Requested resource not found: Stream not found",
            )
        })
    }

    fn shard_not_found(operation: SimOperation, resource: &str) -> ApiError {
        ApiError::new(
            ApiErrorKind::ResourceNotFound,
            operation.name(),
            resource,
            "Requested resource not found: Shard not found",
        )
    }

    fn internal(operation: SimOperation, resource: &str, error: SimError) -> ApiError {
        ApiError::new(
            ApiErrorKind::Other,
            operation.name(),
            resource,
            error.to_string(),
        )
    }

    pub(crate) fn describe_stream(
        &mut self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        let op = SimOperation::DescribeStream;
        let resource = format!("stream {stream_arn}");
        self.begin(op, &resource)?;
        let page_size = self.config.describe_page_size.max(1);
        let stream = self.stream_for_api(op, stream_arn)?;
        let mut visible = stream
            .shards
            .iter()
            .filter(|s| !s.gone)
            .filter(|s| exclusive_start_shard_id.is_none_or(|start| s.id.as_str() > start));
        let page: Vec<&Shard> = visible.by_ref().take(page_size).collect();
        let more = visible.next().is_some();
        let last_evaluated_shard_id = if more {
            page.last().map(|s| s.id.clone())
        } else {
            None
        };
        let shards = stream
            .infos(page.into_iter())
            .map_err(|e| Self::internal(op, &resource, e))?;
        Ok(StreamPage {
            stream_arn: stream.arn.clone(),
            table_name: Some(stream.table.clone()),
            status: Some(StreamStatus::Enabled),
            view_type: Some(stream.view_type.clone()),
            shards,
            last_evaluated_shard_id,
        })
    }

    pub(crate) fn child_shards(
        &mut self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        let op = SimOperation::DescribeStream;
        let resource = format!("shard {parent_shard_id} of stream {stream_arn}");
        self.begin(op, &resource)?;
        let stream = self.stream_for_api(op, stream_arn)?;
        let parent = stream
            .shard(parent_shard_id)
            .ok_or_else(|| Self::shard_not_found(op, &resource))?;
        let children = parent
            .children
            .iter()
            .filter_map(|id| stream.shard(id))
            .filter(|s| !s.gone);
        stream
            .infos(children)
            .map_err(|e| Self::internal(op, &resource, e))
    }

    pub(crate) fn shard_iterator(
        &mut self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        let op = SimOperation::GetShardIterator;
        let resource = format!("shard {shard_id} of stream {stream_arn}");
        let now = self.begin(op, &resource)?;
        let stream = self.stream_for_api(op, stream_arn)?;
        let shard = stream
            .shard(shard_id)
            .filter(|s| !s.gone)
            .ok_or_else(|| Self::shard_not_found(op, &resource))?;
        let found = match position {
            StartPosition::TrimHorizon => Ok(shard.trimmed),
            StartPosition::Latest => Ok(shard.records.len()),
            StartPosition::AtSequenceNumber(seq) => shard.position_for(sequence_value(seq), false),
            StartPosition::AfterSequenceNumber(seq) => {
                shard.position_for(sequence_value(seq), true)
            }
        };
        let position_index = found.map_err(|e| match e {
            PositionError::OutOfRange => ApiError::new(
                ApiErrorKind::InvalidRequest,
                op.name(),
                &resource,
                format!("Invalid SequenceNumber for {position}: outside the shard's range"),
            ),
            PositionError::Trimmed => ApiError::new(
                ApiErrorKind::TrimmedDataAccess,
                op.name(),
                &resource,
                format!("{position} is beyond the trim horizon"),
            ),
        })?;
        let state = IteratorState {
            stream_arn: stream_arn.to_owned(),
            shard_id: shard_id.to_owned(),
            position: position_index,
            issued_at: now,
        };
        let nonce = self.rng.random();
        Ok(self
            .iterators
            .issue(state, nonce, &self.clock, self.config.iterator_lifetime))
    }

    pub(crate) fn get_records(
        &mut self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordsPage, ApiError> {
        let op = SimOperation::GetRecords;
        let now = self.begin(op, "shard iterator")?;
        let lifetime = self.config.iterator_lifetime;
        let state = self
            .iterators
            .resolve(iterator, now, &self.clock, lifetime)
            .map_err(|e| match e {
                IteratorError::Expired => ApiError::new(
                    ApiErrorKind::ExpiredIterator,
                    op.name(),
                    "shard iterator",
                    "Iterator expired",
                ),
                IteratorError::Unknown => ApiError::new(
                    ApiErrorKind::InvalidRequest,
                    op.name(),
                    "shard iterator",
                    "Invalid ShardIterator",
                ),
            })?;
        let resource = format!("shard {} of stream {}", state.shard_id, state.stream_arn);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::new(
                ApiErrorKind::InvalidRequest,
                op.name(),
                &resource,
                format!("limit {limit} is outside 1..=1000"),
            ));
        }
        let stream = self.stream_for_api(op, &state.stream_arn)?;
        let shard = stream
            .shard(&state.shard_id)
            .ok_or_else(|| Self::shard_not_found(op, &resource))?;
        if state.position < shard.trimmed {
            return Err(ApiError::new(
                ApiErrorKind::TrimmedDataAccess,
                op.name(),
                &resource,
                "the iterator's position has been trimmed",
            ));
        }
        let page_size =
            usize::try_from(limit.min(self.config.max_records_per_page.max(1))).unwrap_or(1);
        let len = shard.records.len();
        let start = state.position.min(len);
        let end = start.saturating_add(page_size).min(len);
        let records: Vec<Record> = shard
            .records
            .get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|r| r.record.clone())
            .collect();
        let at_end = !shard.is_open() && end == len;
        let empty_page_first = self.config.empty_page_before_shard_end && end > start;
        let next_iterator = if at_end && !empty_page_first {
            None
        } else {
            let next = IteratorState {
                position: end,
                issued_at: now,
                ..state
            };
            let nonce = self.rng.random();
            Some(self.iterators.issue(next, nonce, &self.clock, lifetime))
        };
        Ok(RecordsPage {
            records,
            next_iterator,
        })
    }
}
