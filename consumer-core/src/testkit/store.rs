//! [`InstrumentedStore`]: any lease store with every call counted and priced, per item
//! too, and its link to the store under the test's control. One decorator forwards the
//! trait's methods, so the simulation tests and the cost example do not each forward them
//! by hand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use dynamodb_streams_leases::billing::{self, ReadUnits};
use dynamodb_streams_leases::{
    Checkpoint, Coordination, Error, Lease, LeaseKey, LeaseStore, Membership, Notice, Ownership,
    PipelineCheckpoints, Result, WorkerRecord, membership_shard,
};
use tokio::sync::watch;
use tokio::time::Instant;

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
    Coordination,
    RemoveWorker,
    Leadership,
    Notify,
    Notices,
    ClearNotices,
    GetLeases,
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
            StoreOp::Coordination => "read coordination",
            StoreOp::RemoveWorker => "remove dead worker",
            StoreOp::Leadership => "claim, renew or resign leadership",
            StoreOp::Notify => "hint a worker",
            StoreOp::Notices => "read inbox",
            StoreOp::ClearNotices => "clear inbox",
            StoreOp::GetLeases => "get leases",
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
                | StoreOp::Coordination
                | StoreOp::Notices
                | StoreOp::GetLeases
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
    meters: Mutex<Meters>,
    mirror: Mutex<Mirror>,
    hidden: Mutex<HashSet<LeaseKey>>,
    losing: Mutex<HashSet<LeaseKey>>,
    failing: Mutex<HashSet<StoreOp>>,
    /// Per operation, how many of the next successful calls lose their answer.
    lost_answers: Mutex<BTreeMap<StoreOp, usize>>,
    /// Calls passed while the link was `Throttled` (the throttling sequence's position).
    throttle_count: AtomicU64,
    observer: Mutex<Option<Arc<dyn StoreObserver>>>,
}

/// The units one item was billed since [`InstrumentedStore::reset_item_units`] (or the
/// start): in total, and in its busiest second (of tokio's clock).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemUnits {
    /// The item's partition key, as the DynamoDB store writes it (`lease|…`,
    /// `membership|7`, `coordination`, `inbox|…`).
    pub item: String,
    /// Read units billed for reads of this item (Scans not counted: a scan reads every
    /// lease item once, a fraction of a unit each).
    pub read_units: f64,
    /// Write units billed for writes to it, failed conditional writes included.
    pub write_units: u64,
    /// The most read units in one second.
    pub peak_read_units: f64,
    /// The most write units in one second.
    pub peak_write_units: u64,
    second: u64,
    second_reads: f64,
    second_writes: u64,
}

/// Per item units, since a start.
#[derive(Debug)]
struct Meters {
    since: Instant,
    items: HashMap<String, ItemUnits>,
}

/// The store's content as seen through this decorator, for item sizes: membership items,
/// the coordination item, inboxes.
#[derive(Debug, Default)]
struct Mirror {
    members: BTreeMap<u16, BTreeMap<String, WorkerRecord>>,
    coordination: Coordination,
    inboxes: HashMap<String, Vec<Notice>>,
}

impl Mirror {
    fn membership_size(&self, shard: u16) -> usize {
        let workers: Vec<WorkerRecord> = self
            .members
            .get(&shard)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        billing::membership_item_size(shard, &workers)
    }

    fn inbox_size(&self, worker: &str) -> usize {
        billing::inbox_item_size(worker, self.inboxes.get(worker).map_or(&[], Vec::as_slice))
    }
}

fn lease_item(key: &LeaseKey) -> String {
    format!("lease|{}|{}", key.stream, key.shard_id)
}

fn membership_item(shard: u16) -> String {
    format!("membership|{shard}")
}

const COORDINATION_ITEM: &str = "coordination";

fn inbox_item(worker: &str) -> String {
    format!("inbox|{worker}")
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

/// How a lease write is billed.
#[derive(Clone, Copy)]
enum Units<'a> {
    /// The larger of the item before and after: after is the lease answered, or `sent`.
    Larger { sent: Option<&'a Lease> },
    /// A transaction: twice the units of the item as it was before.
    Transaction,
}

impl Units<'_> {
    /// A write that answers with the lease as written (or sends nothing to bill by).
    const LEASE: Units<'static> = Units::Larger { sent: None };
}

/// What a lease write answers: the lease as written, when it is one.
trait Answer {
    fn lease(&self) -> Option<&Lease>;
}

impl Answer for Lease {
    fn lease(&self) -> Option<&Lease> {
        Some(self)
    }
}

impl Answer for () {
    fn lease(&self) -> Option<&Lease> {
        None
    }
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
            meters: Mutex::new(Meters {
                since: Instant::now(),
                items: HashMap::new(),
            }),
            mirror: Mutex::default(),
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
            // Deleting an absent lease wrote nothing.
            if before.is_some() || after.is_some() {
                observer.lease_written(op, key, before, after.as_ref());
            }
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

