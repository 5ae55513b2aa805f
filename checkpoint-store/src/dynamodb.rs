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

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, CancellationReason, KeySchemaElement,
    KeyType, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus, TransactWriteItem,
    Update,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_types::SdkConfig;

use crate::aws::{self, AwsClients, ErrorClass, TableWaitError};
use crate::transaction;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey, Membership, Ownership, WorkerRecord};
use crate::store::LeaseStore;

/// Attribute names. Expressions refer to them as `#name` (see [`names_in`]), which also
/// keeps DynamoDB's reserved words (`owner` is one) out of the way.
mod attr {
    pub const PK: &str = "pk";
    pub const KIND: &str = "kind";
    pub const STREAM: &str = "stream";
    pub const SHARD_ID: &str = "shard_id";
    pub const OWNER: &str = "owner";
    pub const EPOCH: &str = "epoch";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const PARENTS: &str = "parents";
    pub const OWNER_SWITCHES: &str = "owner_switches";
    pub const HANDOFF_TO: &str = "handoff_to";
    pub const CREATED_AT: &str = "created_at";
    pub const UPDATED_AT: &str = "updated_at";
    /// The table's TTL attribute (no item sets it today; kept so tables stay as created).
    pub const EXPIRES_AT: &str = "expires_at";
    pub const LEASES_VERSION: &str = "leases_version";
    /// Per-worker attributes of the membership item: `{prefix}{worker id}`.
    pub const HEARTBEAT_PREFIX: &str = "hb|";
    pub const UPDATED_PREFIX: &str = "up|";
    pub const EXPIRES_PREFIX: &str = "ex|";
}

const KIND_LEASE: &str = "lease";
const KIND_MEMBERSHIP: &str = "membership";
/// The key of the membership item.
const MEMBERSHIP_PK: &str = "membership";

/// How long `ensure_table` waits for a new table to become ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

const CLIENT_ENDPOINT: &str = "the endpoint configured on the DynamoDB client";

/// What every checkpoint write sets, plain or in a transaction ([`checkpoint_values`]).
const CHECKPOINT_UPDATE: &str =
    "SET #checkpoint = :checkpoint, #owner_switches = :zero, #updated_at = :now";
/// The condition of every write that needs the lease ([`owned_values`]).
const OWNED_CONDITION: &str = "#owner = :me AND #epoch = :my_epoch";

