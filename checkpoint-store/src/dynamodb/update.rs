//! The conditional `UpdateItem` of a lease: every ownership-dependent write is one of these,
//! with the condition that makes it safe (the lease still owned by the caller, or still as
//! the caller saw it), and the expressions that checkpoint writes share.

use std::collections::HashMap;
use std::time::SystemTime;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::errors::ConditionFailed;
use super::item::{
    attr, decode_lease, lease_pk, millis, names_in, number, pipeline_attribute, s, to_values,
};
use super::store::DynamoDbLeaseStore;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey, Ownership};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;

/// What every checkpoint write sets, plain or in a transaction ([`checkpoint_values`]).
pub(super) const CHECKPOINT_UPDATE: &str =
    "SET #checkpoint = :checkpoint, #owner_switches = :zero, #updated_at = :now";
/// The condition of every write that needs the lease ([`owned_values`]).
pub(super) const OWNED_CONDITION: &str = "#owner = :me AND #epoch = :my_epoch";

/// What a write conditional on an unchanged lease expects to find.
#[derive(Clone, Copy)]
pub(super) struct Seen<'a> {
    /// The owner seen (`None`: no owner).
    pub(super) owner: Option<&'a str>,
    /// The epoch seen.
    pub(super) epoch: u64,
    /// Whether the lease must also have no pending handoff request.
    pub(super) no_handoff: bool,
}

impl DynamoDbLeaseStore {
    /// Runs a conditional `UpdateItem` on a lease, returning the new lease, or the old
    /// item (if DynamoDB sent it) when the condition failed.
    pub(super) async fn update_lease(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Result<Lease, ConditionFailed>> {
        let names = names_in(&[update, condition]);
        self.update_lease_named(operation, key, update, condition, values, names)
            .await
    }

    /// [`update_lease`](Self::update_lease) with the expression attribute names given (for
    /// attributes whose names are not plain words, such as a pipeline's `pl|{name}`).
    pub(super) async fn update_lease_named(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
        names: HashMap<String, String>,
    ) -> Result<Result<Lease, ConditionFailed>> {
        let mut values = values;
        values.push((":now", millis(SystemTime::now())));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(to_values(values)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => {
                let item = output.attributes.unwrap_or_default();
                decode_lease(&self.table, &item).map(Ok)
            }
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    Ok(Err(ConditionFailed {
                        old_item_present: failed.item().is_some(),
                    }))
                }
                _ => Err(self.target().sdk_error(operation, Some(key), err)),
            },
        }
    }

    /// An update conditional on `ownership`; a failed condition means the lease was lost.
    pub(super) async fn update_owned(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        ownership: &Ownership,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Lease> {
        let names = names_in(&[update, OWNED_CONDITION]);
        self.update_owned_named(operation, key, ownership, update, values, names)
            .await
    }

    /// [`update_owned`](Self::update_owned) with the expression attribute names given.
    pub(super) async fn update_owned_named(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        ownership: &Ownership,
        update: &str,
        mut values: Vec<(&str, AttributeValue)>,
        mut names: HashMap<String, String>,
    ) -> Result<Lease> {
        values.extend(owned_values(ownership));
        names.extend(names_in(&[OWNED_CONDITION]));
        self.update_lease_named(operation, key, update, OWNED_CONDITION, values, names)
            .await?
            .map_err(|_| Error::LeaseLost {
                key: key.clone(),
                owner: ownership.owner.clone(),
                epoch: ownership.epoch,
            })
    }

    /// An update conditional on the lease still having the owner and epoch the caller saw
    /// (and, with `no_handoff`, no pending handoff request); a failed condition means
    /// `LeaseNotFound` or `LeaseChanged`.
    pub(super) async fn update_unchanged(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        seen: Seen<'_>,
        update: &str,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<Lease> {
        let Seen {
            owner: seen_owner,
            epoch: seen_epoch,
            no_handoff,
        } = seen;
        values.push((":seen_epoch", number(seen_epoch)));
        let mut condition = match seen_owner {
            Some(owner) => {
                values.push((":seen_owner", s(owner)));
                "attribute_exists(#pk) AND #epoch = :seen_epoch AND #owner = :seen_owner"
            }
            None => {
                "attribute_exists(#pk) AND #epoch = :seen_epoch AND attribute_not_exists(#owner)"
            }
        }
        .to_owned();
        if no_handoff {
            condition.push_str(" AND attribute_not_exists(#handoff_to)");
        }
        let failed = match self
            .update_lease(operation, key, update, &condition, values)
            .await?
        {
            Ok(lease) => return Ok(lease),
            Err(failed) => failed,
        };
        // DynamoDB returns the old item with the failure when there is one. If it sent
        // none, the lease is normally absent; a consistent read makes sure of it (and
        // covers a DynamoDB that does not return old items on failed conditions).
        let exists = failed.old_item_present || self.get_lease(key).await?.is_some();
        Err(if exists {
            Error::LeaseChanged {
                key: key.clone(),
                seen_owner: seen_owner.map(str::to_owned),
                seen_epoch,
            }
        } else {
            Error::LeaseNotFound { key: key.clone() }
        })
    }
}

/// The values of [`CHECKPOINT_UPDATE`] (but `:now`, which every lease write adds).
pub(super) fn checkpoint_values(checkpoint: &Checkpoint) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":checkpoint", s(&checkpoint.encode())),
        (":zero", number(0)),
    ]
}

/// The update expression, values and names of a [`PipelineCheckpoints`] write: the read
/// position as the lease's checkpoint (like [`CHECKPOINT_UPDATE`]), each pipeline's
/// attribute, and the pipelines the owner runs when given. Every lease write adds `:now`.
pub(super) fn pipeline_update(
    update: &PipelineCheckpoints,
) -> (
    String,
    Vec<(String, AttributeValue)>,
    HashMap<String, String>,
) {
    // Placeholders `#pl0`, `:pl0`, ...: pipeline names need not be plain words.
    let mut expression = CHECKPOINT_UPDATE.to_owned();
    let mut values = owned(checkpoint_values(&update.read_position));
    let mut names = names_in(&[CHECKPOINT_UPDATE]);
    for (i, (pipeline, checkpoint)) in update.pipelines.iter().enumerate() {
        expression.push_str(&format!(", #pl{i} = :pl{i}"));
        values.push((format!(":pl{i}"), s(&checkpoint.encode())));
        names.insert(format!("#pl{i}"), pipeline_attribute(pipeline));
    }
    match &update.running {
        Some(running) if !running.is_empty() => {
            expression.push_str(", #owner_pipelines = :running");
            values.push((":running".to_owned(), AttributeValue::Ss(running.clone())));
            names.insert(
                "#owner_pipelines".to_owned(),
                attr::OWNER_PIPELINES.to_owned(),
            );
        }
        Some(_) => {
            expression.push_str(" REMOVE #owner_pipelines");
            names.insert(
                "#owner_pipelines".to_owned(),
                attr::OWNER_PIPELINES.to_owned(),
            );
        }
        None => {}
    }
    (expression, values, names)
}

/// Values with owned placeholders.
pub(super) fn owned(values: Vec<(&str, AttributeValue)>) -> Vec<(String, AttributeValue)> {
    values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// Values with borrowed placeholders, as requests take them.
pub(super) fn borrowed(values: &[(String, AttributeValue)]) -> Vec<(&str, AttributeValue)> {
    values
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect()
}

/// The values of [`OWNED_CONDITION`].
pub(super) fn owned_values(ownership: &Ownership) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":me", s(&ownership.owner)),
        (":my_epoch", number(ownership.epoch)),
    ]
}
