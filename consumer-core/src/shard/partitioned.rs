//! Key parallelism: several `process` calls per shard at once, each item's changes in order.
//!
//! With `with_key_parallelism(n)` every shard has `n` partitions, each with its own
//! processor and queue; a record goes to the partition of a hash of its keys
//! ([`partition_of`]). A partition starts its next batch as soon as it finished the last,
//! so a slow item holds up only its own partition. The shard checkpoints at the low
//! watermark ([`Watermark`]): the last record up to which every record is done.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::page::Fetched;
use super::progress::Progress;
use super::session::{Gathered, Session};
use crate::budget::{Reservation, record_cost};
use crate::callback::{Callbacks, Interrupted};
use crate::checkpointer::Checkpointer;
use crate::processor::{ProcessorFactory, RecordProcessor};
use crate::runtime::ShardOutcome;

/// With key parallelism, how many records past the checkpoint (done or not) a shard takes
/// in while one partition is behind: bounds the bookkeeping of a partition stuck on an item.
pub(crate) const MAX_AHEAD_OF_CHECKPOINT: usize = 100_000;

/// With key parallelism, the share of the worker's memory budget (1/n) past which a shard
/// takes in no more pages (its partitions go on with what they have). Records are paid for until they are done, so without this a
/// partition stuck on an item collected its share of every page and held the whole
/// budget: every shard of the worker stalled.
pub(crate) const MAX_BUDGET_SHARE: u64 = 4;

/// Key parallelism's bookkeeping: the records taken in and not yet below the checkpoint, in
/// the order taken in, whether each is done, and the pages' shares of the memory budget.
#[derive(Default)]
pub(crate) struct Watermark {
    /// From index `base` on: each record, whether it is done, its page.
    order: VecDeque<(Arc<Record>, bool, usize)>,
    base: usize,
    /// Per page still held: its records not done, what they cost, and the page's budget
    /// (shrunk to that cost as its records are done).
    pages: HashMap<usize, PageHeld>,
    next_page: usize,
}

/// A page's records not done yet, and the share of the budget they hold.
struct PageHeld {
    left: usize,
    cost: u64,
    reservation: Option<Reservation>,
}

/// A partition's queue: each record with its index in the order taken in.
pub(crate) type Queue = VecDeque<(usize, Arc<Record>)>;

impl Watermark {
    /// Records taken in across the partitions' queues (by key), with the page's budget.
    pub(crate) fn take_in(
        &mut self,
        records: Vec<Arc<Record>>,
        reservation: Option<Reservation>,
        queues: &mut [Queue],
    ) {
        if records.is_empty() {
            return;
        }
        let page = self.next_page;
        self.next_page += 1;
        let cost = records.iter().map(|r| record_cost(r)).sum();
        self.pages.insert(
            page,
            PageHeld {
                left: records.len(),
                cost,
                reservation,
            },
        );
        for record in records {
            let index = self.base + self.order.len();
            let partition = partition_of(&record, queues.len());
            self.order.push_back((record.clone(), false, page));
            queues[partition].push_back((index, record));
        }
    }

    /// Records taken in and not yet below the checkpoint.
    pub(crate) fn tracked(&self) -> usize {
        self.order.len()
    }

    /// What the records taken in and not done yet cost the budget.
    pub(crate) fn held(&self) -> u64 {
        self.pages.values().map(|page| page.cost).sum()
    }

    /// The records at `indices` are done; returns the records the watermark moved past (the
    /// longest done prefix grew by them), in order. A page's budget is given back as its
    /// records are done, each record's share (so a partition stuck on an item holds only
    /// what its own records cost).
    pub(crate) fn done(&mut self, indices: &[usize]) -> Vec<Arc<Record>> {
        for &index in indices {
            let Some(entry) = index
                .checked_sub(self.base)
                .and_then(|at| self.order.get_mut(at))
            else {
                continue;
            };
            if entry.1 {
                continue;
            }
            entry.1 = true;
            if let Some(held) = self.pages.get_mut(&entry.2) {
                held.left -= 1;
                held.cost = held.cost.saturating_sub(record_cost(&entry.0));
                if held.left == 0 {
                    self.pages.remove(&entry.2);
                } else if let Some(reservation) = &mut held.reservation {
                    reservation.shrink_to(held.cost);
                }
            }
        }
        let mut passed = Vec::new();
        while self.order.front().is_some_and(|(_, done, _)| *done) {
            if let Some((record, _, _)) = self.order.pop_front() {
                passed.push(record);
            }
            self.base += 1;
        }
        passed
    }
}