type Item = HashMap<String, AttributeValue>;

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
        validate_table_name(&table)?;
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

    // ----- table management -----

    /// The table's description, or `None` if it does not exist.
    async fn describe_table(&self) -> Result<Option<TableDescription>> {
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(output) => Ok(output.table),
            Err(err) if aws::classify(&err) == ErrorClass::NotFound => Ok(None),
            Err(err) => Err(self.sdk_error("DescribeTable", None, err)),
        }
    }

    /// Creates the table; says whether the answer shows it usable already, and whether
    /// another worker was creating it first.
    async fn create_table(&self) -> Result<Created> {
        let build_error = |err| self.dynamodb_error("CreateTable", ErrorClass::Other, err);
        let request = self
            .client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::PK)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr::PK)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build_error)?,
            )
            .billing_mode(BillingMode::PayPerRequest);
        match request.send().await {
            Ok(output) => {
                tracing::info!(table = %self.table, "created lease table");
                Ok(output
                    .table_description
                    .filter(is_active)
                    .map_or(Created::Creating, |d| Created::Active(Box::new(d))))
            }
            // Another worker is creating it at the same time: wait for it like for ours.
            Err(err) if err.code() == Some("ResourceInUseException") => Ok(Created::ByAnother),
            Err(err) => Err(self.sdk_error("CreateTable", None, err)),
        }
    }

    /// Waits (the SDK's waiter) until the table is usable, then checks it is a lease table.
    async fn wait_until_active(&self) -> Result<()> {
        let description =
            match aws::wait_until_table_active(&self.client, &self.table, TABLE_ACTIVE_TIMEOUT)
                .await
            {
                Ok(description) => description,
                Err(TableWaitError::NotActive { table, waited }) => {
                    return Err(Error::TableNotActive { table, waited });
                }
                Err(TableWaitError::Describe { source, .. }) => {
                    return Err(self.sdk_error("DescribeTable", None, *source));
                }
                Err(err) => {
                    return Err(self.dynamodb_error("DescribeTable", ErrorClass::Other, err));
                }
            };
        check_key_schema(&self.table, &description)
    }

    /// Turns on TTL for `expires_at`, so items of dead workers go away by themselves.
    /// Best effort: failing here only leaves cleanup to the workers' cleanup pass.
    ///
    /// `created_here`: this store's CreateTable made the table, so it has no TTL yet and
    /// the DescribeTimeToLive round trip is skipped (a new application's start-up waits
    /// for this call). Otherwise another worker created it and may have set TTL already.
    async fn enable_ttl(&self, created_here: bool) {
        let enabled = !created_here
            && self
                .client
                .describe_time_to_live()
                .table_name(&self.table)
                .send()
                .await
                .ok()
                .and_then(|output| output.time_to_live_description)
                .is_some_and(|ttl| {
                    ttl.attribute_name() == Some(attr::EXPIRES_AT)
                        && matches!(
                            ttl.time_to_live_status(),
                            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                        )
                });
        if enabled {
            return;
        }
        let spec = match TimeToLiveSpecification::builder()
            .attribute_name(attr::EXPIRES_AT)
            .enabled(true)
            .build()
        {
            Ok(spec) => spec,
            Err(err) => {
                tracing::debug!(table = %self.table, error = %err, "cannot build the TTL specification");
                return;
            }
        };
        if let Err(err) = self
            .client
            .update_time_to_live()
            .table_name(&self.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            tracing::debug!(
                table = %self.table,
                error = %SdkFailure::new(err),
                "could not enable TTL on {}; dead workers' items are left to the cleanup pass",
                attr::EXPIRES_AT
            );
        }
    }

    // ----- item access -----

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
        let mut values = values;
        values.push((":now", millis(SystemTime::now())));
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[update, condition])))
            .set_expression_attribute_values(Some(to_values(values)))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => {
                let item = output.attributes.unwrap_or_default();
                self.decode_lease(&item).map(Ok)
            }
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    Ok(Err(ConditionFailed {
                        old_item_present: failed.item().is_some(),
                    }))
                }
                _ => Err(self.sdk_error(operation, Some(key), err)),
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
        mut values: Vec<(&str, AttributeValue)>,
    ) -> Result<Lease> {
        values.extend(owned_values(ownership));
        self.update_lease(operation, key, update, OWNED_CONDITION, values)
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
            .map_err(|err| self.sdk_error("Scan", None, err))
    }

    // ----- decoding -----

    fn reader<'a>(&'a self, item: &'a Item) -> ItemReader<'a> {
        ItemReader {
            table: &self.table,
            item,
        }
    }

    fn decode_lease(&self, item: &Item) -> Result<Lease> {
        let r = self.reader(item);
        Ok(Lease {
            key: LeaseKey::new(r.string(attr::STREAM)?, r.string(attr::SHARD_ID)?),
            owner: r.optional_string(attr::OWNER)?,
            epoch: r.number(attr::EPOCH)?,
            checkpoint: r.checkpoint(attr::CHECKPOINT)?,
            parent_shard_ids: r.string_list(attr::PARENTS)?,
            owner_switches_since_checkpoint: r.number(attr::OWNER_SWITCHES)?,
            handoff_to: r.optional_string(attr::HANDOFF_TO)?,
            created_at: UNIX_EPOCH + Duration::from_millis(r.number(attr::CREATED_AT)?),
            updated_at: UNIX_EPOCH + Duration::from_millis(r.number(attr::UPDATED_AT)?),
        })
    }

    /// The membership item's worker records (sorted by id) and version. An entry with a
    /// missing or unreadable part is reported and skipped, like an undecodable lease.
    fn decode_membership(&self, item: &Item) -> Membership {
        let number_at = |name: &str| match item.get(name) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let mut workers = Vec::new();
        for name in item.keys() {
            let Some(id) = name.strip_prefix(attr::HEARTBEAT_PREFIX) else {
                continue;
            };
            let parts = (
                number_at(name),
                number_at(&format!("{}{id}", attr::UPDATED_PREFIX)),
                number_at(&format!("{}{id}", attr::EXPIRES_PREFIX)),
            );
            match parts {
                (Some(heartbeat), Some(updated), Some(expires)) => workers.push(WorkerRecord {
                    worker_id: id.to_owned(),
                    heartbeat,
                    updated_at: UNIX_EPOCH + Duration::from_millis(updated),
                    expires_at: UNIX_EPOCH + Duration::from_secs(expires),
                }),
                _ => {
                    tracing::error!(table = %self.table, worker_id = id, "membership entry of this worker does not decode; skipped")
                }
            }
        }
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Membership {
            leases_version: number_at(attr::LEASES_VERSION).unwrap_or(0),
            workers,
        }
    }

    /// Leases and the membership out of scanned items. An item that does not decode is
    /// reported (error log naming table and key) and skipped: one item written by a newer
    /// version must not stop every worker from taking leases.
    fn decode_scan(&self, items: &[Item]) -> (Vec<Lease>, Membership) {
        let mut leases = Vec::new();
        let mut membership = Membership::default();
        for item in items {
            match item.get(attr::KIND) {
                Some(AttributeValue::S(kind)) if kind == KIND_LEASE => {
                    match self.decode_lease(item) {
                        Ok(lease) => leases.push(lease),
                        Err(error) => {
                            tracing::error!(%error, "lease item does not decode; skipped by this scan")
                        }
                    }
                }
                Some(AttributeValue::S(kind)) if kind == KIND_MEMBERSHIP => {
                    membership = self.decode_membership(item)
                }
                // Items of other kinds are not ours to read (or written by a newer version).
                _ => {}
            }
        }
        (leases, membership)
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
            .map_err(|err| self.sdk_error(operation, None, err))?;
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
        previous: &Checkpoint,
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
        if lease.checkpoint == *checkpoint {
            tracing::debug!(lease = %key, %checkpoint, "transaction committed by an earlier attempt");
            return Ok(());
        }
        Err(Error::CheckpointMoved {
            key: key.clone(),
            expected: previous.clone(),
            found: lease.checkpoint,
        })
    }

    fn cached_key_names(&self, table: &str) -> Option<Vec<String>> {
        self.key_names.lock().ok()?.get(table).cloned()
    }

    // ----- errors -----

    /// Maps an SDK error by its [`ErrorClass`]: transport failures become `Unreachable`,
    /// the rest `DynamoDb`. Both keep the SDK error, displayed with its whole context
    /// (code and message).
    fn sdk_error<E>(
        &self,
        operation: &'static str,
        key: Option<&LeaseKey>,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let class = aws::classify(&err);
        let source = Box::new(SdkFailure::new(err));
        if class == ErrorClass::Transport {
            Error::Unreachable {
                endpoint: self.endpoint.clone(),
                operation,
                table: self.table.clone(),
                source,
            }
        } else {
            Error::DynamoDb {
                operation,
                table: self.table.clone(),
                key: key.cloned(),
                class,
                source,
            }
        }
    }

    /// A failure that is not an SDK answer (a request we could not build: a bug of ours).
    fn dynamodb_error(
        &self,
        operation: &'static str,
        class: ErrorClass,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::DynamoDb {
            operation,
            table: self.table.clone(),
            key: None,
            class,
            source: err.into(),
        }
    }
}

