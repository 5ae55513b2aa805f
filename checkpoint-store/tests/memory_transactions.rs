//! The in-memory store's exactly-once transactions (`checkpoint_with_writes`): all or
//! nothing, the lease's conditions, and a commit whose answer was lost, sent again, that
//! applies nothing twice (the DynamoDB store's resolution, by a consistent read).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use dynamodb_streams_leases::{
    Checkpoint, Error, InMemoryLeaseStore, Lease, LeaseKey, LeaseStore, Ownership, SequenceNumber,
};

fn at(n: u32) -> Checkpoint {
    Checkpoint::At(SequenceNumber::parse(format!("{n:021}")).unwrap())
}

fn add_one(id: &str) -> TransactWriteItem {
    let update = Update::builder()
        .table_name("applied")
        .key("id", AttributeValue::S(id.into()))
        .update_expression("ADD n :one")
        .expression_attribute_values(":one", AttributeValue::N("1".into()))
        .build()
        .unwrap();
    TransactWriteItem::builder().update(update).build()
}

fn put_new(id: &str) -> TransactWriteItem {
    let put = Put::builder()
        .table_name("applied")
        .item("id", AttributeValue::S(id.into()))
        .condition_expression("attribute_not_exists(#id)")
        .expression_attribute_names("#id", "id")
        .build()
        .unwrap();
    TransactWriteItem::builder().put(put).build()
}

fn n(store: &InMemoryLeaseStore, id: &str) -> Option<String> {
    let key = HashMap::from([("id".to_owned(), AttributeValue::S(id.into()))]);
    store
        .item("applied", &key)
        .and_then(|item| item.get("n").and_then(|n| n.as_n().ok().cloned()))
}

async fn owned_lease(store: &InMemoryLeaseStore) -> (LeaseKey, Ownership) {
    let key = LeaseKey::new("arn:stream", "shardId-1");
    store
        .create_lease(&Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]))
        .await
        .unwrap();
    let lease = store.take_lease(&key, None, 0, "w1").await.unwrap();
    let ownership = Ownership {
        owner: "w1".into(),
        epoch: lease.epoch,
    };
    (key, ownership)
}

#[tokio::test]
async fn writes_commit_with_the_checkpoint_and_a_resent_commit_applies_nothing_twice() {
    let store = InMemoryLeaseStore::new();
    store.create_item_table("applied", &["id"]);
    let (key, ownership) = owned_lease(&store).await;
    let writes = vec![add_one("a"), add_one("b")];
    store
        .checkpoint_with_writes(
            &key,
            &ownership,
            &Checkpoint::TrimHorizon,
            &at(2),
            writes.clone(),
        )
        .await
        .unwrap();
    assert_eq!(n(&store, "a").as_deref(), Some("1"));
    assert_eq!(
        store.get_lease(&key).await.unwrap().unwrap().checkpoint,
        at(2)
    );
    // The same transaction again (its answer was lost): `Ok`, nothing applied twice.
    store
        .checkpoint_with_writes(&key, &ownership, &Checkpoint::TrimHorizon, &at(2), writes)
        .await
        .unwrap();
    assert_eq!(n(&store, "a").as_deref(), Some("1"));
    assert_eq!(n(&store, "b").as_deref(), Some("1"));
    // Another transaction from the old position: the checkpoint moved.
    let moved = store
        .checkpoint_with_writes(
            &key,
            &ownership,
            &Checkpoint::TrimHorizon,
            &at(3),
            vec![add_one("c")],
        )
        .await;
    assert!(
        matches!(moved, Err(Error::CheckpointMoved { .. })),
        "{moved:?}"
    );
    assert_eq!(n(&store, "c"), None);
}

#[tokio::test]
async fn a_refused_write_or_a_lost_lease_applies_nothing() {
    let store = InMemoryLeaseStore::new();
    store.create_item_table("applied", &["id"]);
    let (key, ownership) = owned_lease(&store).await;
    store
        .checkpoint_with_writes(
            &key,
            &ownership,
            &Checkpoint::TrimHorizon,
            &at(1),
            vec![put_new("x")],
        )
        .await
        .unwrap();
    // The second write's condition fails: the first is not applied, the checkpoint stays.
    let refused = store
        .checkpoint_with_writes(
            &key,
            &ownership,
            &at(1),
            &at(2),
            vec![add_one("y"), put_new("x")],
        )
        .await;
    match refused {
        Err(Error::TransactionCanceled { reasons, .. }) => {
            assert!(
                reasons.contains("write 1 (table \"applied\"): ConditionalCheckFailed"),
                "{reasons}"
            );
        }
        other => panic!("expected TransactionCanceled, got {other:?}"),
    }
    assert_eq!(n(&store, "y"), None);
    assert_eq!(
        store.get_lease(&key).await.unwrap().unwrap().checkpoint,
        at(1)
    );
    // Two actions on one item are refused as DynamoDB does.
    let twice = store
        .checkpoint_with_writes(
            &key,
            &ownership,
            &at(1),
            &at(2),
            vec![add_one("z"), add_one("z")],
        )
        .await;
    assert!(
        matches!(twice, Err(Error::TransactionCanceled { .. })),
        "{twice:?}"
    );
    assert_eq!(n(&store, "z"), None);
    // A worker that lost the lease writes nothing.
    store
        .take_lease(&key, Some("w1"), ownership.epoch, "w2")
        .await
        .unwrap();
    let lost = store
        .checkpoint_with_writes(&key, &ownership, &at(1), &at(2), vec![add_one("w")])
        .await;
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
    assert_eq!(n(&store, "w"), None);
    // A table that does not exist is named.
    let unknown = store
        .key_attribute_names("nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("\"nope\""), "{unknown}");
}
