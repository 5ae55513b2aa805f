//! A worker that prints every change it is delivered as one JSON line: the black box the
//! multi-process tests start, kill and count.
//!
//! ```text
//! jsonl-worker --table T [--table T2 ...] --app APP [--worker-id ID]
//!              [--endpoint URL] [--region R] [--initial-position trim-horizon|latest]
//!              [--failover-time 10s] [--metrics-addr HOST:PORT]
//! ```
//!
//! With `--metrics-addr`, Prometheus metrics are served at `http://HOST:PORT/metrics` (global
//! label `worker`) and health at `/healthz` (200 `ok` once a heartbeat is confirmed and while
//! not fenced, else 503 and the reason).
//!
//! Stdout carries one line per delivered change, written and flushed after each batch (and
//! before the framework checkpoints it, which happens after every batch) by a thread of its
//! own: a reader that stops reading holds up printing, never heartbeats or shutdown:
//!
//! ```text
//! {"worker":"w1","table":"T","shard":"shardId-…","seq":"000…","event":"INSERT",
//!  "keys":{"id":"a"},"old":null,"new":{"id":"a","n":1}}
//! ```
//!
//! `old` and `new` are `null` when the change has no such image (an insert has no old image;
//! the stream's view type decides the rest). Items are plain JSON: see
//! [`dynamodb_streams_examples::attribute_to_json`] (numbers as JSON numbers, binary as base64 strings, sets
//! as arrays). Delivery is at least once: after a crash, another worker (or a restart)
//! prints again the changes after the last checkpoint.
//!
//! Delivery flags (see the README's settings): `--max-retries N`, `--bisect`,
//! `--on-failure FILE` (one JSON line per record given up on:
//! `{"table","shard","seq","event","keys","reason"}`), `--max-record-age DUR`,
//! `--batch-size N`, `--batching-window DUR`, `--key-parallelism N` (lines of different
//! items may interleave, lines of one item may not), `--batch-timeout DUR`,
//! `--shutdown-timeout DUR`, `--checkpoint-interval DUR` (default 0s: after every batch),
//! `--events INSERT,MODIFY,REMOVE` (kinds printed, SNAPSHOT too if listed; the others are
//! checkpointed past), `--filter-pattern JSON|@FILE` (Lambda's event filtering syntax on
//! the record in Lambda's JSON shape; repeatable, the patterns OR-ed; an invalid pattern is
//! refused at start-up naming its JSON path). For
//! tests: `--fail-when ATTR=VALUE` fails a change whose new image has ATTR equal to VALUE
//! (as text): a partial batch failure at it (the changes before it are printed), or with
//! `--whole-batch-failures` the whole batch (none of it printed); `--process-delay DUR`
//! sleeps in every `process` call before printing.
//!
//! `--pipeline NAME` (repeatable): named pipelines over one read of each shard, each line
//! with `"pipeline": "NAME"`; the delivery flags above (and `--fail-when`,
//! `--process-delay`, `--events`) apply to every pipeline, or to one when written
//! `NAME:VALUE`; on-failure lines gain `"pipeline"`.
//!
//! `--snapshot [--snapshot-segments N] [--snapshot-page-size N]` first prints every item of
//! each table as `{"event":"SNAPSHOT","keys":…,"old":null,"new":…,"seq":""}` (`shard` names
//! the Scan segment, `snapshot-<i>-of-<n>`), then the stream's changes after the snapshot
//! began; every worker of the application needs the flag. `--creation-time-margin DUR`
//! (default 1s, 90s with `--endpoint`: DynamoDB Local rounds creation times to the minute).
//!
//! `--format lambda` prints each batch as one line instead: the event Lambda would invoke a
//! function with, `{"Records": [{"eventID", "eventName", "eventVersion", "eventSource",
//! "awsRegion", "dynamodb": {…}, "eventSourceARN"}]}`, attribute values in DynamoDB JSON
//! (see `dynamodb_streams_consumer::lambda::event`).
//!
//! Logs go to stderr (`RUST_LOG`, default `info`). SIGTERM or SIGINT: graceful shutdown
//! (leases released), exit 0. A table that does not exist or has no stream, or an
//! unreachable endpoint: one line on stderr naming it, exit 2.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::types::{OperationType, Record};
use clap::{Parser, ValueEnum};
use dynamodb_streams_consumer::observability::serve_metrics;
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, Change, ChangeBatch, Checkpointer, ConsumerBuilder, RecordProcessor,
    ShardContext, SnapshotConfig,
};
use dynamodb_streams_examples::worker_flags::{
    ConnectionFlags, DeliveryFlags, Scoped, parse_duration, scoped,
};
use dynamodb_streams_examples::{Signals, attribute_to_json, change_to_json, default_worker_id};
use dynamodb_streams_leases::aws::AwsClients;
use serde::de::IgnoredAny;
use serde_json::Value;

