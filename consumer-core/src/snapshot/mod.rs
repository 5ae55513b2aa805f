//! Snapshot, then stream: every item of the table first, as [`ChangeKind::Snapshot`]
//! changes, then the stream's changes after the snapshot began.
//!
//! How it is laid out in the lease table (per stream):
//!
//! - A **plan** (a coordination lease `snapshot|<stream ARN>`, written once by the first
//!   worker to start, with a conditional put): its checkpoint `Since(T0)` is when the
//!   snapshot began, its parent list names the segments.
//! - One **segment lease** per parallel Scan segment, key (stream ARN,
//!   `snapshot-<i>-of-<n>`). Segments are balanced, taken, handed off and failed over like
//!   shards; a segment's checkpoint is [`Checkpoint::Scan`] (items delivered and the last
//!   evaluated key) once every item of a page is done, and `ShardEnd` once read to its end.
//! - A **gate** (a lease in the stream, shard id [`GATE_ID`], never taken by a worker),
//!   created after every segment and before the first stream lease, open
//!   (`TRIM_HORIZON`) until every segment finished, then finished (`SHARD_END`) with one
//!   conditional write (`finish_gate`) by whoever sees it first: the worker that finishes
//!   a segment, or the shard-sync holder on its next sync. A crash between any two steps
//!   leaves a state the next of them completes: a gate that exists means every segment
//!   lease was written, so a segment that is gone finished (and was deleted).
//! - A **stream lease** for every shard of the stream at T0, starting at `Since(T0)`:
//!   `TRIM_HORIZON`, skipping (counting) records created before T0 minus the creation-time
//!   margin (`with_creation_time_margin`). Shards whose parent is not in the stream name
//!   the gate as their parent, so no stream record is delivered before the last segment
//!   finished (parents before children, the existing mechanism). One parent, not every
//!   segment: with 10,000 segments a root lease naming each was about 230 KB, read by every
//!   scan and written on every take and checkpoint.
//!
//! Why a sink that applies each change's new image (and deletes on remove) converges to the
//! table: see the README's "Snapshot, then stream".
//!
//! [`ChangeKind::Snapshot`]: crate::ChangeKind::Snapshot

mod scan;
pub(crate) mod segment;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::StreamViewType;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};

use crate::error::{Error, Result};
use crate::retry;
use crate::shard_graph::{create_lease_if_absent, describe_all_shards, parents_first};
use crate::stream_arn::table_of_stream;
use crate::streams::StreamsApi;

pub(crate) use scan::TableScan;
#[cfg(feature = "testkit")]
pub(crate) use scan::{PageRequest, ScanPage, to_stream_item};

/// How long DynamoDB Streams keeps a record: a snapshot that takes longer than this (minus
/// the creation-time margin) cannot be followed by the stream without a gap.
pub const STREAM_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Prefix of segment lease ids (real shard ids start with `shardId-`).
const SEGMENT_PREFIX: &str = "snapshot-";

/// Settings of [`ConsumerBuilder::with_snapshot`](crate::ConsumerBuilder::with_snapshot).
///
/// The margin by which stream records older than the snapshot's start are still delivered
/// is the consumer's [`with_creation_time_margin`](crate::ConsumerBuilder::with_creation_time_margin)
/// (default 1 s for AWS, which rounds creation times down to the second; DynamoDB Local
/// rounds to the minute, so tests against it set more than 60 s).
#[derive(Clone)]
pub struct SnapshotConfig {
    pub(crate) segments: u32,
    pub(crate) page_size: u32,
    pub(crate) progress_interval: Duration,
    /// The table reader (the SDK's, set by `build`; a fake in tests).
    pub(crate) scanner: Option<Arc<dyn TableScan>>,
}

