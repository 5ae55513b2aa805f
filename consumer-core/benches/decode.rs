//! Decode and dispatch without a network: the consumer draining one shard of the simulated
//! stream (typed decode, in-memory lease store, a checkpoint per batch) on a
//! `current_thread` runtime, i.e. on one core; next to it, the raw rate of
//! `Change::<T>::decode` over prebuilt records. GetRecords pages are built before each
//! drain is timed ([`PrebuiltPages`]): the simulator's own record copies are not the
//! consumer's work.
//!
//! ```text
//! cargo bench -p dynamodb-streams-consumer --bench decode
//! ```
//!
//! Besides criterion's own report it prints one line per figure, e.g.
//! `decode+dispatch (…): N changes in S s = R changes/s`. Under `cargo test` (no `--bench`
//! flag) criterion runs each routine once, on 1,000 changes, so the test suite stays quick.
//! The throughput against DynamoDB Local is `examples/src/bin/benchmark.rs`.

use std::cell::Cell;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_dynamodbstreams::types::Record;
use criterion::{Criterion, Throughput};
use dynamodb_streams_consumer::streams::{
    ApiError, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi,
};
use dynamodb_streams_consumer::testkit::{InMemoryLeaseStore, SimConfig, SimulatedStream};
use dynamodb_streams_consumer::{
    BoxError, Change, ChangeBatch, Consumer, InitialPosition, processor_fn,
};
use serde::{Deserialize, Serialize};

/// Records per GetRecords page and per batch (the service's maximum).
const PAGE_LIMIT: u32 = 1000;
/// Changes per drain under `cargo bench`, and under `cargo test`.
const CHANGES: (u64, u64) = (20_000, 1_000);
/// Payload bytes of an item: about 200 bytes in all, like the DynamoDB Local benchmark's.
const PAYLOAD: usize = 150;

/// The item every image decodes into.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BenchItem {
    pk: String,
    n: u64,
    group: u32,
    kind: String,
    payload: String,
}

impl BenchItem {
    fn new(n: u64) -> Self {
        Self {
            pk: format!("item-{n:010}"),
            n,
            group: (n % 97) as u32,
            kind: "order".to_owned(),
            payload: (0..PAYLOAD)
                .map(|j| char::from(b'a' + ((n as usize * 31 + j * 7) % 26) as u8))
                .collect(),
        }
    }
}

/// Changes handled and time spent, summed over every run of a routine.
#[derive(Default)]
struct Totals {
    changes: Cell<u64>,
    elapsed: Cell<Duration>,
}

impl Totals {
    fn add(&self, changes: u64, elapsed: Duration) -> Duration {
        self.changes.set(self.changes.get() + changes);
        self.elapsed.set(self.elapsed.get() + elapsed);
        elapsed
    }

    fn line(&self, what: &str) -> String {
        let (changes, seconds) = (self.changes.get(), self.elapsed.get().as_secs_f64());
        format!(
            "{what}: {changes} changes in {seconds:.3} s = {:.0} changes/s",
            changes as f64 / seconds.max(1e-9)
        )
    }
}

/// The simulated stream, except that GetRecords hands over pages built before the clock
/// starts. The simulator copies every record it returns (it keeps them for other readers),
/// which is not the consumer's cost: from the AWS SDK, records arrive owned, fresh from
/// the response. So the drain measures decoding and dispatch, not the simulator's copies.
#[derive(Debug)]
struct PrebuiltPages {
    sim: SimulatedStream,
    pages: std::sync::Mutex<std::collections::VecDeque<RecordsPage>>,
}

impl PrebuiltPages {
    /// The pages of `records` (the shard's records in order), `PAGE_LIMIT` each; the last
    /// one ends the shard.
    fn new(sim: &SimulatedStream, records: &[Record]) -> Self {
        let mut pages: std::collections::VecDeque<RecordsPage> = records
            .chunks(PAGE_LIMIT as usize)
            .map(|chunk| RecordsPage {
                records: chunk.to_vec(),
                next_iterator: Some("next".to_owned()),
            })
            .collect();
        if let Some(last) = pages.back_mut() {
            last.next_iterator = None;
        }
        Self {
            sim: sim.clone(),
            pages: std::sync::Mutex::new(pages),
        }
    }
}

#[async_trait::async_trait]
impl StreamsApi for PrebuiltPages {
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError> {
        self.sim.latest_stream_arn(table).await
    }
    async fn describe_stream(
        &self,
        stream_arn: &str,
        start: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        self.sim.describe_stream(stream_arn, start).await
    }
    async fn child_shards(
        &self,
        stream_arn: &str,
        shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        self.sim.child_shards(stream_arn, shard_id).await
    }
    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        self.sim
            .shard_iterator(stream_arn, shard_id, position)
            .await
    }
    async fn get_records(&self, _iterator: &str, _limit: u32) -> Result<RecordsPage, ApiError> {
        let page = self.pages.lock().map(|mut pages| pages.pop_front());
        Ok(page.ok().flatten().unwrap_or(RecordsPage {
            records: Vec::new(),
            next_iterator: None,
        }))
    }
}

