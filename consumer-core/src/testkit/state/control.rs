//! The simulation's control API: what a test does to the simulated service (tables and
//! their writes, re-enabled streams, splits and rotations, faults, the clock) and reads
//! back (shards, records, what was written). Apart from the streams API (`super::api`),
//! which the consumer calls; both act on the state in `super`.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use dynamodb_streams_leases::SequenceNumber;
use rand::Rng;
use tokio::time::Instant;

use crate::testkit::clock::EPOCH_MILLIS;
use crate::testkit::config::TableSpec;
use crate::testkit::error::SimError;
use crate::testkit::faults::Faults;
use crate::testkit::items::{Item, fnv1a, key_of};
use crate::testkit::record::{Change, REGION};
use crate::testkit::shard::{StoredRecord, sequence_text};

use super::{Simulation, Stream, Table, WriteOp, WrittenRecord, stream_in};
use crate::streams::ShardInfo;

impl Simulation {
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
}