/// How each batch is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per change (the shape above).
    #[default]
    Jsonl,
    /// One line per batch: Lambda's DynamoDB event, `{"Records": [...]}`.
    Lambda,
}

/// Prints every change of the streams of the given tables as one JSON line on stdout.
#[derive(Debug, Parser)]
#[command(name = "jsonl-worker", version)]
struct Args {
    #[command(flatten)]
    connection: ConnectionFlags,
    #[command(flatten)]
    delivery: DeliveryFlags,
    /// Checkpoint writes per shard at most this often. Default: 0s (after every batch).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, default_value = "0s")]
    checkpoint_interval: Duration,
    /// Run these named pipelines over one read of each shard (repeat for several), each
    /// printing every change with `"pipeline": "NAME"`; the delivery flags apply to every
    /// pipeline, or to one when written NAME:VALUE. Without it, one unnamed pipeline.
    #[arg(long = "pipeline", value_name = "NAME")]
    pipelines: Vec<String>,
    /// Only these kinds of change are printed (comma-separated INSERT, MODIFY, REMOVE, and
    /// SNAPSHOT with `--snapshot`); the others are filtered out and checkpointed past.
    #[arg(long, value_name = "[NAME:]KINDS", value_parser = scoped(parse_kinds))]
    events: Vec<Scoped<Vec<OperationType>>>,
    /// A change whose new image has ATTR equal to VALUE (compared as text) fails: a partial
    /// batch failure at it (the changes before it are printed).
    #[arg(long, value_name = "[NAME:]ATTR=VALUE", value_parser = scoped(parse_fail_when))]
    fail_when: Vec<Scoped<(String, String)>>,
    /// With --fail-when: the whole batch fails instead, and none of it is printed.
    #[arg(long)]
    whole_batch_failures: bool,
    /// Sleep this long in every `process` call before printing.
    #[arg(long, value_name = "[NAME:]DUR", value_parser = scoped(parse_duration))]
    process_delay: Vec<Scoped<Duration>>,
    /// Serve Prometheus metrics at http://HOST:PORT/metrics and health at /healthz.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// First print every item of each table (`"event":"SNAPSHOT"`, `"old":null`, `"seq":""`),
    /// then the stream's changes after the snapshot began (a new application only).
    #[arg(long)]
    snapshot: bool,
    /// Parallel Scan segments of --snapshot. Default: 8.
    #[arg(long, value_name = "N")]
    snapshot_segments: Option<u32>,
    /// Items per Scan page (and batch) of --snapshot. Default: 500.
    #[arg(long, value_name = "N")]
    snapshot_page_size: Option<u32>,
    /// Stream records created this long before a start time are still delivered (covers
    /// the rounding of creation times and clock skew). Default: 5s, or 90s with --endpoint (DynamoDB Local
    /// rounds creation times down to the minute).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    creation_time_margin: Option<Duration>,
    /// `jsonl`: one line per change; `lambda`: one line per batch, Lambda's DynamoDB event.
    #[arg(long, value_enum, default_value = "jsonl")]
    format: Format,
}

