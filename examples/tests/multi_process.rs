//! Real `jsonl-worker` processes against DynamoDB Local: several workers sharing several
//! tables, an owner killed with SIGKILL while a writer runs, a SIGTERM handoff, a joining
//! worker getting its fair share, and start-up errors.
//!
//! Every test uses its own tables and application. Workers run with `--failover-time 3s`
//! (heartbeats every second; the default 2 s scan interval) to keep the tests quick. The
//! writer gives every write a unique `op` number, so each printed line identifies exactly
//! one write: the tests compare what was printed with what was written, change by change.
//! The tests live in `examples`, the package that owns `jsonl-worker`, so Cargo builds the
//! binary first ([`WORKER_BIN`]); `dynamodb_streams_integration_tests::workers` runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{
    Change, Worker, WorkerConfig, lease_counts, run_to_exit, shard_owners, wait_until,
};
use dynamodb_streams_integration_tests::{create_table, dynamodb_client, unique_name};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The worker binary, built by Cargo for these tests.
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
/// Failover time of the test workers.
const FAILOVER: &str = "3s";
/// How long any one phase of a test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(45);

// ----- tables and writes -----

async fn create_tables(prefix: &str, count: usize) -> Vec<String> {
    let mut tables = Vec::new();
    for _ in 0..count {
        let table = unique_name(prefix);
        create_table(&table, "id", true).await;
        tables.push(table);
    }
    tables
}

/// One expected change of an item: what its stream record must show.
#[derive(Clone, Debug, PartialEq)]
struct Expected {
    event: &'static str,
    old: Value,
    new: Value,
}

/// (table, item id)
type ItemKey = (String, String);

/// Writes items and remembers, per item, the changes its stream must show, in order.
/// Images are `{"id", "v", "op"}`: `v` counts the writes of the item, `op` is unique per
/// write (so a printed change identifies its write).
struct Writer {
    client: aws_sdk_dynamodb::Client,
    /// The last op number written (shared with the test while a writer task runs).
    ops: Arc<AtomicU64>,
    current: BTreeMap<ItemKey, Value>,
    writes: BTreeMap<ItemKey, u64>,
    expected: BTreeMap<ItemKey, Vec<Expected>>,
}

impl Writer {
    async fn new() -> Self {
        Writer {
            client: dynamodb_client().await,
            ops: Arc::new(AtomicU64::new(0)),
            current: BTreeMap::new(),
            writes: BTreeMap::new(),
            expected: BTreeMap::new(),
        }
    }

    fn next_image(&mut self, key: &ItemKey) -> (Value, u64) {
        let op = self.ops.load(Ordering::SeqCst) + 1;
        let v = self.writes.get(key).copied().unwrap_or(0) + 1;
        (json!({"id": key.1, "v": v, "op": op}), op)
    }

    fn record(&mut self, key: ItemKey, new: Option<Value>, op: u64) {
        let old = match &new {
            Some(image) => self.current.insert(key.clone(), image.clone()),
            None => self.current.remove(&key),
        };
        let event = match (&old, &new) {
            (None, _) => "INSERT",
            (Some(_), Some(_)) => "MODIFY",
            (Some(_), None) => "REMOVE",
        };
        *self.writes.entry(key.clone()).or_insert(0) += 1;
        self.expected.entry(key).or_default().push(Expected {
            event,
            old: old.unwrap_or(Value::Null),
            new: new.unwrap_or(Value::Null),
        });
        self.ops.store(op, Ordering::SeqCst);
    }

    /// PutItem: an insert, or a modify of an existing item.
    async fn put(&mut self, table: &str, id: &str) {
        let key = (table.to_owned(), id.to_owned());
        let (image, op) = self.next_image(&key);
        let v = image["v"].as_u64().unwrap();
        self.client
            .put_item()
            .table_name(table)
            .item("id", AttributeValue::S(id.into()))
            .item("v", AttributeValue::N(v.to_string()))
            .item("op", AttributeValue::N(op.to_string()))
            .send()
            .await
            .unwrap();
        self.record(key, Some(image), op);
    }