/// One drain: a fresh application (fresh in-memory lease store) reads the whole shard from
/// TRIM_HORIZON; timed from `run_until` to the end of the batch holding the last change.
fn drain(
    runtime: &tokio::runtime::Runtime,
    sim: &SimulatedStream,
    records: &[Record],
    count: u64,
) -> Result<Duration, BoxError> {
    let api = Arc::new(PrebuiltPages::new(sim, records));
    let seen = Arc::new(AtomicU64::new(0));
    let done = Arc::new(OnceLock::<Instant>::new());
    let finished = Arc::new(tokio::sync::Notify::new());
    let consumer = Consumer::builder("bench-sim")
        .with_table("bench")
        .with_streams_api(api)
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_worker_id("bench")
        .with_initial_position(InitialPosition::TrimHorizon)
        .with_checkpoint_interval(Duration::ZERO)
        .with_batch_limit(PAGE_LIMIT)
        .build(processor_fn({
            let (seen, done, finished) = (seen.clone(), done.clone(), finished.clone());
            move |batch: ChangeBatch<BenchItem>| {
                // The processor's work: read every decoded image.
                let sum = batch
                    .iter()
                    .filter_map(|c| c.new.as_ref())
                    .fold(0u64, |s, item| s.wrapping_add(item.n));
                black_box(sum);
                let count_now = batch.len() as u64;
                let before = seen.fetch_add(count_now, Ordering::Relaxed);
                if before < count && before + count_now >= count {
                    let _ = done.set(Instant::now());
                    finished.notify_one();
                }
                async { Ok(()) }
            }
        }))?;
    let started = Instant::now();
    runtime.block_on(async {
        let until = async { finished.notified().await };
        tokio::time::timeout(Duration::from_secs(600), consumer.run_until(until))
            .await
            .map_err(|_| "the simulated drain did not finish")?
            .map_err(BoxError::from)
    })?;
    let done = done.get().ok_or("the drain stopped early")?;
    Ok(*done - started)
}

/// `Change::<BenchItem>::decode` of every record, on this thread.
fn decode_all(shard_id: &str, records: &[Arc<Record>]) -> Result<u64, BoxError> {
    let mut checksum = 0u64;
    for record in records {
        let change = Change::<BenchItem>::decode(shard_id, record.clone())?;
        checksum = checksum.wrapping_add(change.new.map_or(0, |item| item.n));
    }
    Ok(checksum)
}

fn main() -> Result<(), BoxError> {
    let benching = std::env::args().any(|a| a == "--bench");
    let count = if benching { CHANGES.0 } else { CHANGES.1 };
    let sim = SimulatedStream::new(SimConfig::default());
    let stream_arn = sim.add_table("bench");
    for n in 0..count {
        sim.put_value("bench", &BenchItem::new(n))?;
    }
    let shard_id = sim
        .open_shards(&stream_arn)?
        .first()
        .map(|s| s.shard_id.clone())
        .ok_or("the simulated stream has no shard")?;
    let owned: Vec<Record> = sim.records(&stream_arn, &shard_id)?;
    let records: Vec<Arc<Record>> = owned.iter().cloned().map(Arc::new).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let mut criterion = Criterion::default().sample_size(10).configure_from_args();
    let (dispatch, decode) = (Totals::default(), Totals::default());
    let mut group = criterion.benchmark_group("simulated stream");
    group.throughput(Throughput::Elements(count));
    group.bench_function("decode+dispatch", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| match drain(&runtime, &sim, &owned, count) {
                    Ok(elapsed) => dispatch.add(count, elapsed),
                    Err(error) => panic!("drain failed: {error}"),
                })
                .sum()
        })
    });
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("raw decode", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                match decode_all(&shard_id, &records) {
                    Ok(checksum) => black_box(checksum),
                    Err(error) => panic!("decode failed: {error}"),
                };
            }
            decode.add(iters * records.len() as u64, started.elapsed())
        })
    });
    group.finish();
    println!(
        "{}",
        dispatch.line(
            "decode+dispatch (consumer, simulated stream with prebuilt pages, in-memory \
             leases, checkpoint per batch, current_thread runtime)"
        )
    );
    println!(
        "{}",
        decode.line("raw decode (Change::<BenchItem>::decode, prebuilt records)")
    );
    criterion.final_summary();
    Ok(())
}
