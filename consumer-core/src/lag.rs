//! The lag that tells the truth: per stream, the age of the oldest record this worker has
//! fetched but not yet processed.
//!
//! DynamoDB Streams has no `millisBehindLatest`. A figure taken from the last processed
//! batch (as before) freezes when a shard is stuck and says nothing while a page waits, so
//! instead each shard consumer reports what it fetched and what it finished, and a publisher
//! sets the gauges every second from the records still pending:
//!
//! - `ddb_stream_millis_behind_latest{stream}`: the oldest pending record's age (by its
//!   approximate creation time), the maximum over this worker's shards of the stream; 0
//!   when nothing is pending (caught up, also after empty pages); it keeps growing while a
//!   shard is stuck, because the record stays pending and time goes on.
//! - `ddb_stream_records_behind{stream}`: records fetched and not yet processed (a lower
//!   bound: records not yet fetched are not known without reading them).
//! - `ddb_stream_leases_owned{stream}`: shards this worker is processing.
//!
//! Labels are the stream (the table name when the ARN has one) only: shard ids roll over
//! every few hours, so per-shard series would grow without end. `per_shard` (the builder's
//! `with_per_shard_metrics`) adds the two lag gauges per shard as well.
//!
//! A consumer of named pipelines (`with_pipeline`) tracks each pipeline on its own, and its
//! two lag gauges (and the per-shard ones) carry a `pipeline` label (bounded: the names in
//! the code): the shard's read waits for its slowest pipeline, so the series with the
//! highest lag names the pipeline that holds the read back, while the others stay near 0.
//! `ddb_stream_leases_owned` stays per stream (a shard counts once, whatever its pipelines).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_leases::{LeaseKey, SequenceNumber};
use metrics::gauge;

use crate::stream_arn::stream_label;

/// A lag gauge's labels: the stream, the pipeline when named, the shard when asked.
fn labels(
    stream: &str,
    pipeline: Option<&str>,
    shard: Option<String>,
) -> Vec<(&'static str, String)> {
    let mut labels = vec![("stream", stream_label(stream).to_owned())];
    if let Some(pipeline) = pipeline {
        labels.push(("pipeline", pipeline.to_owned()));
    }
    if let Some(shard) = shard {
        labels.push(("shard", shard));
    }
    labels
}

/// How often the gauges are set.
pub(crate) const PUBLISH_INTERVAL: Duration = Duration::from_secs(1);

/// One pending record: its sequence number and creation time.
type Pending = (SequenceNumber, Option<SystemTime>);

/// What is tracked: a shard, and the named pipeline reading it (`None`: the one unnamed
/// consumer).
type Tracking = (LeaseKey, Option<String>);

/// A stream's series: the stream and the pipeline (`None`: no `pipeline` label).
pub(crate) type Series = (String, Option<String>);

/// The records each shard (each pipeline of it) of this worker fetched and has not
/// finished.
#[derive(Debug, Default)]
pub(crate) struct LagTracker {
    shards: Mutex<HashMap<Tracking, VecDeque<Pending>>>,
    /// Series published so far: they are set to 0 once this worker has no shard of them,
    /// instead of keeping their last value forever.
    published: Mutex<HashSet<Series>>,
    per_shard: bool,
}

/// What [`LagTracker::measure`] found.
#[derive(Debug, Default)]
pub(crate) struct Measured {
    /// Per stream and pipeline.
    pub series: BTreeMap<Series, Lag>,
    /// Shards owned per stream (a shard counts once, whatever its pipelines).
    pub owned: BTreeMap<String, usize>,
    /// Per shard (and pipeline), when `per_shard`.
    pub shards: Vec<(Tracking, Lag)>,
}

/// What the publisher found for one stream (or one shard).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Lag {
    /// Age of the oldest pending record; zero when none is pending.
    pub behind: Duration,
    /// Records pending.
    pub records: usize,
    /// Shards counted.
    pub shards: usize,
}

impl Lag {
    fn add(&mut self, other: Lag) {
        self.behind = self.behind.max(other.behind);
        self.records += other.records;
        self.shards += other.shards;
    }
}

/// Stops tracking a shard when its consumer ends (whatever way it ends).
pub(crate) struct Tracked<'a> {
    tracker: &'a LagTracker,
    key: Tracking,
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.tracker.lock().remove(&self.key);
    }
}

