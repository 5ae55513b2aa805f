//! What coordination costs when nothing happens: lease-table calls per hour for idle
//! shards, next to the Kinesis Client Library's per-lease renewals.
//!
//! Runs `--workers` consumers over a simulated table with `--shards` idle shards for one
//! hour of virtual time (tokio's paused clock, so it takes seconds), counting every call
//! they make to the lease store. Run it with:
//!
//! ```text
//! cargo run --release -p consumer-core --features testkit --example lease_cost -- --shards 100 --workers 4
//! ```
//!
//! KCL renews every lease it holds every `failoverTime / 3` (a conditional write per lease),
//! so with a 10 s failover time it pays about 1,090 writes per lease-hour whatever the
//! traffic. Here a worker writes its own heartbeat item instead and touches lease items only
//! on checkpoints and ownership changes.

use std::sync::Arc;
use std::time::Duration;

use checkpoint_store::InMemoryLeaseStore;
use clap::Parser;
use consumer_core::testkit::{InstrumentedStore, SimConfig, SimulatedStream};
use consumer_core::{ChangeBatch, Consumer, processor_fn};

/// Lease-table calls per idle hour, counted in simulation.
#[derive(Debug, Parser)]
#[command(name = "lease_cost")]
struct Args {
    /// Idle shards of the simulated table.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..))]
    shards: u16,
    /// Workers sharing them.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    workers: u16,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (shards, workers) = (usize::from(args.shards), args.workers);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    runtime.block_on(async move {
        let sim = SimulatedStream::new(SimConfig {
            initial_shards: shards,
            ..SimConfig::with_seed(1)
        });
        sim.add_table("idle");
        let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for w in 0..workers {
            let consumer = Consumer::builder("lease-cost")
                .with_table("idle")
                .with_streams_api(Arc::new(sim.clone()))
                .with_lease_store(store.clone())
                .with_worker_id(format!("w{w}"))
                .build(processor_fn(|_: ChangeBatch<serde::de::IgnoredAny>| async { Ok(()) }))?;
            let mut stopped = stop.subscribe();
            tasks.push(tokio::spawn(consumer.run_until(async move {
                let _ = stopped.wait_for(|s| *s).await;
            })));
        }
        // Let the workers settle (take and balance), then measure one idle hour.
        tokio::time::sleep(Duration::from_secs(120)).await;
        let before = store.calls();
        let scanned_before = store.items_read();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = store.calls();
        let scanned = store.items_read() - scanned_before;
        stop.send_replace(true);
        for task in tasks {
            task.await??;
        }

        println!("lease-table calls in one idle hour: {shards} shards, {workers} workers, failover 10 s, scan every 2 s\n");
        println!("| call | per hour |");
        println!("| --- | ---: |");
        let mut writes = 0;
        for (operation, count) in &after {
            let count = count - before.get(operation).copied().unwrap_or(0);
            let kind = if operation.is_write() {
                writes += count;
                "write"
            } else {
                "read"
            };
            println!("| {kind}: {} | {count} |", operation.name());
        }
        println!("| items read by scans | {scanned} |");
        let kcl = 1090 * u64::from(args.shards);
        println!("\nwrites per hour: {writes} (KCL, renewing each lease every 3.3 s: ~{kcl}); ratio {:.3}", writes as f64 / kcl as f64);
        println!("writes per lease-hour: {:.1} (KCL ~1,090)", writes as f64 / shards as f64);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
