//! Telling the leader that ownership changed, coalesced: one leases-version bump per
//! `scan_interval` at most, whatever the number of writes.
//!
//! Lease writes do not bump the version themselves (see [`LeaseStore`]). A worker's shard
//! consumers, snapshot segments and shard sync write through an [`AnnouncingStore`], which
//! marks a change after each ownership-changing write that succeeded (create, take,
//! release, handoff request, `SHARD_END`, delete); one task per worker ([`bump_changes`])
//! bumps the version when something changed, then waits a `scan_interval` before it bumps
//! again. So a shard sync creating 2,000 leases, or a worker releasing 100 leases at
//! shutdown, costs one write to the coordination item, and no worker writes it more than
//! once per scan interval. The leader's own writes (it knows what it changed) and
//! checkpoints (ownership does not change) do not count.
//!
//! The decorator also remembers the child leases this worker created at a shard's end, so
//! that it can continue into them at once instead of waiting for the leader.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dynamodb_streams_leases::{
    Checkpoint, Lease, LeaseKey, LeaseStore, Ownership, PipelineCheckpoints, Result,
};
use tokio::sync::Notify;

/// The child leases remembered at most (the oldest are forgotten first).
const CREATED_KEPT: usize = 1_000;

/// Changes waiting for a bump, and the child leases this worker created.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    dirty: AtomicBool,
    wake: Notify,
    created: Mutex<Vec<Lease>>,
}

impl Changes {
    /// Marks a change: the next bump is due.
    pub(crate) fn mark(&self) {
        self.dirty.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Takes the mark (true if there was a change since the last take).
    fn take(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }

    /// The child leases this worker created whose parents include `parent`, forgotten
    /// once returned.
    pub(crate) fn take_children_of(&self, parent: &LeaseKey) -> Vec<Lease> {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        let (children, rest): (Vec<Lease>, Vec<Lease>) = created.drain(..).partition(|l| {
            l.key.stream == parent.stream && l.parent_shard_ids.contains(&parent.shard_id)
        });
        *created = rest;
        children
    }

    fn created(&self, lease: &Lease) {
        if lease.parent_shard_ids.is_empty() {
            return;
        }
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        if created.len() >= CREATED_KEPT {
            created.remove(0);
        }
        created.push(lease.clone());
    }
}

/// Bumps the leases version when changes were marked, at most once per `interval`, until
/// the task is dropped. A failed bump is tried again at the next interval.
pub(crate) async fn bump_changes(
    store: Arc<dyn LeaseStore>,
    changes: Arc<Changes>,
    interval: Duration,
) {
    loop {
        if !changes.take() {
            changes.wake.notified().await;
            continue;
        }
        flush_once(store.as_ref(), &changes).await;
        tokio::time::sleep(interval).await;
    }
}

/// Bumps the version now if a change is marked (a stopping worker's last changes).
pub(crate) async fn flush(store: &dyn LeaseStore, changes: &Changes) {
    if changes.take() {
        flush_once(store, changes).await;
    }
}

async fn flush_once(store: &dyn LeaseStore, changes: &Changes) {
    if let Err(error) = store.bump_leases_version().await {
        tracing::warn!(%error, "leases version not bumped; trying again later");
        changes.dirty.store(true, Ordering::Release);
    }
}

/// A lease store that marks [`Changes`] after every ownership-changing write that
/// succeeded, and otherwise passes every call through.
pub(crate) struct AnnouncingStore {
    inner: Arc<dyn LeaseStore>,
    changes: Arc<Changes>,
}

impl AnnouncingStore {
    pub(crate) fn new(inner: Arc<dyn LeaseStore>) -> Self {
        Self {
            inner,
            changes: Arc::default(),
        }
    }

    /// The store without announcements: for the leader's own writes.
    pub(crate) fn inner(&self) -> &Arc<dyn LeaseStore> {
        &self.inner
    }

    pub(crate) fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    fn announced<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_ok() {
            self.changes.mark();
        }
        result
    }

    /// A checkpoint write announces a change when it ends the shard (`SHARD_END`).
    fn announced_if_end<T>(&self, position: &Checkpoint, result: Result<T>) -> Result<T> {
        if *position == Checkpoint::ShardEnd {
            return self.announced(result);
        }
        result
    }
}

impl fmt::Debug for AnnouncingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnouncingStore")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

// The writes that change ownership mark a change; everything else is the wrapped store's.
#[async_trait]
impl dynamodb_streams_leases::StoreWrapper for AnnouncingStore {
    type Inner = dyn LeaseStore;

