//! `ddbsc status`, `ddbsc pipelines` and `ddbsc drop-pipeline` on an application with named
//! pipelines, run as a process against DynamoDB Local. The lease items are written with the
//! library's own store (as a worker running pipelines `search` and `cache` writes them), so
//! each case is exact: per-pipeline checkpoints and lag in `status`, the summary of
//! `pipelines`, a drop refused while a live worker runs the pipeline, forced, or free when
//! no live worker runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_consumer::streams::{SdkStreams, StartPosition, StreamsApi};
use dynamodb_streams_integration_tests::workers::run_to_exit;
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, sdk_config, unique_name,
};
use dynamodb_streams_leases::{
    Checkpoint, DynamoDbLeaseStore, Lease, LeaseKey, LeaseStore, PipelineCheckpoints,
    SequenceNumber,
};
use serde_json::Value;

const DDBSC: &str = env!("CARGO_BIN_EXE_ddbsc");
const DEADLINE: Duration = Duration::from_secs(45);

/// `ddbsc ARGS --endpoint $DYNAMODB_ENDPOINT`: exit code, stdout, stderr.
async fn ddbsc(args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--endpoint".into(), endpoint()]);
    let (status, out, err, _) = run_to_exit(DDBSC.as_ref(), &all, DEADLINE).await;
    (status.code().unwrap_or(-1), out, err)
}

