//! A lease store in process memory, for simulations and unit tests.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey, Membership, Ownership, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;

/// A [`LeaseStore`] held in memory, with the same semantics as the DynamoDB store (the
/// conformance suite runs against both). Clones of an `Arc` of it share one "table".
#[derive(Debug, Default)]
pub struct InMemoryLeaseStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    leases: BTreeMap<LeaseKey, Lease>,
    workers: BTreeMap<String, WorkerRecord>,
    leases_version: u64,
}

impl InMemoryLeaseStore {
    /// How errors name this store's "table".
    const TABLE: &'static str = "(in memory)";

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
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
        let lease = lease.clone();
        if lease.checkpoint == Checkpoint::ShardEnd || lease.owner.is_none() {
            state.leases_version += 1;
        }
        Ok(lease)
    }

    /// Applies `update` to the lease if it still has the owner and epoch the caller saw.
    fn update_unchanged(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        update: impl FnOnce(&mut Lease),
    ) -> Result<Lease> {
        let mut state = self.state();
        let Some(lease) = state.leases.get_mut(key) else {
            return Err(Error::LeaseNotFound { key: key.clone() });
        };
        if lease.owner.as_deref() != seen_owner || lease.epoch != seen_epoch {
            return Err(Error::LeaseChanged {
                key: key.clone(),
                seen_owner: seen_owner.map(str::to_owned),
                seen_epoch,
            });
        }
        update(lease);
        lease.updated_at = SystemTime::now();
        let lease = lease.clone();
        state.leases_version += 1;
        Ok(lease)
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
        state.leases_version += 1;
        Ok(())
    }

    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        self.update_unchanged(key, seen_owner, seen_epoch, |lease| {
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
            lease.checkpoint = update.read_position.clone();
            lease.owner_switches_since_checkpoint = 0;
            for (name, checkpoint) in &update.pipelines {
                lease.pipelines.insert(name.clone(), checkpoint.clone());
            }
            if let Some(running) = &update.running {
                lease.owner_pipelines = running.clone();
            }
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
        self.update_unchanged(key, seen_owner, seen_epoch, |lease| {
            lease.checkpoint = checkpoint.clone();
            lease.owner = None;
            lease.handoff_to = None;
            lease.epoch += 1;
            lease.owner_switches_since_checkpoint = 0;
        })
    }

    async fn request_handoff(
        &self,
        key: &LeaseKey,
        current: &Ownership,
        requester: &str,
    ) -> Result<Lease> {
        self.update_unchanged(key, Some(&current.owner), current.epoch, |lease| {
            lease.handoff_to = Some(requester.to_owned());
        })
    }

    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        let mut state = self.state();
        if state.leases.remove(key).is_some() {
            state.leases_version += 1;
        }
        Ok(())
    }

    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let now = SystemTime::now();
        let mut state = self.state();
        if !state.workers.contains_key(worker_id) {
            // DynamoDB refuses to grow the membership item past its size limit.
            let mut joined = Membership {
                leases_version: state.leases_version,
                workers: state.workers.values().cloned().collect(),
            };
            joined.workers.push(WorkerRecord {
                worker_id: worker_id.to_owned(),
                heartbeat: 1,
                updated_at: now,
                expires_at: now + ttl,
            });
            if crate::billing::membership_item_size(&joined) > crate::billing::MAX_ITEM_BYTES {
                return Err(Error::MembershipFull {
                    table: Self::TABLE.to_owned(),
                    worker_id: worker_id.to_owned(),
                    limit_bytes: crate::billing::MAX_ITEM_BYTES,
                });
            }
        }
        let record = state
            .workers
            .entry(worker_id.to_owned())
            .or_insert_with(|| WorkerRecord {
                worker_id: worker_id.to_owned(),
                heartbeat: 0,
                updated_at: now,
                expires_at: now,
            });
        record.heartbeat += 1;
        record.updated_at = now;
        record.expires_at = now + ttl;
        Ok(record.clone())
    }

    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        let state = self.state();
        Ok((
            state.leases.values().cloned().collect(),
            state.workers.values().cloned().collect(),
        ))
    }

    async fn membership(&self) -> Result<Membership> {
        let state = self.state();
        Ok(Membership {
            leases_version: state.leases_version,
            workers: state.workers.values().cloned().collect(),
        })
    }

    async fn bump_leases_version(&self) -> Result<u64> {
        let mut state = self.state();
        state.leases_version += 1;
        Ok(state.leases_version)
    }

    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.state().workers.remove(worker_id);
        Ok(())
    }
}
