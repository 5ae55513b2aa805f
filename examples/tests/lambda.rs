//! Coming from Lambda, with real processes against DynamoDB Local: `jsonl-worker
//! --filter-pattern` (inline and `@FILE`, OR-ed; an invalid one refused at start-up naming
//! its path) and `--format lambda` (one line per batch, Lambda's DynamoDB event).
//!
//! Every test uses its own table and application.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use integration_tests::workers::{Worker, WorkerConfig, run_to_exit, wait_until};
use integration_tests::{create_table, dynamodb_client, stream_arn, unique_name};
use serde_json::Value;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
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
        &integration_tests::endpoint(),
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
