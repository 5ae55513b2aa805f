//! Throughput benchmark against DynamoDB Local: the framework against a plain GetRecords
//! loop. (Decode and dispatch without a network is `cargo bench -p dynamodb-streams-consumer --bench
//! decode`.)
//!
//! What it measures, in order:
//!
//! 1. **Fill.** Creates a table with a `NEW_AND_OLD_IMAGES` stream and writes `--records`
//!    items of about `--item-bytes` bytes with BatchWriteItem (25 items per call, several
//!    concurrent writers, unprocessed items retried). Prints the fill rate.
//! 2. **Drain, twice per path, alternating** (plain, framework, plain, framework), each
//!    from TRIM_HORIZON, after one untimed warm-up round (DynamoDB Local is a JVM: its
//!    first drains run slower while it compiles); the best run of each path is reported:
//!    - *plain GetRecords loop*: DescribeStream (untimed setup), then
//!      GetShardIterator(TRIM_HORIZON) and GetRecords (limit 1000) until N records were
//!      read; timed from the first GetShardIterator to the Nth record. Records are only
//!      counted, not decoded.
//!    - *framework*: a [`Consumer`] with a fresh application, TRIM_HORIZON, batch limit
//!      1000, a checkpoint after every batch (`with_checkpoint_interval(Duration::ZERO)`),
//!      and a processor that receives the changes decoded into a `serde` struct and counts
//!      them. Its lease table is created first (untimed setup: a long-running worker's
//!      lease table exists before it drains, as the plain loop's stream is described
//!      before its clock starts). Timed from `run_until` to the end of the `process` call
//!      that delivers the Nth change, so it includes the rest of the start-up (DescribeTable
//!      of the lease table and of the source table, first heartbeat, the first shard sync
//!      creating the leases, the scan and lease take) and every checkpoint but the last
//!      batch's (written right after that call returns).
//!
//!    The comparison is only fair with both setups outside the clock; a *cold start* line
//!    counts them in for both (the plain loop's DescribeStream, the framework's CreateTable
//!    and TTL setup), so what a brand-new application pays is printed, not hidden.
//!
//!    Both paths also report the time to their first record (startup) and a steady-state
//!    rate (records after the first page, over the time from the first page to the Nth
//!    record), and the ratio of both rates framework/plain. The plain loops print their
//!    mean GetRecords time; each framework run prints a profile: time between batches,
//!    time per streams call as the framework saw it, the time from a GetRecords answer to
//!    the next call, and CPU use. `--diagnose` adds two runs per round: the plain loop writing a checkpoint
//!    per page itself (the lease store's conditional write, one in flight, the latest
//!    pending written next, as the framework does), the ceiling of any consumer that
//!    checkpoints every batch against this server; and the framework with checkpoints
//!    coalesced to 1 s (the default). Together they show what the per-batch checkpoint
//!    costs the server and what the framework adds to it (its start-up, mostly: heartbeat,
//!    lease creation, scan and take before the first GetShardIterator).
//!
//! Figures only: nothing here asserts a speed. Run it against DynamoDB Local with
//!
//! ```text
//! make bench                                   # defaults
//! make bench BENCH_ARGS="--records 50000 --rounds 3"
//! # or by hand, against any endpoint:
//! cargo run --release -p dynamodb-streams-examples --bin benchmark -- --endpoint http://127.0.0.1:8000
//! ```
//!
//! `make bench` starts DynamoDB Local with `scripts/dynamodb-local.sh run`, which exports
//! `DYNAMODB_ENDPOINT`; `--endpoint` defaults to that variable. Set `RUST_LOG` for the
//! framework's logs (default: warnings only).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use clap::Parser;
use dynamodb_streams_consumer::streams::{
    ApiError, RecordsPage, SdkStreams, ShardInfo, StartPosition, StreamPage, StreamsApi,
};
use dynamodb_streams_consumer::{
    BoxError, ChangeBatch, Consumer, InitialPosition, ProcessorFactory, processor_fn,
};
use dynamodb_streams_examples::{local_sdk_config, unique_name};
use dynamodb_streams_leases::{
    Checkpoint, DynamoDbLeaseStore, Lease, LeaseKey, LeaseStore, Ownership, SequenceNumber,
};
use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};
use tokio::sync::Notify;

