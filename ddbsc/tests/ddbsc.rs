//! `ddbsc` run as a process against DynamoDB Local: status while workers run, reset refused
//! while a live worker owns the lease, reset while none runs and then a worker re-delivering
//! from the new position, `--force`, tail printing changes as they are written, shards, and
//! every bad-input case (one line on stderr naming it; exit 1, or 2 for usage).
//!
//! Workers run in this test process (the library, with a recording processor), so the
//! tests see exactly what each delivered.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod proxy;

use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_consumer::testkit::Recording;
use dynamodb_streams_consumer::{Consumer, ProcessorFactory};
use dynamodb_streams_integration_tests::workers::{run_to_exit, wait_until};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, sdk_config, unique_name,
};
use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const DDBSC: &str = env!("CARGO_BIN_EXE_ddbsc");
/// How long any one phase of a test may take before it fails.
const DEADLINE: Duration = Duration::from_secs(45);

/// Runs `ddbsc ARGS --endpoint $DYNAMODB_ENDPOINT`: exit code, stdout, stderr.
async fn ddbsc(args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--endpoint".into(), endpoint()]);
    let (status, out, err, _) = run_to_exit(DDBSC.as_ref(), &all, DEADLINE).await;
    (status.code().unwrap_or(-1), out, err)
}

