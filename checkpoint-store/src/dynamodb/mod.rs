//! The lease store in a DynamoDB table.
//!
//! One table per application, string partition key `pk`, on-demand billing. Two kinds of
//! items share it:
//!
//! | item | `pk` | attributes |
//! | --- | --- | --- |
//! | lease | `lease\|{stream}\|{shard_id}` | `kind`="lease", `stream`, `shard_id`, `owner` (absent when none), `epoch` (N), `checkpoint` (S), `parents` (L of S), `owner_switches` (N), `handoff_to` (S, optional), `created_at`, `updated_at` (N, unix ms) |
//! | membership | `membership` | `kind`="membership", `leases_version` (N), and per worker `hb\|{id}` (N, heartbeat counter), `up\|{id}` (N, unix ms of the last heartbeat), `ex\|{id}` (N, unix s after which cleanup may remove the entry) |
//!
//! Workers heartbeat into the one membership item and read it (eventually consistent, a
//! few KB even with 50 workers) on every tick; the leases are scanned only when
//! `leases_version` moved. Every ownership-changing write bumps it afterwards.
//!
//! Every ownership-dependent write is one conditional `UpdateItem`, with the same
//! semantics as [`crate::InMemoryLeaseStore`] (the conformance suite checks both).
//! Clients, error classes, Scan paging and table waiting come from [`crate::aws`]; the
//! store does not retry (its callers' retry policies do).
//!
//! The parts: [`item`] is the codec (item layout, attribute names, value helpers),
//! [`table`] creates and checks the table, [`errors`] turns SDK answers into [`Error`]s;
//! this file holds the store and its requests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use aws_types::SdkConfig;

use crate::aws::{self, AwsClients, ErrorClass};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey, Membership, Ownership, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;
use crate::transaction;

mod errors;
pub(crate) mod item;
mod table;

use errors::{ConditionFailed, Target, cancellation_codes};
use item::{
    Item, KIND_LEASE, KIND_MEMBERSHIP, MEMBERSHIP_PK, attr, decode_lease, decode_membership,
    decode_scan, encode_lease, lease_pk, member_names, millis, names_in, number,
    pipeline_attribute, s, to_values, unix_millis, unix_secs,
};
use table::LeaseTable;

const CLIENT_ENDPOINT: &str = "the endpoint configured on the DynamoDB client";

/// What every checkpoint write sets, plain or in a transaction ([`checkpoint_values`]).
const CHECKPOINT_UPDATE: &str =
    "SET #checkpoint = :checkpoint, #owner_switches = :zero, #updated_at = :now";
/// The condition of every write that needs the lease ([`owned_values`]).
const OWNED_CONDITION: &str = "#owner = :me AND #epoch = :my_epoch";

/// A [`LeaseStore`] in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoDbLeaseStore {
    client: Client,
    table: String,
    /// Where the client sends requests, for error messages.
    endpoint: String,
    /// `Limit` of each scan page; `None` lets DynamoDB fill 1 MB pages.
    scan_page_size: Option<i32>,
    /// Key attribute names of the tables transactions write to (DescribeTable, once each).
    key_names: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl fmt::Debug for DynamoDbLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbLeaseStore")
            .field("table", &self.table)
            .field("endpoint", &self.endpoint)
            .field("scan_page_size", &self.scan_page_size)
            .finish_non_exhaustive()
    }
}

impl DynamoDbLeaseStore {
    /// A store in `table`, using `client` as it is configured. Fails with
    /// `InvalidTableName` (before any request) if the name breaks DynamoDB's rules.
    pub fn new(client: Client, table: impl Into<String>) -> Result<Self> {
        Self::build(client, table.into(), CLIENT_ENDPOINT.to_owned())
    }

    /// A store in `table` with the clients of [`AwsClients::from_sdk_config`]: bounded
    /// timeouts, so that an unreachable endpoint fails with `Unreachable` instead of
    /// hanging, and no SDK retries (the caller's retry policy is the only one).
    pub fn from_sdk_config(config: &SdkConfig, table: impl Into<String>) -> Result<Self> {
        Self::from_clients(&AwsClients::from_sdk_config(config), table)
    }

