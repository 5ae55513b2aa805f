//! The memory budget (`with_max_buffered_bytes`) in simulation and paused time: while every
//! processor is stuck, the pages fetched ahead across all shards stay within the budget; a
//! budget smaller than one page still delivers everything, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dynamodb_streams_consumer::testkit::{Recording, SimConfig, SimOperation, SimulatedStream};
use dynamodb_streams_consumer::{ChangeBatch, Consumer};
use dynamodb_streams_leases::InMemoryLeaseStore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
    payload: String,
}

const SHARDS: usize = 8;
const PAGE: u32 = 50;
/// Bytes of each item's payload: a page of [`PAGE`] records is at least 200 KB.
const PAYLOAD: usize = 4096;

/// A table of `SHARDS` shards with `per_shard` records each on average, items of ~4 KB,
/// each item written twice (so per-item order can be checked).
fn stream_with_backlog(per_shard: usize) -> SimulatedStream {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: SHARDS,
        max_records_per_page: PAGE,
        ..SimConfig::default()
    });
    sim.add_table("t");
    let items = SHARDS * per_shard / 2;
    for n in 0..2 * items as u64 {
        let row = Row {
            pk: format!("item-{}", n % items as u64),
            n,
            payload: "x".repeat(PAYLOAD),
        };
        sim.put_value("t", &row).unwrap();
    }
    sim
}

/// A recording whose processors wait at every batch until `gate` is opened; `entered`
/// counts batches that reached the gate.
fn gated_recording(gate: watch::Receiver<bool>, entered: Arc<AtomicUsize>) -> Recording<Row> {
    Recording::new().with_hook(move |_, _: &ChangeBatch<Row>, _| {
        let (mut gate, entered) = (gate.clone(), entered.clone());
        Box::pin(async move {
            entered.fetch_add(1, Ordering::SeqCst);
            gate.wait_for(|open| *open).await?;
            Ok(())
        })
    })
}