/// `ddbsc ARGS --json`, which must succeed, parsed.
async fn ddbsc_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ddbsc(&all).await;
    assert_eq!(code, 0, "ddbsc {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Asserts a failure: `code`, one line on stderr containing every one of `names`.
fn assert_one_line_error(result: &(i32, String, String), code: i32, names: &[&str]) {
    let (got, _, err) = result;
    assert_eq!(*got, code, "exit code; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for name in names {
        assert!(err.contains(name), "{name:?} not named in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[derive(Clone, Debug, Deserialize)]
struct Item {
    n: i64,
}

async fn put(table: &str, id: &str, n: i64) {
    dynamodb_client()
        .await
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.into()))
        .item("n", AttributeValue::N(n.to_string()))
        .send()
        .await
        .unwrap();
}

/// A worker in this process: stop it gracefully with the sender.
struct RunningWorker {
    stop: oneshot::Sender<()>,
    run: JoinHandle<dynamodb_streams_consumer::Result<()>>,
}

impl RunningWorker {
    async fn start(app: &str, tables: &[String], id: &str, factory: impl ProcessorFactory) -> Self {
        let config = sdk_config().await;
        let mut builder = Consumer::builder(app)
            .with_sdk_config(&config)
            .with_worker_id(id)
            .with_failover_time(Duration::from_secs(3))
            .with_checkpoint_interval(Duration::ZERO)
            // A finished older stream (and its gate) goes at the next sync.
            .with_shard_sync_interval(Duration::from_secs(1));
        for table in tables {
            builder = builder.with_table(table.as_str());
        }
        let consumer = builder.build(factory).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        Self { stop, run }
    }

    async fn shut_down(self) {
        self.stop.send(()).unwrap();
        self.run.await.unwrap().unwrap();
    }
}

/// Polls `ddbsc status --app APP --json` until `done` holds; returns that status. Until
/// the workers created the lease table, the application is unknown: polled again.
async fn status_until(app: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (code, out, err) = ddbsc(&["status", "--app", app, "--json"]).await;
        let status = match code {
            0 => serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}")),
            1 if err.contains("unknown application") => Value::Null,
            _ => panic!("ddbsc status failed: {err}"),
        };
        if !status.is_null() && done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last status: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leases(status: &Value) -> &Vec<Value> {
    status["leases"].as_array().expect("leases")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_owners_checkpoints_and_live_workers_while_they_run() {
    let app = unique_name("app");
    let tables = vec![unique_name("st-a"), unique_name("st-b")];
    for table in &tables {
        create_table(table, "id", true).await;
        put(table, "x", 1).await;
    }
    let seen: Recording<Item> = Recording::new();
    let w1 = RunningWorker::start(&app, &tables, "w1", seen.factory()).await;
    let w2 = RunningWorker::start(&app, &tables, "w2", seen.factory()).await;

    let status = status_until(
        &app,
        "both leases owned by live workers, at a checkpoint",
        |s| {
            leases(s).len() == 2
                && leases(s).iter().all(|l| {
                    l["owner_alive"] == true && l["checkpoint"].as_str().unwrap().starts_with('0')
                })
                && s["workers"].as_array().unwrap().len() == 2
        },
    )
    .await;
    for lease in leases(&status) {
        assert!(
            tables.iter().any(|t| lease["table"] == t.as_str()),
            "{lease}"
        );
        assert!(lease["stream"].as_str().unwrap().contains(":table/"));
        assert_eq!(lease["state"], "active");
        assert!(lease["shard"].as_str().unwrap().starts_with("shardId-"));
    }
    let workers = status["workers"].as_array().unwrap();
    assert!(workers.iter().all(|w| w["alive"] == true), "{workers:?}");
    let held: u64 = workers.iter().map(|w| w["leases"].as_u64().unwrap()).sum();
    assert_eq!(held, 2);

    // --lag: each shard is caught up (its one record processed).
    let lagged = ddbsc_json(&["status", "--lag", "--app", &app]).await;
    for lease in leases(&lagged) {
        assert_eq!(lease["lag"]["records"], 0, "{lease}");
    }
    // --observe: alive because their heartbeat counters moved within 2 s (renewals every
    // second at a 3 s failover time), no clocks compared. Observing for less than the
    // renew interval is refused (`--renew-interval` tells ddbsc theirs).
    let short = ddbsc(&["status", "--app", &app, "--observe", "2s"]).await;
    assert_one_line_error(&short, 1, &["--observe 2s", "renew interval"]);
    let observed = ddbsc_json(&[
        "status",
        "--app",
        &app,
        "--observe",
        "2s",
        "--renew-interval",
        "1s",
    ])
    .await;
    let workers = observed["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2, "{observed}");
    assert!(workers.iter().all(|w| w["alive"] == true), "{observed}");
    // The readable form names the tables and the workers; flags may come first.
    let (code, out, err) = ddbsc(&["--endpoint", &endpoint(), "status", "--app", &app]).await;
    assert_eq!(code, 0, "{err}");
    for name in tables
        .iter()
        .map(String::as_str)
        .chain(["w1#", "w2#", "active"])
    {
        assert!(out.contains(name), "{name} missing in:\n{out}");
    }
    w1.shut_down().await;
    w2.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_snapshot_progress_per_application() {
    use aws_sdk_dynamodb::types::StreamViewType;
    let (app, table) = (unique_name("app"), unique_name("st-snap"));
    create_table(&table, "id", false).await;
    for i in 0..120 {
        put(&table, &format!("i{i}"), i).await;
    }
    dynamodb_streams_integration_tests::enable_stream(&table, StreamViewType::NewImage).await;
    // Each segment delivers its first page, then waits until the test has looked.
    let (release, released) = tokio::sync::watch::channel(false);
    let held: Recording<Item> = Recording::new().with_hook(move |_, _, before| {
        let mut released = released.clone();
        Box::pin(async move {
            if before > 0 {
                let _ = released.wait_for(|go| *go).await;
            }
            Ok(())
        })
    });
    let config = sdk_config().await;
    let consumer = Consumer::builder(&app)
        .with_sdk_config(&config)
        .with_table(&table)
        .with_worker_id("w1")
        .with_failover_time(Duration::from_secs(3))
        .with_creation_time_margin(Duration::from_secs(90))
        .with_snapshot(
            dynamodb_streams_consumer::SnapshotConfig::new()
                .with_segments(3)
                .with_page_size(10),
        )
        .build(held.factory())
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));

    let status = status_until(&app, "every segment at its first page", |s| {
        s["snapshots"][0]["items_in_open_segments"] == 30
    })
    .await;
    let snapshot = &status["snapshots"][0];
    assert_eq!(snapshot["table"], table.as_str(), "{snapshot}");
    assert_eq!(snapshot["segments"], 3, "{snapshot}");
    assert_eq!(snapshot["segments_done"], 0, "{snapshot}");
    assert_eq!(snapshot["done"], false, "{snapshot}");
    assert!(
        snapshot["owners"][0].as_str().unwrap().starts_with("w1#"),
        "{snapshot}"
    );
    assert!(snapshot["started_at"].as_str().is_some(), "{snapshot}");
    // Segments are leases too; --lag does not try to read them as shards.
    let lagged = ddbsc_json(&["status", "--lag", "--app", &app]).await;
    let segments = leases(&lagged)
        .iter()
        .filter(|l| l["shard"].as_str().unwrap().starts_with("snapshot-"))
        .inspect(|l| assert!(l["lag"].is_null(), "{l}"))
        .count();
    assert_eq!(segments, 3, "{lagged}");
    let (code, out, err) = ddbsc(&["status", "--app", &app]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("0 of 3 segments done, 30 items"), "{out}");
    // A segment's position is a scan key: reset refuses to move it, naming it.
    let (code, _, err) = ddbsc(&[
        "reset",
        "--app",
        &app,
        "--table",
        &table,
        "--shard",
        "snapshot-0-of-3",
        "--to",
        "TRIM_HORIZON",
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("\"snapshot-0-of-3\" is a snapshot segment"),
        "{err}"
    );

    release.send(true).unwrap();
    let status = status_until(&app, "the snapshot done", |s| {
        s["snapshots"][0]["done"] == true
    })
    .await;
    assert_eq!(status["snapshots"][0]["segments_done"], 3, "{status}");
    assert_eq!(held.len(), 120);
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
}

/// A table's stream disabled and enabled again while the old stream still has unread
/// changes: the new stream's root waits behind a gate lease (`#after-stream <old ARN>`)
/// until the old shard is read to its end. `status` shows that root as
/// `waiting-for-parent`, not `active`, and says which stream it waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_roots_of_a_reenabled_stream_waiting_for_the_old_one() {
    use aws_sdk_dynamodb::types::StreamViewType;
    let (app, table) = (unique_name("app"), unique_name("st-gate"));
    create_table(&table, "id", true).await;
    let old = dynamodb_streams_integration_tests::stream_arn(&table)
        .await
        .unwrap();
    put(&table, "k0", 0).await;
    let tables = vec![table.clone()];
    let first: Recording<Item> = Recording::new();
    let worker = RunningWorker::start(&app, &tables, "w1", first.factory()).await;
    wait_until("the first change", DEADLINE, || first.len() == 1).await;
    worker.shut_down().await;

    // A backlog on the old stream, then a new stream.
    put(&table, "k1", 1).await;
    dynamodb_streams_integration_tests::disable_stream(&table).await;
    dynamodb_streams_integration_tests::enable_stream(&table, StreamViewType::NewAndOldImages)
        .await;
    let new = dynamodb_streams_integration_tests::stream_arn(&table)
        .await
        .unwrap();
    assert_ne!(new, old);
    put(&table, "k2", 2).await;
    // Holds the old stream's backlog until the test has looked.
    let (release, released) = tokio::sync::watch::channel(false);
    let held: Recording<Item> = Recording::new().with_hook(move |_, _, _| {
        let mut released = released.clone();
        Box::pin(async move {
            let _ = released.wait_for(|go| *go).await;
            Ok(())
        })
    });
    let worker = RunningWorker::start(&app, &tables, "w2", held.factory()).await;

    let status = status_until(&app, "a lease of the new stream", |s| {
        leases(s).iter().any(|l| l["stream"] == new.as_str())
    })
    .await;
    let of = |stream: &str| -> Vec<&Value> {
        leases(&status)
            .iter()
            .filter(|l| l["stream"] == stream)
            .collect()
    };
    let (roots, olds) = (of(&new), of(&old));
    assert_eq!((roots.len(), olds.len()), (1, 1), "{status:#}");
    assert_eq!(roots[0]["state"], "waiting-for-parent", "{status:#}");
    assert!(
        roots[0]["parents"][0]
            .as_str()
            .unwrap()
            .starts_with("#after-stream "),
        "{status:#}"
    );
    assert_eq!(olds[0]["state"], "active", "{status:#}");
    assert!(
        leases(&status).iter().all(|l| l["table"] == table.as_str()),
        "only the table's shards are listed: {status:#}"
    );
    let (code, out, err) = ddbsc(&["status", "--app", &app]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("waiting-for-parent"), "{out}");
    assert!(
        out.contains(&format!("waits until {old} is read to its end")),
        "{out}"
    );

    release.send(true).unwrap();
    status_until(&app, "the new stream's root running", |s| {
        leases(s)
            .iter()
            .any(|l| l["stream"] == new.as_str() && l["state"] == "active")
    })
    .await;
    worker.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_is_refused_while_owned_and_a_worker_redelivers_from_the_new_position() {
    use dynamodb_streams_leases::{Checkpoint, LeaseStore};
    let app = unique_name("app");
    let table = unique_name("reset");
    create_table(&table, "id", true).await;
    for n in 0..3 {
        put(&table, &format!("k{n}"), n).await;
    }
    let tables = vec![table.clone()];
    let first: Recording<Item> = Recording::new();
    let worker = RunningWorker::start(&app, &tables, "w1", first.factory()).await;
    wait_until("3 changes", DEADLINE, || first.len() >= 3).await;
    let seqs: Vec<String> = first
        .delivered()
        .iter()
        .map(|d| d.change.sequence_number.to_string())
        .collect();
    status_until(&app, "the checkpoint at the third record", |s| {
        leases(s)[0]["checkpoint"] == seqs[2].as_str()
    })
    .await;

    // Owned by a live worker: refused, naming the owner; nothing moved.
    let reset = async |to: &str, more: &[&str]| {
        let mut args = vec!["reset", "--app", &app, "--table", &table, "--to", to];
        args.extend(more);
        ddbsc(&args).await
    };
    let refused = reset("trim-horizon", &[]).await;
    assert_one_line_error(&refused, 1, &["w1#", "live worker", "--force"]);
    let status = ddbsc_json(&["status", "--app", &app]).await;
    assert_eq!(leases(&status)[0]["checkpoint"], seqs[2].as_str());

    // No worker running: moved to after the first record.
    worker.shut_down().await;
    let moved = ddbsc_json(&["reset", "--app", &app, "--table", &table, "--to", &seqs[0]]).await;
    assert_eq!(moved["reset"][0]["to"], seqs[0].as_str(), "{moved}");
    let status = ddbsc_json(&["status", "--app", &app]).await;
    assert_eq!(leases(&status)[0]["checkpoint"], seqs[0].as_str());
    assert_eq!(leases(&status)[0]["owner"], Value::Null);

    // A worker started now re-delivers the records after it.
    let second: Recording<Item> = Recording::new();
    let worker = RunningWorker::start(&app, &tables, "w2", second.factory()).await;
    wait_until("2 re-delivered changes", DEADLINE, || second.len() >= 2).await;
    let again: Vec<i64> = second.images().iter().map(|i| i.n).collect();
    assert_eq!(again, [1, 2], "re-delivered from after the first record");

    // --force while it runs: the lease is taken from it and moved to trim-horizon; the
    // worker takes it back on its next scan and delivers everything again.
    status_until(&app, "w2 at the third record", |s| {
        leases(s)[0]["checkpoint"] == seqs[2].as_str()
    })
    .await;
    let forced = reset("trim-horizon", &["--force"]).await;
    assert_eq!(forced.0, 0, "{}", forced.2);
    assert!(forced.1.contains("taken from w2#"), "{}", forced.1);
    wait_until("the 3 changes again", DEADLINE, || second.len() >= 5).await;
    let all: Vec<i64> = second.images().iter().map(|i| i.n).collect();
    assert_eq!(all, [1, 2, 0, 1, 2]);
    worker.shut_down().await;

    // Nobody consuming, two new changes: `--lag` reads them from the stream.
    put(&table, "k3", 3).await;
    put(&table, "k4", 4).await;
    let lagged = ddbsc_json(&["status", "--app", &app, "--lag"]).await;
    let lag = &leases(&lagged)[0]["lag"];
    assert_eq!(lag["records"], 2, "{lagged}");
    assert_eq!(lag["complete"], true, "{lagged}");
    assert!(lag["oldest_unprocessed_age_ms"].is_u64(), "{lagged}");

    // A sequence number a worker could not resume after: reset refuses it.
    let shard = leases(&lagged)[0]["shard"].as_str().unwrap().to_owned();
    let beyond = "9".repeat(30);
    let refused = reset(&beyond, &["--shard", &shard]).await;
    assert_one_line_error(&refused, 1, &[&beyond, &shard, "could not resume"]);
    // Such a checkpoint written anyway (by hand, or by an older ddbsc): that shard's lag
    // says why, the status is still shown.
    let store =
        dynamodb_streams_leases::DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, &app)
            .unwrap();
    let all = store.list_leases().await.unwrap();
    let lease = all.iter().find(|l| l.key.shard_id == shard).unwrap();
    let beyond = Checkpoint::At(dynamodb_streams_leases::SequenceNumber::parse(beyond).unwrap());
    store
        .reset_lease(&lease.key, lease.owner.as_deref(), lease.epoch, &beyond)
        .await
        .unwrap();
    let lagged = ddbsc_json(&["status", "--app", &app, "--lag"]).await;
    let error = leases(&lagged)[0]["lag"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("GetShardIterator"), "{lagged}");
}

/// `sequence_number + delta`, as wide as `sequence_number`.
fn seq_plus(sequence_number: &str, delta: i128) -> String {
    let moved = sequence_number.parse::<i128>().unwrap() + delta;
    format!("{moved:0width$}", width = sequence_number.len())
}

/// The lease table of `app` with one lease per shard id, each owned by `owner` at epoch 1.
async fn leases_owned_by(
    app: &str,
    stream: &str,
    shards: &[&str],
    owner: &str,
) -> dynamodb_streams_leases::DynamoDbLeaseStore {
    use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, LeaseStore};
    let store =
        dynamodb_streams_leases::DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, app)
            .unwrap();
    store.ensure_table().await.unwrap();
    for shard in shards {
        let key = LeaseKey::new(stream, *shard);
        let lease = Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]);
        store.create_lease(&lease).await.unwrap();
        store.take_lease(&key, None, 0, owner).await.unwrap();
    }
    store
}

