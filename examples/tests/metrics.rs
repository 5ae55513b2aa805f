//! `jsonl-worker --metrics-addr`: `/healthz` and `/metrics` of a real worker process against
//! DynamoDB Local. The lag must tell the truth: while the worker is held in a slow batch
//! (`--process-delay`, small batches) the lag gauge grows and records stay behind; once it
//! caught up, the lag is 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::tail;
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, http, unique_name,
};
use tokio::io::AsyncBufReadExt;
use tokio::time::Instant;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
const DEADLINE: Duration = Duration::from_secs(60);
/// Changes written; with batches of [`BATCH`] and [`DELAY`] per batch, the worker needs
/// about 4 × 2 s to process them.
const ITEMS: usize = 40;
const BATCH: &str = "10";
const DELAY: &str = "2s";

/// `GET path` on `addr`: status code and body.
async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    // An endpoint that does not answer is a failure, not a hang.
    http::get(addr, path, Duration::from_secs(10))
        .await
        .expect("the endpoint answers within 10 s")
}

/// The value of `name{...stream="table"...}` in a Prometheus text page.
fn metric(page: &str, name: &str, table: &str) -> Option<f64> {
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .find(|line| line.contains(&format!("stream=\"{table}\"")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Prints the stream's lag and progress lines of a page (the figures of the issue note,
/// with `--nocapture`).
fn show(stage: &str, page: &str, table: &str) {
    println!("--- {stage}");
    for name in [
        "ddb_stream_millis_behind_latest",
        "ddb_stream_records_behind",
        "ddb_stream_leases_owned",
        "ddb_stream_records_processed_total",
    ] {
        if let Some(value) = metric(page, name, table) {
            println!("{name}{{stream=\"{table}\",worker=\"m1\"}} {value}");
        }
    }
}

/// Scrapes `/metrics` until `done` holds for the page; returns it.
async fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        if let Some((200, page)) = get(addr, "/metrics").await
            && done(&page)
        {
            return page;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_growing_lag_while_records_wait_and_zero_once_caught_up() {
    let (table, app) = (unique_name("metrics"), unique_name("app"));
    create_table(&table, "id", true).await;
    let addr = http::free_local_addr();
    let stderr_path = std::env::temp_dir().join(format!("{app}.stderr"));
    let mut child = tokio::process::Command::new(WORKER_BIN)
        .args(["--worker-id", "m1", "--app", &app, "--table", &table])
        .args(["--endpoint", &endpoint(), "--failover-time", "3s"])
        .args(["--metrics-addr", &addr])
        .args(["--batch-size", BATCH, "--process-delay", DELAY])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let logs = || {
        tail(
            &std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            30,
        )
    };

    // Healthy once its first heartbeat is confirmed: 200 "ok"; before that 503 and why.
    let start = Instant::now();
    loop {
        match get(&addr, "/healthz").await {
            Some((200, body)) => {
                assert_eq!(body, "ok\n");
                break;
            }
            Some((503, body)) => assert_eq!(body.trim().lines().count(), 1, "{body}"),
            _ => {}
        }
        assert!(
            start.elapsed() < DEADLINE,
            "never healthy; logs:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let reader = tokio::spawn(async move {
        let mut count = 0usize;
        while let Ok(Some(_)) = lines.next_line().await {
            count += 1;
        }
        count
    });

    // Written at once, processed 10 at a time with 2 s per batch: records wait.
    let client = dynamodb_client().await;
    for n in 0..ITEMS {
        client
            .put_item()
            .table_name(&table)
            .item("id", AttributeValue::S(format!("item-{n}")))
            .send()
            .await
            .unwrap();
    }
    let first = scrape_until(&addr, "a lag above 1 s", |page| {
        metric(page, "ddb_stream_millis_behind_latest", &table).is_some_and(|ms| ms >= 1000.0)
    })
    .await;
    show("behind (slow batches)", &first, &table);
    let first_lag = metric(&first, "ddb_stream_millis_behind_latest", &table).unwrap();
    assert!(
        metric(&first, "ddb_stream_records_behind", &table).unwrap() > 0.0,
        "{first}"
    );
    assert_eq!(metric(&first, "ddb_stream_leases_owned", &table), Some(1.0));
    assert!(first.contains("worker=\"m1\""), "the worker label: {first}");
    assert!(
        !first.contains("shard="),
        "no shard labels by default: {first}"
    );
    let grown = scrape_until(&addr, "the lag to grow while records wait", |page| {
        metric(page, "ddb_stream_millis_behind_latest", &table)
            .is_some_and(|ms| ms >= first_lag + 2000.0)
    })
    .await;
    show("still behind, later", &grown, &table);
    let stuck_processed =
        metric(&grown, "ddb_stream_records_processed_total", &table).unwrap_or(0.0);
    assert!(stuck_processed < ITEMS as f64, "{grown}");

    // Once every record is processed, the lag is 0 and the counters reach every item.
    let caught_up = scrape_until(&addr, "the lag back to 0 after every item", |page| {
        metric(page, "ddb_stream_records_processed_total", &table) == Some(ITEMS as f64)
            && metric(page, "ddb_stream_millis_behind_latest", &table) == Some(0.0)
    })
    .await;
    show("caught up", &caught_up, &table);
    assert_eq!(
        metric(&caught_up, "ddb_stream_records_behind", &table),
        Some(0.0)
    );
    assert!(
        caught_up.contains("ddb_stream_batch_duration_seconds"),
        "{caught_up}"
    );
    assert!(
        metric(
            &caught_up,
            "ddb_stream_last_checkpoint_timestamp_seconds",
            &table
        )
        .is_some(),
        "{caught_up}"
    );
    assert!(matches!(get(&addr, "/nothing").await, Some((404, _))));

    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(reader.await.unwrap(), ITEMS, "every change printed once");
}
