//! The lease store in a DynamoDB table.
//!
//! One table per application, string partition key `pk`, on-demand billing. Four kinds of
//! items share it (see [`item`] for their attributes): leases, [`crate::MEMBERSHIP_SHARDS`]
//! membership items (heartbeats, each written by at most [`crate::MEMBERS_PER_SHARD`]
//! workers), one coordination item (leases version, leader) and one inbox per worker.
//! Writes never bump the leases version by themselves: callers do, coalesced.
//!
//! Every ownership-dependent write is one conditional `UpdateItem`, with the same
//! semantics as [`crate::InMemoryLeaseStore`] (the conformance suite checks both).
//! Clients, error classes, Scan paging and table waiting come from [`crate::aws`]; the
//! store does not retry (its callers' retry policies do).
//!
//! The parts: [`item`] is the codec (item layout, attribute names, value helpers),
//! [`table`] creates and checks the table, [`update`] is the conditional write of a lease
//! (the conditions and the checkpoint expressions), [`transact`] commits checkpoints with
//! the user's writes in one transaction, [`membership`] holds the requests on the items
//! that are not leases, [`errors`] turns SDK answers into [`Error`]s, [`store`] is the
//! store itself (client, table, settings, the scan of every lease), below the files that
//! add its requests; this file holds its lease requests (the [`LeaseStore`] impl).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};

use crate::aws::{self, ErrorClass};
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey, Ownership};
use crate::membership::{Coordination, Membership, Notice, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;

mod errors;
pub(crate) mod item;
mod membership;
mod store;
mod table;
mod transact;
mod update;

pub use store::DynamoDbLeaseStore;

use item::{
    Item, attr, decode_lease, decode_leases, encode_lease, lease_pk, names_in, number,
    pipeline_attribute, s,
};
use table::LeaseTable;
use transact::{CheckpointUpdate, Slot};
use update::{
    CHECKPOINT_UPDATE, OWNED_CONDITION, Seen, borrowed, checkpoint_values, owned, pipeline_update,
};

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
        let items = self.scan_leases().await?;
        Ok(decode_leases(&self.table, &items))
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
            Ok(_) => Ok(()),
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
        self.update_unchanged(
            "UpdateItem (take)",
            key,
            Seen {
                owner: seen_owner,
                epoch: seen_epoch,
                no_handoff: false,
            },
            "SET #owner = :new_owner, #epoch = #epoch + :one, \
             #owner_switches = #owner_switches + :one, #updated_at = :now REMOVE #handoff_to",
            vec![(":new_owner", s(new_owner)), (":one", number(1))],
        )
        .await
    }

    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        self.update_owned(
            "UpdateItem (checkpoint)",
            key,
            ownership,
            CHECKPOINT_UPDATE,
            checkpoint_values(checkpoint),
        )
        .await
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
        self.update_owned(
            "UpdateItem (release)",
            key,
            ownership,
            "SET #epoch = #epoch + :one, #updated_at = :now REMOVE #owner, #handoff_to",
            vec![(":one", number(1))],
        )
        .await
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
                Seen {
                    owner: seen_owner,
                    epoch: seen_epoch,
                    no_handoff: false,
                },
                &format!("{CHECKPOINT_UPDATE}, #epoch = #epoch + :one REMOVE #owner, #handoff_to"),
                values,
            )
            .await?;
        // An operator's move, made outside any worker: it bumps the version itself.
        if let Err(error) = self.bump_leases_version().await {
            tracing::warn!(lease = %key, %error, "leases version not bumped after a reset; the audit scan will catch it");
        }
        Ok(moved)
    }

    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease> {
        self.update_unchanged(
            "UpdateItem (request handoff)",
            key,
            Seen {
                owner: Some(&current.owner),
                epoch: current.epoch,
                no_handoff: true,
            },
            "SET #handoff_to = :requester, #updated_at = :now",
            vec![(":requester", s(requester))],
        )
        .await
    }

    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key(attr::PK, lease_pk(key))
            .send()
            .await
            .map_err(|err| self.target().sdk_error("DeleteItem", Some(key), err))?;
        Ok(())
    }

    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let members = self.members();
        if members.has_joined(worker_id) {
            members.beat(worker_id, ttl).await
        } else {
            members.join(worker_id, ttl).await
        }
    }

    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        let members = self.members();
        let (items, membership) = tokio::try_join!(self.scan_leases(), members.read())?;
        Ok((decode_leases(&self.table, &items), membership.workers))
    }

    async fn membership(&self) -> Result<Membership> {
        self.members().read().await
    }

    async fn coordination(&self) -> Result<Coordination> {
        self.members().coordination().await
    }

    async fn bump_leases_version(&self) -> Result<u64> {
        self.members().bump_leases_version().await
    }

    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.members().remove(worker_id, None).await?;
        Ok(())
    }

    async fn remove_worker(&self, worker_id: &str, seen: u64) -> Result<bool> {
        self.members().remove(worker_id, Some(seen)).await
    }

    async fn claim_leadership(&self, worker_id: &str, replacing: Option<&str>) -> Result<bool> {
        self.members().lead(worker_id, Some(replacing), None).await
    }

    async fn renew_leadership(&self, worker_id: &str, workers: u64) -> Result<bool> {
        self.members().lead(worker_id, None, Some(workers)).await
    }

    async fn resign_leadership(&self, worker_id: &str) -> Result<()> {
        self.members().resign(worker_id).await
    }

    async fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()> {
        self.members().notify(worker_id, keys).await
    }

    async fn notices(&self, worker_id: &str) -> Result<Vec<Notice>> {
        self.members().notices(worker_id).await
    }

    async fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()> {
        self.members().clear_notices(worker_id, notices).await
    }

    async fn get_leases(&self, keys: &[LeaseKey]) -> Result<Vec<Lease>> {
        let requested = keys
            .iter()
            .map(|key| Item::from([(attr::PK.to_owned(), lease_pk(key))]))
            .collect();
        let got = aws::batch_get_all(&self.client, &self.table, requested, true, None)
            .await
            .map_err(|err| self.target().sdk_error("BatchGetItem (leases)", None, err))?;
        if got.unprocessed > 0 {
            return Err(self
                .members()
                .unprocessed("BatchGetItem (leases)", got.unprocessed));
        }
        got.items
            .iter()
            .map(|item| decode_lease(&self.table, item))
            .collect()
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
