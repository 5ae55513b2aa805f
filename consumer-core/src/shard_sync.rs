//! Shard discovery: list a stream's shards and give each new one a lease.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};

use crate::error::Result;
use crate::retry;
use crate::shard_graph::{
    create_lease_if_absent, describe_all_shards, is_replaced_by, new_shard_lease, older_streams,
    parents_first,
};
use crate::snapshot;
use crate::start_time::InitialPosition;
use crate::streams::{ShardInfo, StreamsApi};

/// The checkpoint a new shard's lease starts with.
///
/// The first sync of a stream applies the initial position: with `Latest`, closed shards
/// are done and open ones start at their tip. Shards that appear later are descendants of
/// shards we process, so they start at `TRIM_HORIZON` (nothing between parent and child
/// may be skipped), or at their parent's start time if the parent has one (a no-op once the
/// parent delivered anything). A root shard found by a later sync (the first sync stopped
/// midway) starts where the first sync started, `root_start`, not at `TRIM_HORIZON`.
fn initial_checkpoint(
    shard: &ShardInfo,
    first_sync: bool,
    initial: InitialPosition,
    parent: Option<&Lease>,
    root_start: Option<&Checkpoint>,
) -> Checkpoint {
    match (first_sync, initial) {
        (true, InitialPosition::Latest) if shard.is_closed() => Checkpoint::ShardEnd,
        (true, InitialPosition::Latest) => Checkpoint::Latest,
        _ => match (parent.map(|p| &p.checkpoint), root_start) {
            (Some(Checkpoint::Since(time)), _) => Checkpoint::Since(*time),
            (None, Some(start)) => start.clone(),
            _ => Checkpoint::TrimHorizon,
        },
    }
}

/// The coordination item holding when this application started consuming `stream_arn`
/// (`Checkpoint::Since`): written by the first sync of a stream under `Latest` before any
/// of its leases, so a later sync that finds a root shard without a lease (the first sync
/// stopped midway) starts it at that time, not at `TRIM_HORIZON`.
pub(crate) fn stream_start_key(stream_arn: &str) -> LeaseKey {
    LeaseKey::coordination(format!("stream-start {stream_arn}"))
}

/// Where a root shard without a lease starts, found by a sync after the first: the start
/// time the first sync stored; failing that (a table from before the start item), the
/// creation time of the stream's oldest lease.
async fn root_start(
    store: &dyn LeaseStore,
    stream_arn: &str,
    leases: &[Lease],
) -> Result<Checkpoint> {
    let key = stream_start_key(stream_arn);
    let stored = retry::call(retry::lease_store(), retry::is_retryable_store, || {
        store.get_lease(&key)
    })
    .await?;
    if let Some(Checkpoint::Since(time)) = stored.map(|l| l.checkpoint) {
        return Ok(Checkpoint::Since(time));
    }
    let oldest = leases
        .iter()
        .filter(|l| l.key.stream == stream_arn)
        .map(|l| l.created_at)
        .min();
    tracing::warn!(
        stream_arn,
        ?oldest,
        "no stream start item; root shards start at the oldest lease's creation time"
    );
    Ok(oldest.map_or(Checkpoint::TrimHorizon, Checkpoint::since))
}

/// What a sync changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncReport {
    /// Leases created for new shards.
    pub created: usize,
    /// Finished leases deleted.
    pub deleted: usize,
    /// A racing sync stopped at a lease another worker had created: leases may be missing.
    pub stopped_early: bool,
}

/// Who else may be creating the same leases right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Contention {
    /// Only the shard-sync holder syncs: create every missing lease.
    Alone,
    /// Every starting worker may sync a new stream at once: the first lease found already
    /// created means another worker is at it, so stop (its sync, or the holder's next
    /// one, creates the rest) instead of paying a failed write per shard per worker.
    Racing,
}