/// How long one step (fill, one drain) may take before the benchmark gives up on it.
const DEADLINE: Duration = Duration::from_secs(600);
/// Items per BatchWriteItem call (the service's maximum).
const BATCH_WRITE_MAX: usize = 25;
/// Records per GetRecords call, for both paths (the service's maximum).
const PAGE_LIMIT: u32 = 1000;

#[derive(Parser, Debug)]
#[command(about = "Framework vs plain GetRecords loop throughput, against DynamoDB Local")]
struct Args {
    /// DynamoDB endpoint URL (DynamoDB Local), e.g. http://127.0.0.1:8000.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint: String,
    /// Changes written to the table's stream and drained by each run.
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Approximate size of each item in bytes.
    #[arg(long, default_value_t = 200)]
    item_bytes: usize,
    /// Concurrent BatchWriteItem writers during the fill.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Runs per path (alternating plain, framework); the best of each is reported.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Untimed rounds first (plain and framework each), so DynamoDB Local's JVM has
    /// compiled its GetRecords and UpdateItem paths before anything is measured.
    #[arg(long, default_value_t = 1)]
    warmup_rounds: usize,
    /// Also run the framework with checkpoints coalesced to 1 s (the default setting) in
    /// each round, to show what the per-batch checkpoint costs.
    #[arg(long)]
    diagnose: bool,
}

/// The item type the framework decodes every image into.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchItem {
    pk: String,
    n: u64,
    group: u32,
    kind: String,
    payload: String,
}

impl BenchItem {
    fn new(n: u64, payload_len: usize) -> Self {
        let payload = (0..payload_len)
            .map(|j| char::from(b'a' + ((n as usize * 31 + j * 7) % 26) as u8))
            .collect();
        Self {
            pk: format!("item-{n:010}"),
            n,
            group: (n % 97) as u32,
            kind: "order".to_owned(),
            payload,
        }
    }