/// Polls `done` every 100 ms (virtual) until it holds; fails after `limit`.
async fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every change of each item arrives in the order it was written, and every change once.
fn check_all_delivered_in_order(recording: &Recording<Row>, total: usize) {
    let delivered = recording.images();
    assert_eq!(delivered.len(), total, "every change, once");
    let mut last: HashMap<String, u64> = HashMap::new();
    for row in delivered {
        if let Some(before) = last.insert(row.pk.clone(), row.n) {
            assert!(before < row.n, "{}: {} after {}", row.pk, row.n, before);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn pages_fetched_ahead_across_shards_stay_within_the_budget() {
    // ~500 records a shard: far more than a shard fetches ahead (1 page processed, 4
    // prefetched, 1 waiting to be handed over = 300 records), so every call returns a full
    // page while the processors are stuck.
    let sim = stream_with_backlog(500);
    let total = sim.written().len();
    let budget: u64 = 1024 * 1024;
    let (open, gate) = watch::channel(false);
    let entered = Arc::new(AtomicUsize::new(0));
    let recording = gated_recording(gate, entered.clone());
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_prefetch_pages(4)
        .with_max_buffered_bytes(budget)
        .build(recording.factory())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));

    // Some shards reach their first batch; the others wait for budget to fetch one.
    wait_until("a processor is stuck", Duration::from_secs(60), || {
        entered.load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let pages = sim.calls(SimOperation::GetRecords);
    // Every byte fetched is in the budget, except at most one page per shard that came
    // back bigger than its reservation and waits for the rest (see `budget.rs`).
    let page_bytes = u64::from(PAGE) * PAYLOAD as u64;
    let bound = budget / page_bytes + SHARDS as u64;
    println!(
        "pages fetched while every processor is stuck: {pages} (bound {bound}; without a budget {})",
        SHARDS * 6
    );
    assert!(
        pages <= bound,
        "{pages} pages of >= {page_bytes} bytes fetched with a budget of {budget} bytes"
    );
    assert!(pages > 0);

    open.send(true).unwrap();
    wait_until("everything delivered", Duration::from_secs(600), || {
        recording.len() >= total
    })
    .await;
    check_all_delivered_in_order(&recording, total);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_budget_smaller_than_one_page_still_delivers_everything_in_order() {
    let sim = stream_with_backlog(150);
    let total = sim.written().len();
    let (open, gate) = watch::channel(true);
    let recording = gated_recording(gate, Arc::default());
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_max_buffered_bytes(10 * 1024)
        .build(recording.factory())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));
    wait_until("everything delivered", Duration::from_secs(600), || {
        recording.len() >= total
    })
    .await;
    check_all_delivered_in_order(&recording, total);
    drop(open);
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// With key parallelism, one item whose batches hang holds its own partition (and, once
/// that partition has enough queued, its shard), never the worker's whole budget: every
/// other shard's records are delivered meanwhile. (Before: each page's bytes came back
/// only once all its records were done, so the stuck partition pinned every page of its
/// shard, which kept taking pages in, until the budget was spent.)
#[tokio::test(start_paused = true)]
async fn one_stuck_key_partition_does_not_stall_the_other_shards() {
    let sim = stream_with_backlog(1500);
    let written = sim.written();
    let stuck_shard = written
        .iter()
        .find(|w| w.key.contains("\"item-0\""))
        .map(|w| w.shard_id.clone())
        .expect("item-0 was written");
    let others = written.iter().filter(|w| w.shard_id != stuck_shard).count();
    let delivered_elsewhere = Arc::new(AtomicUsize::new(0));
    let (open, gate) = watch::channel(false);
    let counted = delivered_elsewhere.clone();
    let recording = Recording::new().with_hook(move |shard, batch: &ChangeBatch<Row>, _| {
        let stuck = batch.changes.iter().any(|change| {
            change
                .new
                .as_ref()
                .is_some_and(|row: &Row| row.pk == "item-0")
        });
        if shard.shard_id != stuck_shard {
            counted.fetch_add(batch.changes.len(), Ordering::SeqCst);
        }
        let mut gate = gate.clone();
        Box::pin(async move {
            if stuck {
                gate.wait_for(|open| *open).await?;
            }
            Ok(())
        })
    });
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_key_parallelism(4)
        .with_max_buffered_bytes(8 * 1024 * 1024)
        .build(recording.factory())
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(consumer.run_until(async {
        let _ = stopped.await;
    }));
    wait_until(
        "the other shards' records delivered while one item hangs",
        Duration::from_secs(600),
        || delivered_elsewhere.load(Ordering::SeqCst) >= others,
    )
    .await;
    open.send(true).unwrap();
    wait_until("everything delivered", Duration::from_secs(600), || {
        recording.len() >= written.len()
    })
    .await;
    check_all_delivered_in_order(&recording, written.len());
    stop.send(()).unwrap();
    worker.await.unwrap().unwrap();
}

/// A budget that admits one page at a time and a batching window far longer than the run:
/// the fetch task cannot ask for the next page until the batch holding the last one is
/// delivered, so each batch goes at once instead of waiting out the window for records
/// that cannot come (before: one record per window; explorer seed 110687). Once through a
/// task's single processor and once with key parallelism.
#[tokio::test(start_paused = true)]
async fn a_batching_window_ends_once_the_budget_keeps_the_next_page_out() {
    const WINDOW: Duration = Duration::from_secs(120);
    for partitions in [1, 2] {
        let sim = SimulatedStream::new(SimConfig {
            initial_shards: 1,
            max_records_per_page: 1,
            ..SimConfig::default()
        });
        sim.add_table("t");
        for n in 0..6 {
            let row = Row {
                pk: format!("item-{n}"),
                n,
                payload: "x".repeat(PAYLOAD),
            };
            sim.put_value("t", &row).unwrap();
        }
        let total = sim.written().len();
        let recording = Recording::<Row>::new();
        let consumer = Consumer::builder("app")
            .with_table("t")
            .with_streams_api(Arc::new(sim.clone()))
            .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
            // A page of one ~4 KB item costs ~9 KB: the next one's reservation waits.
            .with_max_buffered_bytes(10 * 1024)
            .with_max_batch_size(100)
            .with_batching_window(WINDOW)
            .with_key_parallelism(partitions)
            .build(recording.factory())
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(consumer.run_until(async {
            let _ = stopped.await;
        }));
        wait_until(
            &format!("{total} one-record pages delivered with {partitions} partition(s)"),
            WINDOW / 2,
            || recording.len() >= total,
        )
        .await;
        check_all_delivered_in_order(&recording, total);
        stop.send(()).unwrap();
        worker.await.unwrap().unwrap();
    }
}

#[test]
fn a_zero_budget_is_refused_naming_the_setting() {
    let sim = SimulatedStream::new(SimConfig::default());
    let error = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim))
        .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
        .with_max_buffered_bytes(0)
        .build(Recording::<Row>::new().factory())
        .err()
        .expect("refused");
    assert!(
        error.to_string().contains("with_max_buffered_bytes"),
        "{error}"
    );
}
