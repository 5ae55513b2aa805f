//! The transactional checkpoint of `DynamoDbLeaseStore` against DynamoDB Local: writes and
//! checkpoint commit together or not at all, a zombie's transaction fails as a whole, and a
//! transaction sent again after it committed is recognised instead of applied twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use dynamodb_streams_integration_tests::{create_table, dynamodb_client, sdk_config, unique_name};
use dynamodb_streams_leases::{
    Checkpoint, DynamoDbLeaseStore, Error, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore,
    Ownership, SequenceNumber,
};

fn seq(n: u64) -> Checkpoint {
    Checkpoint::At(SequenceNumber::parse(format!("{n:021}")).unwrap())
}

/// `counter = counter + 1` on item `id` of `table`.
fn bump(table: &str, id: &str) -> TransactWriteItem {
    TransactWriteItem::builder()
        .update(
            Update::builder()
                .table_name(table)
                .key("id", AttributeValue::S(id.into()))
                .update_expression("ADD #n :one")
                .expression_attribute_names("#n", "counter")
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .build()
                .unwrap(),
        )
        .build()
}

async fn counter(table: &str, id: &str) -> Option<u64> {
    let item = dynamodb_client()
        .await
        .get_item()
        .table_name(table)
        .key("id", AttributeValue::S(id.into()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item?;
    match item.get("counter") {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

/// A lease store, a target table, and a lease owned by `w1`.
async fn setup() -> (DynamoDbLeaseStore, String, LeaseKey, Ownership) {
    let store =
        DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, unique_name("tx-leases")).unwrap();
    store.ensure_table().await.unwrap();
    let target = unique_name("tx-target");
    create_table(&target, "id", false).await;
    let key = LeaseKey::new("arn:stream", "shard-1");
    store
        .create_lease(&Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]))
        .await
        .unwrap();
    let ownership = store
        .take_lease(&key, None, 0, "w1#a")
        .await
        .unwrap()
        .ownership()
        .unwrap();
    (store, target, key, ownership)
}

async fn stored(store: &DynamoDbLeaseStore, key: &LeaseKey) -> Checkpoint {
    store.get_lease(key).await.unwrap().unwrap().checkpoint
}

#[tokio::test]
async fn writes_and_checkpoint_commit_together_and_a_resent_transaction_applies_once() {
    let (store, target, key, me) = setup().await;
    let writes = vec![bump(&target, "a"), bump(&target, "b")];
    store
        .checkpoint_with_writes(&key, &me, &Checkpoint::TrimHorizon, &seq(5), writes.clone())
        .await
        .unwrap();
    assert_eq!(stored(&store, &key).await, seq(5));
    assert_eq!(counter(&target, "a").await, Some(1));
    // The same transaction again, as after a timeout whose request did commit: its
    // condition on the previous checkpoint fails, and the store finds it committed.
    store
        .checkpoint_with_writes(&key, &me, &Checkpoint::TrimHorizon, &seq(5), writes)
        .await
        .unwrap();
    assert_eq!(counter(&target, "a").await, Some(1), "applied twice");
    assert_eq!(counter(&target, "b").await, Some(1), "applied twice");
    // Expecting a checkpoint that is not stored: nothing is applied.
    let err = store
        .checkpoint_with_writes(&key, &me, &seq(3), &seq(9), vec![bump(&target, "a")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointMoved { found, .. } if *found == seq(5)),
        "{err:?}"
    );
    assert_eq!(counter(&target, "a").await, Some(1));
}

#[tokio::test]
async fn a_zombies_transaction_fails_as_a_whole() {
    let (store, target, key, zombie) = setup().await;
    store
        .take_lease(&key, Some(&zombie.owner), zombie.epoch, "w2#b")
        .await
        .unwrap();
    let err = store
        .checkpoint_with_writes(
            &key,
            &zombie,
            &Checkpoint::TrimHorizon,
            &seq(5),
            vec![bump(&target, "a")],
        )
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err:?}");
    assert_eq!(counter(&target, "a").await, None, "a zombie's write landed");
    assert_eq!(stored(&store, &key).await, Checkpoint::TrimHorizon);
}

