//! A lease store in process memory, for simulations and unit tests.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::item_tables::{Item, ItemTables};
use crate::lease::{Lease, LeaseKey, Ownership};
use crate::membership::{
    Coordination, LeaderRecord, MEMBERS_PER_SHARD, Membership, Notice, WorkerRecord,
    membership_shard,
};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;

/// Which checkpoint of a lease a transaction is conditional on and moves, and the value
/// it must still hold (`None`: none for the pipeline yet).
enum Slot<'a> {
    Lease(&'a Checkpoint),
    Pipeline(&'a str, Option<&'a Checkpoint>),
}

/// A [`LeaseStore`] held in memory, with the same semantics as the DynamoDB store (the
/// conformance suite runs against both). Clones of an `Arc` of it share one "table".
#[derive(Debug, Default)]
pub struct InMemoryLeaseStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<LeaseKey, Lease>,
    /// The membership items: per shard, its workers by id.
    shards: BTreeMap<u16, BTreeMap<String, WorkerRecord>>,
    /// Every id that ever joined: a heartbeat of one whose entry is gone is refused.
    joined: HashSet<String>,
    coordination: Coordination,
    /// Per worker, its inbox: hints by token.
    inboxes: BTreeMap<String, BTreeMap<String, LeaseKey>>,
    /// The last hint token handed out.
    last_token: u64,
    /// The tables exactly-once transactions write to.
    tables: ItemTables,
}

impl State {
    fn workers(&self) -> Vec<WorkerRecord> {
        let mut workers: Vec<WorkerRecord> = self
            .shards
            .values()
            .flat_map(|s| s.values().cloned())
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        workers
    }

    fn shard_of(&mut self, worker_id: &str) -> &mut BTreeMap<String, WorkerRecord> {
        self.shards.entry(membership_shard(worker_id)).or_default()
    }
}

impl InMemoryLeaseStore {
    /// How errors name this store's "table".
    const TABLE: &'static str = "(in memory)";

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Calls `f` with every lease, under the store's lock and without copying them: for
    /// simulations that watch a large table often.
    pub fn for_each_lease(&self, mut f: impl FnMut(&Lease)) {
        for lease in self.state().leases.values() {
            f(lease);
        }
    }

    /// Creates an item table that [`checkpoint_with_writes`](LeaseStore::checkpoint_with_writes)
    /// can write to, with these key attributes (partition key first). Writes to a table not
    /// created are refused (`ResourceNotFound`), as DynamoDB does.
    pub fn create_item_table(&self, table: &str, key_attributes: &[&str]) {
        let names = key_attributes.iter().map(|&n| n.to_owned()).collect();
        self.state().tables.create(table, names);
    }

    /// The item with `key` in item table `table`, if both exist.
    pub fn item(&self, table: &str, key: &Item) -> Option<Item> {
        self.state().tables.get(table, key)
    }

    /// Every item of item table `table`, in key order.
    pub fn items(&self, table: &str) -> Vec<Item> {
        self.state().tables.items(table)
    }

