//! Runs an existing AWS Lambda handler for DynamoDB Streams, unchanged, as a long-running
//! worker: each batch goes to a command as the event Lambda would have sent.
//!
//! ```text
//! lambda-bridge --table T --app APP [--keep-alive] [jsonl-worker's connection and delivery
//!               flags] -- COMMAND ARGS...
//! ```
//!
//! - Each batch is Lambda's DynamoDB event, `{"Records": [...]}` (one line of JSON; see
//!   `dynamodb_streams_consumer::lambda::event`). Without `--keep-alive`, COMMAND runs once per batch
//!   with the event on its stdin (closed after it); exit 0 is success, and the last
//!   non-empty line of its stdout is its answer (lines before it are passed to stderr as
//!   the handler's log). With `--keep-alive`, one COMMAND process per shard (per key
//!   partition with `--key-parallelism`) reads one event per line and writes one answer
//!   per line; its logs go to stderr.
//! - The answer is Lambda's: Lambda's partial batch response, `{"batchItemFailures":
//!   [{"itemIdentifier": "SEQ"}]}`, is a partial failure at the lowest SEQ named (the
//!   records before it are done and checkpointed; an identifier that is not a record of
//!   the batch fails the whole batch); any other answer, or none, is success.
//! - A non-zero exit, a `--batch-timeout` (the process is killed) or, with `--keep-alive`,
//!   a process that exits or answers with something that is not JSON fails the batch under
//!   the usual failure policy (`--max-retries`, `--bisect`, `--on-failure FILE`, ...); a
//!   failed keep-alive process is killed and started again for the next batch.
//! - Flags with `jsonl-worker`'s names and meanings: `--endpoint`, `--region`,
//!   `--worker-id`, `--initial-position`, `--failover-time`, `--batch-size`,
//!   `--batching-window`, `--max-retries`, `--bisect`, `--on-failure FILE`,
//!   `--max-record-age`, `--key-parallelism`, `--batch-timeout`, `--shutdown-timeout`,
//!   `--filter-pattern` (see the README's "Coming from Lambda" for how they match the event
//!   source mapping's settings).
//!
//! SIGTERM or SIGINT: graceful shutdown (the batch in progress finishes, checkpoints are
//! written, leases released), exit 0. Logs go to stderr (`RUST_LOG`, default `info`).

use std::process::{ExitCode, Stdio};
use std::sync::Arc;

