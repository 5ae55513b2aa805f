//! Snapshot, then stream, with named pipelines (`with_pipeline`): one Scan of each segment
//! feeds every pipeline, each keeps its own scan position in the segment's lease, stream
//! records reach a pipeline only after every segment ended, and a pipeline that joins
//! after the snapshot began gets no snapshot.

use std::collections::BTreeMap;
use std::sync::Mutex;

use dynamodb_streams_leases::Lease;

use super::*;
use crate::InitialPosition;
use crate::streams::StreamsApi;

/// A recording whose batches each take `delay`.
fn slow(delay: Duration) -> Recording<Row> {
    Recording::new().with_hook(move |_, _, _| {
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            Ok(())
        })
    })
}

fn rows(n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("r{i:04}")).collect()
}

fn stream_changes(log: &Recording<Row>) -> usize {
    log.delivered()
        .iter()
        .filter(|d| d.change.kind != ChangeKind::Snapshot)
        .count()
}

fn put_changes(sim: &SimulatedStream, n: i64) {
    for i in 0..n {
        let row = Row {
            pk: format!("new{i}"),
            v: 1_000 + i,
        };
        sim.put_value("orders", &row).unwrap();
    }
}

async fn segments(store: &InMemoryLeaseStore) -> Vec<Lease> {
    store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| is_segment(&l.key))
        .collect()
}