#[async_trait]
impl LeaseStore for DynamoDbLeaseStore {
    async fn ensure_table(&self) -> Result<()> {
        match self.describe_table().await? {
            // The usual case, a worker start: one call. TTL was set up by the creator.
            Some(description) if is_active(&description) => {
                check_key_schema(&self.table, &description)
            }
            Some(description) => {
                check_key_schema(&self.table, &description)?;
                self.wait_until_active().await
            }
            None => {
                let created_here = match self.create_table().await? {
                    Created::Active(description) => {
                        check_key_schema(&self.table, &description)?;
                        true
                    }
                    Created::Creating => {
                        self.wait_until_active().await?;
                        true
                    }
                    Created::ByAnother => {
                        self.wait_until_active().await?;
                        false
                    }
                };
                self.enable_ttl(created_here).await;
                Ok(())
            }
        }
    }

    async fn list_leases(&self) -> Result<Vec<Lease>> {
        let items = self.scan_kind(Some(KIND_LEASE)).await?;
        Ok(self.decode_scan(&items).0)
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
            .map_err(|err| self.sdk_error("GetItem", Some(key), err))?;
        output.item.map(|item| self.decode_lease(&item)).transpose()
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
            Err(err) => Err(self.sdk_error("PutItem", Some(&lease.key), err)),
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
            .map_err(|err| self.sdk_error("DeleteItem", Some(key), err))?;
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
        let (leases, membership) = self.decode_scan(&items);
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
            .map_err(|err| self.sdk_error("GetItem (membership)", None, err))?;
        Ok(output
            .item
            .map(|item| self.decode_membership(&item))
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
        const OPERATION: &str = "TransactWriteItems (checkpoint)";
        let condition = format!("{OWNED_CONDITION} AND #checkpoint = :previous");
        let mut values = checkpoint_values(checkpoint);
        values.extend(owned_values(ownership));
        values.push((":previous", s(&previous.encode())));
        values.push((":now", millis(SystemTime::now())));
        let update = Update::builder()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .update_expression(CHECKPOINT_UPDATE)
            .condition_expression(&condition)
            .set_expression_attribute_names(Some(names_in(&[CHECKPOINT_UPDATE, &condition])))
            .set_expression_attribute_values(Some(to_values(values)))
            .build()
            .map_err(|err| self.dynamodb_error(OPERATION, ErrorClass::Other, err))?;
        let mut items = writes;
        let lease_index = items.len();
        items.push(TransactWriteItem::builder().update(update).build());
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
                if *checkpoint == Checkpoint::ShardEnd {
                    self.bump_after(key).await;
                }
                return Ok(());
            }
            Err(err) => err,
        };
        let Some(TransactWriteItemsError::TransactionCanceledException(canceled)) =
            err.as_service_error()
        else {
            return Err(self.sdk_error(OPERATION, Some(key), err));
        };
        let codes = cancellation_codes(canceled.cancellation_reasons(), canceled.message());
        if codes.get(lease_index).map(String::as_str) == Some("ConditionalCheckFailed") {
            return self
                .resolve_failed_checkpoint(key, ownership, previous, checkpoint)
                .await;
        }
        let refused: Vec<(usize, &String)> = codes
            .iter()
            .enumerate()
            .filter(|(_, code)| code.as_str() != "None")
            .collect();
        let retryable = |code: &str| {
            matches!(
                code,
                "TransactionConflict"
                    | "ThrottlingError"
                    | "ProvisionedThroughputExceeded"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
            )
        };
        if !refused.is_empty() && refused.iter().all(|(_, code)| retryable(code)) {
            // Another request touched the same items, or throttling: the same transaction
            // may go through when sent again.
            return Err(Error::DynamoDb {
                operation: OPERATION,
                table: self.table.clone(),
                key: Some(key.clone()),
                class: ErrorClass::Transient,
                source: Box::new(SdkFailure::new(err)),
            });
        }
        let reasons = if refused.is_empty() {
            SdkFailure::new(err).to_string()
        } else {
            refused
                .iter()
                .map(|(i, code)| {
                    let table = tables.get(*i).map(String::as_str).unwrap_or("?");
                    format!("write {i} (table {table:?}): {code}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Err(Error::TransactionCanceled {
            table: self.table.clone(),
            key: key.clone(),
            reasons,
        })
    }

    async fn key_attribute_names(&self, table: &str) -> Result<Vec<String>> {
        if let Some(names) = self.cached_key_names(table) {
            return Ok(names);
        }
        let description = self
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|err| {
                let mut error = self.sdk_error("DescribeTable (key schema)", None, err);
                if let Error::DynamoDb { table: named, .. }
                | Error::Unreachable { table: named, .. } = &mut error
                {
                    table.clone_into(named);
                }
                error
            })?;
        let mut schema: Vec<&KeySchemaElement> = description
            .table()
            .map(|t| t.key_schema().iter().collect())
            .unwrap_or_default();
        // The partition key first, then the sort key.
        schema.sort_by_key(|element| *element.key_type() != KeyType::Hash);
        let names: Vec<String> = schema
            .iter()
            .map(|element| element.attribute_name().to_owned())
            .collect();
        if names.is_empty() {
            return Err(Error::CorruptItem {
                table: table.to_owned(),
                item: "(table description)".to_owned(),
                attribute: "KeySchema",
                problem: "DescribeTable returned no key schema".to_owned(),
            });
        }
        if let Ok(mut cache) = self.key_names.lock() {
            cache.insert(table.to_owned(), names.clone());
        }
        Ok(names)
    }
}