/// Creates leases for the stream's shards that have none, and deletes finished leases that
/// are no longer needed. `leases` is the current content of the lease table.
pub(crate) async fn sync_stream(
    api: &dyn StreamsApi,
    store: &Arc<dyn LeaseStore>,
    stream_arn: &str,
    leases: &[Lease],
    initial: InitialPosition,
    contention: Contention,
) -> Result<SyncReport> {
    let shards = describe_all_shards(api, stream_arn).await?;
    let known: HashMap<&LeaseKey, &Lease> = leases.iter().map(|l| (&l.key, l)).collect();
    let first_sync = !known.keys().any(|key| key.stream == stream_arn);
    let described: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    // A table's stream disabled and enabled again: the new stream's roots read from their
    // first record, after the older streams' shards (gates as parents). Every older stream
    // still holding leases gets a gate, even one whose leases are all at `SHARD_END`: a
    // shard of it that ended while no worker ran has children without leases yet (the
    // older stream's own sync creates them, maybe later in this very pass), which only
    // `retire_replaced_streams` checks before it opens the gate (issue 15, seed 83326).
    let older = older_streams(stream_arn, leases);
    let reenabled = !older.is_empty();
    let mut gates: Vec<String> = leases
        .iter()
        .filter(|l| l.key.stream == stream_arn && l.key.gated_stream().is_some())
        .map(|l| l.key.shard_id.clone())
        .collect();
    if first_sync {
        for older_stream in &older {
            let gate = Lease::new(
                LeaseKey::stream_gate(stream_arn, older_stream),
                Checkpoint::TrimHorizon,
                vec![],
            );
            create_lease_if_absent(store.as_ref(), &gate).await?;
            tracing::info!(
                stream_arn,
                older_stream,
                "a table's new stream waits for its older stream to finish"
            );
            gates.push(gate.key.shard_id);
        }
    }
    let first_sync = first_sync && !reenabled;
    if first_sync && initial == InitialPosition::Latest {
        let start = Lease::new(
            stream_start_key(stream_arn),
            Checkpoint::since(api.now()),
            vec![],
        );
        create_lease_if_absent(store.as_ref(), &start).await?;
    }
    let mut root: Option<Checkpoint> = None;
    // The stream's snapshot plan, read at the first root without a lease: such a root
    // (its leases created by a `prepare` that stopped midway, or that another worker was
    // still writing) starts like the ones `prepare` created, after every segment.
    let mut snapshot: Option<Option<Lease>> = None;
    // The parents such a root names instead of the segments: the snapshot's gate.
    let mut snapshot_gate: Option<Vec<String>> = None;
    // Leases created by this sync: a child's parent may be one of them.
    let mut new: HashMap<LeaseKey, Lease> = HashMap::new();
    let mut created = 0;
    for shard in parents_first(&shards) {
        let key = LeaseKey::new(stream_arn, shard.shard_id.clone());
        if known.contains_key(&key) {
            continue;
        }
        let parent_key = shard
            .parent_shard_id
            .as_ref()
            .map(|p| LeaseKey::new(stream_arn, p.clone()));
        let parent = parent_key
            .as_ref()
            .and_then(|k| known.get(k).copied().or_else(|| new.get(k)));
        let is_root = parent.is_none()
            && shard
                .parent_shard_id
                .as_ref()
                .is_none_or(|p| !described.contains(p.as_str()));
        if is_root && snapshot.is_none() {
            snapshot = Some(snapshot_plan(store.as_ref(), stream_arn).await?);
        }
        let plan = snapshot
            .as_ref()
            .and_then(Option::as_ref)
            .filter(|_| is_root);
        if is_root
            && plan.is_none()
            && !first_sync
            && !reenabled
            && initial == InitialPosition::Latest
            && root.is_none()
        {
            root = Some(root_start(store.as_ref(), stream_arn, leases).await?);
        }
        let mut parents: Vec<String> = shard.parent_shard_id.iter().cloned().collect();
        if is_root {
            parents.extend(gates.iter().cloned());
        }
        let checkpoint = match plan {
            Some(plan) => {
                if snapshot_gate.is_none() {
                    snapshot_gate = Some(snapshot::root_parents(store.as_ref(), stream_arn).await?);
                }
                parents.extend(snapshot_gate.iter().flatten().cloned());
                plan.checkpoint.clone()
            }
            None => initial_checkpoint(
                shard,
                first_sync,
                initial,
                parent,
                root.as_ref().filter(|_| is_root),
            ),
        };
        let lease = new_shard_lease(api, key, checkpoint, parents);
        if create_lease_if_absent(store.as_ref(), &lease).await? {
            created += 1;
            new.insert(lease.key.clone(), lease);
        } else if contention == Contention::Racing {
            tracing::debug!(
                stream_arn,
                created,
                "another worker is creating this stream's leases"
            );
            return Ok(SyncReport {
                created,
                deleted: 0,
                stopped_early: true,
            });
        }
    }
    finish_snapshot_gate(store.as_ref(), stream_arn, leases, snapshot).await?;
    let mut deleted = 0;
    for key in finished_and_gone(stream_arn, leases, &described) {
        store.delete_lease(&key).await?;
        deleted += 1;
    }
    if created + deleted > 0 {
        tracing::info!(
            stream_arn,
            created,
            deleted,
            shards = shards.len(),
            "lease table synced with the stream's shards"
        );
    }
    Ok(SyncReport {
        created,
        deleted,
        stopped_early: false,
    })
}

