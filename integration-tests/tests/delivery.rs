//! The built-in on-failure handler against DynamoDB Local: an undecodable record and a
//! poison record isolated by bisect end up as items of a `DeadLetterTable` (created by the
//! handler), and the shard moves on past them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_consumer::testkit::Recording;
use dynamodb_streams_consumer::{Consumer, DeadLetterTable};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, put_count as put, sdk_config, unique_name,
};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Counter {
    name: String,
    count: i64,
}

/// Every item of `table`, by `pk`.
async fn items(table: &str) -> HashMap<String, HashMap<String, AttributeValue>> {
    let Ok(scanned) = dynamodb_client()
        .await
        .scan()
        .table_name(table)
        .send()
        .await
    else {
        return HashMap::new();
    };
    scanned
        .items()
        .iter()
        .filter_map(|item| match item.get("pk") {
            Some(AttributeValue::S(pk)) => Some((pk.clone(), item.clone())),
            _ => None,
        })
        .collect()
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    match item.get(name) {
        Some(AttributeValue::S(text)) => text,
        other => panic!("{name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_poison_records_go_to_the_dead_letter_table_and_the_shard_moves_on() {
    let (table, app, dead) = (
        unique_name("orders"),
        unique_name("app"),
        unique_name("dead-letters"),
    );
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    for i in 0..10 {
        put(
            &table,
            &format!("item-{i}"),
            AttributeValue::N(i.to_string()),
        )
        .await;
    }
    // Does not decode into Counter; the value must not show up in the error.
    put(
        &table,
        "bad",
        AttributeValue::S("secret@example.com".into()),
    )
    .await;
    // Fails every time it is processed.
    put(&table, "poison", AttributeValue::N("666".into())).await;
    for i in 10..20 {
        put(
            &table,
            &format!("item-{i}"),
            AttributeValue::N(i.to_string()),
        )
        .await;
    }

    let recording: Recording<Counter> = Recording::new().with_hook(
        |_, batch: &dynamodb_streams_consumer::ChangeBatch<Counter>, _| {
            let poisoned = batch
                .iter()
                .any(|c| c.new.as_ref().is_some_and(|n: &Counter| n.count == 666));
            Box::pin(async move {
                if poisoned {
                    Err("poison".into())
                } else {
                    Ok(())
                }
            })
        },
    );
    let consumer = Consumer::builder(&app)
        .with_table(&table)
        .with_sdk_config(&config)
        .with_checkpoint_interval(Duration::ZERO)
        .with_idle_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_scan_interval(Duration::from_millis(300))
        .with_retry_backoff_max(Duration::from_millis(200))
        .with_max_retries(1)
        .with_bisect_on_error(true)
        .with_on_failure(DeadLetterTable::new(&config, &dead))
        .build(recording.factory())
        .unwrap();
    let watched = recording.clone();
    let dead_table = dead.clone();
    let run = tokio::spawn(consumer.run_until(async move {
        while watched.len() < 20 || items(&dead_table).await.len() < 2 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }));
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("every good record delivered and two dead letters written")
        .unwrap()
        .unwrap();

    let counts: Vec<i64> = recording.images().iter().map(|c| c.count).collect();
    assert_eq!(
        counts,
        (0..20).collect::<Vec<_>>(),
        "each good record once, in order"
    );
    let letters = items(&dead).await;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let mut reasons: Vec<(&str, &str)> = letters
        .values()
        .map(|item| {
            let keys = match item.get("keys") {
                Some(AttributeValue::M(keys)) => keys,
                other => panic!("keys: {other:?}"),
            };
            let name = match keys.get("name") {
                Some(AttributeValue::S(name)) => name.as_str(),
                other => panic!("name: {other:?}"),
            };
            assert_eq!(text(item, "table"), table);
            assert!(!text(item, "shard").is_empty());
            assert!(!text(item, "sequence_number").is_empty());
            assert!(text(item, "stream").contains(&table));
            assert!(
                !text(item, "error").contains("secret"),
                "no item values: {}",
                text(item, "error")
            );
            (name, text(item, "reason"))
        })
        .collect();
    reasons.sort_unstable();
    assert_eq!(
        reasons,
        vec![("bad", "undecodable"), ("poison", "retries-exhausted")]
    );
}
