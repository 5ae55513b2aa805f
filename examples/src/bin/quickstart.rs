//! This example shows how to consume the change stream of a DynamoDB table with
//! at-least-once delivery. A writer puts, updates and deletes one item in a loop; a consumer
//! in the same process prints every change of the table's stream as it arrives, e.g.
//!
//! ```text
//! [:insert {:name "test" :count 0}]  seq=000000000000000000001
//! [:modify {:name "test" :count 0} {:name "test" :count 1}]  seq=000000000000000000002
//! [:remove {:name "test" :count 1}]  seq=000000000000000000003
//! ```
//!
//! The delivery contract: every change is delivered at least once, and the changes of one
//! item arrive in the order they were made (records of a shard are delivered in order, and a
//! shard starts only after its parents ended). Progress is checkpointed per shard in a lease
//! table (here `stream-me-demo`, in the same DynamoDB) after `process` returns `Ok`, never
//! before: a change whose processing failed is delivered again, not skipped. In case of a
//! crash, the changes after the last checkpoint are delivered again, so they may be printed
//! twice, but they are never lost. A processor with side effects should therefore be
//! idempotent (or deduplicate by sequence number).
//!
//! A graceful stop (Ctrl-C or SIGTERM) lets the processors finish their batch, writes the
//! final checkpoints and releases the leases; the next run resumes right after the last
//! printed change instead of replaying the stream. A run that was killed resumes from its
//! last checkpoint too, once its leases have expired (the failover time, here 5 s).
//!
//! This demo checkpoints after every batch (`with_checkpoint_interval(Duration::ZERO)`): the
//! smallest window for duplicates, at one write per batch. The default coalesces checkpoints
//! to one per second per shard.
//!
//! Run it with `make demo` (DynamoDB Local, data kept in `.demo-data/`), or against any
//! DynamoDB with `cargo run -p dynamodb-streams-examples --bin quickstart -- [--endpoint URL] [--iterations N]`.
//! With `--iterations N` it stops by itself once the N write cycles (3N changes) of this run
//! have been printed. Each item carries a `run` attribute naming the run that wrote it, so
//! that changes left over from an earlier run are not counted as this run's.

use std::error::Error;
use std::fmt;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use dynamodb_streams_consumer::{
    BoxError, Change, ChangeBatch, ChangeKind, Consumer, processor_fn,
};
use dynamodb_streams_examples::Signals;
use dynamodb_streams_leases::aws::wait_until_table_active;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The pause between two writes.
const WRITE_PAUSE: Duration = Duration::from_millis(300);
/// How long `--iterations` waits for the consumer to print this run's changes.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);
/// How long a graceful shutdown may take.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(30);
/// How long one DynamoDB call of the demo (retries included) may take.
const CALL_DEADLINE: Duration = Duration::from_secs(10);

type DemoError = Box<dyn Error + Send + Sync>;

/// Writes to a table and prints its change stream.
#[derive(Debug, Parser)]
#[command(name = "quickstart")]
struct Args {
    /// DynamoDB endpoint (DynamoDB Local); without it, the AWS defaults apply.
    #[arg(long, env = "DYNAMODB_ENDPOINT", value_name = "URL")]
    endpoint: Option<String>,
    /// AWS region (default with --endpoint: us-east-1).
    #[arg(long, value_name = "R")]
    region: Option<String>,
    /// The table to write to and consume (created when missing).
    #[arg(long, default_value = "stream-me")]
    table: String,
    /// The application name, which is also the lease table's name.
    #[arg(long, default_value = "stream-me-demo")]
    app: String,
    /// Stop after this many put/update/delete cycles once their changes are printed.
    /// Default: run until Ctrl-C.
    #[arg(long, value_name = "N")]
    iterations: Option<u64>,
}

