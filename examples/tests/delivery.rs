//! The delivery flags of real `jsonl-worker` processes against DynamoDB Local: a poison
//! change isolated with `--bisect --max-retries` into the `--on-failure` file, a partial
//! batch failure, `--events`, `--max-record-age`, `--batch-timeout`, `--shutdown-timeout`
//! with a processor that never returns, and `--key-parallelism` keeping per-item order.
//!
//! Every test uses its own table and application.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{
    Change, Worker, WorkerConfig, shard_owners, wait_until,
};
use dynamodb_streams_integration_tests::{create_table, dynamodb_client, unique_name};
use serde_json::Value;
use tokio::time::Instant;

/// The worker binary, built by Cargo for these tests.
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
/// How long any one phase of a test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// A table with a stream, an application name and an on-failure file, unique to a test.
struct Setup {
    table: String,
    app: String,
    failures: PathBuf,
}

impl Setup {
    async fn new(prefix: &str) -> Self {
        let table = unique_name(prefix);
        create_table(&table, "id", true).await;
        let failures = std::env::temp_dir()
            .join("multi-process-tests")
            .join(format!("{}.failures.jsonl", unique_name(prefix)));
        std::fs::create_dir_all(failures.parent().unwrap()).unwrap();
        Setup {
            table,
            app: unique_name(&format!("{prefix}-app")),
            failures,
        }
    }

    /// Puts items `{id: i{n % items}, n}` for each `n`, plus `bad: "yes"` when `n == poison`.
    async fn put(&self, ns: std::ops::Range<u64>, items: u64, poison: Option<u64>) {
        let client = dynamodb_client().await;
        for n in ns {
            let mut item = HashMap::from([
                (
                    "id".to_owned(),
                    AttributeValue::S(format!("i{}", n % items)),
                ),
                ("n".to_owned(), AttributeValue::N(n.to_string())),
            ]);
            if Some(n) == poison {
                item.insert("bad".to_owned(), AttributeValue::S("yes".into()));
            }
            client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .unwrap();
        }
    }

    /// Starts a worker with the test's table and app and `flags`.
    fn start(&self, id: &str, flags: &[&str]) -> Worker {
        let config = WorkerConfig {
            bin: WORKER_BIN.into(),
            app: self.app.clone(),
            tables: vec![self.table.clone()],
            failover_time: Some("3s".to_owned()),
        };
        Worker::start_with(id, &config, flags)
    }

    fn failures_flag(&self) -> String {
        self.failures.display().to_string()
    }

    /// The lines of the on-failure file so far.
    fn failures(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.failures)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

fn n_of(change: &Change) -> u64 {
    change.new["n"].as_u64().expect("n is a number")
}

/// Every printed `n`, checked to be printed once and in order per item.
fn printed_once_in_order(changes: &[Change]) -> Vec<u64> {
    let mut per_item: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for change in changes {
        per_item
            .entry(change.keys["id"].to_string())
            .or_default()
            .push(n_of(change));
    }
    for (item, ns) in &per_item {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "item {item}: {ns:?} not once and in order"
        );
    }
    let mut all: Vec<u64> = changes.iter().map(n_of).collect();
    all.sort_unstable();
    all
}

async fn stop(mut worker: Worker) {
    worker.terminate();
    let status = worker.wait_exit(DEADLINE).await;
    assert!(
        status.success(),
        "{}: {status}\n{}",
        worker.id(),
        worker.stderr()
    );
}