    /// Commits `writes` and the checkpoint update of `slot` in one step, under the lock:
    /// DynamoDB's `TransactWriteItems` with the lease's condition (owner, epoch and the
    /// slot's stored checkpoint still `previous`). When the lease's condition fails, it is
    /// resolved as the DynamoDB store does: `checkpoint` already stored under `ownership`
    /// is an earlier attempt that committed (`Ok`, nothing applied again).
    fn transact(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        slot: Slot<'_>,
        checkpoint: &Checkpoint,
        writes: &[aws_sdk_dynamodb::types::TransactWriteItem],
        update: impl FnOnce(&mut Lease),
    ) -> Result<()> {
        let mut state = self.state();
        let Some(lease) = state.leases.get(key) else {
            return Err(Error::LeaseNotFound { key: key.clone() });
        };
        let owned = lease.is_owned_by(&ownership.owner) && lease.epoch == ownership.epoch;
        let (stored, previous) = match slot {
            Slot::Lease(previous) => (Some(lease.checkpoint.clone()), Some(previous)),
            Slot::Pipeline(name, previous) => (lease.pipelines.get(name).cloned(), previous),
        };
        if !owned {
            return Err(Error::LeaseLost {
                key: key.clone(),
                owner: ownership.owner.clone(),
                epoch: ownership.epoch,
            });
        }
        if stored.as_ref() != previous {
            if stored.as_ref() == Some(checkpoint) {
                return Ok(());
            }
            return Err(Error::CheckpointMoved {
                key: key.clone(),
                expected: previous.cloned().unwrap_or(Checkpoint::TrimHorizon),
                found: stored.unwrap_or(Checkpoint::TrimHorizon),
            });
        }
        let planned = state.tables.check(writes).map_err(|reasons| {
            let reasons = reasons
                .iter()
                .zip(writes)
                .enumerate()
                .filter_map(|(i, (reason, write))| {
                    let table = crate::transaction::table_of(write).unwrap_or("?");
                    reason
                        .as_ref()
                        .map(|r| format!("write {i} (table {table:?}): {r}"))
                })
                .collect::<Vec<_>>()
                .join("; ");
            Error::TransactionCanceled {
                table: Self::TABLE.into(),
                key: key.clone(),
                reasons,
            }
        })?;
        state.tables.apply(planned);
        if let Some(lease) = state.leases.get_mut(key) {
            update(lease);
            lease.owner_switches_since_checkpoint = 0;
            lease.updated_at = SystemTime::now();
        }
        Ok(())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written lease (every update
        // is a single assignment), so a poisoned lock is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `update` to the lease owned by `ownership`, or fails with `LeaseLost`.
    fn update_owned(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        update: impl FnOnce(&mut Lease),
    ) -> Result<Lease> {
        let mut state = self.state();
        let lease = state
            .leases
            .get_mut(key)
            .filter(|lease| lease.is_owned_by(&ownership.owner) && lease.epoch == ownership.epoch)
            .ok_or_else(|| Error::LeaseLost {
                key: key.clone(),
                owner: ownership.owner.clone(),
                epoch: ownership.epoch,
            })?;
        update(lease);
        lease.updated_at = SystemTime::now();
        Ok(lease.clone())
    }

    /// Applies `update` to the lease if it still has the owner and epoch the caller saw.
    /// With `no_handoff`, the lease must also have no pending handoff request.
    fn update_unchanged(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        no_handoff: bool,
        update: impl FnOnce(&mut Lease),
    ) -> Result<Lease> {
        let mut state = self.state();
        let Some(lease) = state.leases.get_mut(key) else {
            return Err(Error::LeaseNotFound { key: key.clone() });
        };
        if lease.owner.as_deref() != seen_owner
            || lease.epoch != seen_epoch
            || (no_handoff && lease.handoff_to.is_some())
        {
            return Err(Error::LeaseChanged {
                key: key.clone(),
                seen_owner: seen_owner.map(str::to_owned),
                seen_epoch,
            });
        }
        update(lease);
        lease.updated_at = SystemTime::now();
        Ok(lease.clone())
    }
}

#[async_trait]
impl LeaseStore for InMemoryLeaseStore {
    async fn ensure_table(&self) -> Result<()> {
        Ok(())
    }

    async fn list_leases(&self) -> Result<Vec<Lease>> {
        Ok(self.state().leases.values().cloned().collect())
    }

    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        Ok(self.state().leases.get(key).cloned())
    }

    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        let mut state = self.state();
        if state.leases.contains_key(&lease.key) {
            return Err(Error::AlreadyExists {
                key: lease.key.clone(),
            });
        }
        state.leases.insert(lease.key.clone(), lease.clone());
        Ok(())
    }

    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        self.update_unchanged(key, seen_owner, seen_epoch, false, |lease| {
            lease.owner = Some(new_owner.to_owned());
            lease.epoch += 1;
            lease.handoff_to = None;
            lease.owner_switches_since_checkpoint += 1;
        })
    }

    async fn checkpoint(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        self.update_owned(key, ownership, |lease| {
            lease.checkpoint = checkpoint.clone();
            lease.owner_switches_since_checkpoint = 0;
        })
    }

    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease> {
        self.update_owned(key, ownership, |lease| {
            apply_pipeline_checkpoints(lease, update);
            lease.owner_switches_since_checkpoint = 0;
        })
    }

    async fn remove_pipeline(
        &self,
        key: &LeaseKey,
        pipeline: &str,
        ownership: Option<&Ownership>,
    ) -> Result<Lease> {
        let remove = |lease: &mut Lease| {
            lease.pipelines.remove(pipeline);
            lease.owner_pipelines.retain(|name| name != pipeline);
        };
        if let Some(ownership) = ownership {
            return self.update_owned(key, ownership, remove);
        }
        let mut state = self.state();
        let lease = state
            .leases
            .get_mut(key)
            .ok_or_else(|| Error::LeaseNotFound { key: key.clone() })?;
        remove(lease);
        lease.updated_at = SystemTime::now();
        Ok(lease.clone())
    }

    async fn release_lease(&self, key: &LeaseKey, ownership: &Ownership) -> Result<Lease> {
        self.update_owned(key, ownership, |lease| {
            lease.owner = None;
            lease.handoff_to = None;
            lease.epoch += 1;
        })
    }

    async fn reset_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        checkpoint: &Checkpoint,
    ) -> Result<Lease> {
        let moved = self.update_unchanged(key, seen_owner, seen_epoch, false, |lease| {
            lease.checkpoint = checkpoint.clone();
            lease.owner = None;
            lease.handoff_to = None;
            lease.epoch += 1;
            lease.owner_switches_since_checkpoint = 0;
        })?;
        // An operator's move, made outside any worker: it bumps the version itself.
        self.bump_leases_version().await?;
        Ok(moved)
    }

    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease> {
        self.update_unchanged(key, Some(&current.owner), current.epoch, true, |lease| {
            lease.handoff_to = Some(requester.to_owned());
        })
    }

    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.state().leases.remove(key);
        Ok(())
    }

    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let now = SystemTime::now();
        let mut state = self.state();
        let joined = state.joined.contains(worker_id);
        let shard = state.shard_of(worker_id);
        let members = shard.len();
        let record = match shard.get_mut(worker_id) {
            Some(record) => record,
            None if joined => {
                return Err(Error::WorkerRemoved {
                    table: Self::TABLE.to_owned(),
                    worker_id: worker_id.to_owned(),
                });
            }
            None if members >= MEMBERS_PER_SHARD as usize => {
                return Err(Error::MembershipFull {
                    table: Self::TABLE.to_owned(),
                    worker_id: worker_id.to_owned(),
                    shard: membership_shard(worker_id),
                    limit: MEMBERS_PER_SHARD,
                });
            }
            None => shard
                .entry(worker_id.to_owned())
                .or_insert_with(|| WorkerRecord {
                    worker_id: worker_id.to_owned(),
                    heartbeat: 0,
                    updated_at: now,
                    expires_at: now,
                }),
        };
        record.heartbeat += 1;
        record.updated_at = now;
        record.expires_at = now + ttl;
        let record = record.clone();
        if state.joined.insert(worker_id.to_owned()) {
            let shards = &mut state.coordination.shards;
            let shard = membership_shard(worker_id);
            if let Err(at) = shards.binary_search(&shard) {
                shards.insert(at, shard);
            }
        }
        Ok(record)
    }

    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        let state = self.state();
        Ok((state.leases.values().cloned().collect(), state.workers()))
    }

    async fn membership(&self) -> Result<Membership> {
        let state = self.state();
        Ok(Membership {
            coordination: state.coordination.clone(),
            workers: state.workers(),
        })
    }

    async fn coordination(&self) -> Result<Coordination> {
        Ok(self.state().coordination.clone())
    }

    async fn bump_leases_version(&self) -> Result<u64> {
        let mut state = self.state();
        state.coordination.leases_version += 1;
        Ok(state.coordination.leases_version)
    }

    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        let mut state = self.state();
        state.shard_of(worker_id).remove(worker_id);
        state.inboxes.remove(worker_id);
        Ok(())
    }

    async fn remove_worker(&self, worker_id: &str, seen: u64) -> Result<bool> {
        let mut state = self.state();
        let shard = state.shard_of(worker_id);
        if shard.get(worker_id).is_none_or(|w| w.heartbeat != seen) {
            return Ok(false);
        }
        shard.remove(worker_id);
        state.inboxes.remove(worker_id);
        Ok(true)
    }

    async fn claim_leadership(&self, worker_id: &str, replacing: Option<&str>) -> Result<bool> {
        let mut state = self.state();
        let leader = &mut state.coordination.leader;
        let current = leader.as_ref().map(|l| l.worker_id.as_str());
        if current.is_some() && current != replacing && current != Some(worker_id) {
            return Ok(false);
        }
        let heartbeat = leader.as_ref().map_or(0, |l| l.heartbeat) + 1;
        *leader = Some(LeaderRecord {
            worker_id: worker_id.to_owned(),
            heartbeat,
        });
        Ok(true)
    }

    async fn renew_leadership(&self, worker_id: &str, workers: u64) -> Result<bool> {
        let mut state = self.state();
        let coordination = &mut state.coordination;
        match &mut coordination.leader {
            Some(leader) if leader.worker_id == worker_id => {
                leader.heartbeat += 1;
                coordination.workers = workers;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn resign_leadership(&self, worker_id: &str) -> Result<()> {
        let mut state = self.state();
        let leader = &mut state.coordination.leader;
        if leader.as_ref().is_some_and(|l| l.worker_id == worker_id) {
            *leader = None;
        }
        Ok(())
    }

    async fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()> {
        let mut state = self.state();
        for key in keys {
            state.last_token += 1;
            let token = state.last_token.to_string();
            state
                .inboxes
                .entry(worker_id.to_owned())
                .or_default()
                .insert(token, key.clone());
        }
        Ok(())
    }

    async fn notices(&self, worker_id: &str) -> Result<Vec<Notice>> {
        let state = self.state();
        Ok(state
            .inboxes
            .get(worker_id)
            .into_iter()
            .flatten()
            .map(|(token, key)| Notice {
                token: token.clone(),
                key: key.clone(),
            })
            .collect())
    }

    async fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()> {
        let mut state = self.state();
        if let Some(inbox) = state.inboxes.get_mut(worker_id) {
            for notice in notices {
                inbox.remove(&notice.token);
            }
            if inbox.is_empty() {
                state.inboxes.remove(worker_id);
            }
        }
        Ok(())
    }

    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        self.transact(
            key,
            ownership,
            Slot::Lease(previous),
            checkpoint,
            &writes,
            |lease| lease.checkpoint = checkpoint.clone(),
        )
    }

    async fn checkpoint_pipeline_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        pipeline: &str,
        previous: Option<&Checkpoint>,
        update: &PipelineCheckpoints,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let Some((_, checkpoint)) = update.pipelines.iter().find(|(name, _)| name == pipeline)
        else {
            return Err(Error::InvalidPipelineUpdate {
                key: key.clone(),
                pipeline: pipeline.to_owned(),
            });
        };
        self.transact(
            key,
            ownership,
            Slot::Pipeline(pipeline, previous),
            checkpoint,
            &writes,
            |lease| apply_pipeline_checkpoints(lease, update),
        )
    }

    async fn key_attribute_names(&self, table: &str) -> Result<Vec<String>> {
        self.state()
            .tables
            .key_attributes(table)
            .ok_or_else(|| Error::TransactionsUnsupported {
                store: format!(
                    "in memory, without item table {table:?} (create it with `create_item_table`)"
                ),
            })
    }
}

/// What a pipeline checkpoint update writes to the lease.
fn apply_pipeline_checkpoints(lease: &mut Lease, update: &PipelineCheckpoints) {
    lease.checkpoint = update.read_position.clone();
    for (name, checkpoint) in &update.pipelines {
        lease.pipelines.insert(name.clone(), checkpoint.clone());
    }
    if let Some(running) = &update.running {
        lease.owner_pipelines = running.clone();
    }
}