/// The snapshot plan of `stream_arn`, if it has one (a consistent read).
async fn snapshot_plan(store: &dyn LeaseStore, stream_arn: &str) -> Result<Option<Lease>> {
    let key = snapshot::plan_key(stream_arn);
    Ok(
        retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.get_lease(&key)
        })
        .await?,
    )
}

/// Finishes the stream's snapshot gate if it is still open and every segment finished (the
/// backstop for a segment whose last owner could not write it, e.g. its link throttled).
/// The leader's view holds no coordination leases, so the plan that lists the segments is
/// read here (once, if the sync did not read it already): without it the gate stayed open
/// for good and the stream never started (issue 15, explorer seed 857).
async fn finish_snapshot_gate(
    store: &dyn LeaseStore,
    stream_arn: &str,
    leases: &[Lease],
    plan: Option<Option<Lease>>,
) -> Result<()> {
    let gate = snapshot::gate_key(stream_arn);
    let open = leases
        .iter()
        .any(|l| l.key == gate && !l.checkpoint.is_shard_end());
    if !open {
        return Ok(());
    }
    let plan_key = snapshot::plan_key(stream_arn);
    if leases.iter().any(|l| l.key == plan_key) {
        snapshot::finish_gate(store, stream_arn, leases).await?;
        return Ok(());
    }
    let plan = match plan {
        Some(plan) => plan,
        None => snapshot_plan(store, stream_arn).await?,
    };
    let Some(plan) = plan else {
        return Ok(());
    };
    let with_plan: Vec<Lease> = leases
        .iter()
        .filter(|l| l.key.stream == stream_arn)
        .cloned()
        .chain([plan])
        .collect();
    snapshot::finish_gate(store, stream_arn, &with_plan).await?;
    Ok(())
}

/// The mark written under `stream_arn` once it is decided that the replaced stream is
/// finished, before any of its leases is deleted. A pass that finds it only deletes what is
/// left: syncing a stream some of whose leases are already gone would recreate them at
/// `TRIM_HORIZON` and read those shards again (issue 15, explorer seed 47407: a delete
/// throttled midway, and the next pass recreated the deleted leases). The mark stays (one
/// small item per replaced stream, which only an operator's re-enabling makes): a pass
/// whose view was scanned while the leases were being deleted may miss some of them, and
/// must still find the stream retiring, however late.
fn retiring_key(stream_arn: &str) -> LeaseKey {
    // A coordination key (its id starts with `#`): no worker takes it, no sync counts it.
    LeaseKey::new(stream_arn, "#retiring")
}