/// The reason code of each action of a cancelled transaction (`None` for those that were
/// fine), from the structured reasons or, when a DynamoDB sends none, from the message
/// (`Transaction cancelled, please refer cancellation reasons for specific reasons [A, B]`).
fn cancellation_codes(reasons: &[CancellationReason], message: Option<&str>) -> Vec<String> {
    if !reasons.is_empty() {
        return reasons
            .iter()
            .map(|reason| reason.code().unwrap_or("None").to_owned())
            .collect();
    }
    let listed = message.and_then(|m| {
        let start = m.rfind('[')?;
        let end = m[start..].find(']')? + start;
        Some(&m[start + 1..end])
    });
    listed
        .map(|list| list.split(',').map(|code| code.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// The values of [`CHECKPOINT_UPDATE`] (but `:now`, which every lease write adds).
fn checkpoint_values(checkpoint: &Checkpoint) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":checkpoint", s(&checkpoint.encode())),
        (":zero", number(0)),
    ]
}

/// The values of [`OWNED_CONDITION`].
fn owned_values(ownership: &Ownership) -> Vec<(&'static str, AttributeValue)> {
    vec![
        (":me", s(&ownership.owner)),
        (":my_epoch", number(ownership.epoch)),
    ]
}

/// The placeholders of one worker's attributes in the membership item.
fn member_names(worker_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("#hb", format!("{}{worker_id}", attr::HEARTBEAT_PREFIX)),
        ("#up", format!("{}{worker_id}", attr::UPDATED_PREFIX)),
        ("#ex", format!("{}{worker_id}", attr::EXPIRES_PREFIX)),
    ]
}

