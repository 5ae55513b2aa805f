//! The worker's memory budget for fetched pages ([`crate::ConsumerBuilder::with_max_buffered_bytes`]).
//!
//! Every shard's fetch task reads ahead of its processor. With hundreds of shards catching
//! up at once those pages add up (a 1,000-record page of 2 KB items is several MB in memory),
//! so one [`ByteBudget`] is shared by every shard of a worker:
//!
//! - before a GetRecords call, the fetch task reserves what the shard's last page with
//!   records cost, plus a quarter (at least [`MIN_RESERVATION`], or a quarter of a smaller
//!   budget; [`FULL_PAGE_COST`] before
//!   the first one): the page about to arrive is paid for before it is in memory, and
//!   reservations wait, first come first served, while the budget is spent;
//! - once the page is in hand, the reservation is settled to the page's cost without
//!   waiting: a surplus is given back, a shortfall is taken even if that overdraws the
//!   budget (the page is in memory either way, and it is counted), and later reservations
//!   wait until the overdraft is paid back;
//! - the reservation travels with the page and is given back once its batch was delivered;
//!   so while a reservation waits ([`ByteBudget::is_short`]), a batch being gathered stops
//!   waiting for more pages (`crate::shard::batching`): they could not come until it is
//!   delivered.
//!
//! Nothing waits while holding bytes, so a small budget slows reading down and never
//! deadlocks; a page bigger than the whole budget waits until nothing else is held and
//! goes through alone. What is counted is an estimate of the page's size in memory, twice:
//! the records, and the changes decoded from them while the batch is delivered
//! ([`page_cost`]); not DynamoDB's item sizes.

use std::collections::VecDeque;
use std::mem::size_of;
use std::sync::{Arc, Mutex, PoisonError};

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use tokio::sync::{Notify, oneshot};

/// The least a fetch task reserves before a GetRecords call.
pub(crate) const MIN_RESERVATION: u64 = 64 * 1024;

/// What a fetch task reserves before a shard's first page (and after empty pages until one
/// with records came): the most a page may cost. DynamoDB Streams returns at most 1 MB of
/// items and 1,000 records per call; as the SDK holds them that is up to about 2 MB, and
/// a page costs twice its size ([`page_cost`]).
pub(crate) const FULL_PAGE_COST: u64 = 4 * 1024 * 1024;

/// Bytes shared by every shard of a worker, for pages fetched but not yet delivered.
#[derive(Clone, Debug)]
pub(crate) struct ByteBudget {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// The whole budget.
    total: u64,
    state: Mutex<State>,
    /// Woken whenever a reservation starts to wait ([`ByteBudget::short`]).
    short: Notify,
}

