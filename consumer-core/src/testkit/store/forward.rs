//! Every [`LeaseStore`] call of an [`InstrumentedStore`]: counted, passed through the
//! test's link, forwarded to the inner store, billed and (for lease writes) told to the
//! observer. Its own module: the one list of the trait's calls, apart from the counters
//! (`super`), the price model (`super::cost`) and the vocabulary (`super::op`).

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use async_trait::async_trait;
use dynamodb_streams_leases::billing;
use dynamodb_streams_leases::{
    Checkpoint, Coordination, Lease, LeaseKey, LeaseStore, Membership, Notice, Ownership,
    PipelineCheckpoints, Result, WorkerRecord, membership_shard,
};

use super::cost::{COORDINATION_ITEM, Units, inbox_item, lease_item, membership_item};
use super::{InstrumentedStore, StoreOp};

#[async_trait]
impl<S: LeaseStore + ?Sized> dynamodb_streams_leases::StoreWrapper for InstrumentedStore<S> {
    type Inner = S;

    fn wrapped(&self) -> &Self::Inner {
        &self.inner
    }
    async fn ensure_table(&self) -> Result<()> {
        self.pass(StoreOp::EnsureTable).await?;
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>> {
        self.pass(StoreOp::ListLeases).await?;
        let leases = self.visible(self.inner.list_leases().await?);
        // A filtered Scan bills every item it reads (the coordination and membership
        // items too, a few KB); spread over every item, so not counted per item.
        let sizes = self.scanned_sizes(&leases);
        self.bill(billing::scan_read_units(sizes, true), 0, false);
        Ok(self.read(leases))
    }
    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        self.pass(StoreOp::GetLease).await?;
        let lease = self.inner.get_lease(key).await?;
        let size = lease.as_ref().map_or(0, billing::lease_item_size);
        self.bill_item(lease_item(key), billing::read_units(size, true), 0, false);
        Ok(lease)
    }
    async fn get_leases(&self, keys: &[LeaseKey]) -> Result<Vec<Lease>> {
        self.pass(StoreOp::GetLeases).await?;
        let leases = self.inner.get_leases(keys).await?;
        let sizes: HashMap<&LeaseKey, usize> = leases
            .iter()
            .map(|l| (&l.key, billing::lease_item_size(l)))
            .collect();
        // A BatchGetItem bills each key (a missing item its minimum).
        for key in keys {
            let size = sizes.get(key).copied().unwrap_or(0);
            self.bill_item(lease_item(key), billing::read_units(size, true), 0, false);
        }
        Ok(leases)
    }
    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        let sent = Units::Larger { sent: Some(lease) };
        let create = self.inner.create_lease(lease);
        self.lease_write(StoreOp::CreateLease, &lease.key, sent, create)
            .await
    }
    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        self.pass(StoreOp::TakeLease).await?;
        if self
            .losing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
        {
            return Err(dynamodb_streams_leases::Error::LeaseLost {
                key: key.clone(),
                owner: new_owner.to_owned(),
                epoch: seen_epoch,
            });
        }
        let take = self
            .inner
            .take_lease(key, seen_owner, seen_epoch, new_owner);
        self.applied(StoreOp::TakeLease, key, Units::LEASE, take)
            .await
    }
    async fn checkpoint(&self, key: &LeaseKey, o: &Ownership, c: &Checkpoint) -> Result<Lease> {
        let write = self.inner.checkpoint(key, o, c);
        self.lease_write(StoreOp::Checkpoint, key, Units::LEASE, write)
            .await
    }
    // Pipelines' checkpoints are counted (and billed) as checkpoints; removing a pipeline
    // (an operator's write) too.
    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease> {
        let write = self.inner.checkpoint_pipelines(key, o, update);
        self.lease_write(StoreOp::Checkpoint, key, Units::LEASE, write)
            .await
    }
    async fn remove_pipeline(
        &self,
        key: &LeaseKey,
        pipeline: &str,
        o: Option<&Ownership>,
    ) -> Result<Lease> {
        let write = self.inner.remove_pipeline(key, pipeline, o);
        self.lease_write(StoreOp::Checkpoint, key, Units::LEASE, write)
            .await
    }
    async fn release_lease(&self, key: &LeaseKey, o: &Ownership) -> Result<Lease> {
        let release = self.inner.release_lease(key, o);
        self.lease_write(StoreOp::ReleaseLease, key, Units::LEASE, release)
            .await
    }
    async fn reset_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        c: &Checkpoint,
    ) -> Result<Lease> {
        let reset = self.inner.reset_lease(key, seen_owner, seen_epoch, c);
        let result = self
            .lease_write(StoreOp::ResetLease, key, Units::LEASE, reset)
            .await;
        if result.is_ok() {
            // An operator's move bumps the leases version itself.
            self.bill_coordination_write(false);
        }
        result
    }
    async fn request_handoff(&self, key: &LeaseKey, o: &Ownership, to: &str) -> Result<Lease> {
        let request = self.inner.request_handoff(key, o, to);
        self.lease_write(StoreOp::RequestHandoff, key, Units::LEASE, request)
            .await
    }
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        let delete = self.inner.delete_lease(key);
        self.lease_write(StoreOp::DeleteLease, key, Units::LEASE, delete)
            .await
    }
    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        self.pass(StoreOp::Heartbeat).await?;
        let result = self.inner.heartbeat(worker_id, ttl).await;
        let record = result.as_ref().ok().cloned();
        self.bill_membership_write(worker_id, result.is_err(), |members| {
            if let Some(record) = record {
                members.insert(worker_id.to_owned(), record);
            }
        });
        result
    }
    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        self.pass(StoreOp::Snapshot).await?;
        let (leases, workers) = self.inner.snapshot().await?;
        let leases = self.visible(leases);
        let sizes = self.scanned_sizes(&leases);
        self.bill(billing::scan_read_units(sizes, true), 0, false);
        Ok((self.read(leases), self.read(workers)))
    }
    async fn membership(&self) -> Result<Membership> {
        self.pass(StoreOp::Membership).await?;
        let membership = self.inner.membership().await?;
        let sizes: Vec<(String, usize)> = {
            let mut mirror = self.mirror();
            mirror.members.clear();
            for worker in &membership.workers {
                mirror
                    .members
                    .entry(membership_shard(&worker.worker_id))
                    .or_default()
                    .insert(worker.worker_id.clone(), worker.clone());
            }
            mirror.coordination = membership.coordination.clone();
            std::iter::once((
                COORDINATION_ITEM.to_owned(),
                billing::coordination_item_size(&membership.coordination),
            ))
            .chain(
                membership
                    .coordination
                    .shards
                    .iter()
                    .map(|shard| (membership_item(*shard), mirror.membership_size(*shard))),
            )
            .collect()
        };
        // One eventually consistent BatchGetItem: each item rounded on its own.
        for (item, size) in sizes {
            self.bill_item(item, billing::read_units(size, false), 0, false);
        }
        Ok(membership)
    }
    async fn coordination(&self) -> Result<Coordination> {
        self.pass(StoreOp::Coordination).await?;
        let coordination = self.inner.coordination().await?;
        let size = billing::coordination_item_size(&coordination);
        self.mirror().coordination = coordination.clone();
        self.bill_item(
            COORDINATION_ITEM.to_owned(),
            billing::read_units(size, false),
            0,
            false,
        );
        Ok(coordination)
    }
    async fn bump_leases_version(&self) -> Result<u64> {
        self.pass(StoreOp::BumpLeasesVersion).await?;
        let version = self.inner.bump_leases_version().await?;
        self.mirror().coordination.leases_version = version;
        self.bill_coordination_write(false);
        Ok(version)
    }
    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.pass(StoreOp::DeleteWorker).await?;
        let result = self.inner.delete_worker(worker_id).await;
        self.bill_membership_write(worker_id, false, |members| {
            members.remove(worker_id);
        });
        self.forget_inbox(worker_id);
        result
    }
    async fn remove_worker(&self, worker_id: &str, seen: u64) -> Result<bool> {
        self.pass(StoreOp::RemoveWorker).await?;
        let removed = self.inner.remove_worker(worker_id, seen).await?;
        self.bill_membership_write(worker_id, !removed, |members| {
            if removed {
                members.remove(worker_id);
            }
        });
        if removed {
            self.forget_inbox(worker_id);
        }
        Ok(removed)
    }
    async fn claim_leadership(&self, worker_id: &str, replacing: Option<&str>) -> Result<bool> {
        self.pass(StoreOp::Leadership).await?;
        let claimed = self.inner.claim_leadership(worker_id, replacing).await?;
        self.bill_coordination_write(!claimed);
        Ok(claimed)
    }
    async fn renew_leadership(&self, worker_id: &str, workers: u64) -> Result<bool> {
        self.pass(StoreOp::Leadership).await?;
        let renewed = self.inner.renew_leadership(worker_id, workers).await?;
        self.bill_coordination_write(!renewed);
        Ok(renewed)
    }
    async fn resign_leadership(&self, worker_id: &str) -> Result<()> {
        self.pass(StoreOp::Leadership).await?;
        self.inner.resign_leadership(worker_id).await?;
        self.bill_coordination_write(false);
        Ok(())
    }
    async fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()> {
        self.pass(StoreOp::Notify).await?;
        self.inner.notify(worker_id, keys).await?;
        let size = {
            let mut mirror = self.mirror();
            mirror
                .inboxes
                .entry(worker_id.to_owned())
                .or_default()
                .extend(keys.iter().map(|key| Notice {
                    // A token as long as the DynamoDB store's (16 hex digits).
                    token: "0".repeat(16),
                    key: key.clone(),
                }));
            mirror.inbox_size(worker_id)
        };
        self.bill_item(
            inbox_item(worker_id),
            0.0,
            billing::write_units(size),
            false,
        );
        Ok(())
    }
    async fn notices(&self, worker_id: &str) -> Result<Vec<Notice>> {
        self.pass(StoreOp::Notices).await?;
        let notices = self.inner.notices(worker_id).await?;
        let size = {
            let mut mirror = self.mirror();
            if notices.is_empty() {
                mirror.inboxes.remove(worker_id);
            } else {
                mirror.inboxes.insert(worker_id.to_owned(), notices.clone());
            }
            mirror.inbox_size(worker_id)
        };
        self.bill_item(
            inbox_item(worker_id),
            billing::read_units(size, false),
            0,
            false,
        );
        Ok(notices)
    }
    async fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()> {
        self.pass(StoreOp::ClearNotices).await?;
        self.inner.clear_notices(worker_id, notices).await?;
        let size = {
            let mut mirror = self.mirror();
            let before = mirror.inbox_size(worker_id);
            if let Some(inbox) = mirror.inboxes.get_mut(worker_id) {
                inbox.retain(|n| !notices.contains(n));
            }
            before
        };
        self.bill_item(
            inbox_item(worker_id),
            0.0,
            billing::write_units(size),
            false,
        );
        Ok(())
    }
    // Transactions are counted as checkpoints; billed for the lease item only (their other
    // writes go to the user's tables, not the lease table).
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        previous: &Checkpoint,
        c: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let commit = self
            .inner
            .checkpoint_with_writes(key, o, previous, c, writes);
        self.lease_write(StoreOp::Checkpoint, key, Units::Transaction, commit)
            .await
    }
    async fn checkpoint_pipeline_with_writes(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        pipeline: &str,
        previous: Option<&Checkpoint>,
        update: &PipelineCheckpoints,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let commit = self
            .inner
            .checkpoint_pipeline_with_writes(key, o, pipeline, previous, update, writes);
        self.lease_write(StoreOp::Checkpoint, key, Units::Transaction, commit)
            .await
    }
}
