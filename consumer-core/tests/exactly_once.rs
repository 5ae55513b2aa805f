//! Exactly-once (staged writes committed with the checkpoint in one transaction) through
//! the whole consumer, against the simulated stream and an in-memory store with
//! transactions that check owner, epoch and the previous checkpoint like DynamoDB's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};
use dynamodb_streams_consumer::testkit::SimulatedStream;
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, Checkpointer, Consumer, RecordProcessor, ShardContext,
};
use dynamodb_streams_leases::{
    Checkpoint, InMemoryLeaseStore, LeaseKey, LeaseStore, Ownership, SequenceNumber,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    pk: String,
    n: u64,
}

/// The in-memory store with transactions; keeps the `id` of every committed write.
#[derive(Debug, Default)]
struct TransactionalStore {
    inner: InMemoryLeaseStore,
    committed: Mutex<Vec<String>>,
    refuse: Option<&'static str>,
}

#[async_trait::async_trait]
impl dynamodb_streams_leases::StoreWrapper for TransactionalStore {
    type Inner = InMemoryLeaseStore;

    fn wrapped(&self) -> &Self::Inner {
        &self.inner
    }
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<TransactWriteItem>,
    ) -> dynamodb_streams_leases::Result<()> {
        let poisoned = writes.iter().any(|write| {
            write
                .update()
                .and_then(|u| u.key().get("id"))
                .and_then(|id| id.as_s().ok())
                .is_some_and(|id| Some(id.as_str()) == self.refuse)
        });
        if poisoned {
            return Err(dynamodb_streams_leases::Error::TransactionCanceled {
                table: "leases".into(),
                key: key.clone(),
                reasons: "write 0 (table \"T2\"): ConditionalCheckFailed".into(),
            });
        }
        let lease = self.inner.get_lease(key).await?.unwrap();
        if &lease.checkpoint != previous {
            return Err(dynamodb_streams_leases::Error::CheckpointMoved {
                key: key.clone(),
                expected: previous.clone(),
                found: lease.checkpoint,
            });
        }
        self.inner.checkpoint(key, ownership, checkpoint).await?;
        let ids = writes.iter().filter_map(|write| {
            let id = write.update()?.key().get("id")?.as_s().ok()?;
            Some(id.clone())
        });
        self.committed.lock().unwrap().extend(ids);
        Ok(())
    }
    async fn key_attribute_names(
        &self,
        _table: &str,
    ) -> dynamodb_streams_leases::Result<Vec<String>> {
        Ok(vec!["id".into()])
    }
}

/// Stages one write per change (its id: the change's sequence number); its first call
/// answers with a partial failure naming a record after the batch.
struct Stager {
    failed_once: Arc<AtomicBool>,
    /// The records of every batch that returned `Ok`.
    succeeded: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl RecordProcessor for Stager {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        for change in batch.iter() {
            let seq = &change.sequence_number;
            let write = Update::builder()
                .table_name("sink")
                .key("id", AttributeValue::S(seq.as_str().to_owned()))
                .update_expression("ADD n :one")
                .expression_attribute_values(":one", AttributeValue::N("1".into()))
                .build()?;
            checkpointer
                .stage(seq, [TransactWriteItem::builder().update(write).build()])
                .await?;
        }
        if !self.failed_once.swap(true, Ordering::SeqCst) {
            let last = batch.changes.last().map(|c| c.sequence_number.clone());
            let outside = SequenceNumber::parse(format!("9{}", last.unwrap().as_str()))?;
            return Err(BatchFailure::at(outside, "a record outside the batch").into());
        }
        let seqs = batch.iter().map(|c| c.sequence_number.as_str().to_owned());
        self.succeeded.lock().unwrap().extend(seqs);
        Ok(())
    }
}

/// A partial failure naming a record outside the batch fails the whole batch: nothing it
/// staged commits, and the redelivery commits each record's writes once. (Before, the
/// writes before the outside sequence number, all of them, committed while the batch
/// counted as failed: its redelivery could not stage them again and failed for good.)
#[tokio::test(start_paused = true)]
async fn a_partial_failure_outside_the_batch_commits_nothing_and_each_write_applies_once() {
    let sim = SimulatedStream::new(dynamodb_streams_consumer::testkit::SimConfig::default());
    sim.add_table("t");
    for n in 0..5 {
        let pk = format!("k{n}");
        sim.put_value("t", &Row { pk, n }).unwrap();
    }
    let store = Arc::new(TransactionalStore::default());
    let failed_once = Arc::new(AtomicBool::new(false));
    let succeeded = Arc::new(Mutex::new(Vec::new()));
    let factory = {
        let (failed_once, succeeded) = (failed_once.clone(), succeeded.clone());
        move |_: &ShardContext| Stager {
            failed_once: failed_once.clone(),
            succeeded: succeeded.clone(),
        }
    };
    let consumer = Consumer::builder("app")
        .with_table("t")
        .with_streams_api(Arc::new(sim.clone()))
        .with_lease_store(store.clone())
        .with_checkpoint_interval(Duration::ZERO)
        .build(factory)
        .unwrap();
    let watched = succeeded.clone();
    tokio::time::timeout(
        Duration::from_secs(600),
        consumer.run_until(async move {
            while watched.lock().unwrap().len() < 5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Time for a second, wrong commit to show.
            tokio::time::sleep(Duration::from_secs(10)).await;
        }),
    )
    .await
    .expect("every record delivered with `Ok`")
    .unwrap();
    assert_eq!(succeeded.lock().unwrap().len(), 5, "each record once");
    assert!(failed_once.load(Ordering::SeqCst));
    let mut applied: HashMap<String, usize> = HashMap::new();
    for id in store.committed.lock().unwrap().iter() {
        *applied.entry(id.clone()).or_default() += 1;
    }
    assert_eq!(applied.len(), 5, "{applied:?}");
    assert!(
        applied.values().all(|n| *n == 1),
        "applied twice: {applied:?}"
    );
}