/// A conditional write whose condition did not hold.
struct ConditionFailed {
    /// Whether DynamoDB returned the item as it was (so the item exists).
    old_item_present: bool,
}

/// DynamoDB's table naming rules: 3-255 characters of `a-z A-Z 0-9 _ . -`.
fn validate_table_name(name: &str) -> Result<()> {
    let reason = if name.len() < 3 {
        Some("it is shorter than 3 characters")
    } else if name.len() > 255 {
        Some("it is longer than 255 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTableName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What a CreateTable call of the lease table came to.
enum Created {
    /// Ours, and the answer already shows it usable.
    Active(Box<TableDescription>),
    /// Ours, still being created.
    Creating,
    /// Another worker's CreateTable came first: it sets the table up.
    ByAnother,
}

/// Whether the table accepts reads and writes.
fn is_active(description: &TableDescription) -> bool {
    matches!(
        description.table_status(),
        Some(TableStatus::Active | TableStatus::Updating)
    )
}

/// Fails with `NotALeaseTable` unless the key schema is exactly HASH `pk` of type S.
fn check_key_schema(table: &str, description: &TableDescription) -> Result<()> {
    let type_of = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .find(|definition| definition.attribute_name() == name)
            .map(|definition| definition.attribute_type().as_str().to_owned())
    };
    let keys: Vec<(String, String, Option<String>)> = description
        .key_schema()
        .iter()
        .map(|key| {
            (
                key.key_type().as_str().to_owned(),
                key.attribute_name().to_owned(),
                type_of(key.attribute_name()),
            )
        })
        .collect();
    let expected = [(
        KeyType::Hash.as_str().to_owned(),
        attr::PK.to_owned(),
        Some(ScalarAttributeType::S.as_str().to_owned()),
    )];
    if keys == expected {
        return Ok(());
    }
    let found: Vec<String> = keys
        .iter()
        .map(|(key_type, name, attribute_type)| {
            format!(
                "{key_type} {name:?} ({})",
                attribute_type.as_deref().unwrap_or("type unknown")
            )
        })
        .collect();
    Err(Error::NotALeaseTable {
        table: table.to_owned(),
        found: format!(
            "key schema is [{}], expected [HASH \"pk\" (S)]",
            found.join(", ")
        ),
    })
}

/// The expression attribute names used in `expressions`: every `#name` maps to `name`.
/// DynamoDB rejects names that no expression uses, so they are collected, not listed.
fn names_in(expressions: &[&str]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for expression in expressions {
        for (start, _) in expression.match_indices('#') {
            let name: String = expression[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(format!("#{name}"), name);
        }
    }
    names
}

fn to_values(values: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

fn lease_pk(key: &LeaseKey) -> AttributeValue {
    s(&format!("lease|{}|{}", key.stream, key.shard_id))
}

fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn unix_millis(time: SystemTime) -> u64 {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn millis(time: SystemTime) -> AttributeValue {
    number(unix_millis(time))
}

/// The membership item as the store keeps it (for sizing: the store itself only ever
/// writes it attribute by attribute).
pub(crate) fn encode_membership(membership: &Membership) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), s(MEMBERSHIP_PK)),
        (attr::KIND.to_owned(), s(KIND_MEMBERSHIP)),
        (
            attr::LEASES_VERSION.to_owned(),
            number(membership.leases_version),
        ),
    ]);
    for worker in &membership.workers {
        let id = &worker.worker_id;
        item.insert(
            format!("{}{id}", attr::HEARTBEAT_PREFIX),
            number(worker.heartbeat),
        );
        item.insert(
            format!("{}{id}", attr::UPDATED_PREFIX),
            millis(worker.updated_at),
        );
        item.insert(
            format!("{}{id}", attr::EXPIRES_PREFIX),
            number(unix_secs(worker.expires_at)),
        );
    }
    item
}