/// The Scan pages a single consumer reads for the snapshot of `rows` rows.
async fn pages_of_one_consumer(rows: usize) -> u64 {
    let (sim, store, table) = orders(30, rows);
    let log: Recording<Row> = Recording::new();
    let (stop, handle) = spawn(consumer(&sim, &store, &table, "w", log.factory()));
    until_segments_done(&store).await;
    stopped(stop, handle).await;
    table.pages.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn every_pipeline_gets_the_snapshot_from_one_scan_then_the_stream() {
    let single = pages_of_one_consumer(120).await;
    let (sim, store, table) = orders(31, 120);
    let fast: Recording<Row> = Recording::new();
    let late = slow(Duration::from_millis(300));
    let consumer = builder(&sim, &store, &table, "w")
        .with_pipeline("fast", fast.factory())
        .with_pipeline("slow", late.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(consumer);
    until("part of the snapshot", || fast.len() >= 20).await;
    put_changes(&sim, 5);
    until(
        "every row and the stream's changes, in each pipeline",
        || {
            [&fast, &late]
                .iter()
                .all(|log| snapshot_keys(log).len() >= 120 && stream_changes(log) >= 5)
        },
    )
    .await;
    stopped(stop, handle).await;

    for (name, log) in [("fast", &fast), ("slow", &late)] {
        let keys = snapshot_keys(log);
        assert_eq!(keys.len(), 120, "{name}: delivered twice or not at all");
        assert_eq!(
            keys.into_iter().collect::<BTreeSet<_>>(),
            rows(120),
            "{name}"
        );
        assert!(
            log.snapshot_before_stream(),
            "{name}: a stream record came first"
        );
    }
    assert_eq!(
        table.pages.load(Ordering::Relaxed),
        single,
        "the pipelines read the table more often than one consumer"
    );
    for segment in segments(&store).await {
        assert!(segment.checkpoint.is_shard_end(), "{segment:?}");
        for name in ["fast", "slow"] {
            assert_eq!(
                segment.pipelines.get(name),
                Some(&Checkpoint::ShardEnd),
                "{segment:?}"
            );
        }
    }
    let leases = store.list_leases().await.unwrap();
    let plan = leases
        .iter()
        .find(|l| l.key.is_coordination() && l.key.shard_id.starts_with("snapshot|"))
        .unwrap();
    assert_eq!(
        plan.pipelines.keys().collect::<Vec<_>>(),
        ["fast", "slow"],
        "the plan names the snapshot's pipelines"
    );
}

/// Each pipeline's scan position, per segment, as the lease table has it.
fn scan_positions(leases: &[Lease], pipeline: &str) -> BTreeMap<String, u64> {
    leases
        .iter()
        .filter(|l| is_segment(&l.key))
        .filter_map(|l| {
            let items = match l.pipelines.get(pipeline)? {
                Checkpoint::ShardEnd => u64::MAX,
                other => scanned_items(other)?,
            };
            Some((l.key.shard_id.clone(), items))
        })
        .collect()
}

/// Each (pipeline, segment)'s stored positions, in the order they were seen.
type Histories = BTreeMap<(String, String), Vec<u64>>;

#[tokio::test(start_paused = true)]
async fn each_pipeline_resumes_the_snapshot_from_its_own_position_after_a_crash() {
    let (sim, store, table) = orders(32, 400);
    // Every position each pipeline ever stored, in order: none may move back.
    let seen: Arc<Mutex<Histories>> = Arc::default();
    let watcher = {
        let (store, seen) = (store.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let leases = store.list_leases().await.unwrap();
                for pipeline in ["fast", "slow"] {
                    for (segment, items) in scan_positions(&leases, pipeline) {
                        let mut seen = seen.lock().unwrap();
                        let history = seen.entry((pipeline.into(), segment)).or_default();
                        if history.last() != Some(&items) {
                            history.push(items);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let fast: Recording<Row> = Recording::new();
    let late = slow(Duration::from_millis(200));
    let doomed = builder(&sim, &store, &table, "doomed")
        .with_pipeline("fast", fast.factory())
        .with_pipeline("slow", late.factory())
        .build_pipelines()
        .unwrap();
    let (_stop, doomed) = spawn(doomed);
    until("the slow pipeline's first pages", || late.len() >= 40).await;
    doomed.abort();
    let leases = store.list_leases().await.unwrap();
    let (ahead, behind) = (
        scan_positions(&leases, "fast"),
        scan_positions(&leases, "slow"),
    );
    assert!(
        ahead
            .iter()
            .any(|(segment, items)| behind.get(segment).is_none_or(|slow| items > slow)),
        "no pipeline got ahead: fast {ahead:?}, slow {behind:?}"
    );
    let done_before =
        |log: &Recording<Row>| snapshot_keys(log).into_iter().collect::<BTreeSet<_>>();
    let (fast_before, slow_before) = (done_before(&fast), done_before(&late));
    put_changes(&sim, 5);

    let fast_after: Recording<Row> = Recording::new();
    let slow_after: Recording<Row> = Recording::new();
    let survivor = builder(&sim, &store, &table, "survivor")
        .with_pipeline("fast", fast_after.factory())
        .with_pipeline("slow", slow_after.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(survivor);
    until(
        "every row and the stream's changes, in each pipeline",
        || {
            [(&fast_before, &fast_after), (&slow_before, &slow_after)]
                .iter()
                .all(|(before, after)| {
                    let mut all = (*before).clone();
                    all.extend(snapshot_keys(after));
                    all.len() == 400 && stream_changes(after) >= 5
                })
        },
    )
    .await;
    stopped(stop, handle).await;
    watcher.abort();

    for (name, after) in [("fast", &fast_after), ("slow", &slow_after)] {
        assert!(after.snapshot_before_stream(), "{name}");
        assert!(
            snapshot_keys(after).len() < 400,
            "{name} scanned from scratch after the crash"
        );
    }
    // The Scan read each page about once: a resumed segment reads again at most the pages
    // between the slow pipeline's position and the fast one's (the run-ahead bound).
    let pages = table.pages.load(Ordering::Relaxed);
    assert!(pages < 2 * (400 / 10 + 4), "{pages} pages read");
    for ((pipeline, segment), history) in seen.lock().unwrap().iter() {
        assert!(
            history.is_sorted(),
            "{pipeline}'s position in {segment} moved back: {history:?}"
        );
    }
}

/// A lease store whose pipeline checkpoint writes take a while (a real DynamoDB's round
/// trip), so that two pipelines' writes are in flight at once.
#[derive(Debug)]
struct SlowPipelineWrites(Arc<InMemoryLeaseStore>);

#[async_trait]
impl dynamodb_streams_leases::StoreWrapper for SlowPipelineWrites {
    type Inner = InMemoryLeaseStore;

    fn wrapped(&self) -> &InMemoryLeaseStore {
        &self.0
    }

    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        ownership: &dynamodb_streams_leases::Ownership,
        update: &dynamodb_streams_leases::PipelineCheckpoints,
    ) -> dynamodb_streams_leases::Result<Lease> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.0.checkpoint_pipelines(key, ownership, update).await
    }
}

/// Two pipelines as fast as each other end each segment at the same moment: their last
/// writes are in flight together, each computing the read position from the other's
/// previous checkpoint. The DynamoDB Local test did not converge in CI for it: every
/// pipeline at `SHARD_END`, the segment's read position left at its first page, the gate
/// never finished, no stream record ever delivered. Fixed in `shard/pipelines.rs`
/// (`Positions::turn`: a lease's pipeline writes take turns).
#[tokio::test(start_paused = true)]
async fn pipelines_ending_a_segment_at_once_end_it_for_the_lease_table() {
    let (sim, store, table) = orders(36, 40);
    let one: Recording<Row> = Recording::new();
    let two: Recording<Row> = Recording::new();
    let worker = builder(&sim, &store, &table, "w")
        .with_lease_store(Arc::new(SlowPipelineWrites(store.clone())))
        .with_pipeline("one", one.factory())
        .with_pipeline("two", two.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(worker);
    until("the snapshot in each pipeline", || {
        snapshot_keys(&one).len() >= 40 && snapshot_keys(&two).len() >= 40
    })
    .await;
    put_changes(&sim, 5);
    tokio::time::timeout(Duration::from_secs(120), until_segments_done(&store))
        .await
        .unwrap_or_else(|_| {
            let leases = futures::executor::block_on(segments(&store));
            panic!("the segments never ended for the lease table: {leases:#?}")
        });
    until("the stream's changes in each pipeline", || {
        stream_changes(&one) >= 5 && stream_changes(&two) >= 5
    })
    .await;
    stopped(stop, handle).await;
    for segment in segments(&store).await {
        assert!(segment.checkpoint.is_shard_end(), "{segment:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_that_joins_after_the_snapshot_began_gets_no_snapshot() {
    let (sim, store, table) = orders(33, 80);
    let first = slow(Duration::from_millis(200));
    let before = builder(&sim, &store, &table, "w1")
        .with_pipeline("search", first.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(before);
    until("part of the snapshot", || first.len() >= 20).await;
    stopped(stop, handle).await;
    put_changes(&sim, 5);

    let search: Recording<Row> = Recording::new();
    let audit: Recording<Row> = Recording::new();
    let after = builder(&sim, &store, &table, "w2")
        .with_pipeline("search", search.factory())
        .with_pipeline("audit", audit.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(after);
    until("the snapshot and the stream", || {
        let mut all: BTreeSet<String> = snapshot_keys(&first).into_iter().collect();
        all.extend(snapshot_keys(&search));
        all.len() == 80 && stream_changes(&search) >= 5 && stream_changes(&audit) >= 5
    })
    .await;
    stopped(stop, handle).await;

    assert_eq!(
        snapshot_keys(&audit),
        Vec::<String>::new(),
        "a part of the snapshot reached the pipeline that joined late"
    );
    assert!(search.snapshot_before_stream());
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_the_plan_does_not_name_gets_no_snapshot_on_segments_nobody_started() {
    let (sim, store, table) = orders(35, 40);
    let arn = sim.latest_stream_arn("orders").await.unwrap();
    let shared: Arc<dyn LeaseStore> = store.clone();
    // A worker of the deployment before planned the snapshot for "search" alone (and
    // stopped before any segment started).
    let config = SnapshotConfig::new().with_segments(4);
    prepare(
        &sim,
        &shared,
        &config,
        &arn,
        Some("orders"),
        &["search".to_owned()],
    )
    .await
    .unwrap();
    put_changes(&sim, 5);

    let search: Recording<Row> = Recording::new();
    let audit: Recording<Row> = Recording::new();
    let worker = builder(&sim, &store, &table, "w")
        .with_pipeline("search", search.factory())
        .with_pipeline("audit", audit.factory())
        .build_pipelines()
        .unwrap();
    let (stop, handle) = spawn(worker);
    until("the snapshot and the stream", || {
        snapshot_keys(&search).len() >= 40
            && stream_changes(&search) >= 5
            && stream_changes(&audit) >= 5
    })
    .await;
    stopped(stop, handle).await;
    assert_eq!(
        snapshot_keys(&audit),
        Vec::<String>::new(),
        "segments reached a pipeline the snapshot's plan does not name"
    );
    assert!(search.snapshot_before_stream());
}

#[test]
fn a_pipeline_setting_that_cannot_apply_to_a_snapshot_is_refused_naming_the_pipeline() {
    let (sim, store, table) = orders(34, 0);
    let log: Recording<Row> = Recording::new();
    let error = builder(&sim, &store, &table, "w")
        .with_pipeline("search", log.factory())
        .with_pipeline("cache", log.factory())
        .with_pipeline_settings("cache", |b| {
            b.with_initial_position(InitialPosition::Latest)
        })
        .build_pipelines()
        .err()
        .expect("accepted a LATEST pipeline with a snapshot");
    let text = error.to_string();
    assert!(
        text.contains("cache") && text.contains("with_snapshot"),
        "{text}"
    );
}
