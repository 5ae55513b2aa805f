//! The streams API as the simulation answers it (the calls `SimulatedStream` forwards):
//! each call ticks the clock, is counted and meets the injected faults, then reads the
//! state in `super`. Apart from the control API (`super::control`), which tests call.

use aws_sdk_dynamodbstreams::types::{Record, StreamStatus};
use rand::Rng;
use tokio::time::Instant;

use crate::testkit::error::SimError;
use crate::testkit::faults::SimOperation;
use crate::testkit::items::{Item, fnv1a, key_of, slot};
use crate::testkit::iterators::{IteratorError, IteratorState};
use crate::testkit::shard::{PositionError, Shard, sequence_value};

use super::{MAX_LIMIT, Simulation, Stream};
use crate::streams::{ApiError, ApiErrorKind, RecordsPage, ShardInfo, StartPosition, StreamPage};

impl Simulation {
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
