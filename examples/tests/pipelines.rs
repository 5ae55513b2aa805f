//! `jsonl-worker --pipeline NAME` against DynamoDB Local (issue 19): every pipeline prints
//! every change with `"pipeline"`; a delivery flag written `NAME:VALUE` applies to that
//! pipeline only, and its on-failure lines name it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{Worker, WorkerConfig, wait_until};
use dynamodb_streams_integration_tests::{create_table, put_count, unique_name};
use serde_json::Value;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_print_their_name_and_take_their_own_flags() {
    let (table, app) = (unique_name("orders"), unique_name("pipelines-app"));
    create_table(&table, "name", true).await;
    let mut names: Vec<String> = (0..8).map(|i| format!("item-{i}")).collect();
    names.insert(4, "poison".into());
    for (i, name) in names.iter().enumerate() {
        put_count(&table, name, AttributeValue::N(i.to_string())).await;
    }
    let failures = std::env::temp_dir()
        .join("multi-process-tests")
        .join(format!("{}.failures.jsonl", unique_name("pipelines")));
    std::fs::create_dir_all(failures.parent().unwrap()).unwrap();
    let on_failure = format!("b:{}", failures.display());
    let config = WorkerConfig {
        bin: WORKER_BIN.into(),
        app: app.clone(),
        tables: vec![table.clone()],
        failover_time: Some("3s".to_owned()),
    };
    let mut worker = Worker::start_with(
        "w1",
        &config,
        &[
            "--pipeline",
            "a",
            "--pipeline",
            "b",
            "--fail-when",
            "b:name=poison",
            "--max-retries",
            "b:1",
            "--on-failure",
            &on_failure,
            "--process-delay",
            "a:50ms",
        ],
    );
    let of = |pipeline: &str| -> Vec<String> {
        worker
            .changes()
            .into_iter()
            .filter(|c| c.pipeline.as_deref() == Some(pipeline))
            .map(|c| c.keys["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let without_poison: Vec<String> = names.iter().filter(|n| *n != "poison").cloned().collect();
    wait_until("both pipelines printed", Duration::from_secs(60), || {
        of("a").len() >= names.len() && of("b").len() >= without_poison.len()
    })
    .await;
    assert_eq!(of("a"), names, "pipeline a: every change, in order");
    assert_eq!(
        of("b"),
        without_poison,
        "pipeline b: the poison went to its handler"
    );
    assert!(
        worker.changes().iter().all(|c| c.pipeline.is_some()),
        "every line names its pipeline"
    );
    let failed: Vec<Value> = std::fs::read_to_string(&failures)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["pipeline"], "b");
    assert_eq!(failed[0]["keys"]["name"], "poison");
    assert_eq!(failed[0]["reason"], "retries-exhausted");
    worker.terminate();
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());

    // A NAME:VALUE form naming no --pipeline is refused, naming it.
    let mut refused =
        Worker::start_with("w2", &config, &["--pipeline", "a", "--max-retries", "c:1"]);
    assert!(!refused.wait_exit(Duration::from_secs(30)).await.success());
    assert!(refused.stderr().contains("\"c\""), "{}", refused.stderr());
}