    /// A store in `table` using the DynamoDB client of `clients`.
    pub fn from_clients(clients: &AwsClients, table: impl Into<String>) -> Result<Self> {
        Self::build(
            clients.dynamodb().clone(),
            table.into(),
            clients.endpoint().to_owned(),
        )
    }

    fn build(client: Client, table: String, endpoint: String) -> Result<Self> {
        table::validate_table_name(&table)?;
        Ok(Self {
            client,
            table,
            endpoint,
            scan_page_size: None,
            key_names: Arc::default(),
        })
    }

    /// Reads scans in pages of at most `items` items (before filtering), instead of
    /// DynamoDB's 1 MB pages. Tests use it to exercise pagination.
    pub fn with_scan_page_size(mut self, items: usize) -> Self {
        self.scan_page_size = Some(i32::try_from(items).unwrap_or(i32::MAX).max(1));
        self
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// What this store's errors name.
    fn target(&self) -> Target<'_> {
        Target {
            table: &self.table,
            endpoint: &self.endpoint,
        }
    }

    /// Runs a conditional `UpdateItem` on a lease, returning the new lease, or the old
    /// item (if DynamoDB sent it) when the condition failed.
    async fn update_lease(
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
    async fn update_lease_named(
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
    async fn update_owned(
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
    async fn update_owned_named(
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

    /// An update conditional on the lease still having the owner and epoch the caller saw;
    /// a failed condition means `LeaseNotFound` or `LeaseChanged`.
    async fn update_unchanged(
        &self,
        operation: &'static str,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        update: &str,
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<Lease> {
        values.push((":seen_epoch", number(seen_epoch)));
        let condition = match seen_owner {
            Some(owner) => {
                values.push((":seen_owner", s(owner)));
                "attribute_exists(#pk) AND #epoch = :seen_epoch AND #owner = :seen_owner"
            }
            None => {
                "attribute_exists(#pk) AND #epoch = :seen_epoch AND attribute_not_exists(#owner)"
            }
        };
        let failed = match self
            .update_lease(operation, key, update, condition, values)
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

    /// Every item of one kind (or of every kind), read consistently, all pages.
    async fn scan_kind(&self, kind: Option<&str>) -> Result<Vec<Item>> {
        let filter = "#kind = :kind";
        let mut request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .set_limit(self.scan_page_size);
        if let Some(kind) = kind {
            request = request
                .filter_expression(filter)
                .set_expression_attribute_names(Some(names_in(&[filter])))
                .expression_attribute_values(":kind", s(kind));
        }
        aws::scan_all(request)
            .await
            .map_err(|err| self.target().sdk_error("Scan", None, err))
    }

    /// A plain `UpdateItem` on the membership item (no condition); returns the updated
    /// attributes. `names` maps each `#placeholder` to its attribute name. A liveness call:
    /// short attempt timeout ([`aws::LIVENESS_ATTEMPT_TIMEOUT`]).
    async fn update_membership(
        &self,
        operation: &'static str,
        update: &str,
        names: Vec<(&str, String)>,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Item> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, s(MEMBERSHIP_PK))
            .update_expression(update)
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .map(|(placeholder, name)| (placeholder.to_owned(), name))
                    .collect(),
            ))
            .return_values(ReturnValue::UpdatedNew);
        if !values.is_empty() {
            request = request.set_expression_attribute_values(Some(to_values(values)));
        }
        let output = request
            .customize()
            .config_override(aws::liveness_overrides())
            .send()
            .await
            .map_err(|err| self.target().sdk_error(operation, None, err))?;
        Ok(output.attributes.unwrap_or_default())
    }

    /// Bumps the leases version after an ownership-changing write. The write itself
    /// succeeded, so a failed bump is only reported: the audit scan catches it.
    async fn bump_after(&self, key: &LeaseKey) {
        if let Err(error) = self.bump_leases_version().await {
            tracing::warn!(lease = %key, %error, "leases version not bumped; the audit scan will catch the change");
        }
    }

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
    async fn transact_checkpoint(
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
            Ok(_) => {
                if slot == Slot::Lease && *checkpoint == Checkpoint::ShardEnd {
                    self.bump_after(key).await;
                }
                return Ok(());
            }
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

    fn cached_key_names(&self, table: &str) -> Option<Vec<String>> {
        self.key_names.lock().ok()?.get(table).cloned()
    }
}

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn ensure_table(&self) -> Result<()> {
        LeaseTable {
            client: &self.client,
            target: self.target(),
        }
        .ensure()
        .await
    }

    async fn list_leases(&self) -> Result<Vec<Lease>> {
        let items = self.scan_kind(Some(KIND_LEASE)).await?;
        Ok(decode_scan(&self.table, &items).0)
    }

    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|err| self.target().sdk_error("GetItem", Some(key), err))?;
        output
            .item
            .map(|item| decode_lease(&self.table, &item))
            .transpose()
    }

    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        let condition = "attribute_not_exists(#pk)";
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(encode_lease(lease)))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .send()
            .await;
        match result {
            Ok(_) => {
                self.bump_after(&lease.key).await;
                Ok(())
            }
            Err(err) if aws::classify(&err) == ErrorClass::ConditionFailed => {
                Err(Error::AlreadyExists {
                    key: lease.key.clone(),
                })
            }
            Err(err) => Err(self.target().sdk_error("PutItem", Some(&lease.key), err)),
        }
    }

    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        let taken = self
            .update_unchanged(
                "UpdateItem (take)",
                key,
                seen_owner,
                seen_epoch,
                "SET #owner = :new_owner, #epoch = #epoch + :one, \
             #owner_switches = #owner_switches + :one, #updated_at = :now REMOVE #handoff_to",
                vec![(":new_owner", s(new_owner)), (":one", number(1))],
            )
            .await?;
        self.bump_after(key).await;
        Ok(taken)
    }

    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        let lease = self
            .update_owned(
                "UpdateItem (checkpoint)",
                key,
                ownership,
                CHECKPOINT_UPDATE,
                checkpoint_values(checkpoint),
            )
            .await?;
        if *checkpoint == Checkpoint::ShardEnd {
            self.bump_after(key).await;
        }
        Ok(lease)
    }

    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease> {
        let (expression, values, names) = pipeline_update(update);
        let lease = self
            .update_owned_named(
                "UpdateItem (pipeline checkpoints)",
                key,
                ownership,
                &expression,
                borrowed(&values),
                names,
            )
            .await?;
        if update.read_position == Checkpoint::ShardEnd {
            self.bump_after(key).await;
        }
        Ok(lease)
    }

    async fn remove_pipeline(
        &self,
        key: &LeaseKey,
        pipeline: &str,
        ownership: Option<&Ownership>,
    ) -> Result<Lease> {
        const OPERATION: &str = "UpdateItem (remove pipeline)";
        let update = "SET #updated_at = :now REMOVE #pl DELETE #owner_pipelines :names";
        let values = vec![(":names", AttributeValue::Ss(vec![pipeline.to_owned()]))];
        let pipeline_name = [("#pl".to_owned(), pipeline_attribute(pipeline))];
        if let Some(ownership) = ownership {
            let mut names = names_in(&[update]);
            names.extend(pipeline_name);
            return self
                .update_owned_named(OPERATION, key, ownership, update, values, names)
                .await;
        }
        let condition = "attribute_exists(#pk)";
        let mut names = names_in(&[update, condition]);
        names.extend(pipeline_name);
        self.update_lease_named(OPERATION, key, update, condition, values, names)
            .await?
            .map_err(|_| Error::LeaseNotFound { key: key.clone() })
    }

    async fn release_lease(&self, key: &LeaseKey, ownership: &Ownership) -> Result<Lease> {
        let released = self
            .update_owned(
                "UpdateItem (release)",
                key,
                ownership,
                "SET #epoch = #epoch + :one, #updated_at = :now REMOVE #owner, #handoff_to",
                vec![(":one", number(1))],
            )
            .await?;
        self.bump_after(key).await;
        Ok(released)
    }

    async fn reset_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        let mut values = checkpoint_values(checkpoint);
        values.push((":one", number(1)));
        let moved = self
            .update_unchanged(
                "UpdateItem (reset)",
                key,
                seen_owner,
                seen_epoch,
                &format!("{CHECKPOINT_UPDATE}, #epoch = #epoch + :one REMOVE #owner, #handoff_to"),
                values,
            )
            .await?;
        self.bump_after(key).await;
        Ok(moved)
    }

    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease> {
        let asked = self
            .update_unchanged(
                "UpdateItem (request handoff)",
                key,
                Some(&current.owner),
                current.epoch,
                "SET #handoff_to = :requester, #updated_at = :now",
                vec![(":requester", s(requester))],
            )
            .await?;
        self.bump_after(key).await;
        Ok(asked)
    }

    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        let output = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|err| self.target().sdk_error("DeleteItem", Some(key), err))?;
        if output.attributes.is_some_and(|old| !old.is_empty()) {
            self.bump_after(key).await;
        }
        Ok(())
    }

    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let now = SystemTime::now();
        let expires = now + ttl;
        let attributes = self
            .update_membership(
                "UpdateItem (heartbeat)",
                "ADD #hb :one SET #up = :now, #ex = :expires, #kind = :kind",
                [
                    member_names(worker_id),
                    vec![("#kind", attr::KIND.to_owned())],
                ]
                .concat(),
                vec![
                    (":one", number(1)),
                    (":kind", s(KIND_MEMBERSHIP)),
                    (":now", millis(now)),
                    (":expires", number(unix_secs(expires))),
                ],
            )
            .await
            .map_err(|error| match error {
                Error::DynamoDb {
                    class: ErrorClass::Validation,
                    ref source,
                    ..
                } if source
                    .to_string()
                    .to_ascii_lowercase()
                    .contains("item size") =>
                {
                    Error::MembershipFull {
                        table: self.table.clone(),
                        worker_id: worker_id.to_owned(),
                        limit_bytes: crate::billing::MAX_ITEM_BYTES,
                    }
                }
                other => other,
            })?;
        let heartbeat = match attributes.get(&format!("{}{worker_id}", attr::HEARTBEAT_PREFIX)) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let heartbeat = heartbeat.ok_or_else(|| Error::CorruptItem {
            table: self.table.clone(),
            item: MEMBERSHIP_PK.to_owned(),
            attribute: "hb|{worker id}",
            problem: format!("the heartbeat of {worker_id} did not come back as a number"),
        })?;
        Ok(WorkerRecord {
            worker_id: worker_id.to_owned(),
            heartbeat,
            updated_at: UNIX_EPOCH + Duration::from_millis(unix_millis(now)),
            expires_at: UNIX_EPOCH + Duration::from_secs(unix_secs(expires)),
        })
    }

    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        let items = self.scan_kind(None).await?;
        let (leases, membership) = decode_scan(&self.table, &items);
        Ok((leases, membership.workers))
    }

    async fn membership(&self) -> Result<Membership> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(attr::PK, s(MEMBERSHIP_PK))
            .customize()
            .config_override(aws::liveness_overrides())
            .send()
            .await
            .map_err(|err| self.target().sdk_error("GetItem (membership)", None, err))?;
        Ok(output
            .item
            .map(|item| decode_membership(&self.table, &item))
            .unwrap_or_default())
    }

    async fn bump_leases_version(&self) -> Result<u64> {
        let attributes = self
            .update_membership(
                "UpdateItem (leases version)",
                "ADD #v :one",
                vec![("#v", attr::LEASES_VERSION.to_owned())],
                vec![(":one", number(1))],
            )
            .await?;
        match attributes.get(attr::LEASES_VERSION) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| Error::CorruptItem {
                table: self.table.clone(),
                item: MEMBERSHIP_PK.to_owned(),
                attribute: attr::LEASES_VERSION,
                problem: format!("{n:?} is not a counter"),
            }),
            _ => Ok(0),
        }
    }

    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.update_membership(
            "UpdateItem (remove worker)",
            "REMOVE #hb, #up, #ex",
            member_names(worker_id),
            vec![],
        )
        .await?;
        Ok(())
    }

    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<TransactWriteItem>,
    ) -> Result<()> {
        let condition = format!("{OWNED_CONDITION} AND #checkpoint = :previous");
        let mut values = owned(checkpoint_values(checkpoint));
        values.push((":previous".to_owned(), s(&previous.encode())));
        let update = CheckpointUpdate {
            names: names_in(&[CHECKPOINT_UPDATE, &condition]),
            expression: CHECKPOINT_UPDATE.to_owned(),
            condition,
            values,
            slot: Slot::Lease,
            previous: Some(previous),
            checkpoint,
        };
        self.transact_checkpoint(key, ownership, update, writes)
            .await
    }

    async fn checkpoint_pipeline_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        pipeline: &str,
        previous: Option<&Checkpoint>,
        update: &PipelineCheckpoints,
        writes: Vec<TransactWriteItem>,
    ) -> Result<()> {
        let Some((_, checkpoint)) = update.pipelines.iter().find(|(name, _)| name == pipeline)
        else {
            return Err(Error::InvalidPipelineUpdate {
                key: key.clone(),
                pipeline: pipeline.to_owned(),
            });
        };
        let (expression, mut values, mut names) = pipeline_update(update);
        let condition = match previous {
            Some(previous) => {
                values.push((":previous".to_owned(), s(&previous.encode())));
                format!("{OWNED_CONDITION} AND #previous_pl = :previous")
            }
            None => format!("{OWNED_CONDITION} AND attribute_not_exists(#previous_pl)"),
        };
        names.extend(names_in(&[&condition]));
        names.insert("#previous_pl".to_owned(), pipeline_attribute(pipeline));
        let update = CheckpointUpdate {
            expression,
            condition,
            values,
            names,
            slot: Slot::Pipeline(pipeline),
            previous,
            checkpoint,
        };
        self.transact_checkpoint(key, ownership, update, writes)
            .await
    }

    async fn key_attribute_names(&self, table: &str) -> Result<Vec<String>> {
        if let Some(names) = self.cached_key_names(table) {
            return Ok(names);
        }
        let names = table::key_attribute_names(&self.client, self.target(), table).await?;
        if let Ok(mut cache) = self.key_names.lock() {
            cache.insert(table.to_owned(), names.clone());
        }
        Ok(names)
    }
}