#[tokio::test]
async fn a_refused_write_cancels_the_checkpoint_and_is_named() {
    let (store, target, key, me) = setup().await;
    let refused = TransactWriteItem::builder()
        .update(
            Update::builder()
                .table_name(&target)
                .key("id", AttributeValue::S("b".into()))
                .update_expression("SET v = :v")
                .condition_expression("attribute_exists(id)")
                .expression_attribute_values(":v", AttributeValue::N("1".into()))
                .build()
                .unwrap(),
        )
        .build();
    let err = store
        .checkpoint_with_writes(
            &key,
            &me,
            &Checkpoint::TrimHorizon,
            &seq(5),
            vec![bump(&target, "a"), refused],
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, Error::TransactionCanceled { .. })
            && text.contains("write 1")
            && text.contains(&target)
            && text.contains("ConditionalCheckFailed"),
        "{text}"
    );
    assert!(!err.is_transient());
    assert_eq!(counter(&target, "a").await, None);
    assert_eq!(stored(&store, &key).await, Checkpoint::TrimHorizon);
}

#[tokio::test]
async fn key_schemas_are_learned_and_other_stores_refuse_transactions() {
    let (store, target, key, me) = setup().await;
    assert_eq!(store.key_attribute_names(&target).await.unwrap(), ["id"]);
    let err = store
        .key_attribute_names("no-such-table-here")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no-such-table-here"), "{err}");

    let memory = InMemoryLeaseStore::new();
    let err = memory
        .checkpoint_with_writes(&key, &me, &Checkpoint::TrimHorizon, &seq(1), vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TransactionsUnsupported { .. }),
        "{err:?}"
    );
}

// ----- through the consumer -----

/// Counts each change of the source into the target (`ADD counter 1` on the item of the
/// same name), staged with the checkpoint. The item `poison` gets a write whose condition
/// never holds; the first delivery of each batch fails after staging, so staged writes of
/// failed attempts must be dropped.
struct Counting {
    target: String,
    failed_once: std::collections::HashSet<String>,
}

#[derive(serde::Deserialize)]
struct Named {
    name: String,
}

#[async_trait::async_trait]
impl dynamodb_streams_consumer::RecordProcessor for Counting {
    type Item = Named;

    async fn process(
        &mut self,
        batch: dynamodb_streams_consumer::ChangeBatch<Named>,
        checkpointer: &mut dynamodb_streams_consumer::Checkpointer,
    ) -> Result<(), dynamodb_streams_consumer::BoxError> {
        for change in &batch.changes {
            let Some(name) = change.new.as_ref().map(|n| n.name.clone()) else {
                continue;
            };
            let mut update = Update::builder()
                .table_name(&self.target)
                .key("id", AttributeValue::S(name.clone()))
                .update_expression("ADD #n :one")
                .expression_attribute_names("#n", "counter")
                .expression_attribute_values(":one", AttributeValue::N("1".into()));
            if name == "poison" {
                update = update.condition_expression("attribute_exists(never_there)");
            }
            let write = TransactWriteItem::builder().update(update.build()?).build();
            checkpointer.stage(&change.sequence_number, [write]).await?;
        }
        let first = batch.changes.first().map(|c| c.sequence_number.to_string());
        if let Some(first) = first
            && self.failed_once.insert(first)
        {
            return Err("the first delivery of every batch fails after staging".into());
        }
        Ok(())
    }
}