/// Retires the streams that their table's `current` stream replaced once every one of their
/// shards has a lease at `SHARD_END`: marks the stream retiring, then deletes the gates
/// that wait for it (so the current stream's roots start, like children of a finished
/// parent) and its leases. No sync recreates them (only current streams and replaced ones
/// still holding leases and not marked retiring are synced). Returns how many streams were
/// retired.
///
/// A replaced stream is synced first, like a current one: a shard that ended while the
/// lease table was out of reach has children without leases, and "all leases finished"
/// would then retire the stream with those children never read, letting the new stream's
/// records for their keys run first (issue 15, explorer seed 6085). A stream whose sync
/// created a lease, or could not list its shards, is not finished.
pub(crate) async fn retire_replaced_streams(
    api: &dyn StreamsApi,
    store: &Arc<dyn LeaseStore>,
    leases: &[Lease],
    current: &[String],
    initial: InitialPosition,
) -> Result<usize> {
    let mut streams: Vec<&str> = leases
        .iter()
        .filter(|l| !l.key.is_coordination())
        .map(|l| l.key.stream.as_str())
        .collect();
    streams.sort_unstable();
    streams.dedup();
    let mut retired = 0;
    for &old in &streams {
        let replaced = current.iter().any(|c| is_replaced_by(old, c));
        if !replaced {
            continue;
        }
        let mark = retiring_key(old);
        // Read when the view lacks it: a scan is not one moment, and may show leases
        // already deleted as gone while missing the mark written before them.
        let retiring = leases.iter().any(|l| l.key == mark)
            || retry::call(retry::lease_store(), retry::is_retryable_store, || {
                store.get_lease(&mark)
            })
            .await?
            .is_some();
        if !retiring {
            if !finished_replaced_stream(api, store, old, leases, initial).await {
                continue;
            }
            let mark = Lease::new(mark.clone(), Checkpoint::ShardEnd, vec![]);
            create_lease_if_absent(store.as_ref(), &mark).await?;
        }
        // The gates in the view, and those this pass's sync of the current stream may have
        // just created (the view predates them): deleting an absent gate succeeds.
        let mut gates: Vec<LeaseKey> = leases
            .iter()
            .filter(|l| l.key.gated_stream() == Some(old))
            .map(|l| l.key.clone())
            .chain(
                current
                    .iter()
                    .filter(|c| is_replaced_by(old, c))
                    .map(|c| LeaseKey::stream_gate(c.as_str(), old)),
            )
            .collect();
        gates.sort_unstable();
        gates.dedup();
        for gate in gates {
            store.delete_lease(&gate).await?;
        }
        for done in leases
            .iter()
            .filter(|l| l.key.stream == old && l.key != mark)
        {
            store.delete_lease(&done.key).await?;
        }
        tracing::info!(
            stream_arn = old,
            "a replaced stream finished: its leases are removed and its table's newer stream runs"
        );
        retired += 1;
    }
    // A gate whose older stream has no lease left in the view waits for nothing: that
    // stream's finished leases went with its shards (`finished_and_gone`) in an earlier
    // pass, after the gate was created.
    for gate in leases.iter().filter(|l| {
        l.key
            .gated_stream()
            .is_some_and(|older| !streams.contains(&older))
    }) {
        store.delete_lease(&gate.key).await?;
    }
    Ok(retired)
}

/// Whether every shard of the replaced stream `old` has a lease (its sync created none)
/// and every one of them is at `SHARD_END`.
async fn finished_replaced_stream(
    api: &dyn StreamsApi,
    store: &Arc<dyn LeaseStore>,
    old: &str,
    leases: &[Lease],
    initial: InitialPosition,
) -> bool {
    let every_shard_leased = match sync_stream(api, store, old, leases, initial, Contention::Alone)
        .await
    {
        Ok(report) => report.created == 0,
        Err(error) => {
            tracing::warn!(stream_arn = old, %error, "cannot sync a replaced stream; it stays until a sync lists its shards");
            false
        }
    };
    every_shard_leased
        && leases
            .iter()
            .filter(|l| l.key.stream == old && !l.key.is_coordination())
            .all(|l| l.checkpoint == Checkpoint::ShardEnd)
}

