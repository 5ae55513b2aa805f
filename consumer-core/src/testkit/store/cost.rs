//! What an [`InstrumentedStore`]'s calls would cost in DynamoDB: units per item (and per
//! item's busiest second), the totals, and the mirror of the items that are not leases
//! (their sizes). Its own module: the price model of the decorator, apart from how it
//! forwards (`super::forward`) and what a test sets (`super::op`).

use std::collections::{BTreeMap, HashMap};

use dynamodb_streams_leases::billing::{self, ReadUnits};
use dynamodb_streams_leases::{Coordination, Lease, LeaseKey, Notice, WorkerRecord};
use tokio::time::Instant;

/// The units one item was billed since [`InstrumentedStore::reset_item_units`](super::InstrumentedStore::reset_item_units) (or the
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
    pub(super) second: u64,
    pub(super) second_reads: f64,
    pub(super) second_writes: u64,
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
