//! [`InstrumentedStore`]: any lease store with every call counted and its link to the
//! store under the test's control. One decorator forwards the trait's methods, so the
//! simulation tests and the cost example do not each forward them by hand.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dynamodb_streams_leases::billing::{self, ReadUnits};
use dynamodb_streams_leases::{
    Checkpoint, Error, Lease, LeaseKey, LeaseStore, Membership, Ownership, PipelineCheckpoints,
    Result, WorkerRecord,
};
use tokio::sync::watch;

/// One lease-store operation, as [`InstrumentedStore`] counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // the names are the trait's methods
pub enum StoreOp {
    EnsureTable,
    ListLeases,
    GetLease,
    CreateLease,
    TakeLease,
    Checkpoint,
    ReleaseLease,
    ResetLease,
    RequestHandoff,
    DeleteLease,
    Heartbeat,
    Snapshot,
    DeleteWorker,
    Membership,
    BumpLeasesVersion,
}

impl StoreOp {
    /// A short readable name, for tables of counts.
    pub fn name(self) -> &'static str {
        match self {
            StoreOp::EnsureTable => "ensure table",
            StoreOp::ListLeases => "scan leases",
            StoreOp::GetLease => "get lease",
            StoreOp::CreateLease => "create lease",
            StoreOp::TakeLease => "take lease",
            StoreOp::Checkpoint => "checkpoint",
            StoreOp::ReleaseLease => "release lease",
            StoreOp::ResetLease => "reset lease",
            StoreOp::RequestHandoff => "request handoff",
            StoreOp::DeleteLease => "delete lease",
            StoreOp::Heartbeat => "heartbeat",
            StoreOp::Snapshot => "scan leases and workers",
            StoreOp::DeleteWorker => "delete worker",
            StoreOp::Membership => "read membership",
            StoreOp::BumpLeasesVersion => "bump leases version",
        }
    }

    /// Whether the operation writes to the store (what DynamoDB bills as write units).
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            StoreOp::EnsureTable
                | StoreOp::ListLeases
                | StoreOp::GetLease
                | StoreOp::Snapshot
                | StoreOp::Membership
        )
    }
}

/// How the code under test reaches the store: the fault an [`InstrumentedStore`] injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Link {
    /// Calls go through.
    #[default]
    Up,
    /// Calls hang until the link changes, like a process stopped by the OS.
    Frozen,
    /// Calls fail at once with [`Error::Unreachable`]: a network partition.
    Partitioned,
    /// Calls fail at once as DynamoDB answers when the table was deleted
    /// (`ResourceNotFoundException`).
    TableDeleted,
    /// About half the calls fail at once with a throttling error (`ThrottlingException`),
    /// the rest go through: a table over its capacity. Which ones is a fixed pseudo-random
    /// sequence of the calls made under this link, so a run replays exactly.
    Throttled,
}

/// Told of every lease write that reached the store, with the lease before and after it,
/// whatever the caller was answered (a lost answer included): the view a test checks
/// invariants on at the moment of each write.
pub trait StoreObserver: Send + Sync {
    /// `op` changed (or kept) the lease `key` from `before` to `after` (`None`: absent).
    fn lease_written(
        &self,
        op: StoreOp,
        key: &LeaseKey,
        before: Option<&Lease>,
        after: Option<&Lease>,
    );
}

/// A lease store that counts every call (per [`StoreOp`], and the items scans read) and
/// passes it through a [`Link`] the test sets, before forwarding it to `inner`.
///
/// Several instances may share one inner store (one per simulated worker, each with its own
/// link to the same table).
pub struct InstrumentedStore<S: ?Sized = dyn LeaseStore> {
    inner: Arc<S>,
    link: watch::Sender<Link>,
    calls: Mutex<BTreeMap<StoreOp, u64>>,
    items_read: AtomicU64,
    billed: Mutex<Billed>,
    hidden: Mutex<HashSet<LeaseKey>>,
    losing: Mutex<HashSet<LeaseKey>>,
    failing: Mutex<HashSet<StoreOp>>,
    /// Per operation, how many of the next successful calls lose their answer.
    lost_answers: Mutex<BTreeMap<StoreOp, usize>>,
    /// Calls passed while the link was `Throttled` (the throttling sequence's position).
    throttle_count: AtomicU64,
    observer: Mutex<Option<Arc<dyn StoreObserver>>>,
}