impl LagTracker {
    /// A tracker; `per_shard` adds per-shard series.
    pub(crate) fn new(per_shard: bool) -> Self {
        Self {
            per_shard,
            ..Self::default()
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Tracking, VecDeque<Pending>>> {
        // The map stays consistent whatever panicked while holding it.
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A shard consumer (of `pipeline`, when named) starts: tracked (nothing pending) until
    /// the guard is dropped.
    pub(crate) fn track(&self, key: &LeaseKey, pipeline: Option<&str>) -> Tracked<'_> {
        let key = (key.clone(), pipeline.map(str::to_owned));
        self.lock().insert(key.clone(), VecDeque::new());
        Tracked { tracker: self, key }
    }

    /// Records of `key` were fetched (received from the fetch task) by `pipeline`.
    pub(crate) fn fetched(&self, key: &LeaseKey, pipeline: Option<&str>, records: &[Arc<Record>]) {
        let mut shards = self.lock();
        let Some(pending) = shards.get_mut(&(key.clone(), pipeline.map(str::to_owned))) else {
            return;
        };
        pending.extend(records.iter().filter_map(|record| {
            let data = record.dynamodb()?;
            let seq = SequenceNumber::parse(data.sequence_number()?).ok()?;
            let created = data
                .approximate_creation_date_time()
                .and_then(|t| SystemTime::try_from(*t).ok());
            Some((seq, created))
        }));
    }

    /// Every record of `key` up to and including `seq` is done by `pipeline` (processed,
    /// filtered, or accepted by the failure handler).
    pub(crate) fn processed(&self, key: &LeaseKey, pipeline: Option<&str>, seq: &SequenceNumber) {
        let key = (key.clone(), pipeline.map(str::to_owned));
        if let Some(pending) = self.lock().get_mut(&key) {
            while pending.front().is_some_and(|(first, _)| first <= seq) {
                pending.pop_front();
            }
        }
    }

    /// The lag per stream and pipeline (and per shard when asked) at `now`.
    pub(crate) fn measure(&self, now: SystemTime) -> Measured {
        let mut measured = Measured::default();
        let mut owned: HashSet<&LeaseKey> = HashSet::new();
        let tracked = self.lock();
        for (tracking, pending) in tracked.iter() {
            let (key, pipeline) = tracking;
            let behind = pending
                .iter()
                .find_map(|(_, created)| *created)
                .map(|created| now.duration_since(created).unwrap_or(Duration::ZERO))
                .unwrap_or(Duration::ZERO);
            let lag = Lag {
                behind,
                records: pending.len(),
                shards: 1,
            };
            let series = (key.stream.clone(), pipeline.clone());
            measured.series.entry(series).or_default().add(lag);
            if owned.insert(key) {
                *measured.owned.entry(key.stream.clone()).or_default() += 1;
            }
            if self.per_shard {
                measured.shards.push((tracking.clone(), lag));
            }
        }
        measured
    }

    /// Sets the gauges from [`measure`](Self::measure).
    pub(crate) fn publish(&self, now: SystemTime) {
        let measured = self.measure(now);
        let mut published = self
            .published
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        published.extend(measured.series.keys().cloned());
        for series in published.iter() {
            let lag = measured.series.get(series).copied().unwrap_or_default();
            let labels = labels(&series.0, series.1.as_deref(), None);
            gauge!("ddb_stream_millis_behind_latest", &labels).set(lag.behind.as_millis() as f64);
            gauge!("ddb_stream_records_behind", &labels).set(lag.records as f64);
        }
        let streams: HashSet<&String> = published.iter().map(|(stream, _)| stream).collect();
        for stream in streams {
            let owned = measured.owned.get(stream).copied().unwrap_or_default();
            gauge!("ddb_stream_leases_owned", &labels(stream, None, None)).set(owned as f64);
        }
        for ((key, pipeline), lag) in measured.shards {
            let labels = labels(&key.stream, pipeline.as_deref(), Some(key.shard_id));
            gauge!("ddb_stream_shard_millis_behind_latest", &labels)
                .set(lag.behind.as_millis() as f64);
            gauge!("ddb_stream_shard_records_behind", &labels).set(lag.records as f64);
        }
    }

    /// Publishes every [`PUBLISH_INTERVAL`] until dropped (the consumer aborts it on exit).
    pub(crate) async fn publish_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(PUBLISH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.publish(SystemTime::now());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::StreamRecord;
    use aws_smithy_types::DateTime;

    fn record(seq: u64, created: SystemTime) -> Arc<Record> {
        Arc::new(
            Record::builder()
                .dynamodb(
                    StreamRecord::builder()
                        .sequence_number(format!("{seq:021}"))
                        .approximate_creation_date_time(DateTime::from(created))
                        .build(),
                )
                .build(),
        )
    }

    const ARN: &str = "arn:aws:dynamodb:r:1:table/orders/stream/x";

    fn unnamed() -> Series {
        (ARN.to_owned(), None)
    }

    #[test]
    fn the_oldest_pending_record_is_the_lag_and_it_grows_while_stuck() {
        let tracker = LagTracker::new(false);
        let key = LeaseKey::new(ARN, "shard-1");
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tracked = tracker.track(&key, None);
        assert_eq!(
            tracker.measure(t0).series[&unnamed()].behind,
            Duration::ZERO
        );

        tracker.fetched(
            &key,
            None,
            &[record(1, t0), record(2, t0 + Duration::from_secs(5))],
        );
        let at = |s| tracker.measure(t0 + Duration::from_secs(s)).series[&unnamed()];
        assert_eq!(at(10).behind, Duration::from_secs(10));
        assert_eq!(
            at(70).behind,
            Duration::from_secs(70),
            "stuck: still growing"
        );
        assert_eq!(at(70).records, 2);

        tracker.processed(
            &key,
            None,
            &SequenceNumber::parse(format!("{:021}", 1)).unwrap(),
        );
        assert_eq!(at(70).behind, Duration::from_secs(65));
        tracker.processed(
            &key,
            None,
            &SequenceNumber::parse(format!("{:021}", 2)).unwrap(),
        );
        assert_eq!(
            at(70),
            Lag {
                behind: Duration::ZERO,
                records: 0,
                shards: 1
            },
            "caught up: 0"
        );

        drop(tracked);
        assert!(
            tracker.measure(t0).series.is_empty(),
            "a stopped shard is forgotten"
        );
    }

    #[test]
    fn a_stream_reports_its_most_lagging_shard_and_shards_only_when_asked() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        for per_shard in [false, true] {
            let tracker = LagTracker::new(per_shard);
            let (a, b) = (LeaseKey::new(ARN, "a"), LeaseKey::new(ARN, "b"));
            let (_ta, _tb) = (tracker.track(&a, None), tracker.track(&b, None));
            tracker.fetched(&a, None, &[record(1, t0)]);
            tracker.fetched(&b, None, &[record(7, t0 + Duration::from_secs(30))]);
            let Measured { series, shards, .. } = tracker.measure(t0 + Duration::from_secs(40));
            assert_eq!(
                series[&unnamed()],
                Lag {
                    behind: Duration::from_secs(40),
                    records: 2,
                    shards: 2
                }
            );
            assert_eq!(shards.len(), if per_shard { 2 } else { 0 });
        }
    }

    #[test]
    fn each_pipeline_has_its_own_lag_and_a_shard_is_owned_once() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let tracker = LagTracker::new(true);
        let key = LeaseKey::new(ARN, "a");
        let (_fast, _stuck) = (
            tracker.track(&key, Some("fast")),
            tracker.track(&key, Some("stuck")),
        );
        for pipeline in ["fast", "stuck"] {
            tracker.fetched(&key, Some(pipeline), &[record(1, t0), record(2, t0)]);
        }
        let seq = SequenceNumber::parse(format!("{:021}", 2)).unwrap();
        tracker.processed(&key, Some("fast"), &seq);
        let measured = tracker.measure(t0 + Duration::from_secs(40));
        let of = |name: &str| measured.series[&(ARN.to_owned(), Some(name.to_owned()))];
        assert_eq!(
            of("stuck").behind,
            Duration::from_secs(40),
            "the stuck one shows"
        );
        assert_eq!(of("stuck").records, 2);
        assert_eq!(
            of("fast").behind,
            Duration::ZERO,
            "the fast one is caught up"
        );
        assert_eq!(measured.owned[ARN], 1, "one shard, whatever its pipelines");
        assert_eq!(
            measured.shards.len(),
            2,
            "per shard: one series per pipeline"
        );
    }
}
