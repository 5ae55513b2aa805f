//! The simulated service's state: tables, streams, shards, iterators, faults, history.
//!
//! Every operation first brings the simulation up to the current instant ("tick"):
//! due automatic rotations happen, old records are trimmed and expired shards retire.
//! Keys are routed by lineage: a key hashes onto one of the stream's root shards and,
//! while that shard is closed, onto one of its children, so all records of a key stay in
//! one shard family and per-key order is parent-then-child, as in DynamoDB.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{OperationType, StreamViewType};
use dynamodb_streams_leases::SequenceNumber;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::clock::{EPOCH_MILLIS, SimClock};
use super::config::SimConfig;
use super::error::SimError;
use super::faults::Faults;
use super::items::{Item, remix, slot};
use super::iterators::Iterators;
use super::shard::{SEQUENCE_BASE, Shard};
use crate::streams::ShardInfo;

mod api;
mod control;

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
}