/// The item, as the consumer sees it: images decode into this type with serde.
#[derive(Debug, Deserialize)]
struct Counter {
    name: String,
    count: i64,
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{:name {:?} :count {}}}", self.name, self.count)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("warn");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Why the demo stops.
enum Stop {
    Signal(&'static str),
    Done,
    Failed(DemoError),
}

async fn run(args: Args) -> Result<(), DemoError> {
    let mut signals = Signals::new()?;
    let sdk_config =
        dynamodb_streams_examples::sdk_config(args.endpoint.as_deref(), args.region.as_deref())
            .await;
    let where_ = args.endpoint.as_deref().unwrap_or("AWS");
    // Bounded calls: an endpoint that stops answering fails the demo instead of hanging it.
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        aws_sdk_dynamodb::config::Builder::from(&sdk_config)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(CALL_DEADLINE)
                    .build(),
            )
            .build(),
    );

    tokio::select! {
        ready = ensure_table(&dynamodb, &args.table, where_) => ready?,
        name = signals.recv() => {
            eprintln!("quickstart: {name} before the demo started");
            return Ok(());
        }
    }

    let run_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default()
        .to_string();
    let printed = Arc::new(AtomicU64::new(0));
    let consumer = Consumer::builder(args.app.as_str())
        .with_table(args.table.as_str())
        .with_sdk_config(&sdk_config)
        .with_checkpoint_interval(Duration::ZERO)
        .with_idle_backoff(Duration::from_millis(50), Duration::from_millis(250))
        .with_failover_time(Duration::from_secs(5))
        .build(processor_fn({
            let run_id: Arc<str> = run_id.as_str().into();
            let printed = printed.clone();
            move |batch: ChangeBatch<Counter>| {
                let result = print_batch(&batch, &run_id, &printed);
                async move { result }
            }
        }))?;

    let stop = CancellationToken::new();
    let mut consumer_task = tokio::spawn(consumer.run_until(stop.clone().cancelled_owned()));
    match args.iterations {
        Some(n) => eprintln!(
            "quickstart: writing {n} cycles to {:?} at {where_} and printing its changes",
            args.table
        ),
        None => eprintln!(
            "quickstart: writing to {:?} at {where_} and printing its changes; Ctrl-C stops",
            args.table
        ),
    }

    let mut stopped = tokio::select! {
        name = signals.recv() => Stop::Signal(name),
        joined = &mut consumer_task => return Err(consumer_ended(joined)),
        written = write_loop(&dynamodb, &args.table, &run_id, args.iterations) => match written {
            Ok(()) => Stop::Done,
            Err(error) => Stop::Failed(error),
        },
    };
    if let (Stop::Done, Some(n)) = (&stopped, args.iterations) {
        stopped = tokio::select! {
            name = signals.recv() => Stop::Signal(name),
            joined = &mut consumer_task => return Err(consumer_ended(joined)),
            drained = wait_until_printed(&printed, 3 * n) => match drained {
                Ok(()) => Stop::Done,
                Err(error) => Stop::Failed(error),
            },
        };
    }
    if let Stop::Signal(name) = stopped {
        eprintln!("quickstart: {name}: shutting down gracefully ({name} again quits at once)");
    }

    stop.cancel();
    tokio::select! {
        joined = tokio::time::timeout(SHUTDOWN_DEADLINE, &mut consumer_task) => match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(joined) => return Err(consumer_ended(joined)),
            Err(_) => {
                return Err(format!(
                    "the consumer did not shut down within {SHUTDOWN_DEADLINE:?}"
                ).into());
            }
        },
        name = signals.recv() => {
            eprintln!("quickstart: {name} again: quitting without finishing the shutdown");
            std::process::exit(130);
        }
    }
    match stopped {
        Stop::Failed(error) => Err(error),
        Stop::Done | Stop::Signal(_) => {
            eprintln!(
                "quickstart: stopped after printing {} changes of this run (checkpoint saved)",
                printed.load(Ordering::SeqCst)
            );
            Ok(())
        }
    }
}

/// Prints a batch, one line per change, and counts the changes this run wrote.
fn print_batch(
    batch: &ChangeBatch<Counter>,
    run_id: &str,
    printed: &AtomicU64,
) -> Result<(), BoxError> {
    let mut out = std::io::stdout().lock();
    let mut ours = 0;
    for change in batch {
        writeln!(out, "{}  seq={}", show(change), change.sequence_number)?;
        if written_by(change, run_id) {
            ours += 1;
        }
    }
    out.flush()?;
    printed.fetch_add(ours, Ordering::SeqCst);
    Ok(())
}

/// `[:insert NEW]`, `[:modify OLD NEW]` or `[:remove OLD]`.
fn show(change: &Change<Counter>) -> String {
    let image = |image: &Option<Counter>| {
        image
            .as_ref()
            .map_or_else(|| "nil".to_owned(), Counter::to_string)
    };
    match change.kind {
        ChangeKind::Insert => format!("[:insert {}]", image(&change.new)),
        ChangeKind::Modify => format!("[:modify {} {}]", image(&change.old), image(&change.new)),
        ChangeKind::Remove => format!("[:remove {}]", image(&change.old)),
        ChangeKind::Snapshot => format!("[:snapshot {}]", image(&change.new)),
    }
}