pub(crate) fn encode_lease(lease: &Lease) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), lease_pk(&lease.key)),
        (attr::KIND.to_owned(), s(KIND_LEASE)),
        (attr::STREAM.to_owned(), s(&lease.key.stream)),
        (attr::SHARD_ID.to_owned(), s(&lease.key.shard_id)),
        (attr::EPOCH.to_owned(), number(lease.epoch)),
        (attr::CHECKPOINT.to_owned(), s(&lease.checkpoint.encode())),
        (
            attr::PARENTS.to_owned(),
            AttributeValue::L(lease.parent_shard_ids.iter().map(|id| s(id)).collect()),
        ),
        (
            attr::OWNER_SWITCHES.to_owned(),
            number(lease.owner_switches_since_checkpoint),
        ),
        (attr::CREATED_AT.to_owned(), millis(lease.created_at)),
        (attr::UPDATED_AT.to_owned(), millis(lease.updated_at)),
    ]);
    let optional = [
        (attr::OWNER, lease.owner.clone()),
        (attr::HANDOFF_TO, lease.handoff_to.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            item.insert(name.to_owned(), AttributeValue::S(value));
        }
    }
    item
}

/// Reads typed attributes out of an item, naming the table, item and attribute on failure.
struct ItemReader<'a> {
    table: &'a str,
    item: &'a Item,
}

