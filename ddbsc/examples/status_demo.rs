//! What `ddbsc status` shows for a real application: 3 `jsonl-worker` processes sharing the
//! streams of 6 tables on DynamoDB Local, with a few changes written to each table.
//!
//! ```text
//! make status-demo        # DynamoDB Local, builds, then runs this
//! ```
//!
//! or by hand, with DynamoDB Local at `$DYNAMODB_ENDPOINT`:
//!
//! ```text
//! cargo build -p dynamodb-streams-examples --bin jsonl-worker -p ddbsc --bin ddbsc
//! cargo run -p ddbsc --example status_demo -- --endpoint "$DYNAMODB_ENDPOINT" \
//!     --worker-bin target/debug/jsonl-worker --ddbsc-bin target/debug/ddbsc
//! ```
//!
//! It waits until every lease is owned by a live worker, prints `ddbsc status --lag` (the
//! readable table), stops the workers with SIGTERM and exits.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use dynamodb_streams_leases::{DynamoDbLeaseStore, LeaseStore};

/// Runs 3 workers over 6 tables and prints `ddbsc status --lag`.
#[derive(Debug, Parser)]
struct Args {
    /// DynamoDB Local.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint: String,
    /// The `jsonl-worker` binary.
    #[arg(long)]
    worker_bin: PathBuf,
    /// The `ddbsc` binary.
    #[arg(long)]
    ddbsc_bin: PathBuf,
    /// Tables.
    #[arg(long, default_value_t = 6)]
    tables: usize,
    /// Workers.
    #[arg(long, default_value_t = 3)]
    workers: usize,
}

/// Stops the workers (SIGTERM, graceful) however the demo ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let config = dynamodb_streams_examples::local_sdk_config(&args.endpoint, None);
    let client = aws_sdk_dynamodb::Client::new(&config);
    let app = dynamodb_streams_examples::unique_name("status-demo");
    let mut tables = Vec::new();
    for i in 0..args.tables {
        let table = format!("orders-{}-{i}", std::process::id());
        dynamodb_streams_examples::create_table(&client, &table, "id", true).await?;
        for n in 0..(i + 1) * 3 {
            client
                .put_item()
                .table_name(&table)
                .item("id", AttributeValue::S(format!("item-{n}")))
                .send()
                .await?;
        }
        tables.push(table);
    }

    let mut workers = Workers(Vec::new());
    for w in 1..=args.workers {
        let mut command = Command::new(&args.worker_bin);
        command
            .args(["--worker-id", &format!("worker-{w}"), "--app", &app])
            .args(["--endpoint", &args.endpoint, "--failover-time", "3s"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for table in &tables {
            command.args(["--table", table]);
        }
        workers.0.push(command.spawn()?);
    }

    // Every lease owned, by all the workers (balanced), before showing it.
    let store = DynamoDbLeaseStore::from_sdk_config(&config, &app)?;
    let started = Instant::now();
    loop {
        if let Ok((leases, records)) = store.snapshot().await {
            let shards: Vec<_> = leases.iter().filter(|l| !l.key.is_coordination()).collect();
            let owners: std::collections::BTreeSet<_> =
                shards.iter().filter_map(|l| l.owner.as_deref()).collect();
            if shards.len() == tables.len()
                && shards.iter().all(|l| l.owner.is_some())
                && owners.len() == args.workers
                && records.len() == args.workers
            {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the workers did not share every lease within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let shown = format!("ddbsc status --app {app} --lag");
    println!("$ {shown}");
    let status = Command::new(&args.ddbsc_bin)
        .args([
            "status",
            "--app",
            &app,
            "--lag",
            "--endpoint",
            &args.endpoint,
        ])
        .status()?;
    drop(workers);
    if !status.success() {
        return Err(format!("{shown} failed: {status}").into());
    }
    Ok(())
}
