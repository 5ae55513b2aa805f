//! `ddbsc import-kcl` against DynamoDB Local, with KCL lease tables written the way KCL's
//! `DynamoDBLeaseSerializer` writes them: the adapter's single-stream keys (shard id) with a
//! finished parent, KCL 2.x/3.x multi-stream keys (`account:stream:epoch:shardId`, with
//! `streamName` and `shardId`) with a pending checkpoint, and a live KCL owner. After the
//! import, a `jsonl-worker` process delivers exactly the records after each KCL checkpoint.
//!
//! `jsonl-worker` is a binary of another package, which Cargo does not build for this one's
//! tests: it is taken from this build's target folder, next to `ddbsc` (built there when
//! missing), as in `serve.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodbstreams::types::ShardIteratorType;
use dynamodb_streams_integration_tests::workers::{
    Worker, WorkerConfig, jsonl_worker_next_to, run_to_exit, wait_until,
};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, stream_arn, streams_client, unique_name,
};
use serde_json::Value;

const DDBSC: &str = env!("CARGO_BIN_EXE_ddbsc");
const DEADLINE: Duration = Duration::from_secs(45);
/// A parent shard that KCL finished and that has left the stream (trimmed).
const GONE_PARENT: &str = "shardId-00000001600000000000-0000dead";

async fn ddbsc(args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend(["--endpoint".into(), endpoint()]);
    let (status, out, err, _) = run_to_exit(DDBSC.as_ref(), &all, DEADLINE).await;
    (status.code().unwrap_or(-1), out, err)
}

/// A table with a stream and `count` items `{id: i<n>, n}`; its shard id and the sequence
/// numbers of its records, in order.
async fn source_table(prefix: &str, count: i64) -> (String, String, Vec<String>) {
    let table = unique_name(prefix);
    create_table(&table, "id", true).await;
    let client = dynamodb_client().await;
    for n in 0..count {
        client
            .put_item()
            .table_name(&table)
            .item("id", AttributeValue::S(format!("i{n}")))
            .item("n", AttributeValue::N(n.to_string()))
            .send()
            .await
            .unwrap();
    }
    let arn = stream_arn(&table).await.unwrap();
    let streams = streams_client().await;
    let shards = streams
        .describe_stream()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap()
        .stream_description
        .unwrap()
        .shards
        .unwrap();
    let shard = shards[0].shard_id.clone().unwrap();
    let iterator = streams
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(&shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap()
        .shard_iterator
        .unwrap();
    let records = streams
        .get_records()
        .shard_iterator(iterator)
        .send()
        .await
        .unwrap()
        .records
        .unwrap();
    let seqs: Vec<String> = records
        .iter()
        .map(|r| r.dynamodb().unwrap().sequence_number().unwrap().to_owned())
        .collect();
    assert_eq!(seqs.len(), count as usize);
    (table, shard, seqs)
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A lease item as KCL's serializer writes it.
fn kcl_item(key: &str, owner: &str, checkpoint: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("leaseKey".to_owned(), s(key)),
        ("leaseOwner".to_owned(), s(owner)),
        ("leaseCounter".to_owned(), n(41)),
        ("ownerSwitchesSinceCheckpoint".to_owned(), n(0)),
        ("checkpoint".to_owned(), s(checkpoint)),
        ("checkpointSubSequenceNumber".to_owned(), n(0)),
    ])
}