    fn wrapped(&self) -> &Self::Inner {
        &*self.inner
    }
    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        let created = self.announced(self.inner.create_lease(lease).await);
        if created.is_ok() {
            self.changes.created(lease);
        }
        created
    }
    async fn take_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        new_owner: &str,
    ) -> Result<Lease> {
        let taken = self
            .inner
            .take_lease(key, seen_owner, seen_epoch, new_owner)
            .await;
        self.announced(taken)
    }
    async fn checkpoint(&self, key: &LeaseKey, o: &Ownership, c: &Checkpoint) -> Result<Lease> {
        let written = self.inner.checkpoint(key, o, c).await;
        self.announced_if_end(c, written)
    }
    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease> {
        let written = self.inner.checkpoint_pipelines(key, o, update).await;
        self.announced_if_end(&update.read_position, written)
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
        let written = self
            .inner
            .checkpoint_pipeline_with_writes(key, ownership, pipeline, previous, update, writes)
            .await;
        self.announced_if_end(&update.read_position, written)
    }
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        ownership: &Ownership,
        previous: &Checkpoint,
        checkpoint: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        let written = self
            .inner
            .checkpoint_with_writes(key, ownership, previous, checkpoint, writes)
            .await;
        self.announced_if_end(checkpoint, written)
    }
    async fn release_lease(&self, key: &LeaseKey, o: &Ownership) -> Result<Lease> {
        self.announced(self.inner.release_lease(key, o).await)
    }
    // `reset_lease` is forwarded unmarked: it bumps the version itself (an operator's move).
    async fn request_handoff(&self, key: &LeaseKey, o: &Ownership, to: &str) -> Result<Lease> {
        self.announced(self.inner.request_handoff(key, o, to).await)
    }
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.announced(self.inner.delete_lease(key).await)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::InMemoryLeaseStore;

    fn lease(shard: &str, parents: &[&str]) -> Lease {
        Lease::new(
            LeaseKey::new("arn", shard),
            Checkpoint::TrimHorizon,
            parents.iter().map(|p| p.to_string()).collect(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn two_thousand_creations_bump_the_version_once_per_interval() {
        let inner: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
        let store = AnnouncingStore::new(inner.clone());
        let interval = Duration::from_secs(2);
        let bumper = tokio::spawn(bump_changes(
            inner.clone(),
            store.changes().clone(),
            interval,
        ));
        for i in 0..2_000 {
            store
                .create_lease(&lease(&i.to_string(), &[]))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let version = || async { inner.coordination().await.unwrap().leases_version };
        assert_eq!(version().await, 1, "one bump for 2,000 creations");
        // Changes within the interval wait for its end: one more bump, not one each.
        let key = LeaseKey::new("arn", "0");
        let taken = store.take_lease(&key, None, 0, "w").await.unwrap();
        store
            .release_lease(&key, &taken.ownership().unwrap())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(version().await, 1);
        tokio::time::sleep(interval).await;
        assert_eq!(version().await, 2);
        // Checkpoints do not change ownership: no bump.
        let taken = store.take_lease(&key, None, 2, "w").await.unwrap();
        tokio::time::sleep(interval * 2).await;
        assert_eq!(version().await, 3);
        let seq = Checkpoint::At(dynamodb_streams_leases::SequenceNumber::parse("7").unwrap());
        store
            .checkpoint(&key, &taken.ownership().unwrap(), &seq)
            .await
            .unwrap();
        tokio::time::sleep(interval * 2).await;
        assert_eq!(version().await, 3);
        bumper.abort();
    }

    #[tokio::test]
    async fn children_created_here_are_remembered_for_their_parent() {
        let store = AnnouncingStore::new(Arc::new(InMemoryLeaseStore::new()));
        store.create_lease(&lease("c1", &["p"])).await.unwrap();
        store.create_lease(&lease("c2", &["p", "q"])).await.unwrap();
        store.create_lease(&lease("other", &["x"])).await.unwrap();
        let children = store.changes().take_children_of(&LeaseKey::new("arn", "p"));
        let ids: Vec<&str> = children.iter().map(|l| l.key.shard_id.as_str()).collect();
        assert_eq!(ids, ["c1", "c2"]);
        assert!(
            store
                .changes()
                .take_children_of(&LeaseKey::new("arn", "p"))
                .is_empty()
        );
    }
}
