//! What a worker's memory comes to (resident set size, `sysinfo`), in two situations, over
//! the simulated stream in real time on a multi-threaded runtime, as a real worker runs:
//!
//! - **idle**: one worker owns `--idle-shards` leases (default 1,000) of shards with no
//!   records, each polled about once a second; the peak RSS over `--seconds` once every
//!   shard has opened its iterator. Target: <= 64 MB.
//! - **catch-up**: `--shards` shards (default 200) each with a backlog of
//!   `--records-per-shard` records of 1-4 KB items, read all at once by one worker whose
//!   processor takes `--process-delay` per batch (so fetched pages pile up until the
//!   budget stops them); the peak RSS until every record was processed, next to the RSS
//!   with the backlog written but no worker yet (the simulated stream keeps the backlog in
//!   this process). Target: growth <= `--max-buffered-mb` (the budget, default 256) + 64 MB.
//!   `--max-buffered-mb 100000` shows what the pages come to without a budget.
//!
//! Pages are at most 1 MB of items, as DynamoDB Streams returns them.
//!
//! ```text
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example memory -- idle
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example memory -- catch-up
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example memory -- catch-up --max-buffered-mb 64
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use dynamodb_streams_consumer::testkit::{SimConfig, SimOperation, SimulatedStream};
use dynamodb_streams_consumer::{ChangeBatch, Consumer, processor_fn};
use dynamodb_streams_leases::InMemoryLeaseStore;
use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

const MB: u64 = 1024 * 1024;
/// DynamoDB Streams returns at most 1 MB of items per GetRecords call.
const PAGE_BYTES: usize = 1_000_000;

#[derive(Debug, Parser)]
#[command(name = "memory")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// One worker owning many idle leases.
    Idle {
        /// Shards (leases) the worker owns.
        #[arg(long, default_value_t = 1000)]
        idle_shards: usize,
        /// How long the RSS is watched once every shard is being polled.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One worker catching up on many shards at once.
    CatchUp {
        /// Shards, each with a backlog.
        #[arg(long, default_value_t = 200)]
        shards: usize,
        /// Records per shard (on average: items are spread by key hash).
        #[arg(long, default_value_t = 1500)]
        records_per_shard: usize,
        /// The worker's budget for fetched pages (`with_max_buffered_bytes`), in MB.
        #[arg(long, default_value_t = 256)]
        max_buffered_mb: u64,
        /// How long the processor takes per batch, e.g. `20ms`.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        process_delay: Duration,
    },
}

/// A realistic item: a key, a counter and a 1-4 KB payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    pk: String,
    n: u64,
    payload: String,
}

impl Item {
    fn new(n: u64) -> Self {
        let len = 1024 + (n as usize * 7919) % 3072;
        Self {
            pk: format!("item-{n:010}"),
            n,
            payload: "p".repeat(len),
        }
    }
}

/// This process's RSS, sampled every 10 ms on a thread of its own while it runs.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let (peak, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let thread = {
            let (peak, stop) = (peak.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(rss(), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak seen.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peak.load(Ordering::Relaxed).max(rss())
    }
}

/// The resident set size of this process, in bytes (0 if unknown).
fn rss() -> u64 {
    let Ok(pid) = sysinfo::get_current_pid() else {
        return 0;
    };
    let mut system = System::new();
    system.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    system
        .process(Pid::from(pid.as_u32() as usize))
        .map_or(0, |p| p.memory())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / MB as f64
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.mode {
            Mode::Idle {
                idle_shards,
                seconds,
            } => idle(idle_shards, seconds).await,
            Mode::CatchUp {
                shards,
                records_per_shard,
                max_buffered_mb,
                process_delay,
            } => catch_up(shards, records_per_shard, max_buffered_mb, process_delay).await,
        }
    })
}

/// A running worker and what stops it.
type Worker = (
    tokio::task::JoinHandle<dynamodb_streams_consumer::Result<()>>,
    tokio::sync::oneshot::Sender<()>,
);

/// Runs one worker over `sim` until the sender it returns is used.
fn spawn_worker<F: dynamodb_streams_consumer::ProcessorFactory>(
    sim: &SimulatedStream,
    budget: u64,
    factory: F,
) -> Result<Worker, Box<dyn std::error::Error>> {
    let consumer = Consumer::builder("memory")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_max_buffered_bytes(budget)
        .build(factory)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));
    Ok((task, stop))
}

async fn idle(shards: usize, seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: shards,
        ..SimConfig::default()
    });
    sim.add_table("t");
    let before = rss();
    let (task, stop) = spawn_worker(
        &sim,
        256 * MB,
        processor_fn(|_: ChangeBatch<Item>| async { Ok(()) }),
    )?;
    let started = Instant::now();
    while sim.calls(SimOperation::GetShardIterator) < shards as u64 {
        if started.elapsed() > Duration::from_secs(120) {
            return Err(format!(
                "only {} of {shards} shards opened within 2 minutes",
                sim.calls(SimOperation::GetShardIterator)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let owned_after = started.elapsed();
    let polls_before = sim.calls(SimOperation::GetRecords);
    let sampler = RssSampler::start();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let peak = sampler.finish();
    let polls = sim.calls(SimOperation::GetRecords) - polls_before;
    let _ = stop.send(());
    task.await??;
    println!(
        "idle: {shards} leases owned by one worker (every shard polling after {:.1} s); RSS before the worker {:.1} MB; peak RSS over {seconds} s: {:.1} MB (target <= 64 MB); {:.2} GetRecords per shard per second",
        owned_after.as_secs_f64(),
        mb(before),
        mb(peak),
        polls as f64 / shards as f64 / seconds as f64
    );
    Ok(())
}

async fn catch_up(
    shards: usize,
    records_per_shard: usize,
    budget_mb: u64,
    process_delay: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let items = shards * records_per_shard;
    let mean_item = 1024 + 3072 / 2 + 40;
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: shards,
        max_records_per_page: (PAGE_BYTES / mean_item).clamp(1, 1000) as u32,
        ..SimConfig::default()
    });
    sim.add_table("t");
    for n in 0..items as u64 {
        sim.put_value("t", &Item::new(n))?;
    }
    let baseline = rss();
    let processed = Arc::new(AtomicU64::new(0));
    let counter = processed.clone();
    let sampler = RssSampler::start();
    let started = Instant::now();
    let (task, stop) = spawn_worker(
        &sim,
        budget_mb * MB,
        processor_fn(move |batch: ChangeBatch<Item>| {
            let counter = counter.clone();
            async move {
                tokio::time::sleep(process_delay).await;
                let payload: usize = batch
                    .iter()
                    .filter_map(|c| c.new.as_ref())
                    .map(|i| i.payload.len())
                    .sum();
                std::hint::black_box(payload);
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                Ok(())
            }
        }),
    )?;
    while processed.load(Ordering::Relaxed) < items as u64 {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "processed only {} of {items} records in 10 minutes",
                processed.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    let peak = sampler.finish();
    let _ = stop.send(());
    task.await??;
    let growth = peak.saturating_sub(baseline);
    println!(
        "catch-up: {shards} shards x ~{records_per_shard} records of 1-4 KB ({items} records, pages of up to {} records) in {:.1} s, processor {process_delay:?} per batch; RSS with the backlog written {:.1} MB, peak while catching up {:.1} MB: growth {:.1} MB with a budget of {budget_mb} MB (target <= budget + 64 MB = {} MB)",
        sim.config().max_records_per_page,
        took.as_secs_f64(),
        mb(baseline),
        mb(peak),
        mb(growth),
        budget_mb + 64
    );
    Ok(())
}
