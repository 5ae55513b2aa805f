//! `DynamoDbLeaseStore` against DynamoDB Local: the conformance suite, plus behaviour only
//! a real DynamoDB has (table creation and checks, transport errors).

// Test code: a panic is how a test fails, also in the helpers outside `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveStatus,
};
use dynamodb_streams_integration_tests::{
    dynamodb_client, sdk_config, sdk_config_for, unique_name,
};
use dynamodb_streams_leases::{DynamoDbLeaseStore, Error, LeaseStore};

/// Scan pages of 100 items, so every listing in the suite crosses pages.
const SCAN_PAGE_SIZE: usize = 100;

/// A store in a new table of its own, created and ACTIVE.
async fn fresh_store() -> Arc<dyn LeaseStore> {
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, unique_name("leases"))
        .unwrap()
        .with_scan_page_size(SCAN_PAGE_SIZE);
    store.ensure_table().await.unwrap();
    Arc::new(store)
}

dynamodb_streams_leases::conformance_tests!(fresh_store);

#[tokio::test]
async fn invalid_table_names_are_rejected_before_any_call() {
    // An endpoint where nothing listens: a request would fail with Unreachable instead.
    let config = sdk_config_for("http://127.0.0.1:1");
    let too_long = "t".repeat(256);
    for name in [
        "",
        "ab",
        "has space",
        "semi;colon",
        "ünïcode",
        too_long.as_str(),
    ] {
        let err = DynamoDbLeaseStore::from_sdk_config(&config, name).unwrap_err();
        assert!(
            matches!(err, Error::InvalidTableName { .. }),
            "{name:?}: {err:?}"
        );
        let client = aws_sdk_dynamodb::Client::new(&config);
        let err = DynamoDbLeaseStore::new(client, name).unwrap_err();
        assert!(
            matches!(err, Error::InvalidTableName { .. }),
            "{name:?}: {err:?}"
        );
        if name.len() < 100 {
            assert!(err.to_string().contains(&format!("{name:?}")), "{err}");
        }
    }
}

#[tokio::test]
async fn ensure_table_is_idempotent() {
    let table = unique_name("idempotent");
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, table.as_str()).unwrap();
    assert_eq!(store.table_name(), table);
    store.ensure_table().await.unwrap();
    store.ensure_table().await.unwrap();

    let description = dynamodb_client()
        .await
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    let billing = description
        .billing_mode_summary()
        .and_then(|summary| summary.billing_mode());
    assert_eq!(billing, Some(&BillingMode::PayPerRequest));
    assert_eq!(description.key_schema().len(), 1);
    assert_eq!(description.key_schema()[0].attribute_name(), "pk");
    assert_eq!(description.key_schema()[0].key_type(), &KeyType::Hash);

    // Dead workers' items expire through TTL on `expires_at` (DynamoDB Local supports it).
    let ttl = dynamodb_client()
        .await
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .unwrap()
        .time_to_live_description
        .unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));

    // A second store on the same table sees what the first wrote.
    let other = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, table.as_str()).unwrap();
    other.ensure_table().await.unwrap();
    store
        .heartbeat("worker-a", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(other.snapshot().await.unwrap().1.len(), 1);
}

#[tokio::test]
async fn concurrent_ensure_table_calls_all_succeed() {
    let table = unique_name("racing-create");
    let config = sdk_config().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let store = DynamoDbLeaseStore::from_sdk_config(&config, table.as_str()).unwrap();
        tasks.spawn(async move { store.ensure_table().await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap().unwrap();
    }
}

#[tokio::test]
async fn table_with_another_key_schema_is_not_a_lease_table() {
    let client = dynamodb_client().await;
    let table = unique_name("not-leases");
    client
        .create_table()
        .table_name(&table)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("id")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("id")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await
        .unwrap();

    let store = DynamoDbLeaseStore::new(client, table.as_str()).unwrap();
    let err = store.ensure_table().await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, Error::NotALeaseTable { table: t, .. } if *t == table),
        "{err:?}"
    );
    assert!(
        message.contains("\"id\"") && message.contains("(N)"),
        "{message}"
    );
}

#[tokio::test]
async fn unreachable_endpoint_fails_in_bounded_time_naming_it() {
    let endpoint = "http://127.0.0.1:1";
    let store =
        DynamoDbLeaseStore::from_sdk_config(&sdk_config_for(endpoint), "unreachable-leases")
            .unwrap();
    let result = tokio::time::timeout(Duration::from_secs(60), store.ensure_table())
        .await
        .expect("ensure_table against an unreachable endpoint must fail, not hang");
    let err = result.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Unreachable {
                operation: "DescribeTable",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    let message = err.to_string();
    assert!(message.contains(endpoint), "{message}");
    assert!(message.contains("unreachable-leases"), "{message}");

    let result = tokio::time::timeout(Duration::from_secs(60), store.list_leases())
        .await
        .expect("list_leases against an unreachable endpoint must fail, not hang");
    assert!(
        matches!(result, Err(Error::Unreachable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn missing_table_is_a_dynamodb_error_naming_the_table() {
    let table = unique_name("never-created");
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, table.as_str()).unwrap();
    let err = store.list_leases().await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::DynamoDb {
                operation: "Scan",
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&table), "{message}");
    // The service's error code and message are in the text, not just "service error".
    assert!(message.contains("ResourceNotFoundException"), "{message}");
    assert!(message.contains("non-existent table"), "{message}");
    // Retrying does not create the table.
    assert!(!err.is_transient(), "{err:?}");
}