/// Each lease moves with one conditional write on its item. A worker that takes a lease
/// between ddbsc's read and its write (a proxy in front of DynamoDB Local lets the test
/// take it just before ddbsc's write goes on) makes only that shard's move fail: it is
/// reported refused, keeps the worker's ownership and position, and the other shard still
/// moves; exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_moves_each_lease_in_one_write_and_reports_a_raced_one_refused() {
    use dynamodb_streams_leases::{Checkpoint, LeaseKey, LeaseStore};
    use std::sync::atomic::{AtomicBool, Ordering};
    let (app, table) = (unique_name("app"), unique_name("reset-race"));
    create_table(&table, "id", true).await;
    put(&table, "a", 1).await;
    let graph = ddbsc_json(&["shards", "--table", &table]).await;
    let stream = graph["stream"].as_str().unwrap().to_owned();
    let real = graph["shards"][0]["shard"].as_str().unwrap().to_owned();
    // Sorts first, so ddbsc meets the race before it moves the other lease.
    let raced = "shardId-00000000000000000001-raced000";
    let store = leases_owned_by(&app, &stream, &[raced, &real], "w-gone#1").await;

    let raced_key = LeaseKey::new(stream.as_str(), raced);
    let raced_pk = format!("lease|{stream}|{raced}");
    let once = std::sync::Arc::new(AtomicBool::new(false));
    let hook_store = store.clone();
    let faults = proxy::Faults::default().with_hook(move |request| {
        let first = request.is("UpdateItem")
            && request.item_key() == Some(raced_pk.as_str())
            && !once.swap(true, Ordering::SeqCst);
        let (store, key) = (hook_store.clone(), raced_key.clone());
        first.then(|| {
            Box::pin(async move {
                store
                    .take_lease(&key, Some("w-gone#1"), 1, "w-race#1")
                    .await
                    .unwrap();
            }) as futures::future::BoxFuture<'static, ()>
        })
    });
    let proxy = proxy::Proxy::start(&endpoint(), faults).await;
    let args = [
        "reset",
        "--app",
        &app,
        "--table",
        &table,
        "--to",
        "latest",
        "--endpoint",
    ];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push(proxy.endpoint().to_owned());
    let (code, out, err, _) = run_to_exit(DDBSC.as_ref(), &args, DEADLINE).await;
    assert_eq!(code.code(), Some(1), "{out}{err}");
    assert_one_line_error(&(1, out.clone(), err), 1, &["refused for 1 of 2 shards"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "one line per shard: {out}");
    assert!(
        lines[0].starts_with(&format!("shard {raced}: refused: the lease changed"))
            && lines[0].contains("now owner w-race#1"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        format!("shard {real}: TRIM_HORIZON (taken from w-gone#1) -> LATEST"),
        "{out}"
    );

    // One conditional write on each lease item, nothing more.
    let requests = proxy.requests();
    for shard in [raced, real.as_str()] {
        let pk = format!("lease|{stream}|{shard}");
        let writes = requests
            .iter()
            .filter(|r| r.item_key() == Some(pk.as_str()) && !r.is("GetItem"))
            .map(|r| r.target.clone())
            .collect::<Vec<_>>();
        assert_eq!(writes, ["DynamoDB_20120810.UpdateItem"], "shard {shard}");
    }
    let now = |shard: &str| {
        let store = store.clone();
        let key = LeaseKey::new(stream.as_str(), shard);
        async move { store.get_lease(&key).await.unwrap().unwrap() }
    };
    let (moved, kept) = (now(&real).await, now(raced).await);
    assert_eq!(
        (moved.owner, moved.epoch, moved.checkpoint),
        (None, 2, Checkpoint::Latest)
    );
    assert_eq!(
        (kept.owner.as_deref(), kept.epoch, kept.checkpoint),
        (Some("w-race#1"), 2, Checkpoint::TrimHorizon)
    );

    // Run again without a race: both move (w-race#1 has no heartbeat: not alive).
    let again = ddbsc_json(&["reset", "--app", &app, "--table", &table, "--to", "latest"]).await;
    assert_eq!(again["reset"].as_array().unwrap().len(), 2, "{again}");
    assert_eq!(again["refused"], serde_json::json!([]), "{again}");
}

/// `--to SEQ` must lie within the shard's range (DescribeStream) and be a place a worker can
/// resume after; a finished shard moves only with `--include-finished`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_keeps_sequence_numbers_in_the_shards_range_and_finished_shards_unless_asked() {
    use dynamodb_streams_leases::{Checkpoint, LeaseKey, LeaseStore};
    let (app, table) = (unique_name("app"), unique_name("reset-range"));
    create_table(&table, "id", true).await;
    for n in 0..3 {
        put(&table, &format!("k{n}"), n).await;
    }
    let graph = ddbsc_json(&["shards", "--table", &table]).await;
    let stream = graph["stream"].as_str().unwrap().to_owned();
    let shard = graph["shards"][0]["shard"].as_str().unwrap().to_owned();
    let start = graph["shards"][0]["starting_sequence_number"]
        .as_str()
        .unwrap()
        .to_owned();
    let store = leases_owned_by(&app, &stream, &[&shard], "w-gone#1").await;
    let key = LeaseKey::new(stream.as_str(), shard.as_str());
    let checkpoint = async || store.get_lease(&key).await.unwrap().unwrap().checkpoint;
    let reset = async |to: &str, more: &[&str]| {
        let mut args = vec!["reset", "--app", &app, "--table", &table, "--to", to];
        args.extend(more);
        ddbsc(&args).await
    };

    // Open shard: before its first sequence number, or where no worker could resume.
    let before = seq_plus(&start, -1);
    let refused = reset(&before, &[]).await;
    assert_one_line_error(&refused, 1, &[&before, &shard, "outside", &start]);
    let beyond = "9".repeat(30);
    let refused = reset(&beyond, &[]).await;
    assert_one_line_error(&refused, 1, &[&beyond, &shard, "could not resume"]);
    assert_eq!(checkpoint().await, Checkpoint::TrimHorizon, "nothing moved");
    let (code, out, err) = reset(&start, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("-> {start}")), "{out}");

    // Closed and finished.
    dynamodb_streams_integration_tests::disable_stream(&table).await;
    let described = dynamodb_streams_integration_tests::streams_client()
        .await
        .describe_stream()
        .stream_arn(&stream)
        .send()
        .await
        .unwrap();
    let end = described.stream_description().unwrap().shards()[0]
        .sequence_number_range()
        .and_then(|r| r.ending_sequence_number())
        .expect("a closed shard has an end")
        .to_owned();
    let lease = store.get_lease(&key).await.unwrap().unwrap();
    store
        .reset_lease(&key, None, lease.epoch, &Checkpoint::ShardEnd)
        .await
        .unwrap();
    let refused = reset("trim-horizon", &["--shard", &shard]).await;
    assert_one_line_error(&refused, 1, &[&shard, "finished", "--include-finished"]);
    let whole_table =
        ddbsc_json(&["reset", "--app", &app, "--table", &table, "--to", "latest"]).await;
    assert_eq!(whole_table["reset"], serde_json::json!([]), "{whole_table}");
    assert_eq!(
        whole_table["skipped"][0]["shard"],
        shard.as_str(),
        "{whole_table}"
    );
    let (code, out, _) = reset("latest", &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("not moved: finished"), "{out}");
    assert_eq!(checkpoint().await, Checkpoint::ShardEnd, "nothing moved");

    let after = seq_plus(&end, 1);
    let refused = reset(&after, &["--include-finished"]).await;
    assert_one_line_error(&refused, 1, &[&after, &shard, "outside", &end]);
    let (code, out, err) = reset(&end, &["--include-finished"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("SHARD_END -> {end}")), "{out}");
    let moved = checkpoint().await;
    assert_eq!(moved.to_string(), end);
}

