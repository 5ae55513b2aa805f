//! `jsonl-worker --snapshot` against DynamoDB Local: the lines' shape, every item printed
//! although the first worker is SIGKILLed mid-snapshot, and each worker's snapshot lines
//! before the stream's changes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use dynamodb_streams_integration_tests::workers::{Change, Worker, WorkerConfig, wait_until};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, enable_stream, unique_name,
};

/// The worker binary, built by Cargo for these tests.
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
/// How long any one phase of the test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(90);

fn start(app: &str, table: &str, id: &str, flags: &[&str]) -> Worker {
    let config = WorkerConfig {
        bin: WORKER_BIN.into(),
        app: app.to_owned(),
        tables: vec![table.to_owned()],
        failover_time: Some("3s".to_owned()),
    };
    let snapshot = [
        "--snapshot",
        "--snapshot-segments",
        "4",
        "--snapshot-page-size",
        "50",
    ];
    let flags: Vec<&str> = snapshot.iter().chain(flags).copied().collect();
    Worker::start_with(id, &config, &flags)
}

async fn put(table: &str, id: &str, n: u64) {
    dynamodb_client()
        .await
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.to_owned()))
        .item("n", AttributeValue::N(n.to_string()))
        .send()
        .await
        .unwrap();
}

fn snapshot_ids(changes: &[Change]) -> BTreeSet<String> {
    changes
        .iter()
        .filter(|c| c.event == "SNAPSHOT")
        .map(|c| c.keys["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_lines_then_stream_lines_and_a_sigkilled_worker_loses_no_segment() {
    let (table, app) = (unique_name("jsonl-snap"), unique_name("jsonl-snap-app"));
    create_table(&table, "id", false).await;
    let items = 600u64;
    for i in 0..items {
        put(&table, &format!("i{i}"), i).await;
    }
    enable_stream(&table, StreamViewType::NewAndOldImages).await;

    // Slow enough (pages of 50, 300 ms each) to be killed in the middle.
    let mut doomed = start(&app, &table, "doomed", &["--process-delay", "300ms"]);
    wait_until(
        "the first worker to print part of the snapshot",
        DEADLINE,
        || doomed.line_count() >= 100,
    )
    .await;
    doomed.kill().await;
    let before = doomed.changes();
    assert!(
        snapshot_ids(&before).len() < items as usize,
        "finished before the kill"
    );

    let survivor = start(&app, &table, "survivor", &[]);
    // Changes after the snapshot began: printed after the item's snapshot line.
    for i in 0..20 {
        put(&table, &format!("i{i}"), 10_000 + i).await;
    }
    wait_until("every item and the stream's changes", DEADLINE, || {
        let after = survivor.changes();
        let mut all = snapshot_ids(&before);
        all.extend(snapshot_ids(&after));
        all.len() == items as usize
            && after
                .iter()
                .filter(|c| c.event != "SNAPSHOT" && c.new["n"].as_u64() >= Some(10_000))
                .count()
                >= 20
    })
    .await;
    let after = survivor.changes();
    for line in before
        .iter()
        .chain(&after)
        .filter(|c| c.event == "SNAPSHOT")
    {
        assert_eq!(line.seq, "", "{line:?}");
        assert!(line.old.is_null(), "{line:?}");
        assert_eq!(line.new["id"], line.keys["id"], "{line:?}");
        assert!(line.shard.starts_with("snapshot-"), "{line:?}");
    }
    let first_stream = after.iter().position(|c| c.event != "SNAPSHOT").unwrap();
    assert!(
        after[first_stream..].iter().all(|c| c.event != "SNAPSHOT"),
        "a snapshot line after a stream line"
    );
    survivor.terminate();
}