/// Whether this run wrote the change (its `run` attribute, in either image).
fn written_by(change: &Change<Counter>, run_id: &str) -> bool {
    use aws_sdk_dynamodbstreams::types::AttributeValue as StreamValue;
    let Some(record) = change.raw().dynamodb() else {
        return false;
    };
    [record.new_image.as_ref(), record.old_image.as_ref()]
        .into_iter()
        .flatten()
        .any(|image| matches!(image.get("run"), Some(StreamValue::S(run)) if run == run_id))
}

/// Put, update, delete, pause; `iterations` times, or until the future is dropped.
async fn write_loop(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    run_id: &str,
    iterations: Option<u64>,
) -> Result<(), DemoError> {
    let failed = |operation: &str, error: &dyn fmt::Display| -> DemoError {
        format!("{operation} on table {table:?} failed: {error}").into()
    };
    let mut i: i64 = 0;
    while iterations.is_none_or(|n| u64::try_from(i).is_ok_and(|i| i < n)) {
        dynamodb
            .put_item()
            .table_name(table)
            .item("name", AttributeValue::S("test".into()))
            .item("count", AttributeValue::N(i.to_string()))
            .item("run", AttributeValue::S(run_id.to_owned()))
            .send()
            .await
            .map_err(|e| failed("PutItem", &DisplayErrorContext(e)))?;
        tokio::time::sleep(WRITE_PAUSE).await;
        dynamodb
            .update_item()
            .table_name(table)
            .key("name", AttributeValue::S("test".into()))
            .update_expression("SET #c = #c + :one")
            .expression_attribute_names("#c", "count")
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
            .await
            .map_err(|e| failed("UpdateItem", &DisplayErrorContext(e)))?;
        tokio::time::sleep(WRITE_PAUSE).await;
        dynamodb
            .delete_item()
            .table_name(table)
            .key("name", AttributeValue::S("test".into()))
            .send()
            .await
            .map_err(|e| failed("DeleteItem", &DisplayErrorContext(e)))?;
        tokio::time::sleep(WRITE_PAUSE).await;
        i += 1;
    }
    Ok(())
}

/// Waits until `expected` changes of this run were printed, at most [`DRAIN_DEADLINE`].
async fn wait_until_printed(printed: &AtomicU64, expected: u64) -> Result<(), DemoError> {
    let deadline = Instant::now() + DRAIN_DEADLINE;
    loop {
        let seen = printed.load(Ordering::SeqCst);
        if seen >= expected {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the consumer printed {seen} of the {expected} changes of this run within \
                 {DRAIN_DEADLINE:?} after the writer finished"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table with a NEW_AND_OLD_IMAGES stream, created when missing, once ACTIVE.
async fn ensure_table(
    dynamodb: &aws_sdk_dynamodb::Client,
    table: &str,
    where_: &str,
) -> Result<(), DemoError> {
    let describe = dynamodb.describe_table().table_name(table).send().await;
    match describe {
        Ok(output) => {
            let enabled = output
                .table()
                .and_then(|t| t.stream_specification())
                .is_some_and(|spec| spec.stream_enabled());
            if !enabled {
                return Err(format!(
                    "table {table:?} at {where_} exists but has no stream enabled"
                )
                .into());
            }
        }
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            eprintln!("quickstart: creating table {table:?} at {where_}");
            dynamodb_streams_examples::create_table(dynamodb, table, "name", true)
                .await
                .map_err(|e| format!("{e} (at {where_})"))?;
            return Ok(());
        }
        Err(error) => {
            return Err(format!(
                "DescribeTable {table:?} at {where_} failed: {}",
                DisplayErrorContext(error)
            )
            .into());
        }
    }
    wait_until_table_active(dynamodb, table, dynamodb_streams_examples::TABLE_DEADLINE)
        .await
        .map_err(|e| format!("{e} (at {where_})"))?;
    Ok(())
}

fn consumer_ended(
    joined: Result<dynamodb_streams_consumer::Result<()>, tokio::task::JoinError>,
) -> DemoError {
    match joined {
        Ok(Ok(())) => "the consumer stopped unexpectedly".into(),
        Ok(Err(error)) => format!("the consumer failed: {error}").into(),
        Err(error) => format!("the consumer task failed: {error}").into(),
    }
}