/// What the counted calls would cost in DynamoDB, priced by [`dynamodb_streams_leases::billing`]
/// from the sizes the DynamoDB store's items would have.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Billed {
    /// Read units (strongly consistent reads cost twice as much as eventually consistent).
    pub read_units: ReadUnits,
    /// Write units, failed conditional writes and leases-version bumps included.
    pub write_units: u64,
    /// Conditional writes whose condition failed (billed all the same).
    pub failed_conditions: u64,
}

impl<S: LeaseStore + ?Sized> InstrumentedStore<S> {
    /// `inner`, with the link up and every counter at zero.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            link: watch::Sender::new(Link::Up),
            calls: Mutex::default(),
            items_read: AtomicU64::new(0),
            billed: Mutex::default(),
            hidden: Mutex::default(),
            losing: Mutex::default(),
            failing: Mutex::default(),
            lost_answers: Mutex::default(),
            throttle_count: AtomicU64::new(0),
            observer: Mutex::default(),
        }
    }

    /// Tells `observer` of every lease write from now on (see [`StoreObserver`]).
    pub fn observe(&self, observer: Arc<dyn StoreObserver>) {
        *self.observer.lock().unwrap_or_else(PoisonError::into_inner) = Some(observer);
    }

    /// The next `count` calls of `op` that succeed are applied, but their caller is told the
    /// store could not be reached (`Unreachable`, transient): an answer lost on the way
    /// back, after which the caller cannot know whether the write happened.
    pub fn lose_answers(&self, op: StoreOp, count: usize) {
        *self
            .lost_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(op)
            .or_default() += count;
    }

    /// The caller's answer to a call of `op` that reached the store: `result`, or a lost
    /// answer if one is due (see [`lose_answers`](Self::lose_answers)).
    fn answer<T>(&self, op: StoreOp, result: Result<T>) -> Result<T> {
        let value = result?;
        let mut lost = self
            .lost_answers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match lost.get_mut(&op) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(Error::Unreachable {
                    endpoint: "the test's fault".into(),
                    operation: op.name(),
                    table: "instrumented".into(),
                    source: format!(
                        "the answer to a {} was lost after it was applied",
                        op.name()
                    )
                    .into(),
                })
            }
            _ => Ok(value),
        }
    }

    /// Tells the observer, if any, of a write to `key` (reading the lease after it from
    /// `inner`, uncounted).
    async fn observed(&self, op: StoreOp, key: &LeaseKey, before: Option<&Lease>) {
        let observer = self
            .observer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(observer) = observer {
            let after = self.inner.get_lease(key).await.ok().flatten();
            observer.lease_written(op, key, before, after.as_ref());
        }
    }

    /// The wrapped store (calls to it are neither counted nor gated).
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Changes the link for the calls that follow (and releases calls held by `Frozen`).
    pub fn set_link(&self, link: Link) {
        self.link.send_replace(link);
    }

    /// Calls so far, per operation (including those the link failed).
    pub fn calls(&self) -> BTreeMap<StoreOp, u64> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Lease and worker items returned by scans so far.
    pub fn items_read(&self) -> u64 {
        self.items_read.load(Ordering::Relaxed)
    }

    /// Leaves these leases out of scans (`snapshot`, `list_leases`) while still serving
    /// them to `get_lease` and writes: what a scan does with an item it cannot decode.
    pub fn hide_from_scans(&self, keys: impl IntoIterator<Item = LeaseKey>) {
        self.hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(keys);
    }

    /// The next take of each of these leases fails as if another worker had won it between
    /// the taker's scan and its write (`LeaseLost`; the lease is not changed).
    pub fn lose_next_take(&self, keys: impl IntoIterator<Item = LeaseKey>) {
        self.losing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(keys);
    }

    /// Calls of `op` fail (as if DynamoDB could not be reached) while `failing` is set;
    /// every other operation goes through: e.g. checkpoints cut off while heartbeats work.
    pub fn fail_calls(&self, op: StoreOp, failing: bool) {
        let mut ops = self.failing.lock().unwrap_or_else(PoisonError::into_inner);
        if failing {
            ops.insert(op);
        } else {
            ops.remove(&op);
        }
    }

    /// Scans return every lease again.
    pub fn unhide_all(&self) {
        self.hidden
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn visible(&self, mut leases: Vec<Lease>) -> Vec<Lease> {
        let hidden = self.hidden.lock().unwrap_or_else(PoisonError::into_inner);
        leases.retain(|l| !hidden.contains(&l.key));
        leases
    }

    /// The units billed so far (see [`Billed`]).
    pub fn billed(&self) -> Billed {
        *self.billed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bill(&self, reads: ReadUnits, writes: u64, failed: bool) {
        let mut billed = self.billed.lock().unwrap_or_else(PoisonError::into_inner);
        billed.read_units += reads;
        billed.write_units += writes;
        billed.failed_conditions += u64::from(failed);
    }

    /// The membership item's size now (read from `inner` without counting).
    async fn membership_size(&self) -> usize {
        match self.inner.membership().await {
            Ok(membership) => billing::membership_item_size(&membership),
            Err(_) => 0,
        }
    }

    /// Bills a write to one lease (the larger of the item before and after, 1 KB units),
    /// plus the leases-version bump that follows an ownership change.
    async fn bill_lease_write<T>(
        &self,
        before: Option<Lease>,
        result: &Result<T>,
        after: Option<&Lease>,
        bumps: bool,
    ) {
        let size = before
            .iter()
            .chain(after)
            .map(billing::lease_item_size)
            .max()
            .unwrap_or(0);
        let bump = if bumps && result.is_ok() {
            billing::write_units(self.membership_size().await)
        } else {
            0
        };
        self.bill(0.0, billing::write_units(size) + bump, result.is_err());
    }

    /// Counts the call, then waits while the link is frozen; fails if it is partitioned.
    async fn pass(&self, op: StoreOp) -> Result<()> {
        *self
            .calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(op)
            .or_default() += 1;
        let failing = self
            .failing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&op);
        if failing {
            return Err(Error::Unreachable {
                endpoint: "the test's fault".into(),
                operation: op.name(),
                table: "instrumented".into(),
                source: format!("{} calls cut off by the test", op.name()).into(),
            });
        }
        let mut link = self.link.subscribe();
        // The sender lives in `self`, so waiting cannot fail with a closed channel.
        let current = link
            .wait_for(|l| *l != Link::Frozen)
            .await
            .map_or(Link::Up, |l| *l);
        match current {
            Link::Partitioned => Err(Error::Unreachable {
                endpoint: "the test's partition".into(),
                operation: op.name(),
                table: "instrumented".into(),
                source: "partitioned by the test".into(),
            }),
            Link::TableDeleted => Err(Error::DynamoDb {
                operation: op.name(),
                table: "instrumented".into(),
                key: None,
                class: dynamodb_streams_leases::aws::ErrorClass::NotFound,
                source:
                    "ResourceNotFoundException: Requested resource not found (deleted by the test)"
                        .into(),
            }),
            Link::Throttled
                if super::items::remix(self.throttle_count.fetch_add(1, Ordering::Relaxed))
                    .is_multiple_of(2) =>
            {
                Err(Error::DynamoDb {
                    operation: op.name(),
                    table: "instrumented".into(),
                    key: None,
                    class: dynamodb_streams_leases::aws::ErrorClass::Throttling,
                    source: "ThrottlingException: Rate exceeded (throttled by the test)".into(),
                })
            }
            Link::Up | Link::Frozen | Link::Throttled => Ok(()),
        }
    }

    fn read<T>(&self, items: Vec<T>) -> Vec<T> {
        self.items_read
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        items
    }
}

