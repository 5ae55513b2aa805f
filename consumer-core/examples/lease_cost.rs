//! What coordination costs, priced as DynamoDB bills it, next to the Kinesis Client
//! Library's protocol.
//!
//! Runs `--workers` consumers over a simulated table with `--shards` shards for
//! `--minutes` of virtual time (tokio's paused clock, so it takes seconds), counting every
//! lease-store call priced by `dynamodb_streams_leases::billing` (read units per 4 KB, half for
//! eventually consistent reads, Scan rounded per 1 MB page; write units per 1 KB of the
//! larger of before and after, failed conditions included) and every DynamoDB Streams
//! request (GetRecords, GetShardIterator, DescribeStream). Idle: no writes to the table.
//! Busy: every shard gets about one record a second. Figures are per hour, and the
//! hottest lease-table item's read and write units per second (one item lives on one
//! partition, which serves 3,000 read and 1,000 write units a second), over the measured
//! window and over the two minutes of settling from the cold start (every worker started
//! at once, before any leader counted them).
//!
//! ```text
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example lease_cost -- --shards 1000 --workers 20
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example lease_cost -- --sweep --csv cost.csv
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example lease_cost -- --shards 1000 --workers 20 --pipelines 3
//! cargo run --release -p dynamodb-streams-consumer --features testkit --example cost_chart -- cost.csv docs/cost.svg
//! ```
//!
//! KCL's figures are a model of its protocol at the same failover time: every lease is
//! renewed (a conditional write) every 3.308 s, each worker scans the lease table every 20 s
//! (eventually consistent here, which is the cheaper assumption for KCL), and each shard is
//! polled with a GetRecords every second when idle; busy, it checkpoints as often as ours
//! and polls as often as ours. Its lease items are sized as ours.
//!
//! `--pipelines N` measures each run again with one application of N named pipelines
//! (`with_pipeline`) and prints the pipelines row: N consumers of the stream as N
//! applications (N times the run: each reads every shard and keeps its own lease table)
//! against N pipelines over one read of each shard (measured).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use dynamodb_streams_consumer::testkit::{
    Billed, InstrumentedStore, ItemUnits, SimConfig, SimOperation, SimulatedStream, StoreOp,
};
use dynamodb_streams_consumer::{ChangeBatch, Consumer, processor_fn};
use dynamodb_streams_leases::billing;
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseStore};

/// On-demand prices (us-east-1), in dollars per million.
const WRITE_UNIT_PRICE: f64 = 0.625;
const READ_UNIT_PRICE: f64 = 0.125;
const STREAMS_REQUEST_PRICE: f64 = 0.20;
/// KCL's protocol, as modeled.
const KCL_RENEW_EVERY: f64 = 3.308;
const KCL_SCAN_EVERY: f64 = 20.0;
const HOURS_PER_MONTH: f64 = 730.0;

/// Coordination cost per hour, ours measured in simulation and KCL's modeled.
#[derive(Debug, Parser)]
#[command(name = "lease_cost")]
struct Args {
    /// Shards of the simulated table.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    shards: u32,
    /// Workers sharing them.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    workers: u16,
    /// Virtual minutes measured (after two minutes of settling); figures are scaled to an hour.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=600))]
    minutes: u32,
    /// Also measure busy shards (one record per shard per second); slower.
    #[arg(long)]
    busy: bool,
    /// Measure the chart's points instead: idle at 100/4, 1,000/20, 10,000/50, 100 and
    /// 10,000 shards at 20 workers, and 10,000 shards at 100, 200 and 1,000 workers; busy at
    /// 100/4 and 1,000/20 (per busy shard beyond that).
    #[arg(long)]
    sweep: bool,
    /// Write the figures as CSV here too (input of the `cost_chart` example).
    #[arg(long)]
    csv: Option<std::path::PathBuf>,
    /// Also measure each run as one application of this many named pipelines, against as
    /// many applications (the pipelines row).
    #[arg(long, value_parser = clap::value_parser!(u16).range(2..=16))]
    pipelines: Option<u16>,
}