/// Finished leases that may be deleted: the shard has left the stream (so no sync will
/// recreate its lease) and every child has started. A deleted parent counts as finished
/// for the children, so deleting changes nothing for them; it keeps the table small.
fn finished_and_gone(
    stream_arn: &str,
    leases: &[Lease],
    described: &HashSet<&str>,
) -> Vec<LeaseKey> {
    let stream: Vec<&Lease> = leases
        .iter()
        .filter(|l| l.key.stream == stream_arn)
        .collect();
    stream
        .iter()
        .filter(|l| {
            l.checkpoint == Checkpoint::ShardEnd && !described.contains(l.key.shard_id.as_str())
        })
        .filter(|parent| {
            stream
                .iter()
                .filter(|c| c.parent_shard_ids.contains(&parent.key.shard_id))
                .all(|child| matches!(child.checkpoint, Checkpoint::At(_) | Checkpoint::ShardEnd))
        })
        .map(|l| l.key.clone())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::SequenceNumber;

    fn shard(closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: "s".into(),
            parent_shard_id: None,
            starting_sequence_number: None,
            ending_sequence_number: closed.then(|| SequenceNumber::parse("9").unwrap()),
        }
    }

    #[test]
    fn only_finished_shards_that_left_the_stream_and_whose_children_started_are_deleted() {
        let lease = |id: &str, checkpoint: Checkpoint, parents: &[&str]| {
            Lease::new(
                LeaseKey::new("arn", id),
                checkpoint,
                parents.iter().map(|p| p.to_string()).collect(),
            )
        };
        let at = Checkpoint::At(SequenceNumber::parse("5").unwrap());
        let leases = vec![
            lease("gone-done", Checkpoint::ShardEnd, &[]),
            lease("child-started", at.clone(), &["gone-done"]),
            lease("gone-waiting", Checkpoint::ShardEnd, &[]),
            lease(
                "child-not-started",
                Checkpoint::TrimHorizon,
                &["gone-waiting"],
            ),
            lease("present-done", Checkpoint::ShardEnd, &[]),
            lease("gone-open", at, &[]),
        ];
        let described: HashSet<&str> =
            ["present-done", "child-started", "child-not-started"].into();
        let deleted = finished_and_gone("arn", &leases, &described);
        assert_eq!(deleted, [LeaseKey::new("arn", "gone-done")]);
    }

    #[test]
    fn latest_marks_closed_shards_done_only_on_the_first_sync() {
        let latest = InitialPosition::Latest;
        assert_eq!(
            initial_checkpoint(&shard(true), true, latest, None, None),
            Checkpoint::ShardEnd
        );
        assert_eq!(
            initial_checkpoint(&shard(false), true, latest, None, None),
            Checkpoint::Latest
        );
        assert_eq!(
            initial_checkpoint(&shard(false), false, latest, None, None),
            Checkpoint::TrimHorizon
        );
        let trim = InitialPosition::TrimHorizon;
        assert_eq!(
            initial_checkpoint(&shard(true), true, trim, None, None),
            Checkpoint::TrimHorizon
        );
        // Later syncs: a root starts at the stream's start, a child at its parent's.
        let start = Checkpoint::since(std::time::UNIX_EPOCH);
        assert_eq!(
            initial_checkpoint(&shard(false), false, latest, None, Some(&start)),
            start
        );
        let parent = Lease::new(LeaseKey::new("arn", "p"), start.clone(), vec![]);
        assert_eq!(
            initial_checkpoint(&shard(false), false, trim, Some(&parent), None),
            start
        );
    }

    /// A simulated table `t` whose stream has `shards` open shards, and an empty lease
    /// table.
    fn table_with_shards(
        shards: usize,
        seed: u64,
    ) -> (crate::testkit::SimulatedStream, String, Arc<dyn LeaseStore>) {
        use crate::testkit::{SimConfig, SimulatedStream};
        let sim = SimulatedStream::new(SimConfig {
            initial_shards: shards,
            ..SimConfig::with_seed(seed)
        });
        let arn = sim.add_table("t");
        let store = Arc::new(dynamodb_streams_leases::InMemoryLeaseStore::new());
        (sim, arn, store)
    }

    /// The first sync under `Latest` stopped after the stream start item and one of three
    /// root leases: the next sync starts the other two at the stream start time, not at
    /// TRIM_HORIZON; a child of a shard with a lease still starts at TRIM_HORIZON.
    #[tokio::test(start_paused = true)]
    async fn roots_created_after_an_interrupted_first_sync_keep_the_latest_start() {
        let (sim, arn, store) = table_with_shards(3, 3);
        let roots = sim.open_shards(&arn).unwrap();
        assert_eq!(roots.len(), 3);
        let start = Checkpoint::since(std::time::UNIX_EPOCH + std::time::Duration::from_secs(7));
        store
            .create_lease(&Lease::new(stream_start_key(&arn), start.clone(), vec![]))
            .await
            .unwrap();
        let first = Lease::new(
            LeaseKey::new(arn.clone(), roots[0].shard_id.clone()),
            Checkpoint::Latest,
            vec![],
        );
        store.create_lease(&first).await.unwrap();
        sim.split_shard(&arn, &roots[0].shard_id).unwrap();

        let leases = store.list_leases().await.unwrap();
        let report = sync_stream(
            &sim,
            &store,
            &arn,
            &leases,
            InitialPosition::Latest,
            Contention::Alone,
        )
        .await
        .unwrap();
        assert_eq!(report.created, 4, "two roots and two children");
        for lease in store.list_leases().await.unwrap() {
            if lease.key.is_coordination() || lease.key == first.key {
                continue;
            }
            let expected = if lease.parent_shard_ids.is_empty() {
                start.clone()
            } else {
                Checkpoint::TrimHorizon
            };
            assert_eq!(lease.checkpoint, expected, "{}", lease.key);
        }
    }

    /// Issue 15 (explorer seed 83326): a table's stream rotated its shard while no worker
    /// ran, so the ended shard's child had no lease, and every lease of the stream was at
    /// `SHARD_END`; the stream was then disabled and enabled again. The new stream's first
    /// sync saw the older stream "finished" and gave its root no gate: the root's records
    /// ran before the older stream's child's records of the same keys. Every older stream
    /// with leases gets a gate; the retirement opens it only once the older stream's own
    /// sync finds every shard leased and ended, even when its view predates the gate.
    #[tokio::test(start_paused = true)]
    async fn a_new_streams_roots_wait_for_an_older_stream_whose_leases_all_ended() {
        let (sim, old, store) = table_with_shards(1, 11);
        let trim = InitialPosition::TrimHorizon;
        let root = sim.open_shards(&old).unwrap().remove(0).shard_id;
        let view = store.list_leases().await.unwrap();
        sync_stream(&sim, &store, &old, &view, trim, Contention::Alone)
            .await
            .unwrap();
        let root_key = LeaseKey::new(old.clone(), root.clone());
        let lease = store.get_lease(&root_key).await.unwrap().unwrap();
        store
            .reset_lease(&root_key, None, lease.epoch, &Checkpoint::ShardEnd)
            .await
            .unwrap();
        // The shard ends while no worker runs: its child has no lease yet.
        let child = sim.rotate_shard(&old, &root).unwrap();
        let new = sim.reenable_stream("t").unwrap();

        let view = store.list_leases().await.unwrap();
        sync_stream(&sim, &store, &new, &view, trim, Contention::Alone)
            .await
            .unwrap();
        let gate = LeaseKey::stream_gate(new.as_str(), &old);
        assert!(
            store.get_lease(&gate).await.unwrap().is_some(),
            "the new stream waits for the older one"
        );
        for lease in store.list_leases().await.unwrap() {
            if lease.key.stream == new && !lease.key.is_coordination() {
                assert_eq!(
                    lease.parent_shard_ids,
                    std::slice::from_ref(&gate.shard_id),
                    "{}",
                    lease.key
                );
            }
        }
        let current = [new.clone()];
        let retired = retire_replaced_streams(&sim, &store, &view, &current, trim)
            .await
            .unwrap();
        assert_eq!(retired, 0, "the older stream's child is not read yet");
        assert!(store.get_lease(&gate).await.unwrap().is_some());
        let child_key = LeaseKey::new(old.clone(), child);
        let lease = store.get_lease(&child_key).await.unwrap().unwrap();
        store
            .reset_lease(&child_key, None, lease.epoch, &Checkpoint::ShardEnd)
            .await
            .unwrap();
        // A view without the gate (read before the new stream's sync created it).
        let mut stale = store.list_leases().await.unwrap();
        stale.retain(|l| l.key != gate);
        let retired = retire_replaced_streams(&sim, &store, &stale, &current, trim)
            .await
            .unwrap();
        assert_eq!(retired, 1);
        assert_eq!(
            store.get_lease(&gate).await.unwrap(),
            None,
            "the gate opens"
        );
    }

    /// Issue 15 (explorer seed 857): the worker that finished the last segment could not
    /// finish the gate (its link throttled) and stopped. The shard sync, the backstop, runs
    /// with the leader's view, which holds no coordination leases (the snapshot's plan among
    /// them): it reads the plan itself and finishes the gate, or the stream never starts.
    #[tokio::test(start_paused = true)]
    async fn the_sync_finishes_a_gate_left_open_with_a_view_that_lacks_the_plan() {
        let (sim, arn, store) = table_with_shards(2, 5);
        let config = crate::SnapshotConfig::new().with_segments(3);
        snapshot::prepare(&sim, &store, &config, &arn, Some("t"), &[])
            .await
            .unwrap();
        // Every segment read to its end; the gate left open.
        for lease in store.list_leases().await.unwrap() {
            if snapshot::is_segment(&lease.key) {
                store
                    .reset_lease(&lease.key, None, lease.epoch, &Checkpoint::ShardEnd)
                    .await
                    .unwrap();
            }
        }
        let gate = || async {
            store
                .get_lease(&snapshot::gate_key(&arn))
                .await
                .unwrap()
                .unwrap()
                .checkpoint
        };
        assert_eq!(gate().await, Checkpoint::TrimHorizon);
        // The leader's view: the stream's leases only.
        let mut view = store.list_leases().await.unwrap();
        view.retain(|l| l.key.stream == arn);
        sync_stream(
            &sim,
            &store,
            &arn,
            &view,
            InitialPosition::TrimHorizon,
            Contention::Alone,
        )
        .await
        .unwrap();
        assert_eq!(gate().await, Checkpoint::ShardEnd, "the gate is finished");
    }

    /// A lease store whose deletes fail from the `fail_from`-th on (a throttled link).
    #[derive(Debug)]
    struct DeletesFail {
        inner: dynamodb_streams_leases::InMemoryLeaseStore,
        deletes: std::sync::atomic::AtomicUsize,
        fail_from: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl dynamodb_streams_leases::StoreWrapper for DeletesFail {
        type Inner = dynamodb_streams_leases::InMemoryLeaseStore;

        fn wrapped(&self) -> &Self::Inner {
            &self.inner
        }

        async fn delete_lease(&self, key: &LeaseKey) -> dynamodb_streams_leases::Result<()> {
            // Only shard leases count: a retirement deletes the gates first, and those
            // deletes succeed.
            if key.is_coordination() {
                return self.inner.delete_lease(key).await;
            }
            let n = self
                .deletes
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n >= self.fail_from.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(dynamodb_streams_leases::Error::Unreachable {
                    endpoint: "test".into(),
                    operation: "DeleteItem",
                    table: "leases".into(),
                    source: "throttled by the test".into(),
                });
            }
            self.inner.delete_lease(key).await
        }
    }

    /// Issue 15 (explorer seed 47407): the retirement of a finished replaced stream deleted
    /// one of its leases, then its link throttled. The next pass saw a lease missing and
    /// synced the stream, which recreated the deleted lease at TRIM_HORIZON: its shard was
    /// read again from its start. The stream is marked retiring before any delete, and a
    /// pass that finds the mark only deletes what is left.
    #[tokio::test(start_paused = true)]
    async fn a_retirement_stopped_midway_never_recreates_the_deleted_leases() {
        let (sim, old, _) = table_with_shards(3, 7);
        let roots = sim.open_shards(&old).unwrap();
        let new = sim.reenable_stream("t").unwrap();
        let failing = Arc::new(DeletesFail {
            inner: dynamodb_streams_leases::InMemoryLeaseStore::new(),
            deletes: 0.into(),
            fail_from: 1.into(),
        });
        let store: Arc<dyn LeaseStore> = failing.clone();
        for root in &roots {
            let key = LeaseKey::new(old.clone(), root.shard_id.clone());
            let lease = Lease::new(key, Checkpoint::ShardEnd, vec![]);
            store.create_lease(&lease).await.unwrap();
        }
        let trim = InitialPosition::TrimHorizon;
        let leases = store.list_leases().await.unwrap();
        let current = [new.clone()];
        let first = retire_replaced_streams(&sim, &store, &leases, &current, trim).await;
        assert!(first.is_err(), "the second delete fails");
        let shard_leases = |leases: &[Lease]| {
            leases
                .iter()
                .filter(|l| l.key.stream == old && !l.key.is_coordination())
                .count()
        };
        let leases = store.list_leases().await.unwrap();
        assert_eq!(shard_leases(&leases), 2, "one lease deleted");

        failing
            .fail_from
            .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
        let retired = retire_replaced_streams(&sim, &store, &leases, &current, trim)
            .await
            .unwrap();
        assert_eq!(retired, 1, "the second pass finishes the retirement");
        let left = store.list_leases().await.unwrap();
        assert_eq!(shard_leases(&left), 0, "no lease recreated: {left:?}");
    }
}
