//! Checkpoints committed with the user's writes in one transaction (the exactly-once
//! path), and what a refused transaction means: lease lost, committed by an earlier
//! attempt, or checkpoint moved.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::errors::cancellation_codes;
use super::item::{attr, lease_pk, millis};
use super::store::DynamoDbLeaseStore;
use super::update::{owned, owned_values};
use crate::aws::ErrorClass;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{LeaseKey, Ownership};
use crate::store::LeaseStore;
use crate::transaction;

/// Which checkpoint of a lease a transaction is conditional on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Slot<'a> {
    /// The lease's own `checkpoint`.
    Lease,
    /// A named pipeline's.
    Pipeline(&'a str),
}

/// The lease update of a transactional checkpoint, and what its condition expects.
pub(super) struct CheckpointUpdate<'a> {
    pub(super) expression: String,
    pub(super) condition: String,
    pub(super) values: Vec<(String, AttributeValue)>,
    pub(super) names: HashMap<String, String>,
    pub(super) slot: Slot<'a>,
    /// The checkpoint the slot must still hold (`None`: none yet).
    pub(super) previous: Option<&'a Checkpoint>,
    /// The checkpoint the slot gets.
    pub(super) checkpoint: &'a Checkpoint,
}

impl DynamoDbLeaseStore {
    /// A transactional checkpoint whose condition failed: the lease moved to another
    /// owner (`LeaseLost`, nothing applied), or an earlier attempt of this same
    /// transaction committed (the checkpoint is already there: `Ok`), or the stored
    /// checkpoint is not the one expected (`CheckpointMoved`, nothing applied).
    async fn resolve_failed_checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        slot: Slot<'_>,
        previous: Option<&Checkpoint>,
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let Some(lease) = self.get_lease(key).await? else {
            return Err(Error::LeaseNotFound { key: key.clone() });
        };
        if lease.owner.as_deref() != Some(ownership.owner.as_str())
            || lease.epoch != ownership.epoch
        {
            return Err(Error::LeaseLost {
                key: key.clone(),
                owner: ownership.owner.clone(),
                epoch: ownership.epoch,
            });
        }
        let stored = match slot {
            Slot::Lease => Some(lease.checkpoint),
            Slot::Pipeline(pipeline) => lease.pipelines.get(pipeline).cloned(),
        };
        if stored.as_ref() == Some(checkpoint) {
            tracing::debug!(lease = %key, %checkpoint, "transaction committed by an earlier attempt");
            return Ok(());
        }
        Err(Error::CheckpointMoved {
            key: key.clone(),
            expected: previous.cloned().unwrap_or(Checkpoint::TrimHorizon),
            found: stored.unwrap_or(Checkpoint::TrimHorizon),
        })
    }

    /// Commits `writes` and a checkpoint update in one transaction (the exactly-once
    /// path, for the lease's checkpoint or a pipeline's): see
    /// [`LeaseStore::checkpoint_with_writes`].
    pub(super) async fn transact_checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        update: CheckpointUpdate<'_>,
        writes: Vec<TransactWriteItem>,
    ) -> Result<()> {
        const OPERATION: &str = "TransactWriteItems (checkpoint)";
        let CheckpointUpdate {
            expression,
            condition,
            mut values,
            names,
            slot,
            previous,
            checkpoint,
        } = update;
        values.extend(owned(owned_values(ownership)));
        values.push((":now".to_owned(), millis(SystemTime::now())));
        let request = Update::builder()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .update_expression(expression)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values.into_iter().collect()))
            .build()
            .map_err(|err| self.target().build_error(OPERATION, ErrorClass::Other, err))?;
        let mut items = writes;
        let lease_index = items.len();
        items.push(TransactWriteItem::builder().update(request).build());
        let tables: Vec<String> = items
            .iter()
            .map(|write| transaction::table_of(write).unwrap_or("?").to_owned())
            .collect();
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        let err = match result {
            Ok(_) => return Ok(()),
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(canceled)) =
            err.as_service_error()
        else {
            return Err(self.target().sdk_error(OPERATION, Some(key), err));
        };
        let codes = cancellation_codes(canceled.cancellation_reasons(), canceled.message());
        if codes.get(lease_index).map(String::as_str) == Some("ConditionalCheckFailed") {
            return self
                .resolve_failed_checkpoint(key, ownership, slot, previous, checkpoint)
                .await;
        }
        Err(self
            .target()
            .transaction_refused(OPERATION, key, &codes, &tables, err))
    }

    pub(super) fn cached_key_names(&self, table: &str) -> Option<Vec<String>> {
        self.key_names.lock().ok()?.get(table).cloned()
    }
}
