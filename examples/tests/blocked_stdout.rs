//! A `jsonl-worker` whose stdout nobody reads: printing stops once the pipe is full, but the
//! worker stays alive (its runtime answers `/healthz` with `ok`: heartbeats confirmed, not
//! fenced) and a SIGTERM still stops it (after the shutdown timeout). Before stdout had a
//! writer thread of its own, the blocked writes stalled the runtime's threads and with
//! them every shard, the heartbeats and the health endpoint. Against DynamoDB Local.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::tail;
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, http, unique_name,
};
use tokio::time::Instant;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
const DEADLINE: Duration = Duration::from_secs(60);
/// Tables (one shard each): more shards than the runtime has threads, so blocking writes
/// would block every thread.
const TABLES: usize = 3;
/// Items per table, with a 1 KB payload: several times what a pipe buffers (64 KB).
const ITEMS: usize = 150;

/// `GET path` on `addr`: status code and body; `None` if it does not answer within 3 s.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    http::get(addr, path, Duration::from_secs(3))
        .await
        .ok()
        .flatten()
}

/// The sum of `name{...}` over every stream in a Prometheus text page.
fn total(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_stdout_is_not_read_stays_alive_and_stops_on_sigterm() {
    let app = unique_name("app");
    let tables: Vec<String> = (0..TABLES).map(|_| unique_name("blocked")).collect();
    for table in &tables {
        create_table(table, "id", true).await;
    }
    let addr = http::free_local_addr();
    let stderr_path = std::env::temp_dir().join(format!("{app}.stderr"));
    let mut command = tokio::process::Command::new(WORKER_BIN);
    command
        .args(["--worker-id", "b1", "--app", &app])
        .args(["--endpoint", &endpoint(), "--failover-time", "3s"])
        .args(["--metrics-addr", &addr, "--shutdown-timeout", "2s"])
        // As many runtime threads as on a 2-core machine, whatever this one has.
        .env("TOKIO_WORKER_THREADS", "2")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true);
    for table in &tables {
        command.args(["--table", table]);
    }
    let mut child = command.spawn().unwrap();
    // Kept open and never read.
    let _stdout = child.stdout.take().unwrap();
    let logs = || {
        tail(
            &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            30,
        )
    };
    let start = Instant::now();
    while get(&addr, "/healthz").await.map(|(code, _)| code) != Some(200) {
        assert!(start.elapsed() < DEADLINE, "never healthy:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let client = dynamodb_client().await;
    let payload = "x".repeat(1024);
    for table in &tables {
        for n in 0..ITEMS {
            client
                .put_item()
                .table_name(table)
                .item("id", AttributeValue::S(format!("item-{n}")))
                .item("payload", AttributeValue::S(payload.clone()))
                .send()
                .await
                .unwrap();
        }
    }

    // Printing is stuck (the pipe is full, not every change was processed), while the
    // worker stays healthy for more than twice its failover time.
    let written = (TABLES * ITEMS) as f64;
    let watched = Instant::now();
    let mut processed = 0.0;
    while watched.elapsed() < Duration::from_secs(8) {
        let health = get(&addr, "/healthz").await;
        assert_eq!(
            health.as_ref().map(|(code, _)| *code),
            Some(200),
            "{health:?} after {:?} with stdout blocked; logs:\n{}",
            watched.elapsed(),
            logs()
        );
        let (_, page) = get(&addr, "/metrics").await.expect("/metrics answers");
        processed = total(&page, "ddb_stream_records_processed_total");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        processed < written,
        "everything was processed ({processed}): stdout was never blocked"
    );
    println!("stdout blocked: {processed} of {written} changes processed, healthy throughout");

    let pid = child.id().expect("running") as i32;
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 20 s of SIGTERM; logs:\n{}", logs()))
        .unwrap();
    assert!(status.success(), "{status}; logs:\n{}", logs());
}