impl ItemReader<'_> {
    fn corrupt(&self, attribute: &'static str, problem: impl Into<String>) -> Error {
        let item = match self.item.get(attr::PK) {
            Some(AttributeValue::S(pk)) => pk.clone(),
            Some(other) => format!("{other:?}"),
            None => "(no pk)".to_owned(),
        };
        Error::CorruptItem {
            table: self.table.to_owned(),
            item,
            attribute,
            problem: problem.into(),
        }
    }

    fn optional_string(&self, name: &'static str) -> Result<Option<String>> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.corrupt(name, format!("is not a string: {other:?}"))),
        }
    }

    fn string(&self, name: &'static str) -> Result<String> {
        self.optional_string(name)?
            .ok_or_else(|| self.corrupt(name, "is missing"))
    }

    fn number(&self, name: &'static str) -> Result<u64> {
        match self.item.get(name) {
            Some(AttributeValue::N(text)) => text.parse().map_err(|_| {
                self.corrupt(name, format!("is not a non-negative integer: {text:?}"))
            }),
            Some(other) => Err(self.corrupt(name, format!("is not a number: {other:?}"))),
            None => Err(self.corrupt(name, "is missing")),
        }
    }

    fn checkpoint(&self, name: &'static str) -> Result<Checkpoint> {
        Checkpoint::decode(&self.string(name)?).map_err(|err| self.corrupt(name, err.to_string()))
    }

    fn string_list(&self, name: &'static str) -> Result<Vec<String>> {
        match self.item.get(name) {
            None => Ok(Vec::new()),
            Some(AttributeValue::L(values)) => values
                .iter()
                .map(|value| match value {
                    AttributeValue::S(text) => Ok(text.clone()),
                    other => {
                        Err(self.corrupt(name, format!("has a non-string element: {other:?}")))
                    }
                })
                .collect(),
            Some(other) => Err(self.corrupt(name, format!("is not a list: {other:?}"))),
        }
    }
}

/// An SDK error shown with its whole chain of causes (for a service error: its code and
/// message; for a transport failure: what failed) instead of the SDK's terse top line
/// ("service error"). The SDK error itself stays available as the source.
#[derive(Debug)]
struct SdkFailure {
    context: String,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SdkFailure {
    fn new<E>(error: SdkError<E>) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut context = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(err) = cause {
            context.push_str(": ");
            context.push_str(&err.to_string());
            cause = err.source();
        }
        Self {
            context,
            error: Box::new(error),
        }
    }
}

