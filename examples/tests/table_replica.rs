//! Exactly-once into DynamoDB, checked from outside: real `table-replica` processes keep a
//! target table equal to a source table while a writer changes and deletes items and the
//! replica that owns the shard is SIGKILLed and replaced again and again.
//!
//! Every target item counts the changes applied to it (`_changes`); the truth is the
//! number of stream records of its key, read from the source stream directly. With
//! transactions (the default) the two must be equal and the tables must match. The same
//! scenario with `--plain-checkpoints` (writes first, checkpoint after the batch) must show
//! over-counts: the test asserts it, so the exactly-once test is known to be able to fail.
//!
//! Every other time, the owner is not killed but frozen (SIGSTOP) until another replica has
//! taken its shard over, then thawed (SIGCONT): a zombie in the middle of a batch. Nothing
//! it does may count twice. (In the runs looked at, the thawed worker fenced itself before
//! its transaction went out; `integration-tests/tests/transactions.rs` sends a zombie's
//! transaction and checks that it fails as a whole.)
//!
//! Why the plain run over-counts every time: the replicas apply changes more slowly than
//! the writer makes them (`--apply-delay`), so the owner is always in the middle of a batch
//! while the writer runs, and it is killed there: the changes it applied since its last
//! checkpoint are applied again by the next owner.
//!
//! `--nocapture` prints the figures of each run (changes, kills, duration).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{shard_owners, tail};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, streams_client, unique_name,
};
use tokio::time::Instant;

const REPLICA_BIN: &str = env!("CARGO_BIN_EXE_table-replica");
/// Items the writer changes.
const KEYS: u64 = 30;
/// Writes (puts and deletes) of one run.
const WRITES: u64 = 900;
/// Pause between two writes: about 60 changes/s.
const WRITE_EVERY: Duration = Duration::from_millis(16);
/// Pause before each change in the replica: about 35 changes/s, slower than the writer.
const APPLY_DELAY: &str = "28ms";
/// How often the shard's owner is killed while the writer runs.
const KILL_EVERY: Duration = Duration::from_millis(2500);
/// How long the replicas may take to catch up at the end.
const CATCH_UP: Duration = Duration::from_secs(120);

type Item = HashMap<String, AttributeValue>;

/// What one run left: per key, the stream's record count, the source item (if any) and the
/// target item (if any).
struct Outcome {
    counts: BTreeMap<String, u64>,
    source: BTreeMap<String, Item>,
    target: BTreeMap<String, Item>,
}

struct Replicas {
    source: String,
    target: String,
    app: String,
    plain: bool,
    /// Flags every replica of the run gets besides the tables and ids.
    tuning: Vec<String>,
    started: usize,
    running: Vec<Replica>,
}

/// One `table-replica` process (its logs in a file, shown if the test fails).
struct Replica {
    id: String,
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl Replica {
    fn spawn(id: &str, log_name: &str, args: &[String]) -> Replica {
        let dir = std::env::temp_dir().join("multi-process-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{log_name}.stderr"));
        let child = tokio::process::Command::new(REPLICA_BIN)
            .args(args)
            .env("RUST_LOG", "info,dynamodb_streams_consumer=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start table-replica");
        Replica {
            id: id.to_owned(),
            child,
            log,
        }
    }

    /// Sends a signal (`KILL`, `TERM`, `STOP`, `CONT`) to this process.
    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within 30 s", self.id))
            .expect("wait for table-replica")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!(
                "---- {} ({}):\n{}",
                self.id,
                self.log.display(),
                tail(&log, 30)
            );
        }
    }
}

