//! [`InstrumentedStore`]: any lease store with every call counted and priced, per item
//! too, and its link to the store under the test's control. One decorator forwards the
//! trait's methods, so the simulation tests and the cost example do not each forward them
//! by hand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use dynamodb_streams_leases::billing;
use dynamodb_streams_leases::{Error, Lease, LeaseKey, LeaseStore, Result};
use tokio::time::Instant;

use super::gate::Gate;

mod bill;
mod cost;
mod forward;
mod op;

use cost::{Answer, Meters, Mirror, Units, lease_item};
pub use cost::{Billed, ItemUnits};
pub use op::{Link, StoreObserver, StoreOp};

/// A lease store that counts every call (per [`StoreOp`], and the items scans read) and
/// passes it through a [`Link`] the test sets, before forwarding it to `inner`.
///
/// Several instances may share one inner store (one per simulated worker, each with its own
/// link to the same table).
pub struct InstrumentedStore<S: ?Sized = dyn LeaseStore> {
    inner: Arc<S>,
    /// The link; calls a frozen one held pass in the order they came once it heals.
    link: Gate<Link>,
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
    /// Each lease's billed size as of the last scan that read it: a scan of 100,000 leases
    /// sizes only the leases that changed since (sizing encodes the whole item, which made
    /// the leader's scans most of a 100,000-shard simulation).
    scan_sizes: Mutex<HashMap<LeaseKey, (Lease, usize)>>,
}

impl<S: LeaseStore + ?Sized> InstrumentedStore<S> {
    /// `inner`, with the link up and every counter at zero.
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            link: Gate::new(Link::Up),
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
            scan_sizes: Mutex::default(),
        }
    }

    /// The billed sizes of the leases a scan read (see `scan_sizes`).
    fn scanned_sizes(&self, leases: &[Lease]) -> Vec<usize> {
        let mut known = self
            .scan_sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        leases
            .iter()
            .map(|lease| match known.get(&lease.key) {
                Some((seen, size)) if seen == lease => *size,
                _ => {
                    let size = billing::lease_item_size(lease);
                    known.insert(lease.key.clone(), (lease.clone(), size));
                    size
                }
            })
            .collect()
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

    /// Changes the link for the calls that follow (and releases calls held by `Frozen`, in
    /// the order they were made).
    pub fn set_link(&self, link: Link) {
        self.link.set(link);
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
        match self.link.wait_until(|l| *l != Link::Frozen).await {
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
            .field("link", &self.link.get())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::InMemoryLeaseStore;
    use std::time::Duration;

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

    /// Calls a frozen link held reach the store in the order they were made once it
    /// heals, every run alike: with a `watch` channel the order came from tokio's
    /// per-process RNG, and explorer seed 48578 did not replay (issue 15).
    #[tokio::test(start_paused = true)]
    async fn a_healed_link_lets_its_held_calls_through_in_the_order_they_came() {
        let store = Arc::new(InstrumentedStore::new(Arc::new(InMemoryLeaseStore::new())));
        store.set_link(Link::Frozen);
        let reached = Arc::new(Mutex::new(Vec::new()));
        let mut held = Vec::new();
        for i in 0..24 {
            let (store, reached) = (store.clone(), reached.clone());
            held.push(tokio::spawn(async move {
                store.list_leases().await.unwrap();
                reached.lock().unwrap().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        store.set_link(Link::Throttled);
        store.set_link(Link::Frozen);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(reached.lock().unwrap().is_empty(), "frozen again: all held");
        store.set_link(Link::Up);
        for call in held {
            call.await.unwrap();
        }
        assert_eq!(*reached.lock().unwrap(), (0..24).collect::<Vec<_>>());
    }

    /// Scans size only the leases that changed since the last scan: a changed lease is
    /// billed at its new size, an unchanged one at the size it had.
    #[tokio::test]
    async fn a_scan_bills_a_changed_lease_at_its_new_size() {
        use dynamodb_streams_leases::Checkpoint;
        let inner = Arc::new(InMemoryLeaseStore::new());
        let store = InstrumentedStore::new(inner.clone());
        let key = LeaseKey::new("arn:aws:dynamodb:r:1:table/t/stream/s", "shard-1");
        let small = Lease::new(key.clone(), Checkpoint::TrimHorizon, vec![]);
        inner.create_lease(&small).await.unwrap();
        let scan = async || {
            let before = store.billed().read_units;
            store.list_leases().await.unwrap();
            store.billed().read_units - before
        };
        let first = scan().await;
        assert_eq!(scan().await, first, "an unchanged lease costs the same");
        // 10 KB of parents: 3 read units (4 KB each, consistent) instead of 1.
        let parents = (0..100).map(|i| format!("{i:0>100}")).collect();
        inner.delete_lease(&key).await.unwrap();
        inner
            .create_lease(&Lease::new(key, Checkpoint::TrimHorizon, parents))
            .await
            .unwrap();
        assert_eq!(
            scan().await,
            first + 2.0,
            "the grown lease is billed at its size"
        );
    }
}