/// Per-hour figures of one protocol in one scenario.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    read_units: f64,
    write_units: f64,
    streams_requests: f64,
}

impl Cost {
    fn dollars(&self) -> f64 {
        (self.read_units * READ_UNIT_PRICE
            + self.write_units * WRITE_UNIT_PRICE
            + self.streams_requests * STREAMS_REQUEST_PRICE)
            / 1e6
    }
    fn lease_table_dollars(&self) -> f64 {
        (self.read_units * READ_UNIT_PRICE + self.write_units * WRITE_UNIT_PRICE) / 1e6
    }
}

/// The hottest lease-table item over the measured window (ours; KCL's is not modeled per
/// item): the most read and the most written, in units per second on average and in their
/// busiest second.
#[derive(Debug, Default)]
struct Hottest {
    reads: ItemUnits,
    writes: ItemUnits,
    seconds: f64,
}

impl Hottest {
    fn of(items: &[ItemUnits], seconds: f64) -> Self {
        let by = |units: fn(&ItemUnits) -> f64| {
            items
                .iter()
                .max_by(|a, b| units(a).total_cmp(&units(b)))
                .cloned()
                .unwrap_or_default()
        };
        Hottest {
            reads: by(|i| i.read_units),
            writes: by(|i| i.write_units as f64),
            seconds: seconds.max(1.0),
        }
    }
    fn read_units_per_second(&self) -> f64 {
        self.reads.read_units / self.seconds
    }
    fn write_units_per_second(&self) -> f64 {
        self.writes.write_units as f64 / self.seconds
    }
}

/// What one simulated run measured, per hour.
#[derive(Debug)]
struct Measured {
    shards: u32,
    workers: u16,
    busy: bool,
    ours: Cost,
    kcl: Cost,
    calls: BTreeMap<StoreOp, f64>,
    failed_conditions: f64,
    get_records: f64,
    checkpoints: f64,
    lease_size: usize,
    hottest: Hottest,
    /// Over the two minutes of settling, from the cold start on.
    cold_start: Hottest,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runs: Vec<(u32, u16, bool)> = if args.sweep {
        vec![
            (100, 4, false),
            (100, 20, false),
            (1000, 20, false),
            (10_000, 20, false),
            (10_000, 50, false),
            (10_000, 100, false),
            (10_000, 200, false),
            (10_000, 1000, false),
            (100, 4, true),
            (1000, 20, true),
        ]
    } else {
        let mut runs = vec![(args.shards, args.workers, false)];
        if args.busy {
            runs.push((args.shards, args.workers, true));
        }
        runs
    };
    let mut results = Vec::new();
    for (shards, workers, busy) in runs {
        // Large idle runs measure a shorter window: the figures are steady rates.
        let minutes = if args.sweep && shards >= 10_000 {
            10
        } else {
            args.minutes
        };
        let minutes = if busy { minutes.min(10) } else { minutes };
        let measured = measure(shards, workers, minutes, busy, 0)?;
        print_run(&measured, minutes);
        if let Some(pipelines) = args.pipelines {
            let shared = measure(shards, workers, minutes, busy, pipelines)?;
            print_pipelines(&measured, &shared, pipelines);
        }
        results.push(measured);
    }
    if let Some(path) = &args.csv {
        let mut csv = String::from(
            "shards,workers,load,protocol,read_units_per_hour,write_units_per_hour,streams_requests_per_hour,dollars_per_hour,dollars_per_month,hottest_item_read_units_per_second,hottest_item_write_units_per_second\n",
        );
        for m in &results {
            for (name, cost) in [("ours", m.ours), ("kcl", m.kcl)] {
                // KCL's hottest item is not modeled: its columns stay empty.
                let hottest = if name == "ours" {
                    format!(
                        "{:.1},{:.1}",
                        m.hottest.read_units_per_second(),
                        m.hottest.write_units_per_second()
                    )
                } else {
                    String::from(",")
                };
                csv.push_str(&format!(
                    "{},{},{},{name},{:.0},{:.0},{:.0},{:.5},{:.2},{hottest}\n",
                    m.shards,
                    m.workers,
                    if m.busy { "busy" } else { "idle" },
                    cost.read_units,
                    cost.write_units,
                    cost.streams_requests,
                    cost.dollars(),
                    cost.dollars() * HOURS_PER_MONTH,
                ));
            }
        }
        std::fs::write(path, csv)
            .map_err(|e| format!("cannot write the CSV to {}: {e}", path.display()))?;
        println!("figures written to {}", path.display());
    }
    if args.sweep {
        print_summary(&results);
    }
    Ok(())
}