    /// Every item billed since the last [`reset_item_units`](Self::reset_item_units), and
    /// how long ago that was (tokio's clock).
    pub fn item_units(&self) -> (Vec<ItemUnits>, Duration) {
        let meters = self.meters.lock().unwrap_or_else(PoisonError::into_inner);
        let items = meters
            .items
            .values()
            .map(|item| ItemUnits {
                peak_read_units: item.peak_read_units.max(item.second_reads),
                peak_write_units: item.peak_write_units.max(item.second_writes),
                ..item.clone()
            })
            .collect();
        (items, meters.since.elapsed())
    }

    /// Starts counting units per item again from zero, now.
    pub fn reset_item_units(&self) {
        let mut meters = self.meters.lock().unwrap_or_else(PoisonError::into_inner);
        meters.since = Instant::now();
        meters.items.clear();
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bills `reads` and `writes` units to `item` (and to the totals).
    fn bill_item(&self, item: String, reads: ReadUnits, writes: u64, failed: bool) {
        self.bill(reads, writes, failed);
        let mut meters = self.meters.lock().unwrap_or_else(PoisonError::into_inner);
        let second = meters.since.elapsed().as_secs();
        let units = meters
            .items
            .entry(item)
            .or_insert_with_key(|item| ItemUnits {
                item: item.clone(),
                second,
                ..ItemUnits::default()
            });
        if units.second != second {
            units.peak_read_units = units.peak_read_units.max(units.second_reads);
            units.peak_write_units = units.peak_write_units.max(units.second_writes);
            units.second = second;
            units.second_reads = 0.0;
            units.second_writes = 0;
        }
        units.read_units += reads;
        units.write_units += writes;
        units.second_reads += reads;
        units.second_writes += writes;
    }

    fn bill(&self, reads: ReadUnits, writes: u64, failed: bool) {
        let mut billed = self.billed.lock().unwrap_or_else(PoisonError::into_inner);
        billed.read_units += reads;
        billed.write_units += writes;
        billed.failed_conditions += u64::from(failed);
    }

    /// Bills a write to one lease (the larger of the item before and after, 1 KB units).
    fn bill_lease_write(
        &self,
        key: &LeaseKey,
        before: Option<&Lease>,
        failed: bool,
        after: Option<&Lease>,
    ) {
        let size = before
            .into_iter()
            .chain(after)
            .map(billing::lease_item_size)
            .max()
            .unwrap_or(0);
        self.bill_item(lease_item(key), 0.0, billing::write_units(size), failed);
    }

    /// One write to the lease `key`, as every lease write goes: counted and passed through
    /// the link, then [`applied`](Self::applied).
    async fn lease_write<T: Answer>(
        &self,
        op: StoreOp,
        key: &LeaseKey,
        units: Units<'_>,
        write: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.pass(op).await?;
        self.applied(op, key, units, write).await
    }

    /// A lease write that passed the link: sent to `inner`, billed as `units` says, told
    /// to the observer when it succeeded, and answered (or its answer lost).
    async fn applied<T: Answer>(
        &self,
        op: StoreOp,
        key: &LeaseKey,
        units: Units<'_>,
        write: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let before = self.inner.get_lease(key).await.ok().flatten();
        let result = write.await;
        match units {
            Units::Larger { sent } => {
                let after = result.as_ref().ok().and_then(Answer::lease).or(sent);
                self.bill_lease_write(key, before.as_ref(), result.is_err(), after);
            }
            Units::Transaction => {
                // Twice the units of a plain write; a refused one is still one failed
                // condition.
                let size = before.as_ref().map_or(0, billing::lease_item_size);
                let units = 2 * billing::write_units(size);
                self.bill_item(lease_item(key), 0.0, units, result.is_err());
            }
        }
        if result.is_ok() {
            self.observed(op, key, before.as_ref()).await;
        }
        self.answer(op, result)
    }

    /// Bills a write to the coordination item.
    fn bill_coordination_write(&self, failed: bool) {
        let size = billing::coordination_item_size(&self.mirror().coordination);
        self.bill_item(
            COORDINATION_ITEM.to_owned(),
            0.0,
            billing::write_units(size),
            failed,
        );
    }

    /// Bills a write to `worker`'s membership item, after `change` to the mirror.
    fn bill_membership_write(
        &self,
        worker: &str,
        failed: bool,
        change: impl FnOnce(&mut BTreeMap<String, WorkerRecord>),
    ) {
        let shard = membership_shard(worker);
        let size = {
            let mut mirror = self.mirror();
            let before = mirror.membership_size(shard);
            change(mirror.members.entry(shard).or_default());
            before.max(mirror.membership_size(shard))
        };
        self.bill_item(
            membership_item(shard),
            0.0,
            billing::write_units(size),
            failed,
        );
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
        let sizes = leases.iter().map(billing::lease_item_size);
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
        let sizes = leases.iter().map(billing::lease_item_size);
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

impl<S: LeaseStore + ?Sized> InstrumentedStore<S> {
    fn forget_inbox(&self, worker_id: &str) {
        self.mirror().inboxes.remove(worker_id);
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