/// The values of [`CHECKPOINT_UPDATE`] (but `:now`, which every lease write adds).
fn checkpoint_values(checkpoint: &Checkpoint) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":checkpoint", s(&checkpoint.encode())),
        (":zero", number(0)),
    ]
}

/// Which checkpoint of a lease a transaction is conditional on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot<'a> {
    /// The lease's own `checkpoint`.
    Lease,
    /// A named pipeline's.
    Pipeline(&'a str),
}

/// The lease update of a transactional checkpoint, and what its condition expects.
struct CheckpointUpdate<'a> {
    expression: String,
    condition: String,
    values: Vec<(String, AttributeValue)>,
    names: HashMap<String, String>,
    slot: Slot<'a>,
    /// The checkpoint the slot must still hold (`None`: none yet).
    previous: Option<&'a Checkpoint>,
    /// The checkpoint the slot gets.
    checkpoint: &'a Checkpoint,
}

/// The update expression, values and names of a [`PipelineCheckpoints`] write: the read
/// position as the lease's checkpoint (like [`CHECKPOINT_UPDATE`]), each pipeline's
/// attribute, and the pipelines the owner runs when given. Every lease write adds `:now`.
fn pipeline_update(
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
fn owned(values: Vec<(&str, AttributeValue)>) -> Vec<(String, AttributeValue)> {
    values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// Values with borrowed placeholders, as requests take them.
fn borrowed(values: &[(String, AttributeValue)]) -> Vec<(&str, AttributeValue)> {
    values
        .iter()
        .map(|(name, value)| (name.as_str(), value.clone()))
        .collect()
}

/// The values of [`OWNED_CONDITION`].
fn owned_values(ownership: &Ownership) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":me", s(&ownership.owner)),
        (":my_epoch", number(ownership.epoch)),
    ]
}