fn parse_kinds(text: &str) -> Result<Vec<OperationType>, String> {
    text.split(',').map(parse_kind).collect()
}

fn parse_kind(text: &str) -> Result<OperationType, String> {
    match text.trim().to_ascii_uppercase().as_str() {
        "INSERT" => Ok(OperationType::Insert),
        "MODIFY" => Ok(OperationType::Modify),
        "REMOVE" => Ok(OperationType::Remove),
        // Snapshot records (`--snapshot`) carry this event name.
        "SNAPSHOT" => Ok(OperationType::from("SNAPSHOT")),
        other => Err(format!(
            "unknown event {other:?}: expected INSERT, MODIFY, REMOVE or SNAPSHOT"
        )),
    }
}

fn parse_fail_when(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((attr, value)) if !attr.is_empty() => Ok((attr.to_owned(), value.to_owned())),
        _ => Err(format!("expected ATTR=VALUE, got {text:?}")),
    }
}

/// How a processor fails on purpose (`--fail-when`).
#[derive(Clone, Debug)]
struct FailWhen {
    attribute: String,
    value: String,
    whole_batch: bool,
}

impl FailWhen {
    /// Whether `change`'s new image has the attribute at the value, compared as text.
    fn matches(&self, change: &Change<IgnoredAny>) -> bool {
        let new = change.raw().dynamodb().and_then(|r| r.new_image.as_ref());
        new.and_then(|image| image.get(&self.attribute))
            .is_some_and(|value| match attribute_to_json(value) {
                Value::String(text) => text == self.value,
                // Numbers and booleans as their JSON text (`5`, `true`).
                other => {
                    let text = other.to_string();
                    text == self.value
                }
            })
    }
}

/// A batch's lines, and where the writer says whether they were written and flushed.
type Lines = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// Stdout, written by a thread of its own. A reader that stops reading blocks that thread
/// and the batches waiting for their lines to be written, never the runtime's threads:
/// heartbeats, lease scans, `/healthz` and shutdown go on.
#[derive(Clone)]
struct StdoutWriter {
    lines: tokio::sync::mpsc::Sender<Lines>,
}

impl StdoutWriter {
    fn start() -> std::io::Result<Self> {
        let (lines, mut queue) = tokio::sync::mpsc::channel::<Lines>(64);
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let mut out = std::io::stdout().lock();
                while let Some((text, written)) = queue.blocking_recv() {
                    let _ = written.send(out.write_all(&text).and_then(|()| out.flush()));
                }
            })?;
        Ok(Self { lines })
    }

    /// Writes and flushes `text`; returns once it is written (or failed to be).
    async fn write(&self, text: Vec<u8>) -> Result<(), BoxError> {
        let (written, done) = tokio::sync::oneshot::channel();
        let stopped = || BoxError::from("the stdout writer stopped");
        self.lines
            .send((text, written))
            .await
            .map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())??;
        Ok(())
    }
}