use async_trait::async_trait;
use clap::Parser;
use dynamodb_streams_consumer::lambda::PartialBatchResponse;
use dynamodb_streams_consumer::lambda::event::event_to_json;
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, Checkpointer, RecordProcessor, ShardContext,
};
use dynamodb_streams_examples::worker_flags::{ConnectionFlags, DeliveryFlags, endpoint_answers};
use dynamodb_streams_examples::{Signals, default_worker_id};
use serde::de::IgnoredAny;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// Runs a Lambda handler for DynamoDB Streams as a long-running, checkpointing worker.
#[derive(Debug, Parser)]
#[command(name = "lambda-bridge", version)]
struct Args {
    #[command(flatten)]
    connection: ConnectionFlags,
    #[command(flatten)]
    delivery: DeliveryFlags,
    /// One handler process per shard, reading one event per line and answering one line
    /// per event (instead of one process per batch).
    #[arg(long)]
    keep_alive: bool,
    /// The handler: COMMAND ARGS..., after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// A keep-alive handler process and its pipes.
struct Running {
    child: Child,
    stdin: ChildStdin,
    answers: Lines<BufReader<ChildStdout>>,
}

/// Hands the batches of one shard (or key partition) to the handler.
struct Bridge {
    command: Arc<[String]>,
    stream_arn: String,
    keep_alive: bool,
    /// The keep-alive process between batches; taken out during a batch, so a batch that
    /// fails or is dropped (timeout, lease lost) drops it, which kills it.
    running: Option<Running>,
}

impl Bridge {
    fn command(&self) -> Command {
        let mut command = Command::new(&self.command[0]);
        command
            .args(&self.command[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        command
    }

    fn spawn_error(&self, error: std::io::Error) -> BoxError {
        format!("cannot start handler {:?}: {error}", self.command[0]).into()
    }

    /// One process for this event: its answer (the last non-empty line of its stdout).
    async fn run_once(&self, event: &str) -> Result<Option<String>, BoxError> {
        let mut child = self.command().spawn().map_err(|e| self.spawn_error(e))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or("the handler's stdin is not piped")?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or("the handler's stdout is not piped")?;
        let feed = async move {
            // A handler may exit without reading its input: not an error in itself.
            let _ = stdin.write_all(event.as_bytes()).await;
            let _ = stdin.write_all(b"\n").await;
            drop(stdin);
        };
        let mut output = String::new();
        let (_, read) = tokio::join!(feed, stdout.read_to_string(&mut output));
        read?;
        let status = child.wait().await?;
        if !status.success() {
            return Err(format!("handler {:?} failed: {status}", self.command[0]).into());
        }
        let mut lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
        let answer = lines.pop().map(str::to_owned);
        for line in lines {
            eprintln!("{line}");
        }
        Ok(answer)
    }

    /// This event through the keep-alive process (started when there is none): its answer.
    async fn exchange(&mut self, event: &str) -> Result<Option<String>, BoxError> {
        let mut running = match self.running.take() {
            Some(running) => running,
            None => {
                let mut child = self.command().spawn().map_err(|e| self.spawn_error(e))?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or("the handler's stdin is not piped")?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or("the handler's stdout is not piped")?;
                Running {
                    child,
                    stdin,
                    answers: BufReader::new(stdout).lines(),
                }
            }
        };
        running.stdin.write_all(event.as_bytes()).await?;
        running.stdin.write_all(b"\n").await?;
        running.stdin.flush().await?;
        let Some(answer) = running.answers.next_line().await? else {
            let status = running.child.wait().await?;
            return Err(format!(
                "handler {:?} exited ({status}) without answering the event",
                self.command[0]
            )
            .into());
        };
        let answer = answer.trim().to_owned();
        if !answer.is_empty() && serde_json::from_str::<Value>(&answer).is_err() {
            return Err(format!(
                "handler {:?} answered with a line that is not JSON (with --keep-alive, stdout \
                 carries one JSON answer per event; logs go to stderr): {:.200}",
                self.command[0], answer
            )
            .into());
        }
        self.running = Some(running);
        Ok(Some(answer))
    }
}

#[async_trait]
impl RecordProcessor for Bridge {
    /// The handler gets the raw records; nothing is decoded here.
    type Item = IgnoredAny;

    async fn process(
        &mut self,
        batch: ChangeBatch<IgnoredAny>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let event = event_to_json(batch.iter().map(|c| c.raw()), Some(&self.stream_arn));
        let event = event.to_string();
        let answer = if self.keep_alive {
            self.exchange(&event).await?
        } else {
            self.run_once(&event).await?
        };
        // Lambda ignores a return value that is not a partial batch response.
        let Some(answer) = answer.and_then(|a| serde_json::from_str::<Value>(&a).ok()) else {
            return Ok(());
        };
        let sequence_numbers: Vec<_> = batch.iter().map(|c| c.sequence_number.clone()).collect();
        let failed =
            PartialBatchResponse::from_answer(&answer)?.first_failure(&sequence_numbers)?;
        match failed {
            Some(seq) => Err(BatchFailure::at(
                seq.clone(),
                format!("the handler reported a batch item failure at {seq}"),
            )
            .into()),
            None => Ok(()),
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("info");
    dynamodb_streams_examples::exit_code("lambda-bridge", run(args).await)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Listen before anything else: a SIGTERM during start-up still shuts down gracefully.
    let mut signals = Signals::new()?;
    let connection = &args.connection;
    let sdk_config = dynamodb_streams_examples::sdk_config(
        connection.endpoint.as_deref(),
        connection.region.as_deref(),
    )
    .await;
    let worker_id = connection
        .worker_id
        .clone()
        .unwrap_or_else(default_worker_id);
    let builder = args
        .delivery
        .apply(connection.builder(&sdk_config, &worker_id))?;
    let command: Arc<[String]> = args.command.clone().into();
    let keep_alive = args.keep_alive;
    let consumer = builder.build(move |shard: &ShardContext| Bridge {
        command: command.clone(),
        stream_arn: shard.stream_arn.clone(),
        keep_alive,
        running: None,
    })?;
    tracing::info!(worker_id = consumer.worker_id(), command = ?args.command, "starting");
    let endpoint = dynamodb_streams_leases::aws::AwsClients::from_sdk_config(&sdk_config)
        .endpoint()
        .to_owned();
    tokio::select! {
        answered = endpoint_answers(&sdk_config, &connection.tables, &endpoint) => answered?,
        name = signals.recv() => {
            tracing::info!(signal = name, "stopped before start-up completed");
            return Ok(());
        }
    }
    consumer.run_until(signals.first_then_force()).await?;
    tracing::info!("stopped");
    Ok(())
}