/// The partition of `record` among `n`: a hash of its key attributes (names sorted), so
/// every change of one item goes to the same partition.
pub(crate) fn partition_of(record: &Record, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if let Some(keys) = record.dynamodb().and_then(|d| d.keys.as_ref()) {
        let mut names: Vec<&String> = keys.keys().collect();
        names.sort_unstable();
        for name in names {
            name.hash(&mut hasher);
            match &keys[name] {
                AttributeValue::S(text) | AttributeValue::N(text) => text.hash(&mut hasher),
                AttributeValue::B(blob) => blob.as_ref().hash(&mut hasher),
                other => format!("{other:?}").hash(&mut hasher),
            }
        }
    }
    (hasher.finish() % n as u64) as usize
}

impl<F: ProcessorFactory> Session<'_, F> {
    /// Key parallelism: every partition has its own queue and its own processor
    /// (`self.processor` for partition 0; each with a checkpointer that writes nothing) and
    /// starts its next batch as soon as it finished the last, while pages keep coming in:
    /// a slow item holds up only its own partition. The shard checkpoints at the highest
    /// sequence number below which every record is done (the low watermark); a page's share
    /// of the memory budget is given back once all its records are done. Returns once
    /// everything taken in is done, with what came from the fetch task that is not records;
    /// on release, the batches running finish and nothing new starts. With a batching window,
    /// a free partition's batch waits as [`super::batching`] says (not once no more pages
    /// can come in: the source ended, or the shard holds its share of the budget).
    pub(crate) async fn deliver_partitioned(
        &mut self,
        extra: &mut [F::Processor],
        rx: &mut mpsc::Receiver<Fetched>,
        batch: &mut Gathered,
        max: usize,
    ) -> Result<Option<Fetched>, Interrupted> {
        type Ran<'r, P> = (
            usize,
            &'r mut P,
            Checkpointer,
            Vec<usize>,
            Result<(), Interrupted>,
        );
        let n = extra.len() + 1;
        let batching = self.batching_window();
        let (task, callbacks) = (self.task, self.callbacks);
        let signals = callbacks.signals();
        let mut window = Watermark::default();
        let mut queues: Vec<Queue> = vec![VecDeque::new(); n];
        let mut idle: Vec<Option<(&mut F::Processor, Checkpointer)>> =
            std::iter::once(&mut *self.processor)
                .chain(extra.iter_mut())
                .map(|processor| Some((processor, self.checkpointer.detached())))
                .collect();
        let mut running = FuturesUnordered::<
            Pin<Box<dyn Future<Output = Ran<'_, F::Processor>> + Send + '_>>,
        >::new();
        let (records, reservation) = batch.take();
        window.take_in(records, reservation, &mut queues);
        let (mut carried, mut closed, mut stopping) = (None, false, false);
        // With a batching window: since when each partition's queue has been filling.
        let mut filling: Vec<Option<Instant>> = vec![None; n];
        let budget_share = task.runtime.budget.total() / MAX_BUDGET_SHARE;
        loop {
            let now = Instant::now();
            // Whether more pages can come in (some partition with less than a batch waiting
            // aside): a partition stuck on an item collects its share meanwhile, up to the
            // bounds of `MAX_AHEAD_OF_CHECKPOINT` and of a share of the memory budget, so
            // that it never holds up the worker's other shards.
            let held = window.held();
            let more_may_come = !closed
                && carried.is_none()
                && !stopping
                && (held == 0 || held < budget_share)
                && window.tracked() < MAX_AHEAD_OF_CHECKPOINT;
            for (i, queue) in queues.iter_mut().enumerate() {
                if queue.is_empty() {
                    continue;
                }
                // Counted from when records started waiting, busy partition or not.
                let since = *filling[i].get_or_insert(now);
                if stopping
                    || idle[i].is_none()
                    || batching.waits(queue.len(), max, since, now, more_may_come)
                {
                    continue;
                }
                let Some((processor, mut checkpointer)) = idle[i].take() else {
                    continue;
                };
                let take = queue.len().min(max);
                let (indices, mut records): (Vec<usize>, VecDeque<Arc<Record>>) =
                    queue.drain(..take).unzip();
                if queue.is_empty() {
                    filling[i] = None;
                }
                running.push(Box::pin(async move {
                    let result = Session::new(task, &mut *processor, &mut checkpointer, callbacks)
                        .deliver_all(&mut records, max)
                        .await;
                    (i, processor, checkpointer, indices, result)
                }));
            }
            // Since when the first partition whose batching window ends, among those waiting
            // to fill, has been filling (none once stopping: nothing new starts, and a due
            // timer would spin; seed 224).
            let window_ends = (0..n)
                .filter(|_| !stopping)
                .filter(|&i| idle[i].is_some() && !queues[i].is_empty())
                .filter_map(|i| filling[i])
                .min();
            if running.is_empty() && (stopping || queues.iter().all(VecDeque::is_empty)) {
                return if stopping {
                    Err(Interrupted::Release)
                } else {
                    Ok(carried)
                };
            }
            // More pages while some partition has less than a batch waiting.
            let intake = more_may_come && queues.iter().any(|queue| queue.len() < max);
            tokio::select! {
                biased;
                _ = signals.lost.cancelled() => return Err(Interrupted::Lost),
                _ = signals.release.cancelled(), if !stopping => stopping = true,
                () = batching.closes(window_ends.unwrap_or(now)), if window_ends.is_some() => {}
                Some((i, processor, checkpointer, indices, result)) =
                    running.next(), if !running.is_empty() => {
                    idle[i] = Some((processor, checkpointer));
                    match result {
                        Ok(()) => {}
                        // A partition told to stop in its retry pause stops; the others'
                        // batches still running finish first (dropping them mid-way would
                        // cut their `process` calls short).
                        Err(Interrupted::Release) => {
                            stopping = true;
                            continue;
                        }
                        Err(interrupted) => return Err(interrupted),
                    }
                    let passed = window.done(&indices);
                    Progress::new(task, self.checkpointer, &mut self.page_ends).done(&passed).await?;
                }
                next = rx.recv(), if intake => match next {
                    Some(Fetched::Records(page)) => {
                        let (records, reservation) = Progress::new(task, self.checkpointer, &mut self.page_ends).take_in(page).await?;
                        window.take_in(records, Some(reservation), &mut queues);
                    }
                    // Only a hint to flush; the watermark checkpoints anyway.
                    Some(Fetched::Idle) => {}
                    Some(other) => carried = Some(other),
                    None => closed = true,
                },
            }
        }
    }
}