/// Runs the workers for `minutes` after two minutes of settling, and scales to an hour.
/// With `pipelines` > 0 each worker runs that many named pipelines instead of one consumer.
fn measure(
    shards: u32,
    workers: u16,
    minutes: u32,
    busy: bool,
    pipelines: u16,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        let sim = SimulatedStream::new(SimConfig {
            initial_shards: shards as usize,
            ..SimConfig::with_seed(1)
        });
        sim.add_table("cost");
        let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let builder = Consumer::builder("lease-cost")
                .with_table("cost")
                .with_streams_api(Arc::new(sim.clone()))
                .with_lease_store(store.clone())
                .with_worker_id(format!("worker-{w}"));
            let ignore = || processor_fn(|_: ChangeBatch<serde::de::IgnoredAny>| async { Ok(()) });
            let mut stopped = stop.subscribe();
            let until = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if pipelines == 0 {
                tasks.push(tokio::spawn(builder.build(ignore())?.run_until(until)));
            } else {
                let builder = (0..pipelines).fold(builder, |b, p| {
                    b.with_pipeline(format!("pipeline-{p}"), ignore())
                });
                tasks.push(tokio::spawn(builder.build_pipelines()?.run_until(until)));
            }
        }
        let writer = busy.then(|| {
            let sim = sim.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut n = 0u64;
                loop {
                    tick.tick().await;
                    for _ in 0..shards {
                        n += 1;
                        let item =
                            dynamodb_streams_consumer::testkit::string_key("pk", &format!("k{n}"));
                        if let Err(error) = sim.put("cost", item) {
                            eprintln!("writer: {error}");
                            return;
                        }
                    }
                }
            })
        });
        tokio::time::sleep(Duration::from_secs(120)).await;
        let (items, window) = store.item_units();
        let cold_start = Hottest::of(&items, window.as_secs_f64());
        let streams_ops = [
            SimOperation::GetRecords,
            SimOperation::GetShardIterator,
            SimOperation::DescribeStream,
        ];
        let streams_before: u64 = streams_ops.iter().map(|op| sim.calls(*op)).sum();
        let records_before = sim.calls(SimOperation::GetRecords);
        let (calls_before, billed_before) = (store.calls(), store.billed());
        store.reset_item_units();
        tokio::time::sleep(Duration::from_secs(60 * u64::from(minutes))).await;
        let streams = streams_ops.iter().map(|op| sim.calls(*op)).sum::<u64>() - streams_before;
        let get_records = sim.calls(SimOperation::GetRecords) - records_before;
        let (calls_after, billed_after) = (store.calls(), store.billed());
        let (items, window) = store.item_units();
        let hottest = Hottest::of(&items, window.as_secs_f64());
        if let Some(writer) = writer {
            writer.abort();
        }
        stop.send_replace(true);
        for task in tasks {
            task.await??;
        }
        let (leases, _) = store.inner().snapshot().await?;
        let shard_leases: Vec<_> = leases.iter().filter(|l| !l.key.is_coordination()).collect();
        let lease_size = shard_leases
            .iter()
            .map(|l| billing::lease_item_size(l))
            .sum::<usize>()
            / shard_leases.len().max(1);

        let scale = 60.0 / f64::from(minutes);
        let billed = Billed {
            read_units: billed_after.read_units - billed_before.read_units,
            write_units: billed_after.write_units - billed_before.write_units,
            failed_conditions: billed_after.failed_conditions - billed_before.failed_conditions,
        };
        let calls: BTreeMap<StoreOp, f64> = calls_after
            .iter()
            .map(|(op, n)| {
                let before = calls_before.get(op).copied().unwrap_or(0);
                (*op, (n - before) as f64 * scale)
            })
            .collect();
        let checkpoints = calls.get(&StoreOp::Checkpoint).copied().unwrap_or(0.0);
        let ours = Cost {
            read_units: billed.read_units * scale,
            write_units: billed.write_units as f64 * scale,
            streams_requests: streams as f64 * scale,
        };
        let kcl = kcl_model(
            shards,
            workers,
            lease_size,
            checkpoints,
            get_records as f64 * scale,
            busy,
        );
        Ok(Measured {
            shards,
            workers,
            busy,
            ours,
            kcl,
            calls,
            failed_conditions: billed.failed_conditions as f64 * scale,
            get_records: get_records as f64 * scale,
            checkpoints,
            lease_size,
            hottest,
            cold_start,
        })
    })
}