/// Writes the changes of one shard as JSON lines.
struct JsonlProcessor {
    worker: Arc<str>,
    table: Option<String>,
    shard: String,
    /// `eventSourceARN` of `--format lambda`.
    stream_arn: String,
    format: Format,
    fail_when: Option<FailWhen>,
    delay: Option<Duration>,
    out: StdoutWriter,
    /// The pipeline it prints for (`--pipeline`): each line says so.
    pipeline: Option<Arc<str>>,
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
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
        let failing = self
            .fail_when
            .as_ref()
            .and_then(|fail| Some((fail, batch.iter().position(|c| fail.matches(c))?)));
        let printed = match failing {
            Some((fail, _)) if fail.whole_batch => {
                return Err(format!("a change has {}={}", fail.attribute, fail.value).into());
            }
            Some((_, at)) => at,
            None => batch.len(),
        };
        let mut text = Vec::new();
        if self.format == Format::Lambda && printed > 0 {
            let records = batch.iter().take(printed).map(|change| change.raw());
            let event = dynamodb_streams_consumer::lambda::event::event_to_json(
                records,
                Some(&self.stream_arn),
            );
            serde_json::to_writer(&mut text, &event)?;
            text.push(b'\n');
        }
        for change in batch
            .iter()
            .take(printed)
            .filter(|_| self.format == Format::Jsonl)
        {
            let mut line = change_to_json(
                &self.worker,
                self.table.as_deref(),
                Some(&self.shard),
                change,
            );
            if let (Some(pipeline), Some(fields)) = (&self.pipeline, line.as_object_mut()) {
                fields.insert("pipeline".into(), Value::from(pipeline.as_ref()));
            }
            serde_json::to_writer(&mut text, &line)?;
            text.push(b'\n');
        }
        // Written and flushed before the batch succeeds; an error (stdout closed) fails the
        // batch: it is delivered again, never checkpointed unwritten.
        if !text.is_empty() {
            self.out.write(text).await?;
        }
        match failing {
            Some((fail, at)) => Err(BatchFailure::at(
                batch.changes[at].sequence_number.clone(),
                format!("the change has {}={}", fail.attribute, fail.value),
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
    dynamodb_streams_examples::exit_code("jsonl-worker", run(args).await)
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Listen before anything else: a SIGTERM during start-up still shuts down gracefully.
    let signals = Signals::new()?;
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
    let worker: Arc<str> = worker_id.as_str().into();

    let mut builder = connection
        .builder(&sdk_config, &worker_id)
        .with_checkpoint_interval(args.checkpoint_interval);
    builder = delivery_settings(builder, &args)?;
    builder = snapshot_settings(builder, &args);
    let out = StdoutWriter::start()?;
    let processors = |pipeline: Option<&str>| {
        let fail_when =
            scoped_value(&args.fail_when, pipeline).map(|(attribute, value)| FailWhen {
                attribute,
                value,
                whole_batch: args.whole_batch_failures,
            });
        let delay = scoped_value(&args.process_delay, pipeline);
        let (worker, out, format) = (worker.clone(), out.clone(), args.format);
        let pipeline: Option<Arc<str>> = pipeline.map(Into::into);
        move |shard: &ShardContext| JsonlProcessor {
            worker: worker.clone(),
            table: shard.table.clone(),
            shard: shard.shard_id.clone(),
            stream_arn: shard.stream_arn.clone(),
            format,
            fail_when: fail_when.clone(),
            delay,
            out: out.clone(),
            pipeline: pipeline.clone(),
        }
    };
    let consumer = if args.pipelines.is_empty() {
        if let Some(name) = jsonl_pipeline_names(&args).first() {
            return Err(format!(
                "a flag names pipeline {name:?} (NAME:VALUE), but there are no pipelines \
                 (--pipeline NAME)"
            )
            .into());
        }
        let consumer = builder.build(processors(None))?;
        return run_consumer(consumer, &args, &sdk_config, signals).await;
    } else {
        let named = args
            .delivery
            .pipeline_names()
            .into_iter()
            .chain(jsonl_pipeline_names(&args));
        for name in named {
            if !args.pipelines.iter().any(|p| p == name) {
                return Err(format!(
                    "a flag names pipeline {name:?} (NAME:VALUE), which no --pipeline gives"
                )
                .into());
            }
        }
        for name in &args.pipelines {
            let delivery = args.delivery.pipeline_settings(name)?;
            let events = Scoped::own(&args.events, name);
            builder = builder
                .with_pipeline(name.as_str(), processors(Some(name)))
                .with_pipeline_settings(name, move |b| {
                    let b = delivery(b);
                    match events {
                        Some(kinds) => b.with_filter(move |record: &Record| {
                            record.event_name().is_some_and(|kind| kinds.contains(kind))
                        }),
                        None => b,
                    }
                });
        }
        builder.build_pipelines()?
    };
    run_consumer(consumer, &args, &sdk_config, signals).await
}

/// A flag's value for `pipeline` (its own, else the one for every pipeline); without
/// pipelines, the one for every pipeline.
fn scoped_value<T: Clone>(values: &[Scoped<T>], pipeline: Option<&str>) -> Option<T> {
    pipeline
        .and_then(|name| Scoped::own(values, name))
        .or_else(|| Scoped::common(values))
}

/// The pipelines jsonl-worker's own flags name (`NAME:VALUE`).
fn jsonl_pipeline_names(args: &Args) -> Vec<&str> {
    let names = args.events.iter().filter_map(|v| v.pipeline.as_deref());
    let names = names.chain(args.fail_when.iter().filter_map(|v| v.pipeline.as_deref()));
    names
        .chain(
            args.process_delay
                .iter()
                .filter_map(|v| v.pipeline.as_deref()),
        )
        .collect()
}

/// Serves metrics if asked, waits for the endpoint, then runs `consumer` until a signal.
async fn run_consumer<F: dynamodb_streams_consumer::ProcessorFactory>(
    consumer: dynamodb_streams_consumer::Consumer<F>,
    args: &Args,
    sdk_config: &aws_config::SdkConfig,
    mut signals: Signals,
) -> Result<(), Box<dyn std::error::Error>> {
    let connection = &args.connection;
    tracing::info!(worker_id = consumer.worker_id(), "starting");
    let _metrics = match &args.metrics_addr {
        Some(addr) => Some(
            serve_metrics(addr, consumer.worker_id(), consumer.health())
                .await
                .map_err(|e| format!("--metrics-addr {addr}: {e}"))?,
        ),
        None => None,
    };
    // How errors name the endpoint: the URL, or the default AWS endpoint and region.
    let endpoint = AwsClients::from_sdk_config(sdk_config)
        .endpoint()
        .to_owned();
    tokio::select! {
        answered = dynamodb_streams_examples::worker_flags::endpoint_answers(sdk_config, &connection.tables, &endpoint) => answered?,
        name = signals.recv() => {
            tracing::info!(signal = name, "stopped before start-up completed");
            return Ok(());
        }
    }
    consumer.run_until(signals.first_then_force()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// `--snapshot`, `--snapshot-segments` and `--creation-time-margin`, applied to `builder`.
fn snapshot_settings(mut builder: ConsumerBuilder, args: &Args) -> ConsumerBuilder {
    let margin = match (args.creation_time_margin, &args.connection.endpoint) {
        (Some(margin), _) => Some(margin),
        (None, Some(_)) => Some(Duration::from_secs(90)),
        (None, None) => None,
    };
    if let Some(margin) = margin {
        builder = builder.with_creation_time_margin(margin);
    }
    if args.snapshot {
        let mut snapshot = SnapshotConfig::new();
        if let Some(segments) = args.snapshot_segments {
            snapshot = snapshot.with_segments(segments);
        }
        if let Some(items) = args.snapshot_page_size {
            snapshot = snapshot.with_page_size(items);
        }
        builder = builder.with_snapshot(snapshot);
    }
    builder
}

/// The delivery flags and `--events`, applied to `builder`.
fn delivery_settings(
    builder: ConsumerBuilder,
    args: &Args,
) -> Result<ConsumerBuilder, Box<dyn std::error::Error>> {
    let mut builder = if args.pipelines.is_empty() {
        args.delivery.apply(builder)?
    } else {
        args.delivery.apply_common(builder)?
    };
    let kinds: Vec<OperationType> = args
        .events
        .iter()
        .filter(|e| e.pipeline.is_none())
        .flat_map(|e| e.value.clone())
        .collect();
    if !kinds.is_empty() {
        builder = builder.with_filter(move |record: &Record| {
            record.event_name().is_some_and(|kind| kinds.contains(kind))
        });
    }
    Ok(builder)
}