    /// The item as the DynamoDB SDK writes it (the same shape `serde_dynamo` gives).
    fn to_dynamodb(&self) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(self.pk.clone())),
            ("n".to_owned(), AttributeValue::N(self.n.to_string())),
            (
                "group".to_owned(),
                AttributeValue::N(self.group.to_string()),
            ),
            ("kind".to_owned(), AttributeValue::S(self.kind.clone())),
            (
                "payload".to_owned(),
                AttributeValue::S(self.payload.clone()),
            ),
        ])
    }

    /// The payload length that makes an item about `item_bytes` bytes (attribute names
    /// plus values, as DynamoDB counts item size).
    fn payload_len_for(item_bytes: usize) -> usize {
        let fixed = Self::new(0, 0);
        let overhead = ["pk", "n", "group", "kind", "payload"]
            .iter()
            .map(|name| name.len())
            .sum::<usize>()
            + fixed.pk.len()
            + 6 // n, up to 10 digits as a DynamoDB number
            + 2 // group
            + fixed.kind.len();
        item_bytes.saturating_sub(overhead).max(1)
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("warn");
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("benchmark failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), BoxError> {
    let payload_len = BenchItem::payload_len_for(args.item_bytes);
    println!(
        "benchmark: {} changes of ~{} bytes per drain, {} rounds per path",
        args.records, args.item_bytes, args.rounds
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dynamodb_part(args, payload_len))
}

// ---- against DynamoDB ------------------------------------------------------------------

async fn dynamodb_part(args: &Args, payload_len: usize) -> Result<(), BoxError> {
    let config = local_sdk_config(&args.endpoint, None);
    let mut cpu = CpuMeter::new(&args.endpoint);
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let streams = aws_sdk_dynamodbstreams::Client::new(&config);
    let table = unique_name("bench");
    let stream_arn = dynamodb_streams_examples::create_table(&dynamodb, &table, "pk", true)
        .await?
        .latest_stream_arn
        .ok_or_else(|| format!("table {table} has no stream"))?;

    let fill = within(
        "the fill",
        fill_table(&dynamodb, &table, args.records, payload_len, args.writers),
    )
    .await?;
    println!(
        "\nfill: {} items in {:.3} s with BatchWriteItem x{} writers = {:.0} items/s ({} calls, {} retries of unprocessed items)",
        args.records,
        fill.elapsed.as_secs_f64(),
        args.writers,
        rate(args.records, fill.elapsed),
        fill.calls,
        fill.retries
    );

    let mut plain_runs = Vec::new();
    let mut framework_runs = Vec::new();
    let mut coalesced_runs = Vec::new();
    let mut plain_checkpointed_runs = Vec::new();
    let mut apps = Vec::new();
    for round in 1..=args.warmup_rounds + args.rounds {
        let warmup = round <= args.warmup_rounds;
        let name = if warmup {
            "warm-up".to_owned()
        } else {
            format!("round {}", round - args.warmup_rounds)
        };
        cpu.start();
        let plain = within(
            "the plain drain",
            drain_plain(&streams, &stream_arn, args.records, None),
        )
        .await?;
        println!("{name}: plain     {}{}", plain.summary(), cpu.report());
        if !warmup {
            plain_runs.push(plain);
        }
        if args.diagnose {
            let app = unique_name(&format!("bench-app{}", apps.len() + 1));
            apps.push(app.clone());
            let mut checkpoints = PlainCheckpoints::new(&config, &app).await?;
            cpu.start();
            let written = within(
                "the plain drain with checkpoints",
                drain_plain(&streams, &stream_arn, args.records, Some(&mut checkpoints)),
            )
            .await?;
            println!(
                "{name}: plain+cp  {}{}; {} checkpoint writes",
                written.summary(),
                cpu.report(),
                checkpoints.written
            );
            if !warmup {
                plain_checkpointed_runs.push(written);
            }
        }

        let mut variants = vec![("framework", Duration::ZERO, &mut framework_runs)];
        if args.diagnose {
            variants.push(("coalesced", Duration::from_secs(1), &mut coalesced_runs));
        }
        for (label, interval, runs) in variants {
            let app = unique_name(&format!("bench-app{}", apps.len() + 1));
            apps.push(app.clone());
            cpu.start();
            let framework = drain_framework(&config, &app, &table, args.records, interval).await?;
            println!(
                "{name}: {label:<9} {}{}",
                framework.drain.summary(),
                cpu.report()
            );
            println!("    {}", framework.profile());
            if !warmup {
                runs.push(framework.drain);
            }
        }
    }

    let best_plain = best(&plain_runs)?;
    let best_framework = best(&framework_runs)?;
    println!();
    println!("| path | records | seconds | records/s |");
    println!("| --- | ---: | ---: | ---: |");
    println!("{}", best_plain.row("plain GetRecords loop"));
    println!(
        "{}",
        best_framework.row("framework (typed, checkpoint per batch)")
    );
    println!(
        "ratio framework/plain: {:.2} (target >= 0.95)",
        best_framework.rate() / best_plain.rate()
    );
    println!(
        "startup (time to the first record, best run): plain {:.3} s, framework {:.3} s",
        min_first(&plain_runs),
        min_first(&framework_runs)
    );
    let best_cold = |runs: &[Drain]| runs.iter().map(Drain::cold_rate).fold(f64::NAN, f64::max);
    let (cold_plain, cold_framework) = (best_cold(&plain_runs), best_cold(&framework_runs));
    println!(
        "cold start (untimed setup counted too: DescribeStream for the plain loop, creating the lease table for the framework; best run): plain {cold_plain:.0} records/s, framework {cold_framework:.0} records/s, ratio {:.2}; setup plain {:.3} s, framework {:.3} s",
        cold_framework / cold_plain,
        min_setup(&plain_runs),
        min_setup(&framework_runs)
    );
    let (steady_plain, steady_framework) = (best_steady(&plain_runs), best_steady(&framework_runs));
    println!(
        "steady state (after the first page, best run): plain {steady_plain:.0} records/s, framework {steady_framework:.0} records/s, ratio {:.2}",
        steady_framework / steady_plain
    );
    if let Ok(written) = best(&plain_checkpointed_runs) {
        println!(
            "diagnostic: the plain loop writing a checkpoint per page itself (the lease store's write, one in flight): {:.0} records/s, ratio {:.2}; steady {:.0} records/s, ratio {:.2}",
            written.rate(),
            written.rate() / best_plain.rate(),
            best_steady(&plain_checkpointed_runs),
            best_steady(&plain_checkpointed_runs) / steady_plain,
        );
    }
    if let Ok(coalesced) = best(&coalesced_runs) {
        println!(
            "diagnostic: framework with checkpoints coalesced to 1 s (the default): {:.0} records/s, ratio {:.2}; steady {:.0} records/s, ratio {:.2}; startup {:.3} s",
            coalesced.rate(),
            coalesced.rate() / best_plain.rate(),
            best_steady(&coalesced_runs),
            best_steady(&coalesced_runs) / steady_plain,
            min_first(&coalesced_runs)
        );
    }

    // Best-effort cleanup, for endpoints that outlive the run.
    let _ = dynamodb.delete_table().table_name(&table).send().await;
    for app in apps {
        let _ = dynamodb.delete_table().table_name(&app).send().await;
    }
    Ok(())
}

struct Fill {
    elapsed: Duration,
    calls: u64,
    retries: u64,
}

/// Writes `count` items with BatchWriteItem from `writers` concurrent tasks, each taking
/// the next chunk of 25 items until none is left; unprocessed items are retried.
async fn fill_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    count: u64,
    payload_len: usize,
    writers: usize,
) -> Result<Fill, BoxError> {
    let next_chunk = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let chunks = count.div_ceil(BATCH_WRITE_MAX as u64);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let (client, table) = (client.clone(), table.to_owned());
        let (next_chunk, calls, retries) = (next_chunk.clone(), calls.clone(), retries.clone());
        tasks.spawn(async move {
            loop {
                let chunk = next_chunk.fetch_add(1, Ordering::Relaxed);
                if chunk >= chunks {
                    return Ok::<(), BoxError>(());
                }
                let first = chunk * BATCH_WRITE_MAX as u64;
                let last = (first + BATCH_WRITE_MAX as u64).min(count);
                let mut requests = (first..last)
                    .map(|n| {
                        let item = BenchItem::new(n, payload_len).to_dynamodb();
                        let put = PutRequest::builder().set_item(Some(item)).build()?;
                        Ok(WriteRequest::builder().put_request(put).build())
                    })
                    .collect::<Result<Vec<_>, BoxError>>()?;
                let mut pause = Duration::from_millis(20);
                while !requests.is_empty() {
                    let written = client
                        .batch_write_item()
                        .request_items(&table, requests)
                        .send()
                        .await?;
                    calls.fetch_add(1, Ordering::Relaxed);
                    requests = written
                        .unprocessed_items
                        .and_then(|mut unprocessed| unprocessed.remove(&table))
                        .unwrap_or_default();
                    if !requests.is_empty() {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(1));
                    }
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(Fill {
        elapsed: started.elapsed(),
        calls: calls.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
    })
}

/// One timed drain of the stream.
#[derive(Clone, Debug)]
struct Drain {
    records: u64,
    /// Untimed setup before the clock started: the plain loop's DescribeStream, the
    /// framework's lease table creation.
    setup: Duration,
    /// From the start (first GetShardIterator, or `run_until`) to the Nth record.
    elapsed: Duration,
    /// From the start to the first page of records in hand.
    first_page_after: Duration,
    /// How many records that first page had.
    first_page_records: u64,
    /// The plain loop's GetRecords calls and their total time (the framework's are in its
    /// profile line), to compare the server's answer times path by path.
    get_records: Option<(u32, Duration)>,
}

impl Drain {
    fn rate(&self) -> f64 {
        rate(self.records, self.elapsed)
    }

    /// Records after the first page, over the time from the first page to the Nth record.
    fn steady_rate(&self) -> f64 {
        rate(
            self.records.saturating_sub(self.first_page_records),
            self.elapsed.saturating_sub(self.first_page_after),
        )
    }

    /// Records over the setup plus the timed drain: what a cold start achieves.
    fn cold_rate(&self) -> f64 {
        rate(self.records, self.setup + self.elapsed)
    }

    fn summary(&self) -> String {
        let get_records = self
            .get_records
            .map(|(calls, total)| {
                format!(
                    "; GetRecords {calls}x {:.1} ms",
                    total.as_secs_f64() * 1000.0 / f64::from(calls.max(1))
                )
            })
            .unwrap_or_default();
        format!(
            "{} records in {:.3} s = {:.0} records/s; first page after {:.3} s; steady {:.0} records/s; untimed setup {:.3} s{get_records}",
            self.records,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.first_page_after.as_secs_f64(),
            self.steady_rate(),
            self.setup.as_secs_f64()
        )
    }

    fn row(&self, path: &str) -> String {
        format!(
            "| {path} | {} | {:.3} | {:.0} |",
            self.records,
            self.elapsed.as_secs_f64(),
            self.rate()
        )
    }
}

/// CPU use over an interval (through `sysinfo`; where it knows nothing, nothing is shown):
/// how many cores this process, the DynamoDB Local server (when it runs here) and the whole
/// machine kept busy. On a small machine, client and server compete for the same cores.
struct CpuMeter {
    system: System,
    /// This process, and the DynamoDB Local serving this benchmark if found.
    pids: Vec<Pid>,
    server: Option<Pid>,
    started: Instant,
}

impl CpuMeter {
    /// Finds the server: a `java` process started with `-port PORT` (what
    /// `scripts/dynamodb-local.sh` runs), PORT from the endpoint.
    fn new(endpoint: &str) -> Self {
        let mut system = System::new();
        system.refresh_processes_specifics(
            ProcessesToUpdate::All,
            true,
            ProcessRefreshKind::nothing().with_cmd(UpdateKind::OnlyIfNotSet),
        );
        let port = endpoint.trim_end_matches('/').rsplit(':').next();
        let server = system.processes().iter().find_map(|(pid, process)| {
            let cmd = process.cmd();
            let is_java = cmd
                .first()
                .is_some_and(|a| a.to_string_lossy().ends_with("java"));
            let on_port = cmd
                .windows(2)
                .any(|w| w[0] == "-port" && port.is_some_and(|p| w[1] == p));
            (is_java && on_port).then_some(*pid)
        });
        let pids = sysinfo::get_current_pid()
            .into_iter()
            .chain(server)
            .collect();
        Self {
            system,
            pids,
            server,
            started: Instant::now(),
        }
    }

    fn refresh(&mut self) {
        self.system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&self.pids),
            true,
            ProcessRefreshKind::nothing().with_cpu(),
        );
        self.system.refresh_cpu_usage();
    }

    /// Starts an interval.
    fn start(&mut self) {
        self.refresh();
        self.started = Instant::now();
    }

    /// "; CPU cores busy: this process x, DynamoDB Local y, machine z of n" since `start`.
    fn report(&mut self) -> String {
        if self.started.elapsed() < sysinfo::MINIMUM_CPU_UPDATE_INTERVAL {
            return String::new();
        }
        self.refresh();
        let cores_of = |pid: Option<Pid>| {
            pid.and_then(|pid| self.system.process(pid))
                .map(|p| f64::from(p.cpu_usage()) / 100.0)
        };
        let Some(this) = cores_of(self.pids.first().copied()) else {
            return String::new();
        };
        let server = cores_of(self.server)
            .map(|s| format!(", DynamoDB Local {s:.2}"))
            .unwrap_or_default();
        let cores = self.system.cpus().len().max(1);
        let machine = f64::from(self.system.global_cpu_usage()) / 100.0 * cores as f64;
        format!("; CPU cores busy: this process {this:.2}{server}, machine {machine:.2} of {cores}")
    }
}

fn rate(records: u64, elapsed: Duration) -> f64 {
    records as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// The fastest run.
fn best(runs: &[Drain]) -> Result<&Drain, BoxError> {
    runs.iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .ok_or_else(|| "no runs (--rounds 0)".into())
}

/// The best steady-state rate of any run.
fn best_steady(runs: &[Drain]) -> f64 {
    runs.iter()
        .map(Drain::steady_rate)
        .max_by(f64::total_cmp)
        .unwrap_or(f64::NAN)
}

/// The shortest untimed setup of any run.
fn min_setup(runs: &[Drain]) -> f64 {
    runs.iter()
        .map(|d| d.setup.as_secs_f64())
        .min_by(f64::total_cmp)
        .unwrap_or(f64::NAN)
}

/// The shortest time to the first record of any run.
fn min_first(runs: &[Drain]) -> f64 {
    runs.iter()
        .map(|d| d.first_page_after.as_secs_f64())
        .min_by(f64::total_cmp)
        .unwrap_or(f64::NAN)
}

/// Runs `step`, failing with its name if it takes longer than [`DEADLINE`].
async fn within<T>(
    step: &str,
    future: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::time::timeout(DEADLINE, future)
        .await
        .map_err(|_| format!("{step} took longer than {DEADLINE:?}"))?
}

/// Checkpoint writes made the framework's way (the lease store's conditional UpdateItem,
/// one in flight, the latest pending written next) by the plain loop in `--diagnose`: what
/// a checkpoint per page costs the server, without any framework around it.
struct PlainCheckpoints {
    store: Arc<DynamoDbLeaseStore>,
    key: LeaseKey,
    ownership: Ownership,
    in_flight: Option<tokio::task::JoinHandle<dynamodb_streams_leases::Result<Lease>>>,
    pending: Option<SequenceNumber>,
    written: u64,
}

impl PlainCheckpoints {
    /// A fresh lease table `application` with one lease, taken.
    async fn new(config: &SdkConfig, application: &str) -> Result<Self, BoxError> {
        let store = Arc::new(DynamoDbLeaseStore::from_sdk_config(config, application)?);
        store.ensure_table().await?;
        let key = LeaseKey::new("bench-stream", "bench-shard");
        store
            .create_lease(&Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]))
            .await?;
        let lease = store.take_lease(&key, None, 0, "bench-worker").await?;
        let ownership = lease.ownership().ok_or("the lease taken has no owner")?;
        Ok(Self {
            store,
            key,
            ownership,
            in_flight: None,
            pending: None,
            written: 0,
        })
    }

    /// After a page: checkpoint at its last record, in the background.
    async fn page_read(
        &mut self,
        page: &[aws_sdk_dynamodbstreams::types::Record],
    ) -> Result<(), BoxError> {
        if let Some(seq) = page
            .last()
            .and_then(|r| r.dynamodb())
            .and_then(|d| d.sequence_number())
        {
            self.pending = Some(SequenceNumber::parse(seq)?);
        }
        if let Some(task) = self.in_flight.take_if(|task| task.is_finished()) {
            task.await??;
            self.written += 1;
        }
        if self.in_flight.is_none()
            && let Some(seq) = self.pending.take()
        {
            let (store, key, ownership) =
                (self.store.clone(), self.key.clone(), self.ownership.clone());
            self.in_flight = Some(tokio::spawn(async move {
                store
                    .checkpoint(&key, &ownership, &Checkpoint::At(seq))
                    .await
            }));
        }
        Ok(())
    }
}