/// Keeps what the on-failure handler was given: the names of the records.
#[derive(Clone, Default)]
struct Given(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

#[async_trait::async_trait]
impl dynamodb_streams_consumer::FailureHandler for Given {
    async fn handle(
        &self,
        failed: &dynamodb_streams_consumer::FailedRecords,
    ) -> Result<(), dynamodb_streams_consumer::BoxError> {
        for record in &failed.records {
            let name = record
                .dynamodb()
                .and_then(|d| d.keys())
                .and_then(|k| k.get("name"))
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            self.0.lock().unwrap().push(name);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_commits_each_records_writes_once_and_a_refused_write_fails_only_its_record() {
    use std::time::Duration;
    let (source, target, app) = (
        unique_name("tx-src"),
        unique_name("tx-dst"),
        unique_name("tx-app"),
    );
    create_table(&source, "name", true).await;
    create_table(&target, "id", false).await;
    let names: Vec<String> = (0..10)
        .map(|i| format!("item-{i}"))
        .chain(["poison".to_owned()])
        .chain((10..20).map(|i| format!("item-{i}")))
        .collect();
    for name in &names {
        dynamodb_streams_integration_tests::put_count(&source, name, AttributeValue::N("1".into()))
            .await;
    }
    let given = Given::default();
    let config = sdk_config().await;
    let target_name = target.clone();
    let consumer = dynamodb_streams_consumer::Consumer::builder(&app)
        .with_table(&source)
        .with_sdk_config(&config)
        .with_idle_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_scan_interval(Duration::from_millis(300))
        .with_retry_backoff_max(Duration::from_millis(200))
        .with_max_retries(2)
        .with_on_failure(given.clone())
        .build(
            move |_: &dynamodb_streams_consumer::ShardContext| Counting {
                target: target_name.clone(),
                failed_once: Default::default(),
            },
        )
        .unwrap();
    let watched = target.clone();
    let done = given.clone();
    let run = tokio::spawn(consumer.run_until(async move {
        loop {
            let mut all = true;
            for i in 0..20 {
                all &= counter(&watched, &format!("item-{i}")).await.is_some();
            }
            if all && !done.0.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("every record committed and the poison record handed over")
        .unwrap()
        .unwrap();
    for i in 0..20 {
        assert_eq!(
            counter(&target, &format!("item-{i}")).await,
            Some(1),
            "item-{i} applied more or less than once"
        );
    }
    assert_eq!(counter(&target, "poison").await, None);
    assert_eq!(
        *given.0.lock().unwrap(),
        ["poison"],
        "only the refused record"
    );
    let store = DynamoDbLeaseStore::from_sdk_config(&config, app.as_str()).unwrap();
    let leases = store.list_leases().await.unwrap();
    let lease = leases
        .iter()
        .find(|l| !l.key.is_coordination())
        .expect("the shard's lease");
    assert!(
        matches!(lease.checkpoint, Checkpoint::At(_)),
        "{:?}",
        lease.checkpoint
    );
}

/// Exactly-once per named pipeline: each pipeline's writes commit with its own checkpoint
/// attribute (conditional on that attribute, not on the others'), and a transaction sent
/// again after it committed (a lost answer) is recognised, not applied twice.
#[tokio::test]
async fn each_pipelines_writes_commit_with_its_own_checkpoint_and_apply_once() {
    use dynamodb_streams_leases::PipelineCheckpoints;
    let (store, target, key, me) = setup().await;
    let update = |read: Checkpoint, pipeline: &str, at: Checkpoint| PipelineCheckpoints {
        read_position: read,
        pipelines: vec![(pipeline.to_owned(), at)],
        running: None,
    };
    let search = update(Checkpoint::TrimHorizon, "search", seq(5));
    let writes = vec![bump(&target, "search")];
    for _ in 0..2 {
        // The second time as after a timeout whose request did commit.
        store
            .checkpoint_pipeline_with_writes(&key, &me, "search", None, &search, writes.clone())
            .await
            .unwrap();
    }
    assert_eq!(counter(&target, "search").await, Some(1), "applied twice");

    // "cache" commits on its own attribute: "search"'s does not stand in its way.
    let cache = update(seq(3), "cache", seq(3));
    let writes = vec![bump(&target, "cache")];
    for _ in 0..2 {
        store
            .checkpoint_pipeline_with_writes(&key, &me, "cache", None, &cache, writes.clone())
            .await
            .unwrap();
    }
    assert_eq!(counter(&target, "cache").await, Some(1), "applied twice");
    let next = update(seq(5), "cache", seq(8));
    let writes = vec![bump(&target, "cache")];
    for _ in 0..2 {
        store
            .checkpoint_pipeline_with_writes(
                &key,
                &me,
                "cache",
                Some(&seq(3)),
                &next,
                writes.clone(),
            )
            .await
            .unwrap();
    }
    assert_eq!(counter(&target, "cache").await, Some(2), "applied twice");

    let lease = store.get_lease(&key).await.unwrap().unwrap();
    assert_eq!(lease.pipelines["search"], seq(5));
    assert_eq!(lease.pipelines["cache"], seq(8));
    assert_eq!(
        lease.checkpoint,
        seq(5),
        "the read position written with the last"
    );

    // Expecting a checkpoint of "search" that is not stored: nothing is applied.
    let stale = update(seq(5), "search", seq(9));
    let err = store
        .checkpoint_pipeline_with_writes(
            &key,
            &me,
            "search",
            Some(&seq(2)),
            &stale,
            vec![bump(&target, "search")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::CheckpointMoved { found, .. } if *found == seq(5)),
        "{err:?}"
    );
    assert_eq!(counter(&target, "search").await, Some(1));
}
