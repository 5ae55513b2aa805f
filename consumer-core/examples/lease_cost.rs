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

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use checkpoint_store::{
    Checkpoint, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore, Ownership, Result, WorkerRecord,
};
use consumer_core::testkit::{SimConfig, SimulatedStream};
use consumer_core::{ChangeBatch, Consumer, processor_fn};

/// Counts calls per operation, and lease items read by scans.
#[derive(Debug, Default)]
struct Counting {
    inner: InMemoryLeaseStore,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    items_scanned: AtomicU64,
}

impl Counting {
    fn count(&self, operation: &'static str) {
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry(operation).or_default() += 1;
        }
    }
}

#[async_trait]
impl LeaseStore for Counting {
    async fn ensure_table(&self) -> Result<()> {
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>> {
        self.count("scan leases");
        let leases = self.inner.list_leases().await?;
        self.items_scanned
            .fetch_add(leases.len() as u64, Ordering::Relaxed);
        Ok(leases)
    }
    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        self.count("get lease");
        self.inner.get_lease(key).await
    }
    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        self.count("write: create lease");
        self.inner.create_lease(lease).await
    }
    async fn take_lease(&self, key: &LeaseKey, o: Option<&str>, e: u64, n: &str) -> Result<Lease> {
        self.count("write: take lease");
        self.inner.take_lease(key, o, e, n).await
    }
    async fn checkpoint(&self, key: &LeaseKey, o: &Ownership, c: &Checkpoint) -> Result<Lease> {
        self.count("write: checkpoint");
        self.inner.checkpoint(key, o, c).await
    }
    async fn prepare_checkpoint(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        c: &Checkpoint,
    ) -> Result<Lease> {
        self.count("write: prepare checkpoint");
        self.inner.prepare_checkpoint(key, o, c).await
    }
    async fn release_lease(&self, key: &LeaseKey, o: &Ownership) -> Result<Lease> {
        self.count("write: release lease");
        self.inner.release_lease(key, o).await
    }
    async fn request_handoff(&self, key: &LeaseKey, o: &Ownership, r: &str) -> Result<Lease> {
        self.count("write: request handoff");
        self.inner.request_handoff(key, o, r).await
    }
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.count("write: delete lease");
        self.inner.delete_lease(key).await
    }
    async fn heartbeat(&self, id: &str, ttl: Duration) -> Result<WorkerRecord> {
        self.count("write: heartbeat");
        self.inner.heartbeat(id, ttl).await
    }
    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.count("scan workers");
        let workers = self.inner.list_workers().await?;
        self.items_scanned
            .fetch_add(workers.len() as u64, Ordering::Relaxed);
        Ok(workers)
    }
    async fn delete_worker(&self, id: &str) -> Result<()> {
        self.count("write: delete worker");
        self.inner.delete_worker(id).await
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let shards = arg("--shards", 100) as usize;
    let workers = arg("--workers", 4);
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
        let store = Arc::new(Counting::default());
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
        let before = store.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let scanned_before = store.items_scanned.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let after = store.calls.lock().map(|c| c.clone()).unwrap_or_default();
        let scanned = store.items_scanned.load(Ordering::Relaxed) - scanned_before;
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
            if operation.starts_with("write") {
                writes += count;
            }
            println!("| {operation} | {count} |");
        }
        println!("| items read by scans | {scanned} |");
        let kcl = 1090 * shards as u64;
        println!("\nwrites per hour: {writes} (KCL, renewing each lease every 3.3 s: ~{kcl}); ratio {:.3}", writes as f64 / kcl as f64);
        println!("writes per lease-hour: {:.1} (KCL ~1,090)", writes as f64 / shards as f64);
        Ok::<(), Box<dyn std::error::Error>>(())
    })
}