/// The plain loop: every shard from TRIM_HORIZON, one GetRecords after another (round
/// robin over the shards; DynamoDB Local has one), until `target` records were read; with
/// `checkpoints`, also a checkpoint write per page.
async fn drain_plain(
    client: &aws_sdk_dynamodbstreams::Client,
    stream_arn: &str,
    target: u64,
    mut checkpoints: Option<&mut PlainCheckpoints>,
) -> Result<Drain, BoxError> {
    let described_at = Instant::now();
    let mut shard_ids = Vec::new();
    let mut exclusive_start: Option<String> = None;
    loop {
        let described = client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(exclusive_start.take())
            .send()
            .await?;
        let description = described
            .stream_description()
            .ok_or("DescribeStream returned no description")?;
        shard_ids.extend(
            description
                .shards()
                .iter()
                .filter_map(|s| s.shard_id().map(str::to_owned)),
        );
        match description.last_evaluated_shard_id() {
            Some(last) => exclusive_start = Some(last.to_owned()),
            None => break,
        }
    }

    let setup = described_at.elapsed();
    let started = Instant::now();
    let mut iterators = Vec::new();
    for shard_id in &shard_ids {
        let iterator = client
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await?;
        iterators.push(iterator.shard_iterator().map(str::to_owned));
    }
    let mut read = 0;
    let mut first_page: Option<(Duration, u64)> = None;
    let (mut calls, mut in_get_records) = (0u32, Duration::ZERO);
    'drain: while read < target {
        if iterators.iter().all(Option::is_none) {
            return Err(format!("every shard ended after {read} of {target} records").into());
        }
        for slot in &mut iterators {
            let Some(iterator) = slot.take() else {
                continue;
            };
            let asked = Instant::now();
            let page = client
                .get_records()
                .shard_iterator(iterator)
                .limit(PAGE_LIMIT as i32)
                .send()
                .await?;
            calls += 1;
            in_get_records += asked.elapsed();
            let got = page.records().len() as u64;
            read += got;
            if let Some(checkpoints) = checkpoints.as_deref_mut() {
                checkpoints.page_read(page.records()).await?;
            }
            if got > 0 && first_page.is_none() {
                first_page = Some((started.elapsed(), got));
            }
            *slot = page.next_shard_iterator;
            if read >= target {
                break 'drain;
            }
        }
    }
    let elapsed = started.elapsed();
    let (first_page_after, first_page_records) = first_page.unwrap_or((elapsed, read));
    Ok(Drain {
        records: read,
        setup,
        elapsed,
        first_page_after,
        first_page_records,
        get_records: Some((calls, in_get_records)),
    })
}