#[derive(Debug)]
struct State {
    /// Bytes free; negative while overdrawn.
    available: i64,
    /// Reservations waiting, in arrival order: bytes wanted, and where to say they got them.
    waiting: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Bytes taken from a [`ByteBudget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    budget: ByteBudget,
    bytes: u64,
    /// A share of a page that several pipelines deliver ([`Reservation::share`]): the
    /// page's reservation, given back when the last share is dropped.
    _page: Option<Arc<Reservation>>,
}

impl ByteBudget {
    /// A budget of `bytes` (at least one).
    pub(crate) fn new(bytes: u64) -> Self {
        let total = bytes.clamp(1, i64::MAX as u64);
        Self {
            shared: Arc::new(Shared {
                total,
                state: Mutex::new(State {
                    available: total as i64,
                    waiting: VecDeque::new(),
                }),
                short: Notify::new(),
            }),
        }
    }

    /// The whole budget.
    pub(crate) fn total(&self) -> u64 {
        self.shared.total
    }

    /// The least a fetch task reserves before a GetRecords call: [`MIN_RESERVATION`], but
    /// at most a quarter of the budget. A floor as big as a small budget made every page
    /// take all of it: one page in flight per worker, so a batching window waited out in
    /// full for records the fetch task could not ask for (one record per window; explorer
    /// seed 18896 did not drain).
    pub(crate) fn least_reservation(&self) -> u64 {
        MIN_RESERVATION.min(self.shared.total / 4).max(1)
    }

    /// Bytes not reserved right now (negative while overdrawn).
    #[cfg(test)]
    pub(crate) fn available(&self) -> i64 {
        self.lock().available
    }

    /// Waits until `bytes` are free (after every reservation that waits already) and takes
    /// them; more than the whole budget is the whole budget.
    pub(crate) async fn reserve(&self, bytes: u64) -> Reservation {
        let bytes = bytes.min(self.shared.total);
        let granted = {
            let mut state = self.lock();
            if state.waiting.is_empty() && state.available >= bytes as i64 {
                state.available -= bytes as i64;
                None
            } else {
                let (tx, rx) = oneshot::channel();
                state.waiting.push_back((bytes, tx));
                Some(rx)
            }
        };
        let reservation = Reservation {
            _page: None,
            budget: self.clone(),
            bytes,
        };
        let Some(granted) = granted else {
            return reservation;
        };
        self.shared.short.notify_waiters();
        // Dropped while waiting, `pending` gives the bytes back if they were granted
        // meanwhile; if not, no grant can reach it any more.
        let mut pending = PendingGrant {
            reservation: Some(reservation),
            granted,
        };
        let was_granted = (&mut pending.granted).await.is_ok();
        let mut reservation = pending.reservation.take().unwrap_or(Reservation {
            _page: None,
            budget: self.clone(),
            bytes: 0,
        });
        if !was_granted {
            // Only if the waiting list was dropped, which the budget never does.
            reservation.bytes = 0;
        }
        reservation
    }

    /// Whether a reservation waits for bytes right now: a page cannot be fetched until
    /// bytes held are given back.
    pub(crate) fn is_short(&self) -> bool {
        self.lock().waiting.iter().any(|(_, tx)| !tx.is_closed())
    }

    /// Resolves once a reservation waits for bytes ([`ByteBudget::is_short`]).
    pub(crate) async fn short(&self) {
        loop {
            let woken = self.shared.short.notified();
            tokio::pin!(woken);
            // Registered before the check: a reservation that starts to wait after it
            // wakes this.
            woken.as_mut().enable();
            if self.is_short() {
                return;
            }
            woken.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives `bytes` back and grants waiting reservations, in order, while they fit.
    fn give_back(&self, bytes: u64) {
        let mut state = self.lock();
        state.available += bytes as i64;
        while let Some((wanted, _)) = state.waiting.front() {
            let wanted = *wanted as i64;
            if state.available < wanted {
                break;
            }
            if let Some((_, tx)) = state.waiting.pop_front()
                && tx.send(()).is_ok()
            {
                state.available -= wanted;
            }
        }
    }
}

/// A reservation waiting for its grant; if dropped after the grant was sent, the
/// reservation inside gives the bytes back.
struct PendingGrant {
    reservation: Option<Reservation>,
    granted: oneshot::Receiver<()>,
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if let Some(mut reservation) = self.reservation.take() {
            // No grant can arrive after `close`; one that came before is in the channel.
            self.granted.close();
            if self.granted.try_recv().is_err() {
                reservation.bytes = 0;
            }
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(std::mem::take(&mut self.bytes));
        }
    }
}

impl Reservation {
    /// The least reservation of the budget this was taken from
    /// ([`ByteBudget::least_reservation`]).
    pub(crate) fn least_reservation(&self) -> u64 {
        self.budget.least_reservation()
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// `n` shares of this page's reservation, one per pipeline that delivers the page: its
    /// bytes are held until every share was dropped (the page is in memory once).
    pub(crate) fn share(self, n: usize) -> Vec<Reservation> {
        let budget = self.budget.clone();
        let page = Arc::new(self);
        (0..n)
            .map(|_| Reservation {
                budget: budget.clone(),
                bytes: 0,
                _page: Some(page.clone()),
            })
            .collect()
    }

    /// Holds `bytes` from now on (at most the whole budget), without waiting: a surplus is
    /// given back; a shortfall is taken even if it overdraws the budget, so what is in
    /// memory is counted, and later reservations wait until it is paid back.
    pub(crate) fn settle(&mut self, bytes: u64) {
        let bytes = bytes.min(self.budget.shared.total);
        if bytes < self.bytes {
            let surplus = self.bytes - bytes;
            self.bytes = bytes;
            self.budget.give_back(surplus);
        } else if bytes > self.bytes {
            self.budget.lock().available -= (bytes - self.bytes) as i64;
            self.bytes = bytes;
        }
    }
}

impl Reservation {
    /// Gives back what is held beyond `bytes` (never takes more): records of the page that
    /// are done and dropped no longer count.
    pub(crate) fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.settle(bytes);
        }
    }
}

/// What a record costs the budget, as a share of its page's [`page_cost`].
pub(crate) fn record_cost(record: &Record) -> u64 {
    2 * record_bytes(record)
}

/// What a page costs the budget: its records in memory ([`page_bytes`]), and as much
/// again for the changes decoded from them while its batch is delivered (the decoded
/// images are about as big as the records' images).
pub(crate) fn page_cost<'a>(records: impl IntoIterator<Item = &'a Record>) -> u64 {
    2 * page_bytes(records)
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
    async fn reservations_wait_in_order_for_bytes_given_back() {
        let budget = ByteBudget::new(100);
        let first = budget.reserve(60).await;
        assert_eq!(budget.available(), 40);
        let second = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(60).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // A small request does not jump the queue.
        let third = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(10).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!second.is_finished(), "only 40 are free");
        assert!(!third.is_finished(), "waits behind the second");
        drop(first);
        let second = second.await.unwrap();
        let third = third.await.unwrap();
        assert_eq!((second.bytes(), third.bytes()), (60, 10));
        assert_eq!(budget.available(), 30);
        drop((second, third));
        assert_eq!(budget.available(), 100, "given back when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_page_bigger_than_the_budget_takes_all_of_it_and_goes_alone() {
        let budget = ByteBudget::new(10);
        let small = budget.reserve(1).await;
        let big = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(1000).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!big.is_finished(), "waits until nothing else is held");
        drop(small);
        let mut big = big.await.unwrap();
        assert_eq!(big.bytes(), 10);
        big.settle(5000);
        assert_eq!(budget.available(), 0, "never more than the whole budget");
        drop(big);
        assert_eq!(budget.available(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn settling_overdraws_without_waiting_and_later_reservations_wait_for_the_payback() {
        let budget = ByteBudget::new(100);
        let mut a = budget.reserve(50).await;
        a.settle(20);
        assert_eq!(budget.available(), 80, "a surplus is given back");
        let mut b = budget.reserve(70).await;
        b.settle(100);
        a.settle(60);
        assert_eq!(
            budget.available(),
            -60,
            "overdrawn: the pages are in memory"
        );
        let c = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(10).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!c.is_finished(), "waits for the overdraft to be paid back");
        drop(b);
        let c = c.await.unwrap();
        assert_eq!(c.bytes(), 10);
        assert_eq!(budget.available(), 30);
        drop((a, c));
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reservation_dropped_while_waiting_keeps_nothing() {
        let budget = ByteBudget::new(100);
        let held = budget.reserve(100).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(50).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        assert_eq!(budget.available(), 100);
        assert_eq!(budget.reserve(100).await.bytes(), 100);
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