impl<S: ?Sized> fmt::Debug for InstrumentedStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentedStore")
            .field("link", &*self.link.borrow())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: LeaseStore + ?Sized> LeaseStore for InstrumentedStore<S> {
    async fn ensure_table(&self) -> Result<()> {
        self.pass(StoreOp::EnsureTable).await?;
        self.inner.ensure_table().await
    }
    async fn list_leases(&self) -> Result<Vec<Lease>> {
        self.pass(StoreOp::ListLeases).await?;
        let leases = self.visible(self.inner.list_leases().await?);
        // A filtered Scan bills every item it reads, the membership item too.
        let sizes = leases.iter().map(billing::lease_item_size);
        let units = billing::scan_read_units(sizes.chain([self.membership_size().await]), true);
        self.bill(units, 0, false);
        Ok(self.read(leases))
    }
    async fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>> {
        self.pass(StoreOp::GetLease).await?;
        let lease = self.inner.get_lease(key).await?;
        let size = lease.as_ref().map_or(0, billing::lease_item_size);
        self.bill(billing::read_units(size, true), 0, false);
        Ok(lease)
    }
    async fn create_lease(&self, lease: &Lease) -> Result<()> {
        self.pass(StoreOp::CreateLease).await?;
        let before = self.inner.get_lease(&lease.key).await.ok().flatten();
        let result = self.inner.create_lease(lease).await;
        self.bill_lease_write(before.clone(), &result, Some(lease), true)
            .await;
        if result.is_ok() {
            self.observed(StoreOp::CreateLease, &lease.key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::CreateLease, result)
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
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self
            .inner
            .take_lease(key, seen_owner, seen_epoch, new_owner)
            .await;
        self.bill_lease_write(before.clone(), &result, result.as_ref().ok(), true)
            .await;
        if result.is_ok() {
            self.observed(StoreOp::TakeLease, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::TakeLease, result)
    }
    async fn checkpoint(&self, key: &LeaseKey, o: &Ownership, c: &Checkpoint) -> Result<Lease> {
        self.pass(StoreOp::Checkpoint).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.checkpoint(key, o, c).await;
        let bumps = *c == Checkpoint::ShardEnd;
        self.bill_lease_write(before.clone(), &result, result.as_ref().ok(), bumps)
            .await;
        if result.is_ok() {
            self.observed(StoreOp::Checkpoint, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::Checkpoint, result)
    }
    // Pipelines' checkpoints are counted (and billed) as checkpoints; removing a pipeline
    // (an operator's write) too.
    async fn checkpoint_pipelines(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        update: &PipelineCheckpoints,
    ) -> Result<Lease> {
        self.pass(StoreOp::Checkpoint).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.checkpoint_pipelines(key, o, update).await;
        let bumps = update.read_position == Checkpoint::ShardEnd;
        self.bill_lease_write(before, &result, result.as_ref().ok(), bumps)
            .await;
        result
    }
    async fn remove_pipeline(
        &self,
        key: &LeaseKey,
        pipeline: &str,
        o: Option<&Ownership>,
    ) -> Result<Lease> {
        self.pass(StoreOp::Checkpoint).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.remove_pipeline(key, pipeline, o).await;
        self.bill_lease_write(before, &result, result.as_ref().ok(), false)
            .await;
        result
    }
    async fn release_lease(&self, key: &LeaseKey, o: &Ownership) -> Result<Lease> {
        self.pass(StoreOp::ReleaseLease).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.release_lease(key, o).await;
        self.bill_lease_write(before.clone(), &result, result.as_ref().ok(), true)
            .await;
        if result.is_ok() {
            self.observed(StoreOp::ReleaseLease, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::ReleaseLease, result)
    }
    async fn reset_lease(
        &self,
        key: &LeaseKey,
        seen_owner: Option<&str>,
        seen_epoch: u64,
        c: &Checkpoint,
    ) -> Result<Lease> {
        self.pass(StoreOp::ResetLease).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.reset_lease(key, seen_owner, seen_epoch, c).await;
        self.bill_lease_write(before, &result, result.as_ref().ok(), true)
            .await;
        result
    }
    async fn request_handoff(&self, key: &LeaseKey, o: &Ownership, to: &str) -> Result<Lease> {
        self.pass(StoreOp::RequestHandoff).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self.inner.request_handoff(key, o, to).await;
        self.bill_lease_write(before.clone(), &result, result.as_ref().ok(), true)
            .await;
        if result.is_ok() {
            self.observed(StoreOp::RequestHandoff, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::RequestHandoff, result)
    }
    async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
        self.pass(StoreOp::DeleteLease).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let existed = before.is_some();
        let result = self.inner.delete_lease(key).await;
        self.bill_lease_write(before.clone(), &result, None, existed)
            .await;
        if result.is_ok() && existed {
            self.observed(StoreOp::DeleteLease, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::DeleteLease, result)
    }
    async fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        self.pass(StoreOp::Heartbeat).await?;
        let record = self.inner.heartbeat(worker_id, ttl).await?;
        let units = billing::write_units(self.membership_size().await);
        self.bill(0.0, units, false);
        Ok(record)
    }
    async fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)> {
        self.pass(StoreOp::Snapshot).await?;
        let (leases, workers) = self.inner.snapshot().await?;
        let leases = self.visible(leases);
        let sizes = leases.iter().map(billing::lease_item_size);
        let units = billing::scan_read_units(sizes.chain([self.membership_size().await]), true);
        self.bill(units, 0, false);
        Ok((self.read(leases), self.read(workers)))
    }
    async fn membership(&self) -> Result<Membership> {
        self.pass(StoreOp::Membership).await?;
        let membership = self.inner.membership().await?;
        let size = billing::membership_item_size(&membership);
        self.bill(billing::read_units(size, false), 0, false);
        Ok(membership)
    }
    async fn bump_leases_version(&self) -> Result<u64> {
        self.pass(StoreOp::BumpLeasesVersion).await?;
        let version = self.inner.bump_leases_version().await?;
        let units = billing::write_units(self.membership_size().await);
        self.bill(0.0, units, false);
        Ok(version)
    }
    // Counted as a checkpoint; billed for the lease item only (the transaction's other
    // writes go to the user's tables, not the lease table).
    async fn checkpoint_with_writes(
        &self,
        key: &LeaseKey,
        o: &Ownership,
        previous: &Checkpoint,
        c: &Checkpoint,
        writes: Vec<aws_sdk_dynamodb::types::TransactWriteItem>,
    ) -> Result<()> {
        self.pass(StoreOp::Checkpoint).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self
            .inner
            .checkpoint_with_writes(key, o, previous, c, writes)
            .await;
        // A transactional write is billed twice the units of a plain one; a refused one is
        // still one failed condition.
        let size = before.as_ref().map_or(0, billing::lease_item_size);
        self.bill(0.0, 2 * billing::write_units(size), result.is_err());
        if result.is_ok() {
            self.observed(StoreOp::Checkpoint, key, before.as_ref())
                .await;
        }
        self.answer(StoreOp::Checkpoint, result)
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
        self.pass(StoreOp::Checkpoint).await?;
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = self
            .inner
            .checkpoint_pipeline_with_writes(key, o, pipeline, previous, update, writes)
            .await;
        let size = before.as_ref().map_or(0, billing::lease_item_size);
        self.bill(0.0, 2 * billing::write_units(size), result.is_err());
        result
    }
    async fn key_attribute_names(&self, table: &str) -> Result<Vec<String>> {
        self.inner.key_attribute_names(table).await
    }
    async fn delete_worker(&self, worker_id: &str) -> Result<()> {
        self.pass(StoreOp::DeleteWorker).await?;
        let units = billing::write_units(self.membership_size().await);
        self.inner.delete_worker(worker_id).await?;
        self.bill(0.0, units, false);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::InMemoryLeaseStore;

    #[tokio::test(start_paused = true)]
    async fn counts_calls_and_injects_the_link_faults() {
        let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
        store.heartbeat("w", Duration::from_secs(10)).await.unwrap();
        store.snapshot().await.unwrap();
        assert_eq!(store.items_read(), 1, "one worker item read");

        store.set_link(Link::Partitioned);
        let err = store.list_leases().await.unwrap_err();
        assert!(err.is_transient(), "{err}");

        store.set_link(Link::Frozen);
        let held = tokio::spawn({
            let store = store.clone();
            async move { store.list_leases().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!held.is_finished(), "a frozen link holds the call");
        store.set_link(Link::Up);
        held.await.unwrap().unwrap();

        let calls = store.calls();
        assert_eq!(calls[&StoreOp::ListLeases], 2);
        assert_eq!(calls[&StoreOp::Heartbeat], 1);
        assert!(StoreOp::Heartbeat.is_write() && !StoreOp::Snapshot.is_write());
    }
}