/// What the processor saw: counts, times of each batch, and a checksum of the decoded
/// fields (so the decode cannot be optimised away).
struct Progress {
    target: u64,
    /// Set right before `run_until`: building the consumer is not part of the drain.
    started: OnceLock<Instant>,
    seen: AtomicU64,
    checksum: AtomicU64,
    /// Per batch: when `process` was called, how long it ran, how many changes it had.
    batches: Mutex<Vec<(Instant, Duration, u64)>>,
    done: OnceLock<Instant>,
    finished: Notify,
}

impl Progress {
    fn new(target: u64) -> Arc<Self> {
        Arc::new(Self {
            target,
            started: OnceLock::new(),
            seen: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
            batches: Mutex::new(Vec::new()),
            done: OnceLock::new(),
            finished: Notify::new(),
        })
    }

    /// Starts the clock.
    fn start(&self) {
        let _ = self.started.set(Instant::now());
    }

    /// The processor's work: read every decoded image, count, note the time.
    fn observe(&self, batch: &ChangeBatch<BenchItem>) {
        let arrived = Instant::now();
        let mut sum = 0u64;
        for change in batch {
            if let Some(item) = change.new.as_ref() {
                sum = sum
                    .wrapping_add(item.n)
                    .wrapping_add(item.payload.len() as u64);
            }
        }
        self.checksum.fetch_add(sum, Ordering::Relaxed);
        let count = batch.len() as u64;
        let before = self.seen.fetch_add(count, Ordering::Relaxed);
        if let Ok(mut batches) = self.batches.lock() {
            batches.push((arrived, arrived.elapsed(), count));
        }
        if before < self.target && before + count >= self.target {
            let _ = self.done.set(Instant::now());
            self.finished.notify_one();
        }
    }