impl std::fmt::Debug for SnapshotConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotConfig")
            .field("segments", &self.segments)
            .field("page_size", &self.page_size)
            .field("progress_interval", &self.progress_interval)
            .finish_non_exhaustive()
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotConfig {
    /// The defaults: 8 segments, 500 items a page, progress every 30 s.
    pub fn new() -> Self {
        Self {
            segments: 8,
            page_size: 500,
            progress_interval: Duration::from_secs(30),
            scanner: None,
        }
    }

    /// Parallel Scan segments, 1-10,000: the most workers that can scan at once. Only the
    /// first worker's setting counts (it is stored in the snapshot's plan).
    pub fn with_segments(mut self, segments: u32) -> Self {
        self.segments = segments;
        self
    }

    /// Items per Scan page, 1-10,000 (a page also stops at 1 MB of data): each page is one
    /// read, and one position stored once its items are done; batches are shaped as for
    /// stream records (`with_max_batch_size`, `with_batching_window`).
    pub fn with_page_size(mut self, items: u32) -> Self {
        self.page_size = items;
        self
    }

    /// How often a running segment logs the snapshot's progress. Default: 30 s.
    pub fn with_progress_interval(mut self, interval: Duration) -> Self {
        self.progress_interval = interval;
        self
    }

    /// Reads the simulated tables of `tables` instead of DynamoDB (simulation tests): the
    /// snapshot scans the items the simulation's writes left, as they are when each page is
    /// read, and holds while the worker is paused.
    #[cfg(feature = "testkit")]
    pub fn with_simulated_tables(
        mut self,
        tables: crate::testkit::PausableStreams<crate::testkit::SimulatedStream>,
    ) -> Self {
        self.scanner = Some(Arc::new(tables));
        self
    }

    /// The setting that is out of range, and why.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        if !(1..=10_000).contains(&self.segments) {
            return Err((
                "with_snapshot",
                "segments must be between 1 and 10,000".into(),
            ));
        }
        if !(1..=10_000).contains(&self.page_size) {
            return Err((
                "with_snapshot",
                "page size must be between 1 and 10,000".into(),
            ));
        }
        if self.progress_interval.is_zero() {
            return Err((
                "with_snapshot",
                "the progress interval must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// Whether a snapshot that began at `started_at` and whose last segment finishes at `now`
/// took too long for the stream to follow without a gap: records made after it began may
/// be trimmed (older than the retention) before the stream is read.
pub(crate) fn outlasted_retention(
    started_at: SystemTime,
    now: SystemTime,
    margin: Duration,
) -> bool {
    now.duration_since(started_at)
        .is_ok_and(|took| took + margin >= STREAM_RETENTION)
}

/// The shard id of a stream's snapshot gate (a `#` id: a coordination lease, never a
/// shard, never taken by a worker).
pub const GATE_ID: &str = "#after-snapshot";

/// The key of the gate that holds `stream_arn`'s root leases until every segment finished.
pub fn gate_key(stream_arn: &str) -> LeaseKey {
    LeaseKey::new(stream_arn, GATE_ID)
}

/// Whether `key` is a snapshot gate.
pub fn is_gate(key: &LeaseKey) -> bool {
    key.shard_id == GATE_ID && key.stream != LeaseKey::COORDINATION_STREAM
}

/// A fresh (open) gate for `stream_arn`.
fn open_gate(stream_arn: &str) -> Lease {
    Lease::new(gate_key(stream_arn), Checkpoint::TrimHorizon, vec![])
}

/// The parents of a root stream lease under a snapshot: the gate, and the gate created if
/// it is missing (a plan written before gates existed, or a gate deleted after the stream
/// started: it is finished again on the next check, as every segment is done).
pub(crate) async fn root_parents(store: &dyn LeaseStore, stream_arn: &str) -> Result<Vec<String>> {
    create_lease_if_absent(store, &open_gate(stream_arn)).await?;
    Ok(vec![GATE_ID.to_owned()])
}

/// Finishes `stream_arn`'s gate (`SHARD_END`, one write conditional on the gate's owner
/// and epoch as read) if it is open and every segment finished: the lease table `leases`
/// says so first (no cost), then one consistent read of the segments confirms it (a scan
/// is read page by page: it may show the gate but miss a segment written just before it).
/// Returns whether this call finished it; a gate another caller finished first is no
/// error. Called by the worker that finishes a segment and by every shard sync.
pub(crate) async fn finish_gate(
    store: &dyn LeaseStore,
    stream_arn: &str,
    leases: &[Lease],
) -> Result<bool> {
    let key = gate_key(stream_arn);
    let Some(gate) = leases.iter().find(|l| l.key == key) else {
        return Ok(false);
    };
    if gate.checkpoint.is_shard_end() {
        return Ok(false);
    }
    let Some(plan) = leases.iter().find(|l| l.key == plan_key(stream_arn)) else {
        return Ok(false);
    };
    let listed = SnapshotProgress::of(plan, &by_key(leases));
    if !listed.is_some_and(|p| p.is_done()) {
        return Ok(false);
    }
    let segments: Vec<LeaseKey> = plan
        .parent_shard_ids
        .iter()
        .map(|s| LeaseKey::new(stream_arn, s.clone()))
        .collect();
    let read = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        store.get_leases(&segments)
    })
    .await?;
    if read.iter().any(|l| !l.checkpoint.is_shard_end()) {
        return Ok(false);
    }
    match store
        .reset_lease(
            &key,
            gate.owner.as_deref(),
            gate.epoch,
            &Checkpoint::ShardEnd,
        )
        .await
    {
        Ok(_) => {
            tracing::info!(
                stream_arn,
                segments = segments.len(),
                "snapshot finished: the stream starts"
            );
            Ok(true)
        }
        Err(dynamodb_streams_leases::Error::LeaseChanged { .. }) => Ok(false),
        Err(dynamodb_streams_leases::Error::LeaseNotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The key of a stream's snapshot plan.
pub(crate) fn plan_key(stream_arn: &str) -> LeaseKey {
    LeaseKey::coordination(format!("{PLAN_PREFIX}{stream_arn}"))
}

/// Prefix of a plan's coordination id (the stream ARN follows).
const PLAN_PREFIX: &str = "snapshot|";

/// The id of segment `index` of `total`.
fn segment_id(index: u32, total: u32) -> String {
    format!("{SEGMENT_PREFIX}{index}-of-{total}")
}

/// Segment index and total from a segment lease id.
pub(crate) fn parse_segment_id(shard_id: &str) -> Option<(u32, u32)> {
    let (index, total) = shard_id.strip_prefix(SEGMENT_PREFIX)?.split_once("-of-")?;
    let (index, total) = (index.parse().ok()?, total.parse().ok()?);
    (index < total).then_some((index, total))
}

/// How many items a segment position says were scanned (`TrimHorizon`: none); `None` for
/// a checkpoint that is not a segment's position. What orders the pipelines' positions in
/// a segment.
pub(crate) fn scanned_items(checkpoint: &Checkpoint) -> Option<u64> {
    match checkpoint {
        Checkpoint::TrimHorizon => Some(0),
        Checkpoint::Scan(text) => Some(scan::Position::decode(text).map_or(0, |p| p.items)),
        _ => None,
    }
}

/// Whether a lease is a snapshot segment rather than a shard (it has no records to read:
/// tools skip it when they read shards).
pub fn is_segment(key: &LeaseKey) -> bool {
    !key.is_coordination() && parse_segment_id(&key.shard_id).is_some()
}

/// Sets up the snapshot of one stream, before the worker's first shard sync: refuses a
/// stream without new images, writes the plan if this worker is first, and creates the
/// segment leases and the stream leases that wait for them. Idempotent: every starting
/// worker runs it, so a first worker that crashed midway is completed by the next one.
/// A stream this application already consumed without a snapshot gets none, nor does a
/// table's new stream that replaced one it consumed ([`follows_an_older_stream`]). The plan
/// names the consumer's `pipelines` (each at `Since(T0)`): a pipeline it does not name
/// joined later and gets no snapshot. Each call is retried as its policy says; a transient
/// failure that outlasts it is returned, and the caller runs the whole preparation again.
pub(crate) async fn prepare(
    api: &dyn StreamsApi,
    store: &Arc<dyn LeaseStore>,
    config: &SnapshotConfig,
    stream_arn: &str,
    table: Option<&str>,
    pipelines: &[String],
) -> Result<()> {
    let page = retry::call(retry::describe_stream(), retry::is_retryable_api, || {
        api.describe_stream(stream_arn, None)
    })
    .await?;
    let table = table
        .map(str::to_owned)
        .or(page.table_name.clone())
        .or_else(|| table_of_stream(stream_arn).map(str::to_owned))
        .unwrap_or_default();
    if let Some(view @ (StreamViewType::KeysOnly | StreamViewType::OldImage)) = &page.view_type {
        return Err(Error::Snapshot {
            table,
            stream_arn: stream_arn.to_owned(),
            problem: format!(
                "the stream's view type is {}: a snapshot followed by the stream needs new images (NEW_IMAGE or NEW_AND_OLD_IMAGES)",
                view.as_str()
            ),
        });
    }
    let leases = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        store.list_leases()
    })
    .await?;
    let key = plan_key(stream_arn);
    let has_stream_leases = leases
        .iter()
        .any(|l| l.key.stream == stream_arn && !is_segment(&l.key));
    let plan = match leases.iter().find(|l| l.key == key) {
        Some(plan) => plan.clone(),
        None if has_stream_leases => {
            tracing::info!(%table, stream_arn, "this application already consumes the stream: no snapshot");
            return Ok(());
        }
        None if follows_an_older_stream(stream_arn, &leases) => {
            tracing::info!(
                %table,
                stream_arn,
                "the table's stream was enabled again: this application follows the new stream after the older one, no snapshot"
            );
            return Ok(());
        }
        None => {
            let segments = (0..config.segments)
                .map(|i| segment_id(i, config.segments))
                .collect();
            // The streams' clock (this host's for AWS): creation times are compared with it.
            let mut plan = Lease::new(key.clone(), Checkpoint::since(api.now()), segments);
            plan.pipelines = pipelines
                .iter()
                .map(|name| (name.clone(), plan.checkpoint.clone()))
                .collect();
            if create_lease_if_absent(store.as_ref(), &plan).await? {
                tracing::info!(%table, stream_arn, segments = config.segments, started = %plan.checkpoint, "snapshot planned");
                plan
            } else {
                // Another worker was first: its plan counts.
                retry::call(retry::lease_store(), retry::is_retryable_store, || {
                    store.get_lease(&key)
                })
                .await?
                .unwrap_or(plan)
            }
        }
    };
    // Every segment lease was created before the first stream lease: the shard sync
    // creates the stream leases still missing, at `Since(T0)` after every segment, as here.
    // (Creating them here again could recreate segments deleted once finished.)
    if has_stream_leases {
        return Ok(());
    }
    // Segments first, then the gate (its existence says every segment was written), then
    // the stream leases whose roots name the gate.
    for segment in &plan.parent_shard_ids {
        let lease = Lease::new(
            LeaseKey::new(stream_arn, segment.clone()),
            Checkpoint::TrimHorizon,
            vec![],
        );
        create_lease_if_absent(store.as_ref(), &lease).await?;
    }
    let gate = root_parents(store.as_ref(), stream_arn).await?;
    let shards = stream_shards(api, stream_arn, &table).await?;
    let described: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    for shard in parents_first(&shards) {
        let mut parents: Vec<String> = shard.parent_shard_id.iter().cloned().collect();
        if !parents.iter().any(|p| described.contains(p.as_str())) {
            parents.extend(gate.iter().cloned());
        }
        let lease = Lease::new(
            LeaseKey::new(stream_arn, shard.shard_id.clone()),
            plan.checkpoint.clone(),
            parents,
        );
        create_lease_if_absent(store.as_ref(), &lease).await?;
    }
    Ok(())
}

/// Whether this application already consumed `stream_arn`'s table through an older stream
/// (the table's stream was disabled and enabled again): the lease table holds a lease of
/// one, or the plan of its snapshot (kept after the older stream's leases are retired).
/// Such a stream gets no snapshot of its own: its roots read it from `TRIM_HORIZON` after
/// the older stream's end (the shard sync's `#after-stream` gates), which delivers every
/// change after the older stream's last one, deletions included. A second snapshot would
/// skip the stream records made before it and deliver only the items that exist, so a
/// sink fed by the older stream would keep an item deleted in between forever, and its
/// items could arrive before the older stream's last records of the same item.
fn follows_an_older_stream(stream_arn: &str, leases: &[Lease]) -> bool {
    let older_plan = |l: &Lease| {
        l.key.is_coordination()
            && l.key
                .shard_id
                .strip_prefix(PLAN_PREFIX)
                .is_some_and(|stream| crate::shard_graph::is_replaced_by(stream, stream_arn))
    };
    crate::shard_graph::replaces_a_consumed_stream(stream_arn, leases)
        || leases.iter().any(older_plan)
}

/// How long start-up waits for a just-enabled stream to list its first shard.
const FIRST_SHARD_DEADLINE: Duration = Duration::from_secs(30);

/// Every shard of the stream, waiting (polling every second, at most
/// [`FIRST_SHARD_DEADLINE`]) while a just-enabled stream lists none: its stream leases must
/// be created here, gated by the segments, not later by a shard sync that knows nothing of
/// the snapshot.
async fn stream_shards(
    api: &dyn StreamsApi,
    stream_arn: &str,
    table: &str,
) -> Result<Vec<crate::streams::ShardInfo>> {
    let deadline = tokio::time::Instant::now() + FIRST_SHARD_DEADLINE;
    loop {
        let shards = describe_all_shards(api, stream_arn).await?;
        if !shards.is_empty() {
            return Ok(shards);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Snapshot {
                table: table.to_owned(),
                stream_arn: stream_arn.to_owned(),
                problem: format!(
                    "the stream lists no shard after {FIRST_SHARD_DEADLINE:?}; start the worker again once it does"
                ),
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where a snapshot's gate stands (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateState {
    /// The gate holds the stream's root leases: a segment is not finished yet (or every
    /// one is, and the next check finishes the gate).
    Open,
    /// Every segment finished: the stream's root leases may start.
    Finished,
    /// No gate lease: a snapshot planned before gates (its roots name every segment), one
    /// whose gate was deleted after the stream started, or one still being set up.
    Absent,
}

impl GateState {
    /// The state's name in `ddbsc status --json`: `open`, `finished` or `absent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Finished => "finished",
            Self::Absent => "absent",
        }
    }
}

/// Where one stream's snapshot stands, as the lease table says (`ddbsc status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotProgress {
    /// The stream whose snapshot this is.
    pub stream_arn: String,
    /// When the snapshot began (T0).
    pub started_at: Option<SystemTime>,
    /// Scan segments in all.
    pub segments: u32,
    /// Segments read to their end (a finished segment's lease may be deleted once the
    /// stream started: it counts as done).
    pub segments_done: u32,
    /// Items delivered and checkpointed by the segments not finished yet (a finished
    /// segment's lease keeps no count).
    pub items_in_open_segments: u64,
    /// The owners of the segments not finished yet.
    pub owners: Vec<String>,
    /// The gate that holds the stream's root leases until every segment finished.
    pub gate: GateState,
}

impl SnapshotProgress {
    /// Whether every segment is done.
    pub fn is_done(&self) -> bool {
        self.segments_done >= self.segments
    }

    /// The progress recorded by `plan` (a plan lease; `None` for any other lease), its
    /// segments and gate looked up in `leases`.
    fn of(plan: &Lease, leases: &HashMap<&LeaseKey, &Lease>) -> Option<Self> {
        let stream_arn = plan.key.shard_id.strip_prefix("snapshot|")?;
        if !plan.key.is_coordination() {
            return None;
        }
        let gate = match leases.get(&gate_key(stream_arn)) {
            None => GateState::Absent,
            Some(gate) if gate.checkpoint.is_shard_end() => GateState::Finished,
            Some(_) => GateState::Open,
        };
        let mut progress = SnapshotProgress {
            stream_arn: stream_arn.to_owned(),
            started_at: plan.checkpoint.skip_before(),
            segments: u32::try_from(plan.parent_shard_ids.len()).unwrap_or(u32::MAX),
            segments_done: 0,
            items_in_open_segments: 0,
            owners: Vec::new(),
            gate,
        };
        for segment in &plan.parent_shard_ids {
            let key = LeaseKey::new(stream_arn, segment.clone());
            match leases.get(&key) {
                None => progress.segments_done += 1,
                Some(lease) if lease.checkpoint.is_shard_end() => progress.segments_done += 1,
                Some(lease) => {
                    if let Checkpoint::Scan(text) = &lease.checkpoint {
                        progress.items_in_open_segments +=
                            scan::Position::decode(text).map_or(0, |p| p.items);
                    }
                    progress.owners.extend(lease.owner.clone());
                }
            }
        }
        progress.owners.sort();
        progress.owners.dedup();
        Some(progress)
    }
}

/// `leases` by key: segments are looked up by key, 10,000 of them in 100,000 leases.
fn by_key(leases: &[Lease]) -> HashMap<&LeaseKey, &Lease> {
    leases.iter().map(|l| (&l.key, l)).collect()
}

/// The progress of every snapshot recorded in `leases` (the whole lease table).
pub fn progress(leases: &[Lease]) -> Vec<SnapshotProgress> {
    let by_key = by_key(leases);
    leases
        .iter()
        .filter_map(|plan| SnapshotProgress::of(plan, &by_key))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit_tests {
    use super::*;

    #[test]
    fn segment_ids_round_trip_and_shards_are_not_segments() {
        assert_eq!(parse_segment_id(&segment_id(3, 8)), Some((3, 8)));
        assert_eq!(parse_segment_id("snapshot-8-of-8"), None);
        assert_eq!(parse_segment_id("shardId-00000001"), None);
        assert!(!is_segment(&LeaseKey::coordination("snapshot-0-of-1")));
    }

    #[test]
    fn a_snapshot_outlasts_the_retention_minus_the_margin() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let margin = Duration::from_secs(90);
        let just_in_time = t0 + STREAM_RETENTION - margin - Duration::from_secs(1);
        assert!(!outlasted_retention(t0, just_in_time, margin));
        assert!(outlasted_retention(
            t0,
            t0 + STREAM_RETENTION - margin,
            margin
        ));
        assert!(!outlasted_retention(
            t0,
            t0 - Duration::from_secs(5),
            margin
        ));
    }

    #[test]
    fn progress_counts_finished_and_deleted_segments_as_done() {
        let arn = "arn:s";
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let segments: Vec<String> = (0..3).map(|i| segment_id(i, 3)).collect();
        let plan = Lease::new(plan_key(arn), Checkpoint::since(t0), segments.clone());
        let done = Lease::new(
            LeaseKey::new(arn, &segments[0]),
            Checkpoint::ShardEnd,
            vec![],
        );
        let position = scan::Position {
            items: 7,
            after: None,
        };
        let mut open = Lease::new(
            LeaseKey::new(arn, &segments[1]),
            Checkpoint::Scan(position.encode()),
            vec![],
        );
        open.owner = Some("w1".into());
        // segments[2] is gone: deleted after it finished.
        let all = progress(&[plan, done, open]);
        assert_eq!(all.len(), 1);
        let p = &all[0];
        assert_eq!((p.segments, p.segments_done), (3, 2));
        assert_eq!(p.items_in_open_segments, 7);
        assert_eq!(p.owners, ["w1"]);
        assert_eq!(p.started_at, Some(t0));
        assert!(!p.is_done());
    }
}
