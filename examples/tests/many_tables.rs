//! Real `jsonl-worker` processes sharing 100 tables (DynamoDB Local gives each stream one
//! shard, so 100 leases): three workers reach balance (34/33/33), one is killed with
//! SIGKILL, the two others take its leases and balance again (50/50), and a change written
//! to every table afterwards is printed by them.
//!
//! Workers run with `--failover-time 3s` to keep the test quick.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{Worker, WorkerConfig, lease_counts, wait_until};
use dynamodb_streams_integration_tests::{create_table, dynamodb_client, unique_name};
use tokio::time::Instant;

/// The worker binary, built by Cargo for these tests.
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
const TABLES: usize = 100;
/// How long any one phase may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_balance_100_tables_and_survive_a_sigkill() {
    let prefix = unique_name("many");
    let mut tables = Vec::new();
    for chunk in 0..TABLES / 10 {
        let mut creating = tokio::task::JoinSet::new();
        for i in 0..10 {
            let table = format!("{prefix}-{}", chunk * 10 + i);
            tables.push(table.clone());
            creating.spawn(async move { create_table(&table, "id", true).await });
        }
        creating.join_all().await;
    }
    let app = unique_name("many-app");
    let config = WorkerConfig {
        bin: WORKER_BIN.into(),
        app: app.clone(),
        tables: tables.clone(),
        failover_time: Some("3s".into()),
    };
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::start(id, &config))
        .collect();

    let started = Instant::now();
    let counts = wait_balanced(&app, &["w1", "w2", "w3"]).await;
    println!(
        "3 workers, {TABLES} tables: balanced {counts:?} after {:?}",
        started.elapsed()
    );

    let killed = Instant::now();
    workers[2].kill().await;
    let counts = wait_balanced(&app, &["w1", "w2"]).await;
    println!(
        "SIGKILL of w3: balanced {counts:?} after {:?}",
        killed.elapsed()
    );

    // Every table's stream is consumed by the survivors.
    let client = dynamodb_client().await;
    for table in &tables {
        client
            .put_item()
            .table_name(table)
            .item("id", AttributeValue::S("after-kill".into()))
            .send()
            .await
            .unwrap();
    }
    wait_until(
        "a change of every table printed after the kill",
        DEADLINE,
        || {
            let printed: HashSet<String> = workers[..2]
                .iter()
                .flat_map(|w| w.changes())
                .filter(|c| c.keys["id"] == "after-kill")
                .map(|c| c.table)
                .collect();
            printed.len() == TABLES
        },
    )
    .await;
    for worker in &workers[..2] {
        worker.terminate();
    }
    for worker in &mut workers[..2] {
        assert!(
            worker.wait_exit(DEADLINE).await.success(),
            "{}",
            worker.stderr()
        );
    }
}

/// Waits until every lease is owned by one of `ids` and their counts differ by at most one.
async fn wait_balanced(app: &str, ids: &[&str]) -> BTreeMap<String, usize> {
    let start = Instant::now();
    loop {
        let counts = lease_counts(app).await;
        let owners_ok = counts.keys().all(|k| ids.contains(&k.as_str()));
        let total: usize = counts.values().sum();
        let (min, max) = (
            ids.iter()
                .map(|id| counts.get(*id).copied().unwrap_or(0))
                .min()
                .unwrap_or(0),
            ids.iter()
                .map(|id| counts.get(*id).copied().unwrap_or(0))
                .max()
                .unwrap_or(0),
        );
        if owners_ok && total == TABLES && max - min <= 1 {
            return counts;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "not balanced over {ids:?} within {DEADLINE:?}: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