    /// UpdateItem (SET): a modify, or an insert of a missing item.
    async fn update(&mut self, table: &str, id: &str) {
        let key = (table.to_owned(), id.to_owned());
        let (image, op) = self.next_image(&key);
        let v = image["v"].as_u64().unwrap();
        self.client
            .update_item()
            .table_name(table)
            .key("id", AttributeValue::S(id.into()))
            .update_expression("SET v = :v, op = :op")
            .expression_attribute_values(":v", AttributeValue::N(v.to_string()))
            .expression_attribute_values(":op", AttributeValue::N(op.to_string()))
            .send()
            .await
            .unwrap();
        self.record(key, Some(image), op);
    }

    /// DeleteItem of an existing item: a remove.
    async fn delete(&mut self, table: &str, id: &str) {
        let key = (table.to_owned(), id.to_owned());
        assert!(
            self.current.contains_key(&key),
            "deletes only existing items"
        );
        let op = self.ops.load(Ordering::SeqCst) + 1;
        self.client
            .delete_item()
            .table_name(table)
            .key("id", AttributeValue::S(id.into()))
            .send()
            .await
            .unwrap();
        self.record(key, None, op);
    }

    fn total(&self) -> usize {
        self.expected.values().map(Vec::len).sum()
    }
}

/// A writer running in the background: puts to every key of every table in turn, one write
/// every `pause`, until stopped.
struct Background {
    ops: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Writer>,
}

impl Background {
    async fn start(tables: &[String], keys: usize, pause: Duration) -> Self {
        let mut writer = Writer::new().await;
        let ops = writer.ops.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let tables = tables.to_vec();
        let task = tokio::spawn(async move {
            while !stopped.load(Ordering::SeqCst) {
                for k in 0..keys {
                    for table in &tables {
                        writer.put(table, &format!("k{k}")).await;
                        tokio::time::sleep(pause).await;
                    }
                }
            }
            writer
        });
        Background { ops, stop, task }
    }

