//! Snapshot, then stream, against DynamoDB Local: a table filled while its stream was off
//! is delivered whole (as `Snapshot` changes) and then followed by its stream while a
//! writer keeps changing and deleting items; applying the delivered changes in order gives
//! the final table. A worker killed mid-snapshot is taken over without losing a segment.
//! Both also run with key parallelism and batch shaping (batches gathered across Scan
//! pages), which apply to snapshot records as to stream records.
//! `--nocapture` prints the snapshot's throughput with two workers (items/s; set
//! `SNAPSHOT_ITEMS` for a bigger table).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, StreamViewType, WriteRequest};
use aws_sdk_dynamodbstreams::types::AttributeValue as StreamValue;
use dynamodb_streams_consumer::testkit::Recording;
use dynamodb_streams_consumer::{ChangeKind, ConsumerBuilder, SnapshotConfig};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, enable_stream, quick_consumer, sdk_config, spawn_consumer,
    unique_name, wait_for,
};
use dynamodb_streams_leases::{DynamoDbLeaseStore, LeaseStore};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Item {
    name: String,
    count: i64,
}

/// Fills `table` (keyed by `name`) with `item-0..n`, 25 items per BatchWriteItem.
async fn fill(table: &str, n: usize) {
    let client = dynamodb_client().await;
    let names: Vec<usize> = (0..n).collect();
    for chunk in names.chunks(25) {
        let mut requests: Vec<WriteRequest> = chunk
            .iter()
            .map(|i| {
                let put = PutRequest::builder()
                    .item("name", AttributeValue::S(format!("item-{i}")))
                    .item("count", AttributeValue::N(i.to_string()))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        while !requests.is_empty() {
            let out = client
                .batch_write_item()
                .request_items(table, requests)
                .send()
                .await
                .unwrap();
            requests = out
                .unprocessed_items
                .and_then(|mut m| m.remove(table))
                .unwrap_or_default();
        }
    }
}

/// The table as it is now: name -> count.
async fn table_state(table: &str) -> BTreeMap<String, i64> {
    let client = dynamodb_client().await;
    let items = dynamodb_streams_leases::aws::scan_all(
        client.scan().table_name(table).consistent_read(true),
    )
    .await
    .unwrap();
    items
        .iter()
        .map(|item| {
            let name = item["name"].as_s().unwrap().clone();
            let count = item["count"].as_n().unwrap().parse().unwrap();
            (name, count)
        })
        .collect()
}

/// Applies every delivered change in delivery order, as a sink would: a new image replaces
/// the item, a remove deletes it.
fn applied(recording: &Recording<Item>) -> BTreeMap<String, i64> {
    let mut state = BTreeMap::new();
    for delivered in recording.delivered() {
        let change = &delivered.change;
        let Some(StreamValue::S(name)) = change.keys().get("name") else {
            panic!("a change without its key: {change:?}");
        };
        match (&change.kind, &change.new) {
            (ChangeKind::Remove, _) => {
                state.remove(name);
            }
            (_, Some(new)) => {
                state.insert(name.clone(), new.count);
            }
            (kind, None) => panic!("a {kind:?} change without a new image"),
        }
    }
    state
}

/// How pipeline `name`'s applied changes differ from the table (`None`: they do not): how
/// many items each has and the first few that differ.
fn differs(
    name: &str,
    recording: &Recording<Item>,
    table: &BTreeMap<String, i64>,
) -> Option<String> {
    let sink = applied(recording);
    if sink == *table {
        return None;
    }
    let first: Vec<String> = table
        .keys()
        .chain(sink.keys())
        .filter(|k| sink.get(*k) != table.get(*k))
        .take(5)
        .map(|k| format!("{k}: sink {:?}, table {:?}", sink.get(k), table.get(k)))
        .collect();
    Some(format!(
        "{name}: {} changes delivered, {} items applied, the table {}; first differences {first:?}",
        recording.len(),
        sink.len(),
        table.len()
    ))
}

fn builder(app: &str, table: &str, worker: &str, config: &SdkConfig) -> ConsumerBuilder {
    quick_consumer(app, table, config)
        .with_worker_id(worker)
        .with_failover_time(Duration::from_secs(3))
        // DynamoDB Local rounds creation times down to the minute.
        .with_creation_time_margin(Duration::from_secs(90))
        .with_snapshot(
            SnapshotConfig::new()
                .with_segments(4)
                .with_page_size(100)
                .with_progress_interval(Duration::from_secs(2)),
        )
}

fn snapshot_names(recording: &Recording<Item>) -> std::collections::BTreeSet<String> {
    recording
        .delivered()
        .iter()
        .filter(|d| d.change.kind == ChangeKind::Snapshot)
        .map(|d| d.change.new.as_ref().unwrap().name.clone())
        .collect()
}

/// Every segment lease of the application's lease table is finished (or gone).
async fn segments_done(app: &str) -> bool {
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, app).unwrap();
    let leases = store.list_leases().await.unwrap();
    let progress = dynamodb_streams_consumer::snapshot::progress(&leases);
    !progress.is_empty() && progress.iter().all(|p| p.is_done())
}

/// Key parallelism and batch shaping: batches of up to 150 gathered across pages of 100.
fn shaped(builder: ConsumerBuilder) -> ConsumerBuilder {
    builder
        .with_key_parallelism(3)
        .with_max_batch_size(150)
        .with_batching_window(Duration::from_millis(200))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_then_stream_converges_while_a_writer_changes_and_deletes() {
    converges_while_a_writer_changes_and_deletes(|builder| builder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_key_parallelism_and_batch_shaping_snapshot_then_stream_converges() {
    converges_while_a_writer_changes_and_deletes(shaped).await;
}

async fn converges_while_a_writer_changes_and_deletes(
    shape: impl Fn(ConsumerBuilder) -> ConsumerBuilder,
) {
    let (table, app) = (unique_name("snap"), unique_name("snap-app"));
    create_table(&table, "name", false).await;
    let initial = 1500;
    fill(&table, initial).await;
    enable_stream(&table, StreamViewType::NewAndOldImages).await;
    let config = sdk_config().await;

    let recording: Recording<Item> = Recording::new();
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|w| {
            spawn_consumer(
                shape(builder(&app, &table, w, &config))
                    .build(recording.factory())
                    .unwrap(),
            )
        })
        .collect();

    // A writer changes, deletes and adds items while the snapshot runs and after it.
    let writer_table = table.clone();
    let writer = tokio::spawn(async move {
        let client = dynamodb_client().await;
        for round in 0..600usize {
            let i = (round * 7919) % (initial + 100);
            let name = AttributeValue::S(format!("item-{i}"));
            if round % 5 == 0 {
                client
                    .delete_item()
                    .table_name(&writer_table)
                    .key("name", name)
                    .send()
                    .await
                    .unwrap();
            } else {
                client
                    .put_item()
                    .table_name(&writer_table)
                    .item("name", name)
                    .item("count", AttributeValue::N((100_000 + round).to_string()))
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    writer.await.unwrap();
    let expected = table_state(&table).await;

    wait_for(
        "the applied changes to equal the table",
        Duration::from_secs(120),
        async || applied(&recording) == expected,
    )
    .await;

    // Every snapshot record came before every stream record (the stream waits for every
    // segment), and the snapshot covered the table as filled (items the writer deleted
    // before their segment reached them aside).
    assert!(recording.snapshot_before_stream());
    assert!(snapshot_names(&recording).len() >= initial - 600 / 5);
    assert!(segments_done(&app).await);

    for (stop, handle) in workers {
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_snapshot_is_taken_over_without_losing_a_segment() {
    taken_over_without_losing_a_segment(|builder| builder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_key_parallelism_and_batch_shaping_a_killed_worker_loses_no_segment() {
    taken_over_without_losing_a_segment(shaped).await;
}

async fn taken_over_without_losing_a_segment(shape: impl Fn(ConsumerBuilder) -> ConsumerBuilder) {
    let (table, app) = (unique_name("snap-kill"), unique_name("snap-kill-app"));
    create_table(&table, "name", false).await;
    let n = 2000;
    fill(&table, n).await;
    enable_stream(&table, StreamViewType::NewImage).await;
    let config = sdk_config().await;

    // The first worker is slow (50 ms a page of 100), so it is killed mid-snapshot.
    let slow: Recording<Item> = Recording::new().with_hook(|_, _, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(())
        })
    });
    let (_stop, first) = spawn_consumer(
        shape(builder(&app, &table, "doomed", &config))
            .build(slow.factory())
            .unwrap(),
    );
    wait_for(
        "the first worker to deliver part of the snapshot",
        Duration::from_secs(60),
        async || slow.len() >= 300,
    )
    .await;
    first.abort();
    let delivered_before = snapshot_names(&slow).len();
    assert!(
        delivered_before < n,
        "the snapshot finished before the kill"
    );

    let recording: Recording<Item> = Recording::new();
    let (stop, second) = spawn_consumer(
        shape(builder(&app, &table, "survivor", &config))
            .build(recording.factory())
            .unwrap(),
    );
    wait_for(
        "every segment to finish",
        Duration::from_secs(90),
        async || segments_done(&app).await,
    )
    .await;
    let mut all = snapshot_names(&slow);
    all.extend(snapshot_names(&recording));
    let missing: Vec<usize> = (0..n)
        .filter(|i| !all.contains(&format!("item-{i}")))
        .collect();
    assert!(missing.is_empty(), "items never delivered: {missing:?}");
    // The survivor resumed from the segments' checkpoints, not from scratch.
    assert!(
        snapshot_names(&recording).len() < n,
        "the survivor re-read the whole table"
    );
    stop.send(()).unwrap();
    second.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_without_new_images_is_refused_naming_table_and_stream() {
    let (table, app) = (unique_name("snap-keys"), unique_name("snap-keys-app"));
    create_table(&table, "name", false).await;
    enable_stream(&table, StreamViewType::KeysOnly).await;
    let config = sdk_config().await;
    let consumer = builder(&app, &table, "w", &config)
        .build(Recording::<Item>::new().factory())
        .unwrap();
    let error = consumer.run_until(async {}).await.unwrap_err().to_string();
    assert!(
        error.contains(&table) && error.contains("KEYS_ONLY"),
        "{error}"
    );
    assert!(error.contains("stream"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snapshot_throughput_with_two_workers() {
    let n: usize = std::env::var("SNAPSHOT_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let (table, app) = (unique_name("snap-speed"), unique_name("snap-speed-app"));
    create_table(&table, "name", false).await;
    fill(&table, n).await;
    enable_stream(&table, StreamViewType::NewAndOldImages).await;
    // The baseline: one plain consistent Scan of the whole table, no framework.
    let plain = Instant::now();
    let scanned = table_state(&table).await.len();
    let plain = plain.elapsed();
    assert_eq!(scanned, n);
    let config = sdk_config().await;
    let recording: Recording<Item> = Recording::new();
    let started = Instant::now();
    let workers: Vec<_> = ["a", "b"]
        .iter()
        .map(|w| {
            spawn_consumer(
                builder(&app, &table, w, &config)
                    .with_snapshot(SnapshotConfig::new().with_segments(8).with_page_size(1000))
                    .build(recording.factory())
                    .unwrap(),
            )
        })
        .collect();
    wait_for("every item", Duration::from_secs(600), async || {
        snapshot_names(&recording).len() == n
    })
    .await;
    let took = started.elapsed();
    let mut per_worker: HashMap<String, usize> = HashMap::new();
    for d in recording.delivered() {
        *per_worker.entry(d.shard.worker_id.clone()).or_default() += 1;
    }
    println!(
        "snapshot of {n} items, 2 workers, 8 segments, pages of 1000: {:.1} s from start-up, {:.0} items/s (per worker: {per_worker:?}); one plain Scan of the table: {:.1} s, {:.0} items/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        plain.as_secs_f64(),
        n as f64 / plain.as_secs_f64()
    );
    for (stop, handle) in workers {
        stop.send(()).unwrap();
        handle.await.unwrap().unwrap();
    }
}

/// Named pipelines (`with_pipeline`) share one Scan of each segment: each pipeline, a slow
/// one included, gets the whole snapshot and then the stream, and converges to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_pipelines_each_pipeline_gets_the_snapshot_then_the_stream_and_converges() {
    let (table, app) = (unique_name("snap-pl"), unique_name("snap-pl-app"));
    create_table(&table, "name", false).await;
    let initial = 600;
    fill(&table, initial).await;
    enable_stream(&table, StreamViewType::NewAndOldImages).await;
    let config = sdk_config().await;

    let search: Recording<Item> = Recording::new();
    let cache: Recording<Item> = Recording::new().with_hook(|_, _, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(())
        })
    });
    let (stop, handle) = spawn_consumer(
        builder(&app, &table, "w1", &config)
            .with_pipeline("search", search.factory())
            .with_pipeline("cache", cache.factory())
            .build_pipelines()
            .unwrap(),
    );
    let client = dynamodb_client().await;
    for round in 0..200usize {
        let name = AttributeValue::S(format!("item-{}", (round * 7919) % (initial + 50)));
        if round % 5 == 0 {
            let delete = client.delete_item().table_name(&table).key("name", name);
            delete.send().await.unwrap();
        } else {
            let put = client
                .put_item()
                .table_name(&table)
                .item("name", name)
                .item("count", AttributeValue::N((100_000 + round).to_string()));
            put.send().await.unwrap();
        }
    }
    let expected = table_state(&table).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let differences: Vec<String> = [("search", &search), ("cache", &cache)]
            .into_iter()
            .filter_map(|(name, recording)| differs(name, recording, &expected))
            .collect();
        if differences.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let store = DynamoDbLeaseStore::from_sdk_config(&config, &app).unwrap();
            let leases: Vec<String> = store
                .list_leases()
                .await
                .unwrap()
                .iter()
                .map(|l| format!("{}: {} {:?}", l.key.shard_id, l.checkpoint, l.pipelines))
                .collect();
            panic!(
                "each pipeline's applied changes did not equal the table within 300 s: {differences:#?}; leases: {leases:#?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, recording) in [("search", &search), ("cache", &cache)] {
        assert!(recording.snapshot_before_stream(), "{name}");
        assert!(
            snapshot_names(recording).len() >= initial - 200 / 5,
            "{name}: {} snapshot items",
            snapshot_names(recording).len()
        );
    }
    assert!(segments_done(&app).await);
    stop.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
