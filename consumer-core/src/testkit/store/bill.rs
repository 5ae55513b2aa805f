//! How an [`InstrumentedStore`]'s calls are billed to its items and totals, by the price
//! model of `super::cost`. Apart from that model so the model names nothing of the store.

use std::collections::BTreeMap;
use std::sync::PoisonError;
use std::time::Duration;

use dynamodb_streams_leases::billing::{self, ReadUnits};
use dynamodb_streams_leases::{Lease, LeaseKey, LeaseStore, WorkerRecord, membership_shard};
use tokio::time::Instant;

use super::InstrumentedStore;
use super::cost::{Billed, COORDINATION_ITEM, ItemUnits, Mirror, lease_item, membership_item};

impl<S: LeaseStore + ?Sized> InstrumentedStore<S> {
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

    pub(super) fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bills `reads` and `writes` units to `item` (and to the totals).
    pub(super) fn bill_item(&self, item: String, reads: ReadUnits, writes: u64, failed: bool) {
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

    pub(super) fn bill(&self, reads: ReadUnits, writes: u64, failed: bool) {
        let mut billed = self.billed.lock().unwrap_or_else(PoisonError::into_inner);
        billed.read_units += reads;
        billed.write_units += writes;
        billed.failed_conditions += u64::from(failed);
    }

    /// Bills a write to one lease (the larger of the item before and after, 1 KB units).
    pub(super) fn bill_lease_write(
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

    /// Bills a write to the coordination item.
    pub(super) fn bill_coordination_write(&self, failed: bool) {
        let size = billing::coordination_item_size(&self.mirror().coordination);
        self.bill_item(
            COORDINATION_ITEM.to_owned(),
            0.0,
            billing::write_units(size),
            failed,
        );
    }

    /// Bills a write to `worker`'s membership item, after `change` to the mirror.
    pub(super) fn bill_membership_write(
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

    pub(super) fn forget_inbox(&self, worker_id: &str) {
        self.mirror().inboxes.remove(worker_id);
    }
}
