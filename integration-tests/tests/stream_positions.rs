//! Start positions that must survive, on DynamoDB Local: a `Latest` lease that moves before
//! reading anything keeps its start time, and a table whose stream is disabled and enabled
//! again (new stream ARN) is picked up, after the old stream was read to its end.
//!
//! DynamoDB Local rounds `ApproximateCreationDateTime` to the minute, so these consumers set
//! a creation-time margin above 60 s (the library's default is AWS's 1 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, StreamViewType};
use dynamodb_streams_consumer::testkit::Recording;
use dynamodb_streams_consumer::{ConsumerBuilder, InitialPosition};
use dynamodb_streams_integration_tests::{
    create_table, disable_stream, enable_stream, put_count, quick_consumer, sdk_config,
    spawn_consumer as spawn, stream_arn, unique_name, wait_for,
};
use dynamodb_streams_leases::{DynamoDbLeaseStore, Lease, LeaseStore};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Counter {
    name: String,
    count: i64,
}

fn counts(log: &Recording<Counter>) -> Vec<i64> {
    log.images().iter().map(|c| c.count).collect()
}

fn builder(app: &str, table: &str, config: &aws_config::SdkConfig) -> ConsumerBuilder {
    quick_consumer(app, table, config)
        .with_shard_sync_interval(Duration::from_secs(1))
        .with_creation_time_margin(Duration::from_secs(61))
}

/// Polls the lease table (for up to a minute) until `done` holds for its leases.
async fn wait_for_leases(store: &DynamoDbLeaseStore, what: &str, done: impl Fn(&[Lease]) -> bool) {
    wait_for(what, Duration::from_secs(60), async || {
        store.list_leases().await.is_ok_and(|leases| done(&leases))
    })
    .await;
}

async fn put(table: &str, n: i64) {
    put_count(
        table,
        &format!("item-{n}"),
        AttributeValue::N(n.to_string()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_keeps_its_start_when_the_lease_moves_before_reading_anything() {
    let (table, app) = (unique_name("orders"), unique_name("app"));
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    put(&table, 1).await;
    let store = DynamoDbLeaseStore::from_sdk_config(&config, &app).unwrap();

    let start = |log: &Recording<Counter>| {
        spawn(
            builder(&app, &table, &config)
                .with_initial_position(InitialPosition::Latest)
                .build(log.factory())
                .unwrap(),
        )
    };
    let first = Recording::<Counter>::default();
    let (stop, run) = start(&first);
    wait_for_leases(
        &store,
        "the first owner to store its start time",
        |leases| {
            leases
                .iter()
                .any(|l| !l.key.is_coordination() && l.checkpoint.skip_before().is_some())
        },
    )
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    // Written after the first owner opened the shard and before anyone reads it again.
    put(&table, 100).await;

    let second = Recording::<Counter>::default();
    let (stop, run) = start(&second);
    wait_for(
        "the change written between the owners",
        Duration::from_secs(60),
        async || counts(&second).contains(&100),
    )
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    assert!(counts(&first).is_empty(), "{:?}", counts(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reenabled_stream_is_picked_up_after_the_old_one_ended() {
    let (table, app) = (unique_name("orders"), unique_name("app"));
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    let old = stream_arn(&table).await.unwrap();
    for n in 0..5 {
        put(&table, n).await;
    }
    let log = Recording::<Counter>::default();
    let (stop, run) = spawn(builder(&app, &table, &config).build(log.factory()).unwrap());
    wait_for(
        "the old stream's changes",
        Duration::from_secs(60),
        async || counts(&log).len() >= 5,
    )
    .await;

    disable_stream(&table).await;
    enable_stream(&table, StreamViewType::NewAndOldImages).await;
    let new = stream_arn(&table).await.unwrap();
    assert_ne!(new, old, "a re-enabled stream has a new ARN");
    for n in 5..10 {
        put(&table, n).await;
    }
    wait_for(
        "the new stream's changes",
        Duration::from_secs(90),
        async || (5..10).all(|n| counts(&log).contains(&n)),
    )
    .await;
    let store = DynamoDbLeaseStore::from_sdk_config(&config, &app).unwrap();
    wait_for_leases(
        &store,
        "the old stream's leases and the gate to go",
        |leases| {
            leases
                .iter()
                // The old stream's `#retiring` mark stays (consumer-core shard_sync.rs).
                .all(|l| {
                    (l.key.stream != old || l.key.is_coordination())
                        && l.key.gated_stream().is_none()
                })
        },
    )
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let delivered = log.delivered();
    let last_old = delivered.iter().rposition(|d| d.shard.stream_arn == old);
    let first_new = delivered.iter().position(|d| d.shard.stream_arn == new);
    assert!(last_old < first_new, "{last_old:?} {first_new:?}");
}

/// The stream is re-enabled while no worker runs and the old stream still holds unread
/// changes: at start the new stream's root lease waits behind a gate until the old shard
/// was read to its end (slow processing, so both would otherwise run at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reenabled_streams_roots_wait_for_the_old_streams_backlog() {
    let (table, app) = (unique_name("orders"), unique_name("app"));
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    let old = stream_arn(&table).await.unwrap();
    put(&table, 0).await;
    let first = Recording::<Counter>::default();
    let (stop, run) = spawn(
        builder(&app, &table, &config)
            .build(first.factory())
            .unwrap(),
    );
    wait_for("the first change", Duration::from_secs(60), async || {
        !counts(&first).is_empty()
    })
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();

    // A backlog on the old stream, then a new stream with changes of its own.
    for n in 1..21 {
        put(&table, n).await;
    }
    disable_stream(&table).await;
    enable_stream(&table, StreamViewType::NewAndOldImages).await;
    let new = stream_arn(&table).await.unwrap();
    assert_ne!(new, old, "a re-enabled stream has a new ARN");
    for n in 21..26 {
        put(&table, n).await;
    }
    // One record a batch, 100 ms each: the old backlog takes 2 s.
    let log = Recording::<Counter>::new().with_hook(|_, _, _| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(())
        })
    });
    let (stop, run) = spawn(
        builder(&app, &table, &config)
            .with_batch_limit(1)
            .build(log.factory())
            .unwrap(),
    );
    wait_for(
        "every change of both streams",
        Duration::from_secs(90),
        async || (1..26).all(|n| counts(&log).contains(&n)),
    )
    .await;
    stop.send(()).unwrap();
    run.await.unwrap().unwrap();
    let delivered = log.delivered();
    let last_old = delivered.iter().rposition(|d| d.shard.stream_arn == old);
    let first_new = delivered.iter().position(|d| d.shard.stream_arn == new);
    assert!(
        last_old < first_new,
        "the new stream started (delivery {first_new:?}) before the old one ended (delivery {last_old:?})"
    );
}
