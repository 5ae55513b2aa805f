//! The worker's memory budget for fetched pages ([`crate::ConsumerBuilder::with_max_buffered_bytes`]).
//!
//! Every shard's fetch task reads ahead of its processor. With hundreds of shards catching
//! up at once those pages add up (a 1,000-record page of 2 KB items is several MB in memory),
//! so one [`ByteBudget`] is shared by every shard of a worker:
//!
//! - before a GetRecords call, the fetch task reserves what the shard's last page took (at
//!   least [`MIN_RESERVATION`]): the page about to arrive is paid for before it is in memory;
//! - once the page is in hand, the reservation is settled to the page's size (surplus given
//!   back; a shortfall taken without waiting if it is free, else everything is given back
//!   and the whole amount queued for: waiters are served first come, first served, so no
//!   task keeps bytes of its own while it waits for more);
//! - the reservation travels with the page and is given back once its batch was delivered.
//!
//! A page bigger than the whole budget takes all of it and goes through alone: a small
//! budget slows reading down, it never deadlocks. What is counted is an estimate of the
//! page's size in memory ([`page_bytes`]), not DynamoDB's item sizes.

use std::mem::size_of;
use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in units of this many bytes (so a `u32` of permits covers TBs).
const UNIT: u64 = 1024;

/// The least a fetch task reserves before a GetRecords call (an idle shard's pages are
/// empty; a shard's first page is unknown).
pub(crate) const MIN_RESERVATION: u64 = 64 * 1024;

/// Bytes shared by every shard of a worker, for pages fetched but not yet delivered.
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    semaphore: Arc<Semaphore>,
    /// The whole budget, in units.
    total: u32,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: ByteBudget,
    permit: Option<OwnedSemaphorePermit>,
}

impl ByteBudget {
    /// A budget of `bytes` (at least one unit).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        Self {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes not reserved right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> u64 {
        self.semaphore.available_permits() as u64 * UNIT
    }

    /// The whole budget, in bytes.
    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        u64::from(self.total) * UNIT
    }

    /// Waits until `bytes` are free and takes them; more than the whole budget takes all of
    /// it.
    pub(crate) async fn reserve(&self, bytes: u64) -> Reservation {
        let mut reservation = Reservation {
            budget: self.clone(),
            permit: None,
        };
        reservation.resize(bytes).await;
        reservation
    }

    /// How many units `bytes` take (at most the whole budget).
    fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.total)
    }
}

impl Reservation {
    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        u64::from(self.held()) * UNIT
    }

    fn held(&self) -> u32 {
        self.permit
            .as_ref()
            .map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX))
    }

    /// Holds `bytes` from now on (at most the whole budget): gives back a surplus at once;
    /// takes a shortfall without waiting if it is free, else gives everything back and
    /// queues for the whole amount (no task keeps bytes while waiting for more, so waiters
    /// cannot deadlock each other; the queue is served in order).
    pub(crate) async fn resize(&mut self, bytes: u64) {
        let wanted = self.budget.units(bytes);
        let held = self.held();
        if wanted == held {
            return;
        }
        if wanted < held {
            if let Some(permit) = self.permit.as_mut() {
                drop(permit.split((held - wanted) as usize));
            }
            if wanted == 0 {
                self.permit = None;
            }
            return;
        }
        let more = wanted - held;
        if let Ok(extra) = self.budget.semaphore.clone().try_acquire_many_owned(more) {
            match self.permit.as_mut() {
                Some(permit) => permit.merge(extra),
                None => self.permit = Some(extra),
            }
            return;
        }
        self.permit = None;
        // The semaphore is never closed, so acquiring only fails if it was: hold nothing then.
        self.permit = self
            .budget
            .semaphore
            .clone()
            .acquire_many_owned(wanted)
            .await
            .ok();
    }
}

/// An estimate of what `records` take in memory as the SDK holds them: the structs, every
/// string and blob, the attribute maps (names, values, table slots).
pub(crate) fn page_bytes<'a>(records: impl IntoIterator<Item = &'a Record>) -> u64 {
    records.into_iter().map(record_bytes).sum()
}