async fn kcl_table(items: Vec<HashMap<String, AttributeValue>>) -> String {
    let table = unique_name("kcl-leases");
    create_table(&table, "leaseKey", false).await;
    let client = dynamodb_client().await;
    for item in items {
        client
            .put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
    table
}

async fn import(kcl: &str, app: &str, table: &str, more: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "import-kcl",
        "--kcl-table",
        kcl,
        "--app",
        app,
        "--table",
        table,
        "--observe",
        "1s",
    ];
    args.extend_from_slice(more);
    ddbsc(&args).await
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_import_a_worker_delivers_exactly_the_records_after_each_kcl_checkpoint() {
    // Single-stream keys (the adapter): checkpoint after the 4th record, a finished parent.
    let (t1, shard1, seqs1) = source_table("kcl-single", 10).await;
    let mut child = kcl_item(&shard1, "kcl-worker-1", &seqs1[3]);
    child.insert(
        "parentShardId".into(),
        AttributeValue::Ss(vec![GONE_PARENT.into()]),
    );
    let mut parent = kcl_item(GONE_PARENT, "kcl-worker-1", "SHARD_END");
    parent.insert(
        "childShardIds".into(),
        AttributeValue::Ss(vec![shard1.clone()]),
    );
    let single = kcl_table(vec![child, parent]).await;
    // Multi-stream keys: checkpoint after the 7th record, a pending one after the 9th.
    let (t2, shard2, seqs2) = source_table("kcl-multi", 10).await;
    let identifier = format!("123456789012:{t2}:1700000000");
    let mut multi_item = kcl_item(&format!("{identifier}:{shard2}"), "kcl-worker-2", &seqs2[6]);
    multi_item.insert("streamName".into(), s(&identifier));
    multi_item.insert("shardId".into(), s(&shard2));
    multi_item.insert("pendingCheckpoint".into(), s(&seqs2[8]));
    multi_item.insert("pendingCheckpointSubSequenceNumber".into(), n(0));
    let multi = kcl_table(vec![multi_item]).await;

    let app = unique_name("kcl-app");
    let (code, out, err) = import(&single, &app, &t1, &["--json"]).await;
    assert_eq!(code, 0, "{err}");
    let plan = json(&out);
    assert_eq!(plan["dry_run"], false);
    assert_eq!(plan["shards"][0]["shard"], shard1.as_str());
    assert_eq!(plan["shards"][0]["position"], seqs1[3].as_str());
    assert_eq!(plan["shards"][0]["kcl_owner"], "kcl-worker-1");
    assert_eq!(plan["shards"][0]["parents"][0], GONE_PARENT);
    assert_eq!(plan["skipped"][0]["kcl_lease_key"], GONE_PARENT);
    let (code, out, err) = import(&multi, &app, &t2, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&seqs2[6]) && out.contains("pending checkpoint"),
        "{out}"
    );
    assert!(
        out.contains(&seqs2[8]),
        "the pending checkpoint is reported: {out}"
    );

    // ddbsc status sees the imported leases at the KCL positions.
    let (code, out, err) = ddbsc(&["status", "--app", &app, "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let checkpoints: Vec<String> = json(&out)["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["checkpoint"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        checkpoints.contains(&seqs1[3]) && checkpoints.contains(&seqs2[6]),
        "{checkpoints:?}"
    );

    // A real `jsonl-worker` process takes the imported leases and prints what it delivers.
    let config = WorkerConfig {
        bin: jsonl_worker_next_to(Path::new(DDBSC)),
        app: app.clone(),
        tables: vec![t1.clone(), t2.clone()],
        failover_time: Some("3s".into()),
    };
    let mut worker = Worker::start("after-kcl", &config);
    wait_until("9 records printed", DEADLINE, || worker.line_count() >= 9).await;
    // Anything more it would print (a record read again) comes with the rest of its output.
    worker.terminate();
    let status = worker.wait_exit(DEADLINE).await;
    assert!(status.success(), "jsonl-worker exited with {status}");
    let mut delivered: Vec<(String, String, i64)> = worker
        .changes()
        .into_iter()
        .map(|c| {
            let n = c.new["n"].as_i64();
            (
                c.table,
                c.seq,
                n.unwrap_or_else(|| panic!("no n: {}", c.new)),
            )
        })
        .collect();
    delivered.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    let expected: Vec<(String, String, i64)> = (4..10)
        .map(|i| (t1.clone(), seqs1[i].clone(), i as i64))
        .chain((7..10).map(|i| (t2.clone(), seqs2[i].clone(), i as i64)))
        .collect();
    let mut expected = expected;
    expected.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    assert_eq!(delivered, expected, "nothing lost, nothing read again");
    assert!(worker.unparsed().is_empty(), "{:?}", worker.unparsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_while_kcl_is_alive_or_app_has_leases_unless_forced_and_dry_run_writes_nothing() {
    let (table, shard, seqs) = source_table("kcl-live", 3).await;
    let kcl = kcl_table(vec![kcl_item(&shard, "kcl-live-worker", &seqs[0])]).await;
    let app = unique_name("kcl-live-app");

    // A live KCL worker renews its lease (bumps leaseCounter) while ddbsc watches.
    let (renewing, mut stop) = tokio::sync::oneshot::channel::<()>();
    let renewer = {
        let kcl = kcl.clone();
        let shard = shard.clone();
        tokio::spawn(async move {
            let client = dynamodb_client().await;
            loop {
                client
                    .update_item()
                    .table_name(&kcl)
                    .key("leaseKey", s(&shard))
                    .update_expression("ADD leaseCounter :one")
                    .expression_attribute_values(":one", n(1))
                    .send()
                    .await
                    .unwrap();
                tokio::select! {
                    _ = &mut stop => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        })
    };
    let refused = import(&kcl, &app, &table, &[]).await;
    assert_eq!(refused.0, 1, "{refused:?}");
    assert!(
        refused.2.contains("kcl-live-worker") && refused.2.contains("alive"),
        "{}",
        refused.2
    );
    renewing.send(()).unwrap();
    renewer.await.unwrap();

    // A dry run prints the plan and creates nothing.
    let (code, out, err) = import(&kcl, &app, &table, &["--dry-run"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would import") && out.contains(&seqs[0]),
        "{out}"
    );
    let (code, _, err) = ddbsc(&["status", "--app", &app]).await;
    assert_eq!(code, 1, "no lease table after a dry run");
    assert!(err.contains("unknown application"), "{err}");

    let (code, _, err) = import(&kcl, &app, &table, &[]).await;
    assert_eq!(code, 0, "{err}");
    // Imported once: a second import is refused, --force moves, printing old and new.
    let again = import(&kcl, &app, &table, &[]).await;
    assert_eq!(again.0, 1, "{again:?}");
    assert!(again.2.contains("already has 1 leases"), "{}", again.2);
    dynamodb_client()
        .await
        .update_item()
        .table_name(&kcl)
        .key("leaseKey", s(&shard))
        .update_expression("SET #c = :c")
        .expression_attribute_names("#c", "checkpoint")
        .expression_attribute_values(":c", s(&seqs[1]))
        .send()
        .await
        .unwrap();
    let (code, out, err) = import(&kcl, &app, &table, &["--force", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let plan = json(&out);
    assert_eq!(plan["shards"][0]["previous"], seqs[0].as_str());
    assert_eq!(plan["shards"][0]["position"], seqs[1].as_str());
}
