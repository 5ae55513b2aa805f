//! Coming from Lambda, with real processes against DynamoDB Local: `jsonl-worker
//! --filter-pattern` (inline and `@FILE`, OR-ed; an invalid one refused at start-up naming
//! its path) and `--format lambda` (one line per batch, Lambda's DynamoDB event); and
//! `lambda-bridge` with shell-script handlers: one that succeeds, one that fails on a
//! poison record (isolated by `--bisect` into the `--on-failure` file), one that answers a
//! partial batch response, and `--keep-alive`. SIGTERM stops each bridge with exit 0.
//!
//! Every test uses its own table and application.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{Worker, WorkerConfig, run_to_exit, wait_until};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, stream_arn, unique_name,
};
use serde_json::Value;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
const BRIDGE_BIN: &str = env!("CARGO_BIN_EXE_lambda-bridge");
/// How long any one phase of a test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Puts `{id: i<n>, n, status}` for each `n`, in order.
async fn put(table: &str, items: impl IntoIterator<Item = (u64, &'static str)>) {
    let client = dynamodb_client().await;
    for (n, status) in items {
        client
            .put_item()
            .table_name(table)
            .set_item(Some(HashMap::from([
                ("id".to_owned(), AttributeValue::S(format!("i{n}"))),
                ("n".to_owned(), AttributeValue::N(n.to_string())),
                ("status".to_owned(), AttributeValue::S(status.to_owned())),
            ])))
            .send()
            .await
            .unwrap();
    }
}

/// The Lambda events a `--format lambda` worker printed (its lines are not change lines).
fn events(worker: &Worker) -> Vec<Value> {
    worker
        .unparsed()
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn records(worker: &Worker) -> Vec<Value> {
    events(worker)
        .iter()
        .flat_map(|event| event["Records"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn config(app: &str, table: &str) -> WorkerConfig {
    WorkerConfig {
        bin: WORKER_BIN.into(),
        app: app.to_owned(),
        tables: vec![table.to_owned()],
        failover_time: Some("3s".to_owned()),
    }
}

#[tokio::test]
async fn filter_patterns_and_the_lambda_format() {
    let table = unique_name("lambda-fmt");
    create_table(&table, "id", true).await;
    let app = unique_name("lambda-fmt-app");
    let statuses = ["new", "shipped", "draft", "shipping", "new", "lost"];
    put(&table, (0..6).zip(statuses)).await;
    // OR-ed: status starts with "ship" (from a file), or the key is i4.
    let file = std::env::temp_dir().join(format!("{}.pattern.json", unique_name("pattern")));
    std::fs::write(
        &file,
        r#"{"dynamodb": {"NewImage": {"status": {"S": [{"prefix": "ship"}]}}}}"#,
    )
    .unwrap();
    let from_file = format!("@{}", file.display());
    let worker = Worker::start_with(
        "w1",
        &config(&app, &table),
        &[
            "--format",
            "lambda",
            "--filter-pattern",
            &from_file,
            "--filter-pattern",
            r#"{"eventName": ["INSERT"], "dynamodb": {"Keys": {"id": {"S": ["i4"]}}}}"#,
        ],
    );
    wait_until("three records printed", DEADLINE, || {
        records(&worker).len() >= 3
    })
    .await;
    let records = records(&worker);
    let ns: Vec<&str> = records
        .iter()
        .map(|r| r["dynamodb"]["NewImage"]["n"]["N"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["1", "3", "4"], "{records:#?}");
    let arn = stream_arn(&table).await.expect("a stream");
    let first = &records[0];
    assert_eq!(first["eventName"], "INSERT");
    assert_eq!(first["eventSource"], "aws:dynamodb");
    assert_eq!(first["eventSourceARN"], arn.as_str());
    assert!(first["eventID"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(first["eventVersion"].is_string());
    assert!(first["awsRegion"].is_string());
    let dynamodb = &first["dynamodb"];
    assert_eq!(dynamodb["Keys"], serde_json::json!({"id": {"S": "i1"}}));
    assert_eq!(
        dynamodb["NewImage"]["status"],
        serde_json::json!({"S": "shipped"})
    );
    assert!(dynamodb["ApproximateCreationDateTime"].is_number());
    assert!(dynamodb["SequenceNumber"].is_string());
    assert!(dynamodb["SizeBytes"].is_number());
    assert!(dynamodb["StreamViewType"].is_string());
    assert!(
        worker.changes().is_empty(),
        "no change lines in the lambda format"
    );
    let mut worker = worker;
    worker.terminate();
    assert!(worker.wait_exit(DEADLINE).await.success());
}

#[tokio::test]
async fn an_invalid_filter_pattern_is_refused_at_start_up_naming_its_path() {
    let table = unique_name("lambda-bad");
    create_table(&table, "id", true).await;
    let args: Vec<String> = [
        "--app",
        "lambda-bad-app",
        "--table",
        &table,
        "--endpoint",
        &dynamodb_streams_integration_tests::endpoint(),
        "--filter-pattern",
        r#"{"dynamodb": {"NewImage": {"n": {"N": [{"numeric": ["<", 5, ">", 1]}]}}}}"#,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (status, _, stderr, _) = run_to_exit(WORKER_BIN.as_ref(), &args, DEADLINE).await;
    assert!(!status.success());
    assert!(
        stderr.contains("$.dynamodb.NewImage.n.N[0].numeric")
            && stderr.contains("with_filter_pattern"),
        "{stderr}"
    );
}

/// A bridge test's table, application and scratch folder (the handler writes there).
struct Bridge {
    table: String,
    app: String,
    dir: std::path::PathBuf,
}

impl Bridge {
    async fn new(prefix: &str) -> Self {
        let table = unique_name(prefix);
        create_table(&table, "id", true).await;
        let dir = std::env::temp_dir()
            .join("multi-process-tests")
            .join(unique_name(prefix));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            app: unique_name(&format!("{prefix}-app")),
            table,
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `lambda-bridge` with `flags`, running `sh -c SCRIPT` as the handler (`$DIR` is the
    /// test's folder).
    fn start(&self, flags: &[&str], script: &str) -> Worker {
        let mut args: Vec<String> = [
            "--table",
            &self.table,
            "--app",
            &self.app,
            "--endpoint",
            &endpoint(),
            "--worker-id",
            "bridge",
            "--failover-time",
            "3s",
        ]
        .iter()
        .chain(flags)
        .map(|s| (*s).to_owned())
        .collect();
        let script = format!("DIR='{}'; {script}", self.dir.display());
        args.extend(["--".to_owned(), "sh".to_owned(), "-c".to_owned(), script]);
        Worker::spawn(BRIDGE_BIN.as_ref(), "bridge", &self.app, &args)
    }

    /// The events the handler saved, one JSON line each, in order.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("an event line"))
            .collect()
    }

    /// The `n` of each record of each saved event.
    fn batches(&self) -> Vec<Vec<u64>> {
        self.events()
            .iter()
            .map(|event| {
                event["Records"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        r["dynamodb"]["NewImage"]["n"]["N"]
                            .as_str()
                            .unwrap()
                            .parse()
                            .unwrap()
                    })
                    .collect()
            })
            .collect()
    }
}

/// Saves the event (one line) to `$DIR/events.jsonl`.
const SAVE_EVENT: &str = r#"cat >> "$DIR/events.jsonl""#;

async fn stop(mut bridge: Worker) {
    bridge.terminate();
    let status = bridge.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status}\n{}", bridge.stderr());
}

#[tokio::test]
async fn a_handler_that_succeeds_gets_every_record_once_as_lambdas_event() {
    let setup = Bridge::new("bridge-ok").await;
    put(&setup.table, (0..5).map(|n| (n, "new"))).await;
    let bridge = setup.start(&["--batch-size", "2"], SAVE_EVENT);
    wait_until("5 records handled", DEADLINE, || {
        setup.batches().concat().len() >= 5
    })
    .await;
    assert_eq!(setup.batches().concat(), [0, 1, 2, 3, 4]);
    assert!(
        setup.batches().iter().all(|b| b.len() <= 2),
        "{:?}",
        setup.batches()
    );
    let first = &setup.events()[0]["Records"][0];
    assert_eq!(
        first["eventSourceARN"],
        stream_arn(&setup.table).await.unwrap().as_str()
    );
    assert_eq!(
        first["dynamodb"]["Keys"],
        serde_json::json!({"id": {"S": "i0"}})
    );
    stop(bridge).await;
    // Checkpointed: a new bridge of the application hands over only new records.
    put(&setup.table, [(5, "new")]).await;
    let again = setup.start(&[], SAVE_EVENT);
    wait_until("the new record handled", DEADLINE, || {
        setup.batches().concat().len() >= 6
    })
    .await;
    assert_eq!(setup.batches().concat(), [0, 1, 2, 3, 4, 5]);
    stop(again).await;
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_bisected_until_the_poison_record_goes_to_the_file() {
    let setup = Bridge::new("bridge-fail").await;
    let statuses = ["new", "new", "new", "poison", "new", "new"];
    put(&setup.table, (0..6).zip(statuses)).await;
    let failures = setup.path("failures.jsonl");
    // Exit 1 for any batch holding the poison record; save the others.
    let script = r#"event=$(cat); case "$event" in *poison*) exit 1;; esac; printf '%s\n' "$event" >> "$DIR/events.jsonl""#;
    let bridge = setup.start(
        &["--bisect", "--max-retries", "1", "--on-failure", &failures],
        script,
    );
    wait_until("5 records handled and one given up on", DEADLINE, || {
        setup.batches().concat().len() >= 5
            && std::fs::read_to_string(&failures).is_ok_and(|t| !t.is_empty())
    })
    .await;
    let mut handled = setup.batches().concat();
    handled.sort_unstable();
    assert_eq!(handled, [0, 1, 2, 4, 5]);
    let failed: Vec<Value> = std::fs::read_to_string(&failures)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["keys"]["id"], "i3");
    assert_eq!(failed[0]["reason"], "retries-exhausted");
    stop(bridge).await;
}

#[tokio::test]
async fn a_partial_batch_response_restarts_at_the_record_it_names() {
    let setup = Bridge::new("bridge-partial").await;
    put(&setup.table, (0..6).map(|n| (n, "new"))).await;
    // The first answer names the record of i3 (found in the event: its key, then its
    // sequence number, as Lambda lays out "dynamodb"); later batches succeed.
    let script = r#"event=$(cat); printf '%s\n' "$event" >> "$DIR/events.jsonl"
if [ ! -e "$DIR/answered" ]; then
  touch "$DIR/answered"
  seq=$(printf '%s' "$event" | sed 's/"Keys"/\n/g' | grep '"i3"' | grep -o '"SequenceNumber":"[0-9]*"' | head -1 | grep -o '[0-9][0-9]*')
  echo "some log line"
  echo "{\"batchItemFailures\": [{\"itemIdentifier\": \"$seq\"}]}"
fi"#;
    let bridge = setup.start(&[], script);
    wait_until("two batches", DEADLINE, || setup.events().len() >= 2).await;
    let batches = setup.batches();
    assert_eq!(batches[0], [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        batches[1],
        [3, 4, 5],
        "delivery starts again at the record named"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        setup.events().len(),
        2,
        "then nothing again: {:?}",
        setup.batches()
    );
    assert!(
        bridge.stderr().contains("some log line"),
        "the handler's log is kept"
    );
    stop(bridge).await;
}

#[tokio::test]
async fn keep_alive_runs_one_handler_process_for_every_batch() {
    let setup = Bridge::new("bridge-keep").await;
    put(&setup.table, (0..3).map(|n| (n, "new"))).await;
    let script = r#"echo started >> "$DIR/starts"; while read -r event; do printf '%s\n' "$event" >> "$DIR/events.jsonl"; echo '{"batchItemFailures": []}'; done"#;
    let bridge = setup.start(&["--keep-alive"], script);
    wait_until("the first records", DEADLINE, || {
        setup.batches().concat().len() >= 3
    })
    .await;
    put(&setup.table, (3..6).map(|n| (n, "new"))).await;
    wait_until("the later records", DEADLINE, || {
        setup.batches().concat().len() >= 6
    })
    .await;
    assert_eq!(setup.batches().concat(), [0, 1, 2, 3, 4, 5]);
    assert!(setup.events().len() >= 2, "two batches at least");
    let starts = std::fs::read_to_string(setup.path("starts")).unwrap();
    assert_eq!(starts.lines().count(), 1, "one process for every batch");
    stop(bridge).await;
}

#[tokio::test]
async fn a_handler_that_outlives_the_batch_timeout_is_killed_and_the_batch_delivered_again() {
    let setup = Bridge::new("bridge-timeout").await;
    put(&setup.table, (0..3).map(|n| (n, "new"))).await;
    // The first process hangs (exec: the process the bridge kills is the sleep itself).
    let script = r#"if [ ! -e "$DIR/hung" ]; then touch "$DIR/hung"; exec sleep 600; fi; cat >> "$DIR/events.jsonl""#;
    let bridge = setup.start(&["--batch-timeout", "1s"], script);
    wait_until("the batch delivered again", DEADLINE, || {
        setup.batches().concat().len() >= 3
    })
    .await;
    assert_eq!(setup.batches().concat(), [0, 1, 2]);
    assert!(
        bridge.stderr().contains("timed out") || bridge.stderr().contains("timeout"),
        "the timeout is reported"
    );
    stop(bridge).await;
}