impl fmt::Display for SdkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for SdkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store for encoding tests: no request is ever sent.
    fn offline_store() -> DynamoDbLeaseStore {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .build();
        DynamoDbLeaseStore::new(Client::from_conf(config), "t-test").unwrap()
    }

    #[test]
    fn cancellation_codes_come_from_the_reasons_or_else_the_message() {
        let reasons = [
            CancellationReason::builder().code("None").build(),
            CancellationReason::builder()
                .code("ConditionalCheckFailed")
                .build(),
        ];
        assert_eq!(
            cancellation_codes(&reasons, None),
            ["None", "ConditionalCheckFailed"]
        );
        let message = "Transaction cancelled, please refer cancellation reasons for specific \
                       reasons [None, ConditionalCheckFailed]";
        assert_eq!(
            cancellation_codes(&[], Some(message)),
            ["None", "ConditionalCheckFailed"]
        );
        assert!(cancellation_codes(&[], Some("no list")).is_empty());
    }

    #[test]
    fn table_names_follow_dynamodb_rules() {
        for good in ["abc", "my-app.leases_1", &"a".repeat(255)] {
            assert!(validate_table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "ab", "has space", "slash/", "ünï", &"a".repeat(256)] {
            let err = validate_table_name(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidTableName { .. }), "{bad}");
        }
    }

    #[test]
    fn names_are_collected_from_expressions() {
        let names = names_in(&[
            "SET #owner = :o, #epoch = #epoch + :one",
            "attribute_exists(#pk)",
        ]);
        let mut keys: Vec<_> = names.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["#epoch", "#owner", "#pk"]);
        assert_eq!(names["#owner"], "owner");
    }

    #[test]
    fn lease_items_round_trip() {
        let mut lease = Lease::new(
            LeaseKey::new("arn:stream", "shard-1"),
            Checkpoint::TrimHorizon,
            vec!["p1".into(), "p2".into()],
        );
        lease.owner = Some("w1".into());
        lease.epoch = 7;
        lease.handoff_to = Some("w2".into());
        lease.created_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        lease.updated_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_456);
        let store = offline_store();
        assert_eq!(store.decode_lease(&encode_lease(&lease)).unwrap(), lease);
    }

    #[test]
    fn scans_skip_an_item_that_does_not_decode_and_keep_the_rest() {
        let store = offline_store();
        let good = Lease::new(LeaseKey::new("s", "good"), Checkpoint::Latest, vec![]);
        let mut bad = encode_lease(&Lease::new(
            LeaseKey::new("s", "bad"),
            Checkpoint::Latest,
            vec![],
        ));
        // As a newer version might write it: a field in a shape we do not know.
        bad.insert(attr::EPOCH.into(), AttributeValue::S("v2:7".into()));
        let membership = encode_membership(&Membership {
            leases_version: 3,
            workers: vec![WorkerRecord {
                worker_id: "w#1".into(),
                heartbeat: 9,
                updated_at: UNIX_EPOCH + Duration::from_millis(1_000),
                expires_at: UNIX_EPOCH + Duration::from_secs(60),
            }],
        });
        let (leases, read) = store.decode_scan(&[bad, encode_lease(&good), membership]);
        let keys: Vec<&LeaseKey> = leases.iter().map(|l| &l.key).collect();
        assert_eq!(keys, [&good.key]);
        assert_eq!(read.leases_version, 3);
        assert_eq!(read.workers.len(), 1);
        assert_eq!(read.workers[0].heartbeat, 9);
    }

    #[test]
    fn corrupt_items_name_table_item_and_attribute() {
        let store = offline_store();
        let mut item = encode_lease(&Lease::new(
            LeaseKey::new("s", "sh"),
            Checkpoint::Latest,
            vec![],
        ));
        item.insert(attr::EPOCH.into(), AttributeValue::S("seven".into()));
        let msg = store.decode_lease(&item).unwrap_err().to_string();
        assert!(
            msg.contains("t-test") && msg.contains("lease|s|sh") && msg.contains("epoch"),
            "{msg}"
        );

        item.insert(attr::EPOCH.into(), number(1));
        item.insert(attr::CHECKPOINT.into(), s("SOMEWHERE"));
        let msg = store.decode_lease(&item).unwrap_err().to_string();
        assert!(
            msg.contains("checkpoint") && msg.contains("SOMEWHERE"),
            "{msg}"
        );

        item.remove(attr::CHECKPOINT);
        let msg = store.decode_lease(&item).unwrap_err().to_string();
        assert!(msg.contains("\"checkpoint\" is missing"), "{msg}");
    }
}