    /// A processor factory that feeds this progress.
    fn factory(self: &Arc<Self>) -> impl ProcessorFactory + use<> {
        let progress = self.clone();
        processor_fn(move |batch: ChangeBatch<BenchItem>| {
            let progress = progress.clone();
            async move {
                progress.observe(&batch);
                Ok(())
            }
        })
    }

    /// Resolves once the target was reached.
    async fn reached(self: Arc<Self>) {
        if self.done.get().is_none() {
            self.finished.notified().await;
        }
    }

    /// The drain as the processor saw it; `setup` is the untimed lease table creation.
    fn drain(&self, setup: Duration) -> Result<Drain, BoxError> {
        let started = *self.started.get().ok_or("the clock was not started")?;
        let done = *self.done.get().ok_or("the target was not reached")?;
        let batches = self.batches.lock().map_err(|_| "poisoned")?;
        let (first_at, _, first_count) = *batches.first().ok_or("no batch")?;
        Ok(Drain {
            records: self.seen.load(Ordering::Relaxed).min(self.target),
            setup,
            elapsed: done - started,
            first_page_after: first_at - started,
            first_page_records: first_count,
            get_records: None,
        })
    }

    /// Mean time between batches after the first, and mean time inside `process`.
    fn batch_times(&self) -> (Duration, Duration, usize) {
        let Ok(batches) = self.batches.lock() else {
            return (Duration::ZERO, Duration::ZERO, 0);
        };
        let n = batches.len();
        let gap = match (batches.first(), batches.last()) {
            (Some(first), Some(last)) if n > 1 => (last.0 - first.0) / (n as u32 - 1),
            _ => Duration::ZERO,
        };
        let inside = batches.iter().map(|b| b.1).sum::<Duration>() / (n.max(1) as u32);
        (gap, inside, n)
    }
}