/// The processors of partitions 1..n hear how the shard ended, each given at most the
/// shutdown timeout: `shard_ended`, `shutdown_requested` or `lease_lost`.
pub(crate) async fn tell_extra_partitions<P: RecordProcessor>(
    extra: &mut [P],
    checkpointer: &mut Checkpointer,
    outcome: &ShardOutcome,
    callbacks: &Callbacks,
) {
    for processor in extra {
        let mut detached = checkpointer.detached();
        let told = async {
            match outcome {
                ShardOutcome::Ended => {
                    let _ = processor.shard_ended(&mut detached).await;
                }
                ShardOutcome::Released | ShardOutcome::Failed(_) => {
                    let _ = processor.shutdown_requested(&mut detached).await;
                }
                ShardOutcome::LeaseLost => processor.lease_lost().await,
            }
        };
        let name = match outcome {
            ShardOutcome::Ended => "shard_ended",
            ShardOutcome::Released | ShardOutcome::Failed(_) => "shutdown_requested",
            ShardOutcome::LeaseLost => "lease_lost",
        };
        callbacks.last_word(name, told).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use aws_sdk_dynamodbstreams::types::StreamRecord;

    use super::*;
    use crate::budget::ByteBudget;

    fn record(seq: u64, key: &str) -> Arc<Record> {
        let keys = HashMap::from([("pk".to_owned(), AttributeValue::S(key.to_owned()))]);
        Arc::new(
            Record::builder()
                .dynamodb(
                    StreamRecord::builder()
                        .sequence_number(format!("{seq:021}"))
                        .set_keys(Some(keys))
                        .build(),
                )
                .build(),
        )
    }

    /// The sequence numbers (as numbers) of records the watermark passed.
    fn seqs(passed: Vec<Arc<Record>>) -> Vec<u64> {
        passed
            .iter()
            .map(|r| {
                r.dynamodb()
                    .unwrap()
                    .sequence_number()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    /// The indices queued per partition, in order.
    fn indices(queues: &[Queue]) -> Vec<Vec<usize>> {
        queues
            .iter()
            .map(|q| q.iter().map(|(i, _)| *i).collect())
            .collect()
    }

    #[test]
    fn the_watermark_is_the_end_of_the_longest_done_prefix() {
        let mut window = Watermark::default();
        let mut queues: Vec<Queue> = vec![VecDeque::new(); 1];
        window.take_in((1..=5).map(|i| record(i, "k")).collect(), None, &mut queues);
        assert_eq!(window.tracked(), 5);
        // Done out of order: nothing below a record that is not done moves the mark.
        assert_eq!(seqs(window.done(&[1, 3])), [0; 0]);
        assert_eq!(seqs(window.done(&[0])), [1, 2]);
        assert_eq!(window.tracked(), 3);
        assert_eq!(seqs(window.done(&[2])), [3, 4]);
        // An index below the watermark (done twice) or past the end changes nothing.
        assert_eq!(seqs(window.done(&[0, 99])), [0; 0]);
        assert_eq!(seqs(window.done(&[4])), [5]);
        assert_eq!(window.tracked(), 0);
    }

    #[test]
    fn indices_go_on_across_pages_and_records_pass_in_the_order_taken_in() {
        let mut window = Watermark::default();
        let mut queues: Vec<Queue> = vec![VecDeque::new(); 1];
        window.take_in(vec![record(1, "a"), record(2, "b")], None, &mut queues);
        assert_eq!(seqs(window.done(&[0, 1])), [1, 2]);
        // A snapshot record (no sequence number) passes by identity.
        let unnumbered = Arc::new(Record::builder().build());
        window.take_in(vec![unnumbered.clone(), record(3, "a")], None, &mut queues);
        assert_eq!(indices(&queues), [vec![0, 1, 2, 3]]);
        assert!(window.done(&[3]).is_empty());
        let passed = window.done(&[2]);
        assert!(Arc::ptr_eq(&passed[0], &unnumbered));
        assert_eq!(passed.len(), 2);
    }

    #[tokio::test]
    async fn a_records_share_of_the_budget_comes_back_once_it_is_done() {
        let (a, b, c) = (record(1, "a"), record(2, "b"), record(3, "c"));
        let cost = |r: &Arc<Record>| record_cost(r);
        let total = cost(&a) + cost(&b) + cost(&c);
        let budget = ByteBudget::new(total);
        let mut window = Watermark::default();
        let mut queues: Vec<Queue> = vec![VecDeque::new(); 2];
        let first = budget.reserve(cost(&a) + cost(&b)).await;
        window.take_in(vec![a.clone(), b.clone()], Some(first), &mut queues);
        let second = budget.reserve(cost(&c)).await;
        window.take_in(vec![c.clone()], Some(second), &mut queues);
        assert_eq!(budget.available(), 0);
        // The second page is done before the first: its bytes come back, the mark stays.
        assert_eq!(seqs(window.done(&[2])), [0; 0]);
        assert_eq!(budget.available(), cost(&c) as i64);
        // Record 2 (its item stuck, say) holds only its own share of the first page.
        assert_eq!(seqs(window.done(&[0])), [1]);
        assert_eq!(budget.available(), (cost(&a) + cost(&c)) as i64);
        // Done twice changes nothing.
        assert_eq!(seqs(window.done(&[0])), [0; 0]);
        assert_eq!(budget.available(), (cost(&a) + cost(&c)) as i64);
        assert_eq!(seqs(window.done(&[1])), [2, 3]);
        assert_eq!(budget.available(), total as i64);
    }

    #[test]
    fn an_items_changes_all_go_to_one_partition() {
        let n = 8;
        let a: Vec<usize> = (1..=20)
            .map(|i| partition_of(&record(i, "item-a"), n))
            .collect();
        assert!(a.iter().all(|p| *p == a[0] && *p < n));
        // Keys spread: 64 items do not all land in one partition.
        let spread: std::collections::HashSet<usize> = (0..64)
            .map(|i| partition_of(&record(1, &format!("item-{i}")), n))
            .collect();
        assert!(spread.len() > 1, "{spread:?}");
        // Attribute order does not matter: the names are sorted before hashing.
        let two_keys = |first: (&str, &str), second: (&str, &str)| {
            let keys = HashMap::from([
                (first.0.to_owned(), AttributeValue::S(first.1.to_owned())),
                (second.0.to_owned(), AttributeValue::N(second.1.to_owned())),
            ]);
            Record::builder()
                .dynamodb(StreamRecord::builder().set_keys(Some(keys)).build())
                .build()
        };
        assert_eq!(
            partition_of(&two_keys(("pk", "x"), ("sk", "1")), n),
            partition_of(&two_keys(("pk", "x"), ("sk", "1")), n)
        );
    }
}