/// DynamoDB Streams may answer with empty pages before the records of a shard (a proxy in
/// front of DynamoDB Local gives each iterator two): `status --lag` follows
/// `NextShardIterator` past them and counts the records, instead of calling the shard
/// caught up at the first empty page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_reads_past_empty_pages_before_calling_a_shard_caught_up() {
    use dynamodb_streams_leases::{Checkpoint, DynamoDbLeaseStore, Lease, LeaseKey, LeaseStore};
    let (app, table) = (unique_name("app"), unique_name("lag-empty"));
    create_table(&table, "id", true).await;
    put(&table, "a", 1).await;
    put(&table, "b", 2).await;
    let graph = ddbsc_json(&["shards", "--table", &table]).await;
    let (stream, shard) = (
        graph["stream"].as_str().unwrap(),
        graph["shards"][0]["shard"].as_str().unwrap(),
    );
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, &app).unwrap();
    store.ensure_table().await.unwrap();
    let lease = Lease::new(
        LeaseKey::new(stream, shard),
        Checkpoint::TrimHorizon,
        vec![],
    );
    store.create_lease(&lease).await.unwrap();

    let proxy =
        proxy::Proxy::start(&endpoint(), proxy::Faults::default().with_empty_pages(2)).await;
    let args = [
        "status",
        "--app",
        &app,
        "--lag",
        "--json",
        "--endpoint",
        proxy.endpoint(),
    ];
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let (code, out, err, _) = run_to_exit(DDBSC.as_ref(), &args, DEADLINE).await;
    assert_eq!(code.code(), Some(0), "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let lag = &leases(&status)[0]["lag"];
    assert_eq!(lag["records"], 2, "{status:#}");
    assert_eq!(lag["complete"], true, "{status:#}");
    assert!(lag["oldest_unprocessed_age_ms"].is_u64(), "{status:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_changes_as_they_are_written() {
    let table = unique_name("tail");
    create_table(&table, "id", true).await;
    put(&table, "before", 1).await;
    let mut child = tokio::process::Command::new(DDBSC)
        .args([
            "tail",
            "--table",
            &table,
            "--json",
            "--endpoint",
            &endpoint(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("a line in time")
            .unwrap()
            .expect("tail is still running");
        serde_json::from_str(&line).unwrap()
    };
    let first = next().await;
    assert_eq!(first["event"], "INSERT");
    assert_eq!(first["keys"]["id"], "before");
    assert_eq!(first["table"], table.as_str());
    assert!(
        first["shard"]
            .as_str()
            .is_some_and(|s| s.starts_with("shardId-")),
        "tail names the shard: {first}"
    );
    put(&table, "after", 2).await;
    put(&table, "after", 3).await;
    let (second, third) = (next().await, next().await);
    assert_eq!(second["new"]["n"], 2);
    assert_eq!(
        (&third["event"], &third["old"]["n"], &third["new"]["n"]),
        (&"MODIFY".into(), &2.into(), &3.into())
    );

    // --max-changes ends it by itself; readable lines name the event and the keys.
    let (code, out, err) = ddbsc(&["tail", "--table", &table, "--max-changes", "2"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with("INSERT {\"id\":\"before\"}"), "{out}");

    // SIGTERM ends a running tail cleanly (it printed lines, so its handler is installed).
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(kill.unwrap().success());
    let status = tokio::time::timeout(DEADLINE, child.wait()).await;
    assert!(status.expect("tail ends in time").unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_lists_the_shard_graph() {
    let table = unique_name("shards");
    create_table(&table, "id", true).await;
    put(&table, "a", 1).await;
    let graph = ddbsc_json(&["shards", "--table", &table]).await;
    let shards = graph["shards"].as_array().unwrap();
    assert_eq!(
        shards.len(),
        1,
        "DynamoDB Local has one shard per stream: {graph}"
    );
    assert_eq!(shards[0]["state"], "open");
    assert_eq!(shards[0]["parent"], Value::Null);
    assert!(shards[0]["starting_sequence_number"].is_string());
    let (code, out, _) = ddbsc(&["shards", "--table", &table]).await;
    assert_eq!(code, 0);
    assert!(out.contains(shards[0]["shard"].as_str().unwrap()) && out.contains("open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_line_naming_it() {
    let plain = unique_name("plain");
    create_table(&plain, "id", false).await;
    let missing = unique_name("missing");

    let unknown_app = ddbsc(&["status", "--app", &missing]).await;
    assert_one_line_error(&unknown_app, 1, &[&missing, "application"]);
    let not_leases = ddbsc(&["status", "--app", &plain]).await;
    assert_one_line_error(&not_leases, 1, &[&plain, "not a lease table"]);
    let reset_unknown = ddbsc(&[
        "reset", "--app", &missing, "--table", &plain, "--to", "latest",
    ])
    .await;
    assert_one_line_error(&reset_unknown, 1, &[&missing]);
    for command in ["shards", "tail"] {
        let no_stream = ddbsc(&[command, "--table", &plain]).await;
        assert_one_line_error(&no_stream, 1, &[&plain, "no stream"]);
        let no_table = ddbsc(&[command, "--table", &missing]).await;
        assert_one_line_error(&no_table, 1, &[&missing, "does not exist"]);
    }
    let malformed = ddbsc(&["reset", "--app", "a", "--table", &plain, "--to", "12x4"]).await;
    assert_one_line_error(&malformed, 1, &["12x4", "sequence number"]);
    let bad_app_name = ddbsc(&["status", "--app", "no spaces allowed"]).await;
    assert_one_line_error(&bad_app_name, 1, &["no spaces allowed"]);
    // Liveness windows in which a live worker need not heartbeat: refused before anything
    // is read (the application does not even exist), naming the flag.
    let reset = [
        "reset", "--app", &missing, "--table", &plain, "--to", "latest",
    ];
    for (command, flags, named) in [
        (
            &["status", "--app", &missing][..],
            &["--alive-within", "0s"][..],
            "--alive-within 0s",
        ),
        (&reset, &["--alive-within", "0s"], "--alive-within 0s"),
        (
            &["status", "--app", &missing],
            &["--alive-within", "1s"],
            "--alive-within 1s",
        ),
        (
            &["status", "--app", &missing],
            &["--observe", "1s"],
            "--observe 1s",
        ),
        (&reset, &["--observe", "2s"], "--observe 2s"),
        (
            &reset,
            &["--observe", "2s", "--renew-interval", "3s"],
            "--observe 2s",
        ),
    ] {
        let refused = ddbsc(&[command, flags].concat()).await;
        assert_one_line_error(&refused, 1, &[named]);
    }

    // Usage errors: exit 2.
    for args in [
        &["status"][..],
        &["frobnicate"],
        &["status", "--app", "a", "--bogus"],
    ] {
        let (code, _, err) = ddbsc(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

/// `ddbsc ... | head`: the reader is gone before ddbsc writes its first line (the read end
/// of the pipe is closed before ddbsc starts). Each command ends quietly: exit 0, nothing on
/// stderr (no panic, no "broken pipe" error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_went_away_ends_each_command_quietly() {
    use dynamodb_streams_leases::LeaseStore;
    let (app, table) = (unique_name("app"), unique_name("pipe"));
    create_table(&table, "id", true).await;
    put(&table, "a", 1).await;
    let config = sdk_config().await;
    let store =
        dynamodb_streams_leases::DynamoDbLeaseStore::from_sdk_config(&config, &app).unwrap();
    store.ensure_table().await.unwrap();

    for args in [
        &["status", "--app", &app][..],
        &["status", "--app", &app, "--json"],
        &["shards", "--table", &table],
        &["tail", "--table", &table],
        &["tail", "--table", &table, "--json"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        // Not `Command::output`: it would replace stdout with a pipe of its own.
        let child = tokio::process::Command::new(DDBSC)
            .args(args)
            .args(["--endpoint", &endpoint()])
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("ddbsc {args:?} still runs with nobody reading"))
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "ddbsc {args:?}: {err}");
        assert!(err.is_empty(), "ddbsc {args:?}: {err}");
    }
}