/// Calls and time spent per streams operation, seen from inside the framework.
#[derive(Debug, Default)]
struct CallStats {
    calls: AtomicU64,
    micros: AtomicU64,
}

impl CallStats {
    fn note(&self, since: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// One span from `from` to `to`.
    fn note_span(&self, from: Instant, to: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add((to - from).as_micros() as u64, Ordering::Relaxed);
    }

    fn describe(&self, name: &str) -> String {
        let calls = self.calls.load(Ordering::Relaxed);
        format!("{name} {calls}x {:.1} ms", self.mean_ms())
    }

    fn mean_ms(&self) -> f64 {
        let calls = self.calls.load(Ordering::Relaxed);
        let micros = self.micros.load(Ordering::Relaxed);
        micros as f64 / 1000.0 / calls.max(1) as f64
    }
}

/// The SDK streams API with a stopwatch on each call (it adds nothing else).
#[derive(Debug)]
struct TimedStreams {
    inner: SdkStreams,
    describe_table: CallStats,
    describe_stream: CallStats,
    shard_iterator: CallStats,
    get_records: CallStats,
    empty_pages: AtomicU64,
    /// When the last GetRecords answer came, and the time from there to the next call:
    /// what the framework spends between pages on one shard (the plain loop: nothing).
    last_answer: Mutex<Option<Instant>>,
    between_calls: CallStats,
}

#[async_trait]
impl StreamsApi for TimedStreams {
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError> {
        let at = Instant::now();
        let result = self.inner.latest_stream_arn(table).await;
        self.describe_table.note(at);
        result
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        let at = Instant::now();
        let result = self
            .inner
            .describe_stream(stream_arn, exclusive_start_shard_id)
            .await;
        self.describe_stream.note(at);
        result
    }

    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        let at = Instant::now();
        let result = self.inner.child_shards(stream_arn, parent_shard_id).await;
        self.describe_stream.note(at);
        result
    }

    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        let at = Instant::now();
        let result = self
            .inner
            .shard_iterator(stream_arn, shard_id, position)
            .await;
        self.shard_iterator.note(at);
        result
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        let at = Instant::now();
        if let Some(answered) = self.last_answer.lock().ok().and_then(|last| *last) {
            self.between_calls.note_span(answered, at);
        }
        let result = self.inner.get_records(iterator, limit).await;
        self.get_records.note(at);
        if let Ok(mut last) = self.last_answer.lock() {
            *last = Some(Instant::now());
        }
        if result.as_ref().is_ok_and(|page| page.records.is_empty()) {
            self.empty_pages.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

struct FrameworkRun {
    drain: Drain,
    api: Arc<TimedStreams>,
    progress: Arc<Progress>,
    shutdown: Duration,
}

impl FrameworkRun {
    fn profile(&self) -> String {
        let (gap, inside, batches) = self.progress.batch_times();
        format!(
            "profile: {batches} batches, {:.1} ms between batches, {:.0} us in process; {}, {}, {}, {} ({} empty), {:.2} ms from a GetRecords answer to the next call; graceful shutdown {:.3} s",
            gap.as_secs_f64() * 1000.0,
            inside.as_secs_f64() * 1e6,
            self.api.describe_table.describe("DescribeTable"),
            self.api.describe_stream.describe("DescribeStream"),
            self.api.shard_iterator.describe("GetShardIterator"),
            self.api.get_records.describe("GetRecords"),
            self.api.empty_pages.load(Ordering::Relaxed),
            self.api.between_calls.mean_ms(),
            self.shutdown.as_secs_f64()
        )
    }
}

/// The framework: a fresh application drains the table's stream from TRIM_HORIZON with a
/// checkpoint per batch; stops gracefully once `target` changes were processed.
async fn drain_framework(
    config: &SdkConfig,
    application: &str,
    table: &str,
    target: u64,
    checkpoint_interval: Duration,
) -> Result<FrameworkRun, BoxError> {
    let api = Arc::new(TimedStreams {
        inner: SdkStreams::from_sdk_config(config),
        describe_table: CallStats::default(),
        describe_stream: CallStats::default(),
        shard_iterator: CallStats::default(),
        get_records: CallStats::default(),
        empty_pages: AtomicU64::new(0),
        last_answer: Mutex::new(None),
        between_calls: CallStats::default(),
    });
    // Setup, like the plain loop's DescribeStream: a long-running worker's lease table
    // exists before it drains anything. Timed apart, for the cold start-up line.
    let setup_started = Instant::now();
    DynamoDbLeaseStore::from_sdk_config(config, application)?
        .ensure_table()
        .await?;
    let setup = setup_started.elapsed();
    let progress = Progress::new(target);
    let consumer = Consumer::builder(application)
        .with_table(table)
        .with_sdk_config(config)
        .with_streams_api(api.clone())
        .with_initial_position(InitialPosition::TrimHorizon)
        .with_checkpoint_interval(checkpoint_interval)
        .with_batch_limit(PAGE_LIMIT)
        .build(progress.factory())?;
    progress.start();
    let run = consumer.run_until(progress.clone().reached());
    tokio::time::timeout(DEADLINE, run).await.map_err(|_| {
        format!(
            "the framework processed only {} of {target} changes in {DEADLINE:?}",
            progress.seen.load(Ordering::Relaxed)
        )
    })??;
    let shutdown = progress
        .done
        .get()
        .map_or(Duration::ZERO, |done| done.elapsed());
    Ok(FrameworkRun {
        drain: progress.drain(setup)?,
        api,
        progress,
        shutdown,
    })
}