    /// The last op number written so far.
    fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    async fn stop(self) -> Writer {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

// ----- checking outputs against writes -----

fn item_key(change: &Change) -> ItemKey {
    let id = change.keys["id"].as_str().unwrap_or_else(|| {
        panic!("a change without a string id key: {change:?}");
    });
    (change.table.clone(), id.to_owned())
}

/// The `op` of the write a change shows (the new image's, or for a remove the old one's).
fn change_op(change: &Change) -> u64 {
    let image = if change.event == "REMOVE" {
        &change.old
    } else {
        &change.new
    };
    image["op"].as_u64().unwrap_or(0)
}

/// What the workers printed, matched to what was written.
struct Delivery {
    /// Per (table, seq): the workers that printed it (once per print).
    printed_by: BTreeMap<(String, String), Vec<String>>,
    /// Changes of the writes that no worker printed (count).
    missing: usize,
}

impl Delivery {
    /// Matches every printed change to its write and checks, per worker, that each item's
    /// changes appear in write order (none twice), and across workers, that a sequence
    /// number always denotes the same change and sequence numbers follow write order.
    fn check(writer: &Writer, workers: &[&Worker]) -> Delivery {
        let mut printed_by: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        // (table, seq) -> (item, index of its change)
        let mut identified: BTreeMap<(String, String), (ItemKey, usize)> = BTreeMap::new();
        for worker in workers {
            let mut last_index: BTreeMap<ItemKey, usize> = BTreeMap::new();
            for change in worker.changes() {
                assert_eq!(change.worker, worker.id(), "a line names its worker");
                let key = item_key(&change);
                let expected = writer
                    .expected
                    .get(&key)
                    .unwrap_or_else(|| panic!("a change of an item never written: {change:?}"));
                let seen = Expected {
                    event: match change.event.as_str() {
                        "INSERT" => "INSERT",
                        "MODIFY" => "MODIFY",
                        "REMOVE" => "REMOVE",
                        other => panic!("unknown event {other}: {change:?}"),
                    },
                    old: change.old.clone(),
                    new: change.new.clone(),
                };
                let index = expected.iter().position(|e| *e == seen).unwrap_or_else(|| {
                    panic!(
                        "worker {} printed a change that matches no write (op {}): \
                             {change:?}\nwrites of the item: {expected:?}",
                        worker.id(),
                        change_op(&change)
                    )
                });
                if let Some(previous) = last_index.insert(key.clone(), index) {
                    assert!(
                        index > previous,
                        "worker {} printed change #{index} of {key:?} after #{previous}: \
                         per-item order broken (or a change printed twice by one worker)",
                        worker.id()
                    );
                }
                let id = (change.table.clone(), change.seq.clone());
                if let Some(other) = identified.insert(id.clone(), (key.clone(), index)) {
                    assert_eq!(
                        other,
                        (key, index),
                        "sequence number {id:?} printed for two different changes"
                    );
                }
                printed_by
                    .entry(id)
                    .or_default()
                    .push(worker.id().to_owned());
            }
        }
        // Per item, in sequence-number order, the changes are the writes in write order.
        // Per item: (sequence number's sort key, index of the change).
        type Seen = Vec<((usize, String), usize)>;
        let mut by_item: BTreeMap<ItemKey, Seen> = BTreeMap::new();
        for ((_, seq), (key, index)) in &identified {
            by_item.entry(key.clone()).or_default().push((
                dynamodb_streams_integration_tests::workers::seq_key(seq),
                *index,
            ));
        }
        let mut missing = 0;
        for (key, expected) in &writer.expected {
            let mut seen = by_item.remove(key).unwrap_or_default();
            seen.sort();
            let indexes: Vec<usize> = seen.iter().map(|(_, i)| *i).collect();
            assert!(
                indexes.windows(2).all(|w| w[0] < w[1]),
                "{key:?}: in sequence-number order, the printed changes are not in write \
                 order: {indexes:?}"
            );
            missing += expected.len() - indexes.len();
        }
        Delivery {
            printed_by,
            missing,
        }
    }

    /// Sequence numbers printed more than once, with the workers that printed them.
    fn duplicates(&self) -> BTreeMap<&(String, String), &Vec<String>> {
        self.printed_by
            .iter()
            .filter(|(_, workers)| workers.len() > 1)
            .collect()
    }
}

/// Waits until every change written is printed by some worker.
async fn wait_for_every_change(writer: &Writer, workers: &[&Worker]) {
    let start = Instant::now();
    loop {
        let delivery = Delivery::check(writer, workers);
        if delivery.missing == 0 {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {} changes never printed within {DEADLINE:?}",
            delivery.missing,
            writer.total()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then an exit with status 0 within 15 s.
async fn terminate(worker: &mut Worker) {
    worker.terminate();
    let status = worker.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "worker {} exited with {status} after SIGTERM",
        worker.id()
    );
}

/// A fresh application and `count` fresh tables named after `prefix`, and the options of
/// workers consuming them.
async fn setup(prefix: &str, count: usize) -> (String, Vec<String>, WorkerConfig) {
    let app = unique_name("mp-app");
    let tables = create_tables(prefix, count).await;
    let config = WorkerConfig {
        bin: WORKER_BIN.into(),
        app: app.clone(),
        tables: tables.clone(),
        failover_time: Some(FAILOVER.into()),
    };
    (app, tables, config)
}

/// Waits until the lease table shows the given number of shard leases per worker id.
async fn wait_for_lease_counts(app: &str, wanted: &[(&str, usize)]) {
    let wanted: BTreeMap<String, usize> =
        wanted.iter().map(|(w, n)| ((*w).to_owned(), *n)).collect();
    let start = Instant::now();
    loop {
        let counts = lease_counts(app).await;
        if counts == wanted {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "leases never reached {wanted:?} within {DEADLINE:?}; last seen {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether `worker` printed a change of `table` written after op `after`.
fn printed_after(worker: &Worker, table: &str, after: u64) -> bool {
    worker
        .changes()
        .iter()
        .any(|c| c.table == table && change_op(c) > after)
}

/// After `what` stopped the other worker at `(op, instant)`: waits until `survivor` prints
/// changes written after it on every table (how long that took is returned), stops the
/// writer, waits until every change is printed, stops the survivor with SIGTERM, and
/// matches what both printed to the writes (nothing missing).
async fn survivor_takes_over(
    what: &str,
    workers: &mut [Worker; 2],
    survivor: usize,
    tables: &[String],
    background: Background,
    (stopped_at_op, stopped_at): (u64, Instant),
) -> (Duration, Writer, Delivery) {
    wait_until(
        &format!("the survivor printing changes written after {what} on every table"),
        DEADLINE,
        || {
            tables
                .iter()
                .all(|t| printed_after(&workers[survivor], t, stopped_at_op))
        },
    )
    .await;
    let took = stopped_at.elapsed();
    let writer = background.stop().await;
    let refs: Vec<&Worker> = workers.iter().collect();
    wait_for_every_change(&writer, &refs).await;
    terminate(&mut workers[survivor]).await;

    let refs: Vec<&Worker> = workers.iter().collect();
    let delivery = Delivery::check(&writer, &refs);
    assert_eq!(delivery.missing, 0);
    (took, writer, delivery)
}

// ----- the tests -----

/// 2 tables, 3 workers, a writer that inserts, modifies (put and update) and removes: every
/// change is printed, each item's changes in order within every worker's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_of_two_tables_is_printed_in_order_by_three_workers() {
    let (_, tables, config) = setup("mp-many", 2).await;
    let mut workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| Worker::start(id, &config))
        .collect();

    let mut writer = Writer::new().await;
    for round in 0..8 {
        for k in 0..10 {
            let id = format!("k{k}");
            for table in &tables {
                match (round + k) % 4 {
                    0 | 2 => writer.put(table, &id).await,
                    1 => writer.update(table, &id).await,
                    _ => {
                        if writer.current.contains_key(&(table.clone(), id.clone())) {
                            writer.delete(table, &id).await;
                        } else {
                            writer.update(table, &id).await;
                        }
                    }
                }
            }
        }
    }
    let refs: Vec<&Worker> = workers.iter().collect();
    wait_for_every_change(&writer, &refs).await;
    for worker in &mut workers {
        terminate(worker).await;
    }

    let refs: Vec<&Worker> = workers.iter().collect();
    let delivery = Delivery::check(&writer, &refs);
    assert_eq!(delivery.missing, 0);
    let kinds =
        writer
            .expected
            .values()
            .flatten()
            .fold(BTreeMap::<&str, usize>::new(), |mut m, e| {
                *m.entry(e.event).or_default() += 1;
                m
            });
    assert!(
        kinds.len() == 3,
        "the writes cover every kind of change: {kinds:?}"
    );
    for worker in &workers {
        assert!(worker.unparsed().is_empty(), "{:?}", worker.unparsed());
    }
    let per_worker: Vec<(String, usize)> = workers
        .iter()
        .map(|w| (w.id().to_owned(), w.changes().len()))
        .collect();
    eprintln!(
        "{} changes ({kinds:?}) printed as {per_worker:?}; {} printed twice",
        writer.total(),
        delivery.duplicates().len()
    );
}

/// 3 tables, 2 workers, a writer putting counters; the worker owning two shards is killed
/// with SIGKILL: the survivor takes them over and every change is printed. The only
/// duplicates are the killed worker's last, uncheckpointed output: at most one batch per
/// shard, at the tail of what it printed for that shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owners_shards_are_taken_over_with_duplicates_only_after_its_last_checkpoint() {
    let (app, tables, config) = setup("mp-kill", 3).await;
    let mut workers = [Worker::start("w1", &config), Worker::start("w2", &config)];
    let background = Background::start(&tables, 10, Duration::from_millis(3)).await;

    // Balanced (2 + 1), and the future victim has printed changes of both its tables.
    let start = Instant::now();
    let (victim, owned) = loop {
        let owners = shard_owners(&app).await;
        let owned_by = |w: &str| -> Vec<String> {
            owners
                .iter()
                .filter(|(_, o)| o.as_deref() == Some(w))
                .map(|(arn, _)| arn.clone())
                .collect()
        };
        let (w1, w2) = (owned_by("w1"), owned_by("w2"));
        if w1.len() + w2.len() == 3 && !w1.is_empty() && !w2.is_empty() {
            let (victim, owned) = if w1.len() == 2 { (0, w1) } else { (1, w2) };
            let owned_tables: Vec<String> = tables
                .iter()
                .filter(|t| owned.iter().any(|arn| arn.contains(&format!("/{t}/"))))
                .cloned()
                .collect();
            let now = background.ops();
            let printing = |ops: u64| {
                owned_tables
                    .iter()
                    .all(|t| printed_after(&workers[victim], t, ops))
            };
            if owned_tables.len() == 2 && printing(now.saturating_sub(60)) {
                break (victim, owned_tables);
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "workers never settled on 2 + 1 shards: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let survivor = 1 - victim;

    // Kill right after a batch shows up: the victim has printed it and is most likely still
    // writing its checkpoint, so the survivor prints it again (duplicates worth checking).
    let printed = workers[victim].line_count();
    let start = Instant::now();
    while workers[victim].line_count() == printed {
        assert!(start.elapsed() < DEADLINE, "the victim stopped printing");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let killed_at_op = background.ops();
    let killed_at = Instant::now();
    workers[victim].kill().await;
    let victim_id = workers[victim].id().to_owned();
    let survivor_id = workers[survivor].id().to_owned();
    eprintln!("killed {victim_id} (owning {owned:?}) at op {killed_at_op}");

    let (takeover, writer, delivery) = survivor_takes_over(
        "the kill",
        &mut workers,
        survivor,
        &tables,
        background,
        (killed_at_op, killed_at),
    )
    .await;
    assert!(workers[survivor].unparsed().is_empty());
    assert!(
        workers[victim].unparsed().len() <= 1,
        "only the last line may be cut short: {:?}",
        workers[victim].unparsed()
    );

    let duplicates = delivery.duplicates();
    for (id, printers) in &duplicates {
        let mut sorted = (*printers).clone();
        sorted.sort();
        let mut expected = vec![victim_id.clone(), survivor_id.clone()];
        expected.sort();
        assert_eq!(
            sorted, expected,
            "{id:?}: a duplicate is the victim's output printed again by the survivor"
        );
    }
    let victim_lines = workers[victim].changes();
    for table in &tables {
        let printed: Vec<&Change> = victim_lines.iter().filter(|c| &c.table == table).collect();
        let duplicated: Vec<bool> = printed
            .iter()
            .map(|c| duplicates.contains_key(&(c.table.clone(), c.seq.clone())))
            .collect();
        let first = duplicated.iter().position(|d| *d).unwrap_or(printed.len());
        assert!(
            duplicated[first..].iter().all(|d| *d),
            "{table}: the victim's duplicated output is not a tail of what it printed: \
             {duplicated:?}"
        );
        let count = printed.len() - first;
        assert!(
            count <= 1000,
            "{table}: {count} duplicates, more than one batch"
        );
    }
    eprintln!(
        "{} changes; {} printed twice; the survivor printed a change written after the kill \
         on every table {takeover:?} after it",
        writer.total(),
        duplicates.len()
    );
}

/// 2 tables, 2 workers owning one shard each, a writer putting counters; SIGTERM to one: it
/// exits 0 having released its lease, the other takes the shard over, and no change is
/// printed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_the_shards_over_without_duplicates_and_exits_zero() {
    let (app, tables, config) = setup("mp-term", 2).await;
    let mut workers = [Worker::start("w1", &config), Worker::start("w2", &config)];
    let background = Background::start(&tables, 10, Duration::from_millis(3)).await;

    wait_for_lease_counts(&app, &[("w1", 1), ("w2", 1)]).await;
    wait_until("both workers printing", DEADLINE, || {
        workers.iter().all(|w| !w.changes().is_empty())
    })
    .await;

    let terminated_at_op = background.ops();
    let terminated_at = Instant::now();
    terminate(&mut workers[0]).await;
    let exited = terminated_at.elapsed();
    let counts = lease_counts(&app).await;
    assert!(
        !counts.contains_key("w1"),
        "w1 released its lease before exiting: {counts:?}"
    );
    let (gap, writer, delivery) = survivor_takes_over(
        "the SIGTERM",
        &mut workers,
        1,
        &tables,
        background,
        (terminated_at_op, terminated_at),
    )
    .await;
    let duplicates = delivery.duplicates();
    assert!(
        duplicates.is_empty(),
        "{} changes printed twice after a graceful handoff: {duplicates:?}",
        duplicates.len()
    );
    for worker in &workers {
        assert!(worker.unparsed().is_empty(), "{:?}", worker.unparsed());
    }
    eprintln!(
        "{} changes, none twice; w1 exited {exited:?} after SIGTERM; w2 printed a change \
         written after it on both tables {gap:?} after it",
        writer.total()
    );
}

/// 4 tables, one worker owning all 4 shards; a second worker joins: each ends up with 2,
/// and it stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_worker_gets_its_fair_share_of_the_leases() {
    let (app, _, config) = setup("mp-join", 4).await;
    let mut first = Worker::start("w1", &config);
    wait_for_lease_counts(&app, &[("w1", 4)]).await;

    let joined_at = Instant::now();
    let mut second = Worker::start("w2", &config);
    wait_for_lease_counts(&app, &[("w1", 2), ("w2", 2)]).await;
    let balanced = joined_at.elapsed();
    // Stable: no lease moves for two more scan intervals (plus margin).
    let stable_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < stable_until {
        let counts = lease_counts(&app).await;
        assert_eq!(
            counts,
            BTreeMap::from([("w1".to_owned(), 2), ("w2".to_owned(), 2)]),
            "the balance did not hold"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    terminate(&mut second).await;
    terminate(&mut first).await;
    eprintln!("balanced 2 + 2 {balanced:?} after the second worker started");
}

/// Runs a worker that must fail: non-zero exit within 15 s, and exactly one error line on
/// stderr, which names `what`.
async fn fails_naming(args: Vec<String>, what: &str) {
    let (status, stdout, stderr, took) =
        run_to_exit(WORKER_BIN.as_ref(), &args, Duration::from_secs(15)).await;
    assert!(!status.success(), "{args:?} exited with {status}");
    assert!(stdout.is_empty(), "nothing printed on stdout: {stdout}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("jsonl-worker: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line on stderr:\n{stderr}");
    assert!(
        errors[0].contains(what),
        "the error names {what:?}: {}",
        errors[0]
    );
    eprintln!("exit {status} after {took:?}: {}", errors[0]);
}

fn worker_args(app: &str, table: &str, endpoint: &str) -> Vec<String> {
    [
        "--app",
        app,
        "--table",
        table,
        "--endpoint",
        endpoint,
        "--worker-id",
        "w1",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_table_fails_fast_naming_it() {
    let table = unique_name("mp-missing");
    let endpoint = dynamodb_streams_integration_tests::endpoint();
    fails_naming(
        worker_args(&unique_name("mp-app"), &table, &endpoint),
        &table,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_a_stream_fails_fast_naming_it() {
    let table = unique_name("mp-plain");
    create_table(&table, "id", false).await;
    let endpoint = dynamodb_streams_integration_tests::endpoint();
    fails_naming(
        worker_args(&unique_name("mp-app"), &table, &endpoint),
        &table,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_fails_fast_naming_it() {
    let endpoint = "http://127.0.0.1:1";
    fails_naming(
        worker_args(&unique_name("mp-app"), "some-table", endpoint),
        endpoint,
    )
    .await;
}
