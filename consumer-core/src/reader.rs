//! The lease-free reader: a shard, or a whole stream, as a `futures::Stream` of changes.
//!
//! For tools, scripts and tests that want the changes without leases or checkpoints (one
//! reader, nothing to coordinate). It uses the same poll loop as the consumer, so expired
//! iterators, throttling and idle shards are handled the same way. Nothing is stored: the
//! caller keeps the sequence numbers it needs to resume.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::stream::{self, BoxStream, StreamExt};
use serde::de::DeserializeOwned;

use crate::change::Change;
use crate::error::Result;
pub use crate::poll_loop::PollConfig;
use crate::poll_loop::{Page, ShardReader};
use crate::retry;
use crate::shard_graph::describe_all_shards;
use crate::start_time::InitialPosition;
use crate::streams::{StartPosition, StreamsApi};

/// Changes as the reader yields them, in order.
pub type Changes<T> = BoxStream<'static, Result<Change<T>>>;

/// The changes of one shard from `position`, in order, until the shard ends.
///
/// A record whose image does not decode yields an `Err` in its place and reading goes on;
/// any other error (trimmed data, a missing shard) is yielded last and ends the stream. An
/// open shard never ends: the stream waits for new records, backing off while idle.
pub fn shard_changes<T: DeserializeOwned + Send + 'static>(
    api: Arc<dyn StreamsApi>,
    stream_arn: impl Into<String>,
    shard_id: impl Into<String>,
    position: StartPosition,
    config: PollConfig,
) -> Changes<T> {
    let reader = ShardReader::new(api, stream_arn, shard_id, position, config);
    read_shard(reader, None)
}

/// The changes of a whole stream, parents before children.
///
/// Each shard is read to its end before its children start, so the changes of one item
/// arrive in order; unrelated shards are read concurrently and interleave. `TrimHorizon`
/// starts every root shard at its oldest record; `Latest` starts the open shards at their
/// tip and skips closed ones. Children are always read from their first record.
pub fn stream_changes<T: DeserializeOwned + Send + 'static>(
    api: Arc<dyn StreamsApi>,
    stream_arn: impl Into<String>,
    position: InitialPosition,
    config: PollConfig,
) -> Changes<T> {
    let stream_arn = stream_arn.into();
    stream::once(async move {
        let shards = match describe_all_shards(api.as_ref(), &stream_arn).await {
            Ok(shards) => shards,
            Err(error) => return stream::iter([Err(error)]).boxed(),
        };
        let known = |id: &Option<String>| {
            id.as_ref()
                .is_some_and(|id| shards.iter().any(|s| &s.shard_id == id))
        };
        let starts: Vec<(String, StartPosition)> = match position {
            InitialPosition::TrimHorizon => shards
                .iter()
                .filter(|s| !known(&s.parent_shard_id))
                .map(|s| (s.shard_id.clone(), StartPosition::TrimHorizon))
                .collect(),
            InitialPosition::Latest => shards
                .iter()
                .filter(|s| !s.is_closed())
                .map(|s| (s.shard_id.clone(), StartPosition::Latest))
                .collect(),
        };
        let trees = starts.into_iter().map(|(shard_id, start)| {
            shard_tree(
                api.clone(),
                stream_arn.clone(),
                shard_id,
                start,
                config.clone(),
            )
        });
        stream::select_all(trees).boxed()
    })
    .flatten()
    .boxed()
}

/// A shard, then (once it ended) its children, each followed by theirs.
fn shard_tree<T: DeserializeOwned + Send + 'static>(
    api: Arc<dyn StreamsApi>,
    stream_arn: String,
    shard_id: String,
    position: StartPosition,
    config: PollConfig,
) -> Changes<T> {
    let ended = Arc::new(AtomicBool::new(false));
    let reader = ShardReader::new(
        api.clone(),
        stream_arn.clone(),
        shard_id.clone(),
        position,
        config.clone(),
    );
    let own = read_shard(reader, Some(ended.clone()));
    let children = stream::once(async move {
        if !ended.load(Ordering::Acquire) {
            return stream::empty().boxed();
        }
        let children = retry::call(retry::describe_stream(), retry::is_retryable_api, || {
            api.child_shards(&stream_arn, &shard_id)
        });
        match children.await {
            Ok(children) => stream::select_all(children.into_iter().map(|child| {
                shard_tree(
                    api.clone(),
                    stream_arn.clone(),
                    child.shard_id,
                    StartPosition::TrimHorizon,
                    config.clone(),
                )
            }))
            .boxed(),
            Err(error) => stream::iter([Err(error.into())]).boxed(),
        }
    })
    .flatten();
    own.chain(children).boxed()
}

/// The poll loop as a stream; sets `ended` when the shard was read to its end.
fn read_shard<T: DeserializeOwned + Send + 'static>(
    reader: ShardReader,
    ended: Option<Arc<AtomicBool>>,
) -> Changes<T> {
    let state = (reader, VecDeque::new(), false);
    stream::unfold(state, move |(mut reader, mut buffered, mut stopped)| {
        let ended = ended.clone();
        async move {
            loop {
                if let Some(record) = buffered.pop_front() {
                    let change = Change::decode(reader.shard_id(), record);
                    return Some((change, (reader, buffered, stopped)));
                }
                if stopped {
                    return None;
                }
                match reader.poll().await {
                    Ok(Page::Records(records)) => buffered.extend(records),
                    Ok(Page::Empty) => {}
                    Ok(Page::ShardEnd) => {
                        if let Some(ended) = &ended {
                            ended.store(true, Ordering::Release);
                        }
                        return None;
                    }
                    Err(error) => {
                        stopped = true;
                        return Some((Err(error), (reader, buffered, stopped)));
                    }
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::testkit::SimulatedStream;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct Row {
        pk: String,
        n: u32,
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_stream_reads_parents_before_children_and_keeps_key_order() {
        let sim = SimulatedStream::with_seed(1);
        let arn = sim.add_table("t");
        for n in 0..30 {
            sim.put_value(
                "t",
                &Row {
                    pk: format!("k{}", n % 4),
                    n,
                },
            )
            .unwrap();
            if n == 9 {
                let shard = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
                sim.split_shard(&arn, &shard).unwrap();
            }
        }
        let changes: Vec<Change<Row>> = stream_changes(
            Arc::new(sim.clone()),
            arn,
            InitialPosition::TrimHorizon,
            PollConfig::default(),
        )
        .take(30)
        .map(|c| c.unwrap())
        .collect()
        .await;
        let mut last = std::collections::HashMap::new();
        for change in &changes {
            let row = change.new.as_ref().unwrap();
            if let Some(prev) = last.insert(row.pk.clone(), row.n) {
                assert!(prev < row.n, "{} out of order", row.pk);
            }
        }
        assert_eq!(changes.len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_resumes_after_a_sequence_number() {
        let sim = SimulatedStream::with_seed(2);
        let arn = sim.add_table("t");
        let written: Vec<_> = (0..5)
            .map(|n| {
                sim.put_value("t", &Row { pk: "a".into(), n })
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let shard = written[0].shard_id.clone();
        let rest: Vec<u32> = shard_changes::<Row>(
            Arc::new(sim),
            arn,
            shard,
            StartPosition::AfterSequenceNumber(written[2].sequence_number.clone()),
            PollConfig::default(),
        )
        .take(2)
        .map(|c| c.unwrap().new.unwrap().n)
        .collect()
        .await;
        assert_eq!(rest, [3, 4]);
    }
}
