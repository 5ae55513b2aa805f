//! A worker that prints every change it is delivered as one JSON line: the black box the
//! multi-process tests start, kill and count.
//!
//! ```text
//! jsonl-worker --table T [--table T2 ...] --app APP [--worker-id ID]
//!              [--endpoint URL] [--region R] [--initial-position trim-horizon|latest]
//!              [--failover-time 10s]
//! ```
//!
//! Stdout carries one line per delivered change, written and flushed after each batch (and
//! before the framework checkpoints it, which happens after every batch):
//!
//! ```text
//! {"worker":"w1","table":"T","shard":"shardId-…","seq":"000…","event":"INSERT",
//!  "keys":{"id":"a"},"old":null,"new":{"id":"a","n":1}}
//! ```
//!
//! `old` and `new` are `null` when the change has no such image (an insert has no old image;
//! the stream's view type decides the rest). Items are plain JSON: see
//! [`examples::attribute_to_json`] (numbers as JSON numbers, binary as base64 strings, sets
//! as arrays). Delivery is at least once: after a crash, another worker (or a restart)
//! prints again the changes after the last checkpoint.
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). SIGTERM or SIGINT: graceful shutdown
//! (leases released), exit 0. A table that does not exist or has no stream, or an
//! unreachable endpoint: one line on stderr naming it, exit 2.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use checkpoint_store::aws::AwsClients;
use clap::{Parser, ValueEnum};
use consumer_core::{
    BoxError, ChangeBatch, Checkpointer, Consumer, InitialPosition, RecordProcessor, ShardContext,
};
use examples::{Signals, change_to_json, default_worker_id};
use serde::de::IgnoredAny;

/// How long the endpoint may take to answer the first request before the worker gives up.
const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// Where shards nobody has processed yet start.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Position {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// Only changes made after the worker starts.
    Latest,
}

/// Prints every change of the streams of the given tables as one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(name = "jsonl-worker", version)]
struct Args {
    /// A table whose stream to consume (repeat for several).
    #[arg(long = "table", value_name = "T", required = true)]
    tables: Vec<String>,
    /// The application: the name of the lease table shared by its workers.
    #[arg(long, value_name = "APP")]
    app: String,
    /// This worker's id, printed in every line. Default: hostname-pid.
    #[arg(long, value_name = "ID")]
    worker_id: Option<String>,
    /// DynamoDB endpoint, e.g. DynamoDB Local (dummy credentials are used then).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// AWS region (default with --endpoint: us-east-1).
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// Where shards nobody has processed yet start.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    initial_position: Position,
    /// After how long without a heartbeat a worker counts as dead (e.g. 3s, 1m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    failover_time: Duration,
}

/// Writes the changes of one shard as JSON lines.
struct JsonlProcessor {
    worker: Arc<str>,
    table: Option<String>,
    shard: String,
}

#[async_trait]
impl RecordProcessor for JsonlProcessor {
    /// Images are converted from the raw record, so nothing needs decoding.
    type Item = IgnoredAny;

    async fn process(
        &mut self,
        batch: ChangeBatch<IgnoredAny>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let mut out = std::io::stdout().lock();
        for change in &batch {
            let line = change_to_json(
                &self.worker,
                self.table.as_deref(),
                Some(&self.shard),
                change,
            );
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        // An error here (stdout closed) fails the batch: it is delivered again, never
        // checkpointed unwritten.
        out.flush()?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    examples::init_tracing("info");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jsonl-worker: error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Listen before anything else: a SIGTERM during start-up still shuts down gracefully.
    let mut signals = Signals::new()?;
    let sdk_config = examples::sdk_config(args.endpoint.as_deref(), args.region.as_deref()).await;
    let worker_id = args.worker_id.unwrap_or_else(default_worker_id);
    let worker: Arc<str> = worker_id.as_str().into();

    let mut builder = Consumer::builder(args.app)
        .with_sdk_config(&sdk_config)
        .with_worker_id(worker_id)
        .with_initial_position(match args.initial_position {
            Position::TrimHorizon => InitialPosition::TrimHorizon,
            Position::Latest => InitialPosition::Latest,
        })
        .with_failover_time(args.failover_time)
        .with_checkpoint_interval(Duration::ZERO);
    for table in &args.tables {
        builder = builder.with_table(table.as_str());
    }
    let consumer = builder.build(move |shard: &ShardContext| JsonlProcessor {
        worker: worker.clone(),
        table: shard.table.clone(),
        shard: shard.shard_id.clone(),
    })?;
    tracing::info!(worker_id = consumer.worker_id(), "starting");
    // How errors name the endpoint: the URL, or the default AWS endpoint and region.
    let endpoint = AwsClients::from_sdk_config(&sdk_config)
        .endpoint()
        .to_owned();
    tokio::select! {
        answered = endpoint_answers(&sdk_config, &args.tables, &endpoint) => answered?,
        name = signals.recv() => {
            tracing::info!(signal = name, "stopped before start-up completed");
            return Ok(());
        }
    }
    consumer.run_until(signals.first_then_force()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits until the endpoint answers a DescribeTable of the first table, whatever the answer,
/// at most [`STARTUP_DEADLINE`]: an endpoint that accepts connections but never answers
/// would otherwise only fail after the consumer's operation timeout (30 s). What the answer
/// says (no such table, no stream) is reported by the consumer, which asks again.
async fn endpoint_answers(
    sdk_config: &aws_config::SdkConfig,
    tables: &[String],
    endpoint: &str,
) -> Result<(), String> {
    let Some(table) = tables.first() else {
        return Ok(());
    };
    // One attempt: a refused connection fails at once and the consumer reports it.
    let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    let probe = aws_sdk_dynamodb::Client::from_conf(config)
        .describe_table()
        .table_name(table)
        .send();
    match tokio::time::timeout(STARTUP_DEADLINE, probe).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "no answer from {endpoint} within {}s (DescribeTable on table {table:?}): is \
             DynamoDB running there?",
            STARTUP_DEADLINE.as_secs()
        )),
    }
}