impl Replicas {
    fn start(&mut self) {
        self.started += 1;
        let id = format!("replica-{}", self.started);
        let mut args: Vec<String> = [
            "--source",
            &self.source,
            "--target",
            &self.target,
            "--app",
            &self.app,
            "--worker-id",
            &id,
            "--endpoint",
            &dynamodb_streams_integration_tests::endpoint(),
            "--failover-time",
            "3s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.tuning.iter().cloned());
        if self.plain {
            args.push("--plain-checkpoints".into());
        }
        let log = format!("{}-{id}", self.app);
        self.running.push(Replica::spawn(&id, &log, &args));
    }

    /// The id of the replica that owns the shard, if one does.
    async fn owner(&self) -> Option<String> {
        shard_owners(&self.app)
            .await
            .into_iter()
            .find_map(|(_, owner)| owner)
    }

    /// SIGKILLs the replica that owns the shard (if one does) and starts a new one.
    async fn kill_owner(&mut self) -> bool {
        let Some(owner) = self.owner().await else {
            return false;
        };
        let Some(i) = self.running.iter().position(|r| r.id == owner) else {
            return false;
        };
        let mut victim = self.running.remove(i);
        victim.signal("KILL");
        victim.wait().await;
        self.start();
        true
    }

    /// Freezes the replica that owns the shard (SIGSTOP), starts a new one, waits until
    /// another replica owns the shard, then thaws the frozen one (SIGCONT): a zombie that
    /// goes on with its batch.
    async fn freeze_owner_until_taken_over(&mut self) -> bool {
        let Some(owner) = self.owner().await else {
            return false;
        };
        let Some(frozen) = self.running.iter().find(|r| r.id == owner) else {
            return false;
        };
        frozen.signal("STOP");
        self.start();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.owner().await;
            if now.is_some() && now.as_deref() != Some(owner.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nobody took over from frozen {owner}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(frozen) = self.running.iter().find(|r| r.id == owner) {
            frozen.signal("CONT");
        }
        true
    }

    async fn stop(&mut self) {
        for replica in &self.running {
            replica.signal("TERM");
        }
        for replica in &mut self.running {
            let status = replica.wait().await;
            assert!(status.success(), "{} exited with {status}", replica.id);
        }
    }
}

/// A small deterministic generator (the writes of every run are the same).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Puts and deletes on `KEYS` items: attributes come and go (`a`, `b`), so the replica's
/// REMOVEs are exercised too.
async fn write(source: &str) {
    let client = dynamodb_client().await;
    let mut rng = Lcg(7);
    for op in 0..WRITES {
        let id = format!("k{}", rng.next(KEYS));
        if rng.next(6) == 0 {
            client
                .delete_item()
                .table_name(source)
                .key("id", AttributeValue::S(id))
                .send()
                .await
                .expect("delete");
        } else {
            let mut request = client
                .put_item()
                .table_name(source)
                .item("id", AttributeValue::S(id))
                .item("op", AttributeValue::N(op.to_string()));
            if op % 2 == 0 {
                request = request.item("a", AttributeValue::S(format!("a{op}")));
            }
            if op % 3 == 0 {
                request = request.item(
                    "b",
                    AttributeValue::M(HashMap::from([(
                        "n".to_owned(),
                        AttributeValue::N(op.to_string()),
                    )])),
                );
            }
            request.send().await.expect("put");
        }
        tokio::time::sleep(WRITE_EVERY).await;
    }
}

async fn scan(table: &str) -> BTreeMap<String, Item> {
    let client = dynamodb_client().await;
    let mut items = BTreeMap::new();
    let mut start = None;
    loop {
        let page = client
            .scan()
            .table_name(table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        for item in page.items() {
            if let Some(AttributeValue::S(id)) = item.get("id") {
                items.insert(id.clone(), item.clone());
            }
        }
        start = page.last_evaluated_key().cloned();
        if start.is_none() {
            return items;
        }
    }
}

/// Every record of the source's stream, read directly (DynamoDB Local gives a stream one
/// shard; the writer has stopped, so an empty page is the end).
async fn stream_records(source: &str) -> Vec<aws_sdk_dynamodbstreams::types::Record> {
    let arn = dynamodb_streams_integration_tests::stream_arn(source)
        .await
        .expect("a stream");
    let streams = streams_client().await;
    let description = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .expect("describe stream")
        .stream_description
        .expect("a stream description");
    let mut records = Vec::new();
    for shard in description.shards() {
        let mut iterator = streams
            .get_shard_iterator()
            .stream_arn(&arn)
            .shard_id(shard.shard_id().unwrap_or_default())
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .expect("iterator")
            .shard_iterator;
        while let Some(it) = iterator {
            let page = streams
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .expect("records");
            if page.records().is_empty() {
                break;
            }
            records.extend(page.records().iter().cloned());
            iterator = page.next_shard_iterator;
        }
    }
    records
}

/// The number of stream records of each key.
async fn stream_counts(source: &str) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for record in stream_records(source).await {
        let id = record
            .dynamodb()
            .and_then(|d| d.keys())
            .and_then(|k| k.get("id"))
            .and_then(|v| v.as_s().ok())
            .expect("a key")
            .clone();
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The target item expected for `id`: the source item plus its change count, or a tombstone.
fn expected(id: &str, count: u64, source: Option<&Item>) -> Item {
    let mut item = match source {
        Some(item) => item.clone(),
        None => HashMap::from([
            ("id".to_owned(), AttributeValue::S(id.to_owned())),
            ("_deleted".to_owned(), AttributeValue::Bool(true)),
        ]),
    };
    item.insert("_changes".into(), AttributeValue::N(count.to_string()));
    item
}

/// The target item without its counter, and the counter.
fn split_counter(item: &Item) -> (Item, u64) {
    let mut item = item.clone();
    let count = match item.remove("_changes") {
        Some(AttributeValue::N(n)) => n.parse().unwrap_or(0),
        _ => 0,
    };
    (item, count)
}

/// Whether every key's target item has the source's attributes and at least its change
/// count (at-least-once: the replica caught up).
fn caught_up(outcome: &Outcome) -> bool {
    outcome.counts.iter().all(|(id, count)| {
        let want = split_counter(&expected(id, *count, outcome.source.get(id))).0;
        outcome
            .target
            .get(id)
            .map(split_counter)
            .is_some_and(|(got, n)| got == want && n >= *count)
    })
}

async fn outcome(source: &str, target: &str) -> Outcome {
    Outcome {
        counts: stream_counts(source).await,
        source: scan(source).await,
        target: scan(target).await,
    }
}

/// Runs the scenario and returns what the tables and the stream hold once the replicas
/// caught up.
async fn scenario(plain: bool) -> Outcome {
    let (source, target) = (unique_name("replica-src"), unique_name("replica-dst"));
    create_table(&source, "id", true).await;
    create_table(&target, "id", false).await;
    let mut replicas = Replicas {
        source: source.clone(),
        target: target.clone(),
        app: unique_name("replica-app"),
        plain,
        tuning: ["--batch-size", "20", "--apply-delay", APPLY_DELAY]
            .map(String::from)
            .to_vec(),
        started: 0,
        running: Vec::new(),
    };
    replicas.start();
    replicas.start();
    let started = Instant::now();
    let writer = tokio::spawn({
        let source = source.clone();
        async move { write(&source).await }
    });
    let (mut kills, mut freezes) = (0, 0);
    while !writer.is_finished() {
        tokio::time::sleep(KILL_EVERY).await;
        if writer.is_finished() {
            break;
        }
        if kills > freezes {
            if replicas.freeze_owner_until_taken_over().await {
                freezes += 1;
            }
        } else if replicas.kill_owner().await {
            kills += 1;
        }
    }
    writer.await.expect("the writer");
    let deadline = Instant::now() + CATCH_UP;
    let mut last = outcome(&source, &target).await;
    while !caught_up(&last) {
        assert!(
            Instant::now() < deadline,
            "the replicas did not catch up within {CATCH_UP:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = outcome(&source, &target).await;
    }
    replicas.stop().await;
    let changes: u64 = last.counts.values().sum();
    let applied: u64 = last.target.values().map(|item| split_counter(item).1).sum();
    println!(
        "{} mode: {changes} stream records over {} keys, {applied} applied, {kills} owners SIGKILLed, {freezes} frozen until taken over, {} replicas started, {:.1} s",
        if plain { "plain" } else { "transactional" },
        last.counts.len(),
        replicas.started,
        started.elapsed().as_secs_f64()
    );
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_apply_every_change_exactly_once_across_sigkills() {
    let outcome = scenario(false).await;
    for (id, count) in &outcome.counts {
        let want = expected(id, *count, outcome.source.get(id));
        assert_eq!(
            outcome.target.get(id),
            Some(&want),
            "target item {id} (stream records of it: {count})"
        );
    }
    assert_eq!(
        outcome.target.len(),
        outcome.counts.len(),
        "the target has items the stream never mentioned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_checkpoints_over_count_after_sigkills() {
    let outcome = scenario(true).await;
    let over: Vec<(&String, u64, u64)> = outcome
        .counts
        .iter()
        .filter_map(|(id, count)| {
            let applied = split_counter(outcome.target.get(id)?).1;
            (applied > *count).then_some((id, *count, applied))
        })
        .collect();
    println!("over-counted keys (id, stream records, applied): {over:?}");
    assert!(
        !over.is_empty(),
        "with plain checkpoints a SIGKILL mid-batch must apply some changes twice"
    );
}

// ----- figures -----

/// The sequence numbers of the source's stream, in order.
async fn stream_sequence_numbers(source: &str) -> Vec<String> {
    stream_records(source)
        .await
        .iter()
        .filter_map(|r| {
            r.dynamodb()
                .and_then(|d| d.sequence_number())
                .map(str::to_owned)
        })
        .collect()
}

/// Writes `changes` puts to `source`, 25 at a time, over `keys` distinct items.
async fn preload(source: &str, changes: u64, keys: u64) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let client = dynamodb_client().await;
    let mut op = 0;
    while op < changes {
        let requests: Vec<WriteRequest> = (op..(op + 25).min(changes))
            .map(|n| {
                let put = PutRequest::builder()
                    .item("id", AttributeValue::S(format!("k{}", n % keys)))
                    .item("op", AttributeValue::N(n.to_string()))
                    .item("payload", AttributeValue::S("x".repeat(100)))
                    .build()
                    .unwrap();
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        op += requests.len() as u64;
        let mut pending = HashMap::from([(source.to_owned(), requests)]);
        while !pending.is_empty() {
            let output = client
                .batch_write_item()
                .set_request_items(Some(pending))
                .send()
                .await
                .expect("batch write");
            pending = output.unprocessed_items.unwrap_or_default();
            pending.retain(|_, requests| !requests.is_empty());
        }
    }
}

/// One replica works through a backlog of `changes` changes over `keys` items; returns
/// its changes per second, counted from its first checkpoint to its last (start-up left
/// out).
async fn replica_rate(plain: bool, changes: u64, keys: u64) -> f64 {
    use dynamodb_streams_leases::{Checkpoint, DynamoDbLeaseStore, LeaseStore};
    let (source, target) = (unique_name("rate-src"), unique_name("rate-dst"));
    create_table(&source, "id", true).await;
    create_table(&target, "id", false).await;
    preload(&source, changes, keys).await;
    let seqs = stream_sequence_numbers(&source).await;
    let last = seqs.last().cloned().expect("records");
    let position = |seq: &str| seqs.iter().position(|s| s == seq).map_or(0, |i| i + 1);
    let mut replicas = Replicas {
        source,
        target,
        app: unique_name("rate-app"),
        plain,
        tuning: Vec::new(),
        started: 0,
        running: Vec::new(),
    };
    replicas.start();
    let config = dynamodb_streams_integration_tests::sdk_config().await;
    let store = DynamoDbLeaseStore::from_sdk_config(&config, replicas.app.as_str()).unwrap();
    let deadline = Instant::now() + CATCH_UP;
    let mut first: Option<(Instant, usize)> = None;
    let done = loop {
        assert!(Instant::now() < deadline, "no catch-up within {CATCH_UP:?}");
        let checkpoint = store.list_leases().await.ok().and_then(|leases| {
            leases
                .into_iter()
                .find(|l| !l.key.is_coordination())
                .map(|l| l.checkpoint)
        });
        if let Some(Checkpoint::At(seq)) = checkpoint {
            let now = Instant::now();
            let covered = position(seq.as_str());
            first.get_or_insert((now, covered));
            if seq.as_str() == last {
                break now;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    replicas.stop().await;
    let (start, covered) = first.expect("a checkpoint");
    let seconds = (done - start).as_secs_f64();
    (seqs.len() - covered) as f64 / seconds.max(f64::EPSILON)
}

/// Figures for the README: `scripts/dynamodb-local.sh run -- cargo test --release -p
/// examples --test table_replica -- --ignored --nocapture`. Prints, never asserts a speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints the replica's changes/s with and without transactions"]
async fn replica_throughput() {
    const CHANGES: u64 = 4000;
    println!("| changes | items | transactions (changes/s) | plain UpdateItem (changes/s) |");
    println!("| ---: | ---: | ---: | ---: |");
    for keys in [CHANGES, 100] {
        let transactional = replica_rate(false, CHANGES, keys).await;
        let plain = replica_rate(true, CHANGES, keys).await;
        println!("| {CHANGES} | {keys} | {transactional:.0} | {plain:.0} |");
    }
}

#[tokio::test]
async fn a_source_without_old_images_or_a_target_with_another_key_is_refused() {
    use dynamodb_streams_integration_tests::workers::run_to_exit;
    let (source, target) = (unique_name("replica-nostream"), unique_name("replica-dst"));
    create_table(&source, "id", false).await;
    create_table(&target, "id", false).await;
    let args = |source: &str, target: &str| -> Vec<String> {
        [
            "--source",
            source,
            "--target",
            target,
            "--app",
            &unique_name("replica-app"),
            "--endpoint",
            &dynamodb_streams_integration_tests::endpoint(),
        ]
        .map(String::from)
        .to_vec()
    };
    let bin = std::path::Path::new(REPLICA_BIN);
    let (status, _, stderr, _) =
        run_to_exit(bin, &args(&source, &target), Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&source) && stderr.contains("NEW_AND_OLD_IMAGES"),
        "{stderr}"
    );
    let streamed = unique_name("replica-src");
    create_table(&streamed, "id", true).await;
    let other_key = unique_name("replica-key");
    create_table(&other_key, "pk", false).await;
    let (status, _, stderr, _) =
        run_to_exit(bin, &args(&streamed, &other_key), Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&other_key) && stderr.contains("must be the same"),
        "{stderr}"
    );
}