fn record_bytes(record: &Record) -> u64 {
    let text = |s: Option<&str>| s.map_or(0, str::len);
    let mut bytes = size_of::<Record>()
        + text(record.event_id())
        + text(record.event_version())
        + text(record.event_source())
        + text(record.aws_region());
    if let Some(data) = record.dynamodb() {
        bytes += text(data.sequence_number());
        for image in [&data.keys, &data.new_image, &data.old_image]
            .into_iter()
            .flatten()
        {
            bytes += map_bytes(image);
        }
    }
    // The `Arc` the page's records are shared through.
    (bytes + 2 * size_of::<usize>()) as u64
}

fn map_bytes(map: &std::collections::HashMap<String, AttributeValue>) -> usize {
    // A hash table slot per entry (plus a control byte), tables at most 7/8 full.
    let slots = map.capacity().max(map.len()) * 8 / 7;
    slots * (size_of::<(String, AttributeValue)>() + 1)
        + map
            .iter()
            .map(|(name, value)| name.len() + value_bytes(value))
            .sum::<usize>()
}

/// The heap bytes of one value (its inline part is counted by the slot holding it).
fn value_bytes(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(blob) => blob.as_ref().len(),
        AttributeValue::Ss(list) | AttributeValue::Ns(list) => {
            list.iter().map(|s| size_of::<String>() + s.len()).sum()
        }
        AttributeValue::Bs(list) => list
            .iter()
            .map(|b| size_of::<aws_smithy_types::Blob>() + b.as_ref().len())
            .sum(),
        AttributeValue::L(list) => list
            .iter()
            .map(|v| size_of::<AttributeValue>() + value_bytes(v))
            .sum(),
        AttributeValue::M(map) => map_bytes(map),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::StreamRecord;
    use std::collections::HashMap;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_for_bytes_given_back() {
        let budget = ByteBudget::new(100 * 1024);
        let first = budget.reserve(60 * 1024).await;
        assert_eq!(budget.available(), 40 * 1024);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(60 * 1024).await.bytes() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "only 40 KiB are free");
        drop(first);
        assert_eq!(waiting.await.unwrap(), 60 * 1024);
        assert_eq!(budget.available(), 100 * 1024, "given back when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_bigger_than_the_budget_takes_all_of_it_and_goes_alone() {
        let budget = ByteBudget::new(10 * 1024);
        let big = budget.reserve(1024 * 1024).await;
        assert_eq!(big.bytes(), 10 * 1024);
        assert_eq!(budget.available(), 0);
        drop(big);
        assert_eq!(budget.available(), budget.total());
    }

    #[tokio::test(start_paused = true)]
    async fn resize_gives_back_a_surplus_and_waits_holding_nothing_for_a_shortfall() {
        let budget = ByteBudget::new(100 * 1024);
        let mut a = budget.reserve(50 * 1024).await;
        a.resize(20 * 1024).await;
        assert_eq!(budget.available(), 80 * 1024);
        let mut b = budget.reserve(70 * 1024).await;
        // `a` wants 60 KiB; 10 KiB are free: it gives its 20 back and waits for 60.
        let grow = tokio::spawn(async move {
            a.resize(60 * 1024).await;
            a
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!grow.is_finished(), "only 30 KiB are free");
        b.resize(40 * 1024).await;
        let a = grow.await.unwrap();
        assert_eq!(a.bytes(), 60 * 1024);
        assert_eq!(b.bytes(), 40 * 1024);
        assert_eq!(budget.available(), 0);
        drop((a, b));
        assert_eq!(budget.available(), 100 * 1024);
    }

    #[test]
    fn page_bytes_grow_with_the_images() {
        let record = |payload: usize| {
            let image = HashMap::from([
                ("pk".to_owned(), AttributeValue::S("item-1".to_owned())),
                ("payload".to_owned(), AttributeValue::S("x".repeat(payload))),
            ]);
            Record::builder()
                .dynamodb(
                    StreamRecord::builder()
                        .sequence_number("100")
                        .set_new_image(Some(image))
                        .build(),
                )
                .build()
        };
        let small = page_bytes(&[record(10)]);
        let large = page_bytes(&[record(4000)]);
        assert_eq!(large - small, 3990);
        assert!(small > size_of::<Record>() as u64);
    }
}