async fn ddbsc_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = ddbsc(&all).await;
    assert_eq!(code, 0, "ddbsc {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A table with three items in its stream; the lease of its one shard in application
/// `app`, owned by a live worker `w#1` running `search` and `cache`, with `search` done up
/// to the first record, `cache` at the trim horizon and `old` (a pipeline no worker runs
/// any more) at the second. Returns the store, the lease as written and the worker's id.
async fn application_with_pipelines(app: &str) -> (DynamoDbLeaseStore, Lease) {
    let table = unique_name("pl-t");
    create_table(&table, "id", true).await;
    let client = dynamodb_client().await;
    for id in ["a", "b", "c"] {
        client
            .put_item()
            .table_name(&table)
            .item("id", AttributeValue::S(id.into()))
            .send()
            .await
            .unwrap();
    }
    let config = sdk_config().await;
    let streams = SdkStreams::from_sdk_config(&config);
    let stream = streams.latest_stream_arn(&table).await.unwrap();
    let shard = streams.describe_stream(&stream, None).await.unwrap().shards[0]
        .shard_id
        .clone();
    let iterator = streams
        .shard_iterator(&stream, &shard, &StartPosition::TrimHorizon)
        .await
        .unwrap();
    let records = streams.get_records(&iterator, 100).await.unwrap().records;
    let seqs: Vec<SequenceNumber> = records
        .iter()
        .map(|r| SequenceNumber::parse(r.dynamodb().unwrap().sequence_number().unwrap()).unwrap())
        .collect();
    assert_eq!(seqs.len(), 3);

    let store = DynamoDbLeaseStore::from_sdk_config(&config, app).unwrap();
    store.ensure_table().await.unwrap();
    let key = LeaseKey::new(stream, shard);
    store
        .create_lease(&Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]))
        .await
        .unwrap();
    store
        .heartbeat("w#1", Duration::from_secs(600))
        .await
        .unwrap();
    let taken = store.take_lease(&key, None, 0, "w#1").await.unwrap();
    let update = PipelineCheckpoints {
        read_position: Checkpoint::TrimHorizon,
        pipelines: vec![
            ("search".into(), Checkpoint::At(seqs[0].clone())),
            ("cache".into(), Checkpoint::TrimHorizon),
            ("old".into(), Checkpoint::At(seqs[1].clone())),
        ],
        running: Some(vec!["cache".into(), "search".into()]),
    };
    let lease = store
        .checkpoint_pipelines(&key, &taken.ownership().unwrap(), &update)
        .await
        .unwrap();
    (store, lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_each_pipelines_checkpoint_and_lag() {
    let app = unique_name("pl-app");
    let (_, lease) = application_with_pipelines(&app).await;
    let status = ddbsc_json(&["status", "--app", &app, "--lag"]).await;
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "{status:#}");
    let pipelines = &leases[0]["pipelines"];
    assert_eq!(
        pipelines["search"]["checkpoint"],
        lease.pipelines["search"].to_string()
    );
    assert_eq!(pipelines["cache"]["checkpoint"], "TRIM_HORIZON");
    // Counted from each pipeline's own checkpoint, in one read of the shard.
    assert_eq!(pipelines["search"]["lag"]["records"], 2, "{status:#}");
    assert_eq!(pipelines["cache"]["lag"]["records"], 3, "{status:#}");
    assert_eq!(pipelines["old"]["lag"]["records"], 1, "{status:#}");
    assert_eq!(leases[0]["lag"]["records"], 3, "{status:#}");
    assert!(pipelines["search"]["lag"]["oldest_unprocessed_age_ms"].is_u64());

    // Without --lag, no lag; the table shows a row per pipeline.
    let plain = ddbsc_json(&["status", "--app", &app]).await;
    assert!(
        plain["leases"][0]["pipelines"]["search"]
            .get("lag")
            .is_none()
    );
    let (code, out, err) = ddbsc(&["status", "--app", &app]).await;
    assert_eq!(code, 0, "{err}");
    for name in ["pipeline search", "pipeline cache", "pipeline old"] {
        assert!(out.contains(name), "{name:?} missing from:\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_lists_them_and_drop_is_refused_while_a_live_worker_runs_one() {
    let app = unique_name("pl-app");
    let (store, lease) = application_with_pipelines(&app).await;

    let listed = ddbsc_json(&["pipelines", "--app", &app]).await;
    let by_name = |name: &str| {
        listed["pipelines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {listed:#}"))
            .clone()
    };
    assert_eq!(by_name("search")["leases"], 1);
    assert_eq!(
        by_name("search")["live_workers"],
        serde_json::json!(["w#1"])
    );
    assert_eq!(by_name("cache")["holding_back"], 1, "{listed:#}");
    assert_eq!(by_name("old")["live_workers"], serde_json::json!([]));

    // A live worker runs `cache`: refused, naming it; nothing changes.
    let refused = ddbsc(&["drop-pipeline", "--app", &app, "--name", "cache"]).await;
    assert_eq!(refused.0, 1, "{refused:?}");
    assert_eq!(refused.2.trim().lines().count(), 1, "{}", refused.2);
    assert!(
        refused.2.contains("w#1") && refused.2.contains("cache") && refused.2.contains("--force"),
        "{}",
        refused.2
    );
    assert_eq!(store.get_lease(&lease.key).await.unwrap().unwrap(), lease);

    // No live worker runs `old`: its checkpoint goes, the lease stays owned.
    let dropped = ddbsc_json(&["drop-pipeline", "--app", &app, "--name", "old"]).await;
    assert_eq!(
        dropped["removed"].as_array().unwrap().len(),
        1,
        "{dropped:#}"
    );
    let after = store.get_lease(&lease.key).await.unwrap().unwrap();
    assert!(!after.pipelines.contains_key("old"));
    assert_eq!(after.owner.as_deref(), Some("w#1"));
    assert_eq!(after.epoch, lease.epoch);

    // --force takes the lease from the worker, removes `cache`, releases it.
    let forced = ddbsc_json(&["drop-pipeline", "--app", &app, "--name", "cache", "--force"]).await;
    assert_eq!(forced["removed"][0]["taken_from"], "w#1", "{forced:#}");
    assert_eq!(forced["removed"][0]["checkpoint"], "TRIM_HORIZON");
    let after = store.get_lease(&lease.key).await.unwrap().unwrap();
    assert_eq!(
        after.pipelines.keys().collect::<Vec<_>>(),
        ["search"],
        "{after:?}"
    );
    assert_eq!(after.owner_pipelines, ["search"]);
    assert_eq!(after.owner, None, "released");
    assert!(after.epoch > lease.epoch, "the worker was fenced");

    // Unknown: one line naming it.
    let unknown = ddbsc(&["drop-pipeline", "--app", &app, "--name", "nope"]).await;
    assert_eq!(unknown.0, 1);
    assert!(
        unknown.2.contains("\"nope\"") && unknown.2.contains(&app),
        "{}",
        unknown.2
    );
}