/// KCL's protocol per hour: renewals of every lease, a lease scan per worker every 20 s,
/// a GetRecords per idle shard per second; busy, our measured checkpoints and polls.
fn kcl_model(
    shards: u32,
    workers: u16,
    lease_size: usize,
    checkpoints: f64,
    our_get_records: f64,
    busy: bool,
) -> Cost {
    let shards_f = f64::from(shards);
    let renewals = shards_f * 3600.0 / KCL_RENEW_EVERY;
    let scans = f64::from(workers) * 3600.0 / KCL_SCAN_EVERY;
    let scan_units =
        billing::scan_read_units(std::iter::repeat_n(lease_size, shards as usize), false);
    let idle_polls = shards_f * 3600.0;
    Cost {
        read_units: scans * scan_units,
        write_units: (renewals + if busy { checkpoints } else { 0.0 })
            * billing::write_units(lease_size) as f64,
        streams_requests: if busy {
            our_get_records.max(idle_polls)
        } else {
            idle_polls
        },
    }
}

/// A row of the per-run table: its name, the figure, and the digits it is printed with.
type TableRow = (&'static str, fn(&Cost) -> f64, usize);

fn print_run(m: &Measured, minutes: u32) {
    let load = if m.busy { "busy" } else { "idle" };
    println!(
        "\n## {} {load} shards, {} workers (failover 10 s; {minutes} virtual minutes measured, per hour)\n",
        m.shards, m.workers
    );
    println!("| per hour | ours | KCL (model) |");
    println!("| --- | ---: | ---: |");
    let rows: [TableRow; 5] = [
        ("lease-table read units", |c| c.read_units, 0),
        ("lease-table write units", |c| c.write_units, 0),
        ("streams requests", |c| c.streams_requests, 0),
        ("lease table $/hour", Cost::lease_table_dollars, 4),
        ("total $/hour", Cost::dollars, 4),
    ];
    for (name, value, digits) in rows {
        println!(
            "| {name} | {:.digits$} | {:.digits$} |",
            value(&m.ours),
            value(&m.kcl)
        );
    }
    println!(
        "\nlease table, ours / KCL: {:.4} (target at 1,000 idle shards / 20 workers: <= 0.05)",
        m.ours.lease_table_dollars() / m.kcl.lease_table_dollars()
    );
    println!(
        "GetRecords per shard-hour: {:.0}; checkpoints per hour: {:.0}; failed conditional writes per hour: {:.0}; lease item {} bytes",
        m.get_records / f64::from(m.shards),
        m.checkpoints,
        m.failed_conditions,
        m.lease_size
    );
    for (window, h) in [
        ("", &m.hottest),
        (", cold start (the 2 minutes of settling)", &m.cold_start),
    ] {
        println!(
            "hottest item{window}: reads {:.1} units/s ({}; busiest second {:.1}), writes {:.1} units/s ({}; busiest second {})",
            h.read_units_per_second(),
            h.reads.item,
            h.reads.peak_read_units,
            h.write_units_per_second(),
            h.writes.item,
            h.writes.peak_write_units,
        );
    }
    let count = |op: StoreOp| m.calls.get(&op).copied().unwrap_or(0.0);
    println!(
        "lease changes per hour: {:.0} takes, {:.0} releases, {:.0} handoff requests; {:.0} lease scans, {:.0} membership reads, {:.0} heartbeats",
        count(StoreOp::TakeLease),
        count(StoreOp::ReleaseLease),
        count(StoreOp::RequestHandoff),
        count(StoreOp::Snapshot) + count(StoreOp::ListLeases),
        count(StoreOp::Membership),
        count(StoreOp::Heartbeat),
    );
}

/// The pipelines row: `n` consumers of the stream as `n` applications (`n` times `one`)
/// or as `n` pipelines of one application (`shared`, measured).
fn print_pipelines(one: &Measured, shared: &Measured, n: u16) {
    let apps = f64::from(n);
    println!("\n### {n} consumers of the stream: {n} applications or {n} pipelines (per hour)\n");
    println!("| per hour | {n} applications | {n} pipelines |");
    println!("| --- | ---: | ---: |");
    println!(
        "| GetRecords per shard-hour | {:.0} | {:.0} |",
        apps * one.get_records / f64::from(one.shards),
        shared.get_records / f64::from(shared.shards)
    );
    println!(
        "| lease-table write units | {:.0} | {:.0} |",
        apps * one.ours.write_units,
        shared.ours.write_units
    );
    println!(
        "| lease table $/hour | {:.4} | {:.4} |",
        apps * one.ours.lease_table_dollars(),
        shared.ours.lease_table_dollars()
    );
    println!(
        "| total $/hour | {:.4} | {:.4} |",
        apps * one.ours.dollars(),
        shared.ours.dollars()
    );
    println!(
        "| total $/month | {:.2} | {:.2} |",
        apps * one.ours.dollars() * HOURS_PER_MONTH,
        shared.ours.dollars() * HOURS_PER_MONTH
    );
    println!(
        "\nreaders per shard: {n} applications {n} (DynamoDB Streams throttles more than 2), {n} pipelines 1; lease item {} bytes with pipelines, {} without",
        shared.lease_size, one.lease_size
    );
}

fn print_summary(results: &[Measured]) {
    println!("\n## Summary ($/month at on-demand prices; lease table + streams requests)\n");
    println!(
        "| shards | workers | load | ours lease table | KCL lease table | ratio | ours total | KCL total | hottest item, ours (read / write units/s) |"
    );
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for m in results {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.4} | {:.2} | {:.2} | {:.1} / {:.1} |",
            m.shards,
            m.workers,
            if m.busy { "busy" } else { "idle" },
            m.ours.lease_table_dollars() * HOURS_PER_MONTH,
            m.kcl.lease_table_dollars() * HOURS_PER_MONTH,
            m.ours.lease_table_dollars() / m.kcl.lease_table_dollars(),
            m.ours.dollars() * HOURS_PER_MONTH,
            m.kcl.dollars() * HOURS_PER_MONTH,
            m.hottest.read_units_per_second(),
            m.hottest.write_units_per_second(),
        );
    }
    let idle = |shards: u32, workers: u16| {
        results
            .iter()
            .find(|m| m.shards == shards && m.workers == workers && !m.busy)
            .map(|m| m.ours.lease_table_dollars())
    };
    if let (Some(small), Some(large)) = (idle(100, 20), idle(10_000, 20)) {
        println!(
            "\nidle lease-table cost at 20 workers, 10,000 shards against 100: {:.3} (target: within 10%)",
            large / small
        );
    }
}