#[tokio::test]
async fn a_poison_change_is_isolated_by_bisect_and_max_retries_into_the_on_failure_file() {
    let setup = Setup::new("dl-poison").await;
    setup.put(0..300, 30, Some(137)).await;
    let failures = setup.failures_flag();
    let worker = setup.start(
        "w1",
        &[
            "--fail-when",
            "bad=yes",
            "--whole-batch-failures",
            "--bisect",
            "--max-retries",
            "1",
            "--on-failure",
            &failures,
        ],
    );
    wait_until("299 changes printed and one failure", DEADLINE, || {
        worker.line_count() >= 299 && !setup.failures().is_empty()
    })
    .await;
    // Nothing more arrives: give a straggler a moment to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<u64> = (0..300).filter(|n| *n != 137).collect();
    assert_eq!(printed_once_in_order(&worker.changes()), expected);
    let failed = setup.failures();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["reason"], "retries-exhausted");
    // The 137th write is the fifth of item i17: a MODIFY.
    assert_eq!(failed[0]["event"], "MODIFY");
    assert_eq!(failed[0]["table"], setup.table.as_str());
    assert_eq!(failed[0]["keys"]["id"], "i17");
    assert!(failed[0]["seq"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(failed[0]["shard"].as_str().is_some_and(|s| !s.is_empty()));
    stop(worker).await;
}

#[tokio::test]
async fn a_partial_batch_failure_prints_the_changes_before_it_and_only_it_goes_to_the_file() {
    let setup = Setup::new("dl-partial").await;
    setup.put(0..100, 10, Some(42)).await;
    let failures = setup.failures_flag();
    let worker = setup.start(
        "w1",
        &[
            "--fail-when",
            "bad=yes",
            "--max-retries",
            "2",
            "--on-failure",
            &failures,
        ],
    );
    wait_until("99 changes printed and one failure", DEADLINE, || {
        worker.line_count() >= 99 && !setup.failures().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: Vec<u64> = (0..100).filter(|n| *n != 42).collect();
    assert_eq!(printed_once_in_order(&worker.changes()), expected);
    let failed = setup.failures();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["keys"]["id"], "i2");
    stop(worker).await;
}

#[tokio::test]
async fn events_filter_prints_only_the_kinds_asked_for_and_checkpoints_past_the_others() {
    let setup = Setup::new("dl-events").await;
    // 20 inserts, then 20 modifies of the same items.
    setup.put(0..40, 20, None).await;
    let worker = setup.start("w1", &["--events", "MODIFY"]);
    wait_until("20 modifies printed", DEADLINE, || {
        worker.line_count() >= 20
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let changes = worker.changes();
    assert!(changes.iter().all(|c| c.event == "MODIFY"), "{changes:?}");
    assert_eq!(
        printed_once_in_order(&changes),
        (20..40).collect::<Vec<_>>()
    );
    stop(worker).await;
    // A second worker resumes after the checkpoint: nothing is printed again.
    let again = setup.start("w2", &["--events", "INSERT,MODIFY"]);
    setup.put(40..41, 20, None).await;
    wait_until("the new change printed", DEADLINE, || {
        again.line_count() >= 1
    })
    .await;
    let changes = again.changes();
    assert_eq!(changes.iter().map(n_of).collect::<Vec<_>>(), vec![40]);
    stop(again).await;
}

#[tokio::test]
async fn changes_older_than_max_record_age_go_to_the_file_not_the_processor() {
    let setup = Setup::new("dl-age").await;
    setup.put(0..10, 10, None).await;
    // ApproximateCreationDateTime has second precision: wait well past the age.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failures = setup.failures_flag();
    let worker = setup.start("w1", &["--max-record-age", "1s", "--on-failure", &failures]);
    wait_until("10 failures", DEADLINE, || setup.failures().len() >= 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failed = setup.failures();
    assert_eq!(failed.len(), 10, "{failed:?}");
    assert!(
        failed.iter().all(|f| f["reason"] == "too-old"),
        "{failed:?}"
    );
    // DynamoDB Local's creation times are coarse (a fresh record may already look older
    // than 1 s), so only the old records are checked here; the simulation checks routing.
    assert_eq!(worker.line_count(), 0);
    stop(worker).await;
}

#[tokio::test]
async fn a_batch_that_runs_past_the_batch_timeout_goes_to_the_file_as_timed_out() {
    let setup = Setup::new("dl-timeout").await;
    setup.put(0..5, 5, None).await;
    let failures = setup.failures_flag();
    let worker = setup.start(
        "w1",
        &[
            "--process-delay",
            "1h",
            "--batch-timeout",
            "1s",
            "--max-retries",
            "0",
            "--on-failure",
            &failures,
        ],
    );
    wait_until("5 failures", DEADLINE, || setup.failures().len() >= 5).await;
    assert!(setup.failures().iter().all(|f| f["reason"] == "timed-out"));
    assert_eq!(worker.line_count(), 0);
    stop(worker).await;
}

#[tokio::test]
async fn sigterm_with_a_processor_that_never_returns_exits_after_the_shutdown_timeout() {
    let setup = Setup::new("dl-shutdown").await;
    setup.put(0..5, 5, None).await;
    let mut worker = setup.start("w1", &["--process-delay", "1h", "--shutdown-timeout", "2s"]);
    // Wait until the worker owns the shard (so a batch is surely in `process`).
    let app = setup.app.clone();
    let started = Instant::now();
    loop {
        let owners = shard_owners(&app).await;
        if owners
            .iter()
            .any(|(_, owner)| owner.as_deref() == Some("w1"))
        {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "w1 never took the shard");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.terminate();
    let asked = Instant::now();
    let status = worker.wait_exit(DEADLINE).await;
    let took = asked.elapsed();
    assert!(status.success(), "{status}\n{}", worker.stderr());
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    let owners = shard_owners(&app).await;
    assert!(
        owners.iter().all(|(_, o)| o.is_none()),
        "released: {owners:?}"
    );
    assert_eq!(worker.line_count(), 0);
}

#[tokio::test]
async fn key_parallelism_keeps_the_changes_of_each_item_in_order() {
    let setup = Setup::new("dl-keys").await;
    setup.put(0..200, 20, None).await;
    let worker = setup.start(
        "w1",
        &[
            "--key-parallelism",
            "4",
            "--batch-size",
            "10",
            "--process-delay",
            "50ms",
        ],
    );
    wait_until("200 changes printed", DEADLINE, || {
        worker.line_count() >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        printed_once_in_order(&worker.changes()),
        (0..200).collect::<Vec<_>>()
    );
    stop(worker).await;
}
