//! What an [`InstrumentedStore`]'s calls would cost in DynamoDB: units per item (and per
//! item's busiest second), the totals, and the mirror of the items that are not leases
//! (their sizes). Its own module: the price model of the decorator, apart from how it
//! forwards (`super::forward`) and what a test sets (`super::op`).

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;
use std::time::Duration;

use dynamodb_streams_leases::billing::{self, ReadUnits};
use dynamodb_streams_leases::{
    Coordination, Lease, LeaseKey, LeaseStore, Notice, WorkerRecord, membership_shard,
};
use tokio::time::Instant;

use super::InstrumentedStore;

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
pub(super) struct Meters {
    pub(super) since: Instant,
    pub(super) items: HashMap<String, ItemUnits>,
}

/// The store's content as seen through this decorator, for item sizes: membership items,
/// the coordination item, inboxes.
#[derive(Debug, Default)]
pub(super) struct Mirror {
    pub(super) members: BTreeMap<u16, BTreeMap<String, WorkerRecord>>,
    pub(super) coordination: Coordination,
    pub(super) inboxes: HashMap<String, Vec<Notice>>,
}

impl Mirror {
    pub(super) fn membership_size(&self, shard: u16) -> usize {
        let workers: Vec<WorkerRecord> = self
            .members
            .get(&shard)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        billing::membership_item_size(shard, &workers)
    }

    pub(super) fn inbox_size(&self, worker: &str) -> usize {
        billing::inbox_item_size(worker, self.inboxes.get(worker).map_or(&[], Vec::as_slice))
    }
}

pub(super) fn lease_item(key: &LeaseKey) -> String {
    format!("lease|{}|{}", key.stream, key.shard_id)
}

pub(super) fn membership_item(shard: u16) -> String {
    format!("membership|{shard}")
}

pub(super) const COORDINATION_ITEM: &str = "coordination";

pub(super) fn inbox_item(worker: &str) -> String {
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
pub(super) enum Units<'a> {
    /// The larger of the item before and after: after is the lease answered, or `sent`.
    Larger { sent: Option<&'a Lease> },
    /// A transaction: twice the units of the item as it was before.
    Transaction,
}

impl Units<'_> {
    /// A write that answers with the lease as written (or sends nothing to bill by).
    pub(super) const LEASE: Units<'static> = Units::Larger { sent: None };
}

/// What a lease write answers: the lease as written, when it is one.
pub(super) trait Answer {
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
