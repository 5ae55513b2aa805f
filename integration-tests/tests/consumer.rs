//! The consumer against DynamoDB Local: resume after restart, LATEST vs TRIM_HORIZON,
//! undecodable images, and clear errors for missing tables and streams.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_consumer::testkit::Recording;
use dynamodb_streams_consumer::{ConsumerBuilder, InitialPosition, ProcessorFactory};
use dynamodb_streams_integration_tests::{
    create_table, put_count as put, quick_consumer, sdk_config, spawn_consumer as spawn,
    unique_name,
};
use dynamodb_streams_leases::{Checkpoint, DynamoDbLeaseStore, LeaseStore};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Counter {
    name: String,
    count: i64,
}

/// What the processors of one consumer saw.
#[derive(Clone, Default)]
struct Observed(Recording<Counter>);

impl Observed {
    fn factory(&self) -> impl ProcessorFactory {
        self.0.factory()
    }
    fn counts(&self) -> Vec<i64> {
        self.0.images().iter().map(|c| c.count).collect()
    }
    async fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
        tokio::time::timeout(Duration::from_secs(60), async {
            while !done(self) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}; saw {:?}", self.counts()));
    }
}

async fn put_counts(table: &str, range: std::ops::Range<i64>) {
    for i in range {
        put(
            table,
            &format!("item-{i}"),
            AttributeValue::N(i.to_string()),
        )
        .await;
    }
}

fn builder(app: &str, table: &str, config: &aws_config::SdkConfig) -> ConsumerBuilder {
    quick_consumer(app, table, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_after_the_checkpoint_when_restarted() {
    let (table, app) = (unique_name("orders"), unique_name("app"));
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    put_counts(&table, 0..20).await;

    let first = Observed::default();
    let (stop, run) = spawn(
        builder(&app, &table, &config)
            .build(first.factory())
            .unwrap(),
    );
    first
        .wait_for("the first 20 changes", |o| o.counts().len() >= 20)
        .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(first.counts(), (0..20).collect::<Vec<_>>());

    put_counts(&table, 20..30).await;
    let second = Observed::default();
    let (stop, run) = spawn(
        builder(&app, &table, &config)
            .build(second.factory())
            .unwrap(),
    );
    second
        .wait_for("the next 10 changes", |o| o.counts().len() >= 10)
        .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert_eq!(
        second.counts(),
        (20..30).collect::<Vec<_>>(),
        "a graceful restart resumes right after the checkpoint: no replay, no loss"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_starts_at_the_tip_and_trim_horizon_at_the_oldest_record() {
    let table = unique_name("orders");
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    put_counts(&table, 0..5).await;

    let from_start = Observed::default();
    let (stop_a, run_a) = spawn(
        builder(&unique_name("app"), &table, &config)
            .with_initial_position(InitialPosition::TrimHorizon)
            .build(from_start.factory())
            .unwrap(),
    );
    let latest_app = unique_name("app");
    let from_now = Observed::default();
    let (stop_b, run_b) = spawn(
        builder(&latest_app, &table, &config)
            .with_initial_position(InitialPosition::Latest)
            .build(from_now.factory())
            .unwrap(),
    );
    // The LATEST consumer starts at the tip once its shard consumer runs: write until it
    // sees something, then check it saw nothing older.
    let mut next = 100;
    tokio::time::timeout(Duration::from_secs(60), async {
        while from_now.counts().is_empty() {
            put_counts(&table, next..next + 1).await;
            next += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the LATEST consumer saw none of the new changes");
    from_start
        .wait_for("every change", |o| {
            o.counts().len() >= 5 + (next - 100) as usize
        })
        .await;
    stop_a.send(()).unwrap();
    stop_b.send(()).unwrap();
    run_a.await.unwrap().unwrap();
    run_b.await.unwrap().unwrap();
    assert!(
        from_now.counts().iter().all(|c| *c >= 100),
        "LATEST replayed old changes: {:?}",
        from_now.counts()
    );
    assert_eq!(&from_start.counts()[..5], &[0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_image_stops_the_shard_at_that_record_and_is_reported() {
    let (table, app) = (unique_name("orders"), unique_name("app"));
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    put(&table, "good-1", AttributeValue::N("1".into())).await;
    put(&table, "bad", AttributeValue::S("not a number".into())).await;
    put(&table, "good-2", AttributeValue::N("2".into())).await;

    let observed = Observed::default();
    let (stop, run) = spawn(
        builder(&app, &table, &config)
            .build(observed.factory())
            .unwrap(),
    );
    observed
        .wait_for("the decode failure", |o| !o.0.decode_errors().is_empty())
        .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    assert_eq!(
        observed.counts(),
        [1],
        "records after the bad one are held, not skipped"
    );
    let error = observed.0.decode_errors()[0].clone();
    assert!(error.contains("count"), "names the field: {error}");
    assert!(error.contains("shardId-"), "names the shard: {error}");
    assert!(error.contains("NewImage"), "names the image: {error}");

    // The checkpoint covers the good record and nothing past it.
    let store = DynamoDbLeaseStore::from_sdk_config(&config, &app).unwrap();
    let leases = store.list_leases().await.unwrap();
    let shard = leases.iter().find(|l| !l.key.is_coordination()).unwrap();
    let good_seq = observed.0.delivered()[0].change.sequence_number.clone();
    assert_eq!(shard.checkpoint, Checkpoint::At(good_seq));
}

#[tokio::test]
async fn a_missing_table_or_stream_is_named_in_the_error() {
    let config = sdk_config().await;
    let missing = unique_name("missing");
    let err = builder(&unique_name("app"), &missing, &config)
        .build(Observed::default().factory())
        .unwrap()
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");

    let no_stream = unique_name("plain");
    create_table(&no_stream, "name", false).await;
    let err = builder(&unique_name("app"), &no_stream, &config)
        .build(Observed::default().factory())
        .unwrap()
        .run_until(std::future::pending())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&no_stream) && text.contains("stream"),
        "{text}"
    );
}
