//! One shard under one lease: fetch, decode, deliver, checkpoint, finish.
//!
//! A shard consumer runs while its worker owns the lease. Pages are fetched by a separate
//! task into a small bounded channel, so the next page is on its way while the processor
//! works on the current one. The consumer ends in one of four ways: the shard ended (it wrote
//! `SHARD_END` and created the children's leases), it was stopped gracefully (shutdown or
//! handoff: checkpoints flushed, lease released), the lease was lost (no further writes), or
//! an error it cannot get past.

use std::collections::VecDeque;
use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use backon::BackoffBuilder;
use checkpoint_store::{Checkpoint, Lease, LeaseKey, LeaseStore, Ownership, SequenceNumber};
use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{ByteBudget, FULL_PAGE_COST, MIN_RESERVATION, Reservation, page_cost};
use crate::change::{Change, ChangeBatch, decode_prefix};
use crate::checkpointer::Checkpointer;
use crate::config::{ConsumerConfig, TrimmedDataPolicy};
use crate::delivery::{DeliveryConfig, Route};
use crate::error::{BoxError, Error, Result};
use crate::events::{
    BatchProcessed, DataTrimmed, DecodeFailed, Event, LeaseLost, LeaseReleased, ProcessingFailed,
    RecordsFailed, RecordsFiltered, RecordsSkippedBeforeStart, ShardEnded,
};
use crate::failure::{BatchFailure, FailedRecords, FailureReason, sequence_text};
use crate::poll_loop::{Page, ShardReader};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};
use crate::retry;
use crate::shard_sync::create_lease_if_absent;
use crate::start_time::StartTimeSkip;
use crate::streams::{ApiErrorKind, ShardInfo, StartPosition, StreamsApi};

/// How a shard consumer ended.
#[derive(Debug)]
pub(crate) enum ShardOutcome {
    /// The shard was read to its end; `SHARD_END` is stored and the children have leases.
    Ended,
    /// Stopped on request: checkpoints flushed, lease released.
    Released,
    /// Another worker owns the lease now.
    LeaseLost,
    /// Stopped by an error it cannot get past; the lease is kept (and retried later).
    Failed(Error),
}

/// The signals a worker sends a running shard consumer.
#[derive(Clone, Debug, Default)]
pub(crate) struct ShardSignals {
    /// Finish the current batch, then flush, release and stop (shutdown or handoff).
    pub release: CancellationToken,
    /// Stop at once without writing: the lease is gone (fenced, or taken by another).
    pub lost: CancellationToken,
}

/// What a worker and all its shard consumers share.
pub(crate) struct Shared<F> {
    pub api: Arc<dyn StreamsApi>,
    pub store: Arc<dyn LeaseStore>,
    pub factory: F,
    pub config: ConsumerConfig,
    pub worker_id: String,
    /// Health and lag for operators (`observability`).
    pub telemetry: Arc<crate::observability::Telemetry>,
    /// Bytes of fetched pages not yet delivered, across every shard of the worker.
    pub budget: ByteBudget,
}

/// Everything one shard consumer needs.
pub(crate) struct ShardConsumer<F: ProcessorFactory> {
    pub shared: Arc<Shared<F>>,
    pub lease: Lease,
    pub ownership: Ownership,
    pub table: Option<String>,
}

/// What the fetch task hands over.
enum Fetched {
    /// A page, and the bytes of the worker's budget it holds until it was delivered.
    Records(FetchedPage),
    Idle,
    ShardEnd,
    Trimmed(DataLoss),
    /// The shard no longer exists (trimmed away entirely): its records are lost to us and
    /// it is finished, so its children can run.
    Vanished(DataLoss),
    Failed(Error),
}

/// A page as the fetch task hands it over: its reservation still holds the estimate it was
/// fetched under. The receiver settles it to the page's cost, off the fetch task's path, so
/// the walk over every attribute overlaps the next GetRecords call instead of delaying it.
#[derive(Debug)]
struct FetchedPage {
    records: Vec<Record>,
    reservation: Reservation,
    /// What the shard's next page is expected to cost, read by the fetch task.
    expected: Arc<AtomicU64>,
}

impl FetchedPage {
    /// Settles the page's share of the budget to its cost; the records, shared.
    fn receive(self) -> (Vec<Arc<Record>>, Reservation) {
        let Self {
            records,
            mut reservation,
            expected,
        } = self;
        let cost = page_cost(&records);
        // Pages of a shard vary: a margin keeps overdrafts rare.
        expected.store((cost + cost / 4).max(MIN_RESERVATION), Ordering::Relaxed);
        reservation.settle(cost);
        (records.into_iter().map(Arc::new).collect(), reservation)
    }
}

/// Why delivery stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interrupted {
    /// Shutdown or handoff: finish, flush, release.
    Release,
    /// The lease is gone (or the worker fenced): stop without writing.
    Lost,
    /// Shutdown or handoff, and the shutdown timeout passed while a callback ran: the
    /// callback was dropped; flush what succeeded and release.
    ShutdownTimedOut,
}

impl<F: ProcessorFactory> ShardConsumer<F> {
    pub(crate) async fn run(self, signals: ShardSignals) -> ShardOutcome {
        if crate::snapshot::is_segment(&self.lease.key) {
            return crate::snapshot::run_segment(self, signals).await;
        }
        let key = self.lease.key.clone();
        let lag = &self.shared.telemetry.lag;
        let _lag_tracked = lag.track(&key);
        let ctx = ShardContext {
            table: self.table.clone(),
            stream_arn: key.stream.clone(),
            shard_id: key.shard_id.clone(),
            parent_shard_ids: self.lease.parent_shard_ids.clone(),
            worker_id: self.shared.worker_id.clone(),
            lease_owner: self.ownership.owner.clone(),
            lease_epoch: self.ownership.epoch,
            resumed_from: self.lease.checkpoint.clone(),
        };
        let Some(start) = start_position(&self.lease.checkpoint) else {
            return ShardOutcome::Ended;
        };
        let stored = match self.store_latest_start().await {
            Ok(stored) => stored,
            Err(outcome) => return outcome,
        };
        let mut processor = self.shared.factory.create(&ctx);
        let mut checkpointer = Checkpointer::new(
            self.shared.store.clone(),
            key.clone(),
            self.ownership.clone(),
            stored,
            self.shared.config.checkpoint_interval,
        );

        let stop_fetch = signals.lost.child_token();
        let (tx, mut rx) = mpsc::channel(self.shared.config.prefetch_pages.max(1));
        let reader = ShardReader::new(
            self.shared.api.clone(),
            key.stream.clone(),
            key.shard_id.clone(),
            start,
            self.shared.config.poll.clone(),
        );
        let fetcher = tokio::spawn(fetch(
            reader,
            self.shared.budget.clone(),
            tx,
            self.shared.config.trimmed_data_policy,
            stop_fetch.clone(),
        ));
        let _stop_fetch_on_exit = stop_fetch.drop_guard();

        let shutdown = ShutdownClock::new(self.shared.config.delivery.shutdown_timeout);
        // With key parallelism, the processors of partitions 1..n (partition 0 is `processor`).
        let partitions = self.shared.config.delivery.key_parallelism.max(1);
        let mut extra: Vec<F::Processor> = (1..partitions)
            .map(|_| self.shared.factory.create(&ctx))
            .collect();
        for processor in &mut extra {
            let mut detached = checkpointer.detached();
            let mut session = Session {
                consumer: &self,
                processor,
                checkpointer: &mut detached,
                signals: &signals,
                shutdown: &shutdown,
            };
            if let Err(interrupted) = session.initialize(&ctx).await {
                return session.finish(interrupted).await;
            }
        }
        let mut session = Session {
            consumer: &self,
            processor: &mut processor,
            checkpointer: &mut checkpointer,
            signals: &signals,
            shutdown: &shutdown,
        };
        if let Err(interrupted) = session.initialize(&ctx).await {
            return session.finish(interrupted).await;
        }
        let max_batch = self
            .shared
            .config
            .delivery
            .max_batch_size
            .unwrap_or(self.shared.config.poll.batch_limit as usize)
            .max(1);
        let mut carried: Option<Fetched> = None;
        let mut batch: VecDeque<Arc<Record>> = VecDeque::new();
        // The budget the pages in `batch` hold, given back once they were delivered.
        let mut held: Vec<Reservation> = Vec::new();
        let mut skip = StartTimeSkip::new(
            &self.lease.checkpoint,
            self.shared.config.creation_time_margin,
        );
        let outcome = loop {
            let next = match carried.take() {
                Some(next) => Some(next),
                None => tokio::select! {
                    biased;
                    _ = signals.lost.cancelled() => break session.finish(Interrupted::Lost).await,
                    _ = signals.release.cancelled() => break session.finish(Interrupted::Release).await,
                    next = rx.recv() => next,
                },
            };
            let step = match next {
                Some(Fetched::Records(page)) => {
                    let (mut records, reservation) = page.receive();
                    lag.fetched(&key, &records);
                    if skip.is_active()
                        && let Err(interrupted) =
                            session.skip_before_start(&mut skip, &mut records).await
                    {
                        break session.finish(interrupted).await;
                    }
                    if records.is_empty() {
                        continue;
                    }
                    batch.extend(records);
                    held.push(reservation);
                    if extra.is_empty() {
                        match session
                            .gather(&mut rx, &mut batch, &mut held, max_batch)
                            .await
                        {
                            Ok(next) => carried = next,
                            Err(interrupted) => break session.finish(interrupted).await,
                        }
                        session.deliver_all(&mut batch, max_batch).await
                    } else {
                        session
                            .deliver_partitioned(
                                &mut rx, &mut batch, &mut held, max_batch, &mut extra,
                            )
                            .await
                            .map(|next| carried = next)
                    }
                }
                Some(Fetched::Idle) => session.flush_if_due().await,
                Some(Fetched::Trimmed(loss)) => session.data_lost(&loss).await,
                Some(Fetched::Vanished(loss)) => match session.data_lost(&loss).await {
                    Ok(()) => break session.end_shard().await,
                    Err(interrupted) => Err(interrupted),
                },
                Some(Fetched::ShardEnd) => break session.end_shard().await,
                Some(Fetched::Failed(error)) => break ShardOutcome::Failed(error),
                None => {
                    break ShardOutcome::Failed(Error::Internal {
                        shard_id: key.shard_id.clone(),
                        problem: "the fetch task stopped unexpectedly".into(),
                    });
                }
            };
            held.clear();
            if let Err(interrupted) = step {
                break session.finish(interrupted).await;
            }
        };
        fetcher.abort();
        tell_extra_partitions(&mut extra, &mut checkpointer, &outcome, &self.shared.config).await;
        outcome
    }
}

/// With key parallelism, how many records past the checkpoint (done or not) a shard takes
/// in while one partition is behind: bounds the bookkeeping of a partition stuck on an item.
const MAX_AHEAD_OF_CHECKPOINT: usize = 100_000;

/// Key parallelism's bookkeeping: the records taken in and not yet below the checkpoint, in
/// stream order, whether each is done, and the pages' shares of the memory budget.
#[derive(Default)]
struct Watermark {
    /// From index `base` on: each record's sequence number, whether it is done, its page.
    order: VecDeque<(Option<SequenceNumber>, bool, usize)>,
    base: usize,
    /// Per page still held: records not done, and its budget.
    pages: std::collections::HashMap<usize, (usize, Option<Reservation>)>,
    next_page: usize,
}

impl Watermark {
    /// Records taken in across the partitions' queues (by key), with the page's budget.
    fn take_in(
        &mut self,
        records: Vec<Arc<Record>>,
        reservation: Option<Reservation>,
        queues: &mut [VecDeque<(usize, Arc<Record>)>],
    ) {
        if records.is_empty() {
            return;
        }
        let page = self.next_page;
        self.next_page += 1;
        self.pages.insert(page, (records.len(), reservation));
        for record in records {
            let index = self.base + self.order.len();
            self.order.push_back((record_seq(&record), false, page));
            queues[partition_of(&record, queues.len())].push_back((index, record));
        }
    }

    /// Records taken in and not yet below the checkpoint.
    fn tracked(&self) -> usize {
        self.order.len()
    }

    /// The records at `indices` are done; returns the new watermark if it moved: the
    /// sequence number of the last record of the longest done prefix.
    fn done(&mut self, indices: &[usize]) -> Option<SequenceNumber> {
        for &index in indices {
            let Some(entry) = self.order.get_mut(index - self.base) else {
                continue;
            };
            entry.1 = true;
            if let Some((left, reservation)) = self.pages.get_mut(&entry.2) {
                *left -= 1;
                if *left == 0 {
                    drop(reservation.take());
                    self.pages.remove(&entry.2);
                }
            }
        }
        let mut moved = None;
        while self.order.front().is_some_and(|(_, done, _)| *done) {
            if let Some((seq, _, _)) = self.order.pop_front() {
                moved = seq.or(moved);
            }
            self.base += 1;
        }
        moved
    }
}

/// The processors of partitions 1..n hear how the shard ended, each given at most the
/// shutdown timeout: `shard_ended`, `shutdown_requested` or `lease_lost`.
async fn tell_extra_partitions<P: RecordProcessor>(
    extra: &mut [P],
    checkpointer: &mut Checkpointer,
    outcome: &ShardOutcome,
    config: &ConsumerConfig,
) {
    let limit = config.delivery.shutdown_timeout;
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
        let _ = tokio::time::timeout(limit, AssertUnwindSafe(told).catch_unwind()).await;
    }
}

/// The partition of `record` among `n`: a hash of its key attributes (names sorted), so
/// every change of one item goes to the same partition.
fn partition_of(record: &Record, n: usize) -> usize {
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

impl<F: ProcessorFactory> ShardConsumer<F> {
    /// A `LATEST` lease stores the time it starts from (`Checkpoint::Since`) before its
    /// iterator is opened: if it moves before delivering anything, the next owner reads
    /// from TRIM_HORIZON and skips only what was created before that time, instead of
    /// reopening at a newer tip and missing what was written in between. One write, on the
    /// first owner only. Returns the checkpoint now stored.
    async fn store_latest_start(&self) -> Result<Checkpoint, ShardOutcome> {
        if self.lease.checkpoint != Checkpoint::Latest {
            return Ok(self.lease.checkpoint.clone());
        }
        let since = Checkpoint::since(self.shared.api.now());
        let written = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            self.shared
                .store
                .checkpoint(&self.lease.key, &self.ownership, &since)
        })
        .await;
        match written {
            Ok(_) => Ok(since),
            Err(error) if error.is_lease_lost() => Err(ShardOutcome::LeaseLost),
            Err(error) => Err(ShardOutcome::Failed(error.into())),
        }
    }

    async fn write_shard_end(&self) -> Result<()> {
        let key = &self.lease.key;
        retry::call(retry::lease_store(), retry::is_retryable_store, || {
            self.shared
                .store
                .checkpoint(key, &self.ownership, &Checkpoint::ShardEnd)
        })
        .await
        .map(|_| ())
        .map_err(Error::from)
    }

    async fn create_child_leases(&self) -> Result<usize> {
        let key = &self.lease.key;
        let children: Vec<ShardInfo> =
            retry::call(retry::describe_stream(), retry::is_retryable_api, || {
                self.shared.api.child_shards(&key.stream, &key.shard_id)
            })
            .await?;
        // Children of a shard that started at a time skip what is older too (a no-op once
        // the parent delivered anything: its children's records are newer).
        let start = match &self.lease.checkpoint {
            Checkpoint::Since(time) => Checkpoint::Since(*time),
            _ => Checkpoint::TrimHorizon,
        };
        for child in &children {
            let lease = crate::shard_sync::new_shard_lease(
                self.shared.api.as_ref(),
                LeaseKey::new(key.stream.clone(), child.shard_id.clone()),
                start.clone(),
                child.parent_shard_id.iter().cloned().collect(),
            );
            create_lease_if_absent(self.shared.store.as_ref(), &lease).await?;
        }
        Ok(children.len())
    }
}

/// The processor and checkpointer of a running shard, and what may interrupt them.
struct Session<'a, F: ProcessorFactory> {
    consumer: &'a ShardConsumer<F>,
    processor: &'a mut F::Processor,
    checkpointer: &'a mut Checkpointer,
    signals: &'a ShardSignals,
    shutdown: &'a ShutdownClock,
}

/// How a user callback ended when nothing stopped it.
enum Called<T> {
    Returned(T),
    Panicked,
    TimedOut(Duration),
}

/// A failed `process` call.
struct AttemptFailed {
    /// What the records go to the handler as, if this was their last attempt.
    reason: FailureReason,
    error: Error,
    /// A partial batch response: the first record that did not succeed.
    at: Option<SequenceNumber>,
}

/// The shutdown timeout, counted from the moment shutdown (or a handoff) was asked for.
struct ShutdownClock {
    timeout: Duration,
    deadline: OnceLock<Instant>,
}

impl ShutdownClock {
    fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: OnceLock::new(),
        }
    }

    /// Completes once a release was asked for and the shutdown timeout passed since.
    async fn expired(&self, signals: &ShardSignals) {
        signals.release.cancelled().await;
        let deadline = *self.deadline.get_or_init(|| Instant::now() + self.timeout);
        tokio::time::sleep_until(deadline).await;
    }
}

/// Runs a user callback raced against lease loss (and fencing), the shutdown timeout and
/// `timeout`: whichever comes first drops the callback's future. A panic is caught.
async fn guarded<T>(
    signals: &ShardSignals,
    shutdown: &ShutdownClock,
    timeout: Option<Duration>,
    call: impl Future<Output = T>,
) -> Result<Called<T>, Interrupted> {
    let timed_out = async {
        match timeout {
            Some(limit) => {
                tokio::time::sleep(limit).await;
                limit
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = signals.lost.cancelled() => Err(Interrupted::Lost),
        _ = shutdown.expired(signals) => Err(Interrupted::ShutdownTimedOut),
        returned = AssertUnwindSafe(call).catch_unwind() => Ok(match returned {
            Ok(value) => Called::Returned(value),
            Err(_) => Called::Panicked,
        }),
        limit = timed_out => Ok(Called::TimedOut(limit)),
    }
}

impl<F: ProcessorFactory> Session<'_, F> {
    fn key(&self) -> &LeaseKey {
        &self.consumer.lease.key
    }

    fn delivery(&self) -> &DeliveryConfig {
        &self.consumer.shared.config.delivery
    }

    /// `initialize`, retried (with the processing backoff) until it returns `Ok`.
    async fn initialize(&mut self, ctx: &ShardContext) -> Result<(), Interrupted> {
        let mut backoff = self.processing_backoff();
        loop {
            let called = guarded(
                self.signals,
                self.shutdown,
                None,
                self.processor.initialize(ctx),
            )
            .await?;
            match hook_result(&ctx.shard_id, "initialize", called) {
                Ok(()) => return Ok(()),
                Err(error) => self.pause_after_failure(&error, 0, &mut backoff).await?,
            }
        }
    }

    /// Tells the processor about lost data (trimmed records, a vanished shard).
    async fn data_lost(&mut self, loss: &DataLoss) -> Result<(), Interrupted> {
        guarded(
            self.signals,
            self.shutdown,
            None,
            self.processor.data_lost(loss),
        )
        .await
        .map(|_| ())
    }

    /// Waits for more pages until `batch` holds `max` records: only pages already fetched
    /// without a batching window, else up to the window. Anything that is not records
    /// ends the wait and is returned, to be handled after the batch.
    async fn gather(
        &mut self,
        rx: &mut mpsc::Receiver<Fetched>,
        batch: &mut VecDeque<Arc<Record>>,
        held: &mut Vec<Reservation>,
        max: usize,
    ) -> Result<Option<Fetched>, Interrupted> {
        let window = self.delivery().batching_window;
        let signals = self.signals;
        let deadline = Instant::now() + window;
        while batch.len() < max {
            let next = if window.is_zero() {
                match rx.try_recv() {
                    Ok(next) => next,
                    Err(_) => return Ok(None),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = signals.lost.cancelled() => return Err(Interrupted::Lost),
                    _ = signals.release.cancelled() => return Err(Interrupted::Release),
                    _ = tokio::time::sleep_until(deadline) => return Ok(None),
                    next = rx.recv() => match next {
                        Some(next) => next,
                        None => return Ok(None),
                    },
                }
            };
            match next {
                Fetched::Records(page) => {
                    let (records, reservation) = page.receive();
                    let lag = &self.consumer.shared.telemetry.lag;
                    lag.fetched(self.key(), &records);
                    batch.extend(records);
                    held.push(reservation);
                }
                // Only a hint to flush; the batch will checkpoint anyway.
                Fetched::Idle => {}
                other => return Ok(Some(other)),
            }
        }
        Ok(None)
    }

    /// Delivers what was gathered, `max` records at a time.
    async fn deliver_all(
        &mut self,
        batch: &mut VecDeque<Arc<Record>>,
        max: usize,
    ) -> Result<(), Interrupted> {
        while !batch.is_empty() {
            let take = batch.len().min(max);
            let records: Vec<Arc<Record>> = batch.drain(..take).collect();
            self.deliver(&records).await?;
        }
        Ok(())
    }

    /// Key parallelism: every partition has its own queue and its own processor
    /// (`self.processor` for partition 0; each with a checkpointer that writes nothing) and
    /// starts its next batch as soon as it finished the last, while pages keep coming in:
    /// a slow item holds up only its own partition. The shard checkpoints at the highest
    /// sequence number below which every record is done (the low watermark); a page's share
    /// of the memory budget is given back once all its records are done. Returns once
    /// everything taken in is done, with what came from the fetch task that is not records;
    /// on release, the batches running finish and nothing new starts. With a batching window,
    /// a free partition waits up to the window for a full batch (not once nothing more can
    /// come).
    async fn deliver_partitioned(
        &mut self,
        rx: &mut mpsc::Receiver<Fetched>,
        batch: &mut VecDeque<Arc<Record>>,
        held: &mut Vec<Reservation>,
        max: usize,
        extra: &mut [F::Processor],
    ) -> Result<Option<Fetched>, Interrupted> {
        type Ran<'r, P> = (
            usize,
            &'r mut P,
            Checkpointer,
            Vec<usize>,
            Result<(), Interrupted>,
        );
        let n = extra.len() + 1;
        let (consumer, signals, shutdown) = (self.consumer, self.signals, self.shutdown);
        let key = &consumer.lease.key;
        let lag = &consumer.shared.telemetry.lag;
        let mut window = Watermark::default();
        let mut queues: Vec<VecDeque<(usize, Arc<Record>)>> = vec![VecDeque::new(); n];
        let mut idle: Vec<Option<(&mut F::Processor, Checkpointer)>> =
            std::iter::once(&mut *self.processor)
                .chain(extra.iter_mut())
                .map(|processor| Some((processor, self.checkpointer.detached())))
                .collect();
        let mut running = futures::stream::FuturesUnordered::<
            std::pin::Pin<Box<dyn Future<Output = Ran<'_, F::Processor>> + Send + '_>>,
        >::new();
        let mut reservations = held.drain(..);
        window.take_in(batch.drain(..).collect(), reservations.next(), &mut queues);
        // (Only one page comes in here: the rest of `held`, if any, is given back with it.)
        drop(reservations);
        let (mut carried, mut closed, mut stopping) = (None, false, false);
        // With a batching window: since when each partition's queue has been filling.
        let batching = consumer.shared.config.delivery.batching_window;
        let mut filling: Vec<Option<Instant>> = vec![None; n];
        loop {
            let now = Instant::now();
            let more_may_come = !closed && carried.is_none();
            for (i, queue) in queues.iter_mut().enumerate() {
                if queue.is_empty() {
                    continue;
                }
                // Counted from when records started waiting, busy partition or not.
                let since = *filling[i].get_or_insert(now);
                if stopping
                    || idle[i].is_none()
                    || (queue.len() < max && more_may_come && now < since + batching)
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
                    let result = Session {
                        consumer,
                        processor: &mut *processor,
                        checkpointer: &mut checkpointer,
                        signals,
                        shutdown,
                    }
                    .deliver_all(&mut records, max)
                    .await;
                    (i, processor, checkpointer, indices, result)
                }));
            }
            // The first partition whose batching window ends, among those waiting to fill.
            let window_ends = (0..n)
                .filter(|&i| idle[i].is_some() && !queues[i].is_empty())
                .filter_map(|i| filling[i].map(|since| since + batching))
                .min();
            if running.is_empty() && (stopping || queues.iter().all(VecDeque::is_empty)) {
                return if stopping {
                    Err(Interrupted::Release)
                } else {
                    Ok(carried)
                };
            }
            // More pages while some partition has less than a batch waiting (a partition
            // stuck on an item collects its share meanwhile, up to the bounds of
            // `MAX_AHEAD_OF_CHECKPOINT` and the memory budget).
            let intake = !closed
                && carried.is_none()
                && !stopping
                && queues.iter().any(|queue| queue.len() < max)
                && window.tracked() < MAX_AHEAD_OF_CHECKPOINT;
            tokio::select! {
                biased;
                _ = signals.lost.cancelled() => return Err(Interrupted::Lost),
                _ = signals.release.cancelled(), if !stopping => stopping = true,
                () = tokio::time::sleep_until(window_ends.unwrap_or(now)), if window_ends.is_some() => {}
                Some((i, processor, checkpointer, indices, result)) =
                    futures::StreamExt::next(&mut running), if !running.is_empty() => {
                    idle[i] = Some((processor, checkpointer));
                    result?;
                    if let Some(seq) = window.done(&indices) {
                        self.checkpointer.delivered(&seq);
                        lag.processed(key, &seq);
                        if consumer.shared.config.auto_checkpoint
                            && let Err(error) = self.checkpointer.checkpoint_in_background().await
                        {
                            if is_lease_lost(&error) {
                                return Err(Interrupted::Lost);
                            }
                            tracing::warn!(shard_id = %key.shard_id, %error, "checkpoint not written; will retry");
                        }
                    }
                }
                next = rx.recv(), if intake => match next {
                    Some(Fetched::Records(page)) => {
                        let (records, reservation) = page.receive();
                        lag.fetched(key, &records);
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

    /// Delivers consecutive records in order: runs too old for the maximum record age go to
    /// the failure handler; of the others, those the filter keeps go to the processor under
    /// the failure policy (as one batch: filtered records in between do not split it) and
    /// those it drops are counted and checkpointed past.
    async fn deliver(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        if self.delivery().filter.is_none() && self.delivery().max_record_age.is_none() {
            // Nothing to route: every record goes to the processor.
            return self.deliver_run(records).await;
        }
        let now = SystemTime::now();
        let routes: Vec<Route> = records
            .iter()
            .map(|record| self.delivery().route(record, now))
            .collect();
        let mut start = 0;
        while start < records.len() {
            let too_old = routes[start] == Route::TooOld;
            let end = (start..records.len())
                .find(|&i| (routes[i] == Route::TooOld) != too_old)
                .unwrap_or(records.len());
            let run = &records[start..end];
            if too_old {
                let max_age = self.delivery().max_record_age.unwrap_or_default();
                let error = format!(
                    "older than the maximum record age ({}) when fetched",
                    humanize(max_age)
                );
                self.give_up(run, FailureReason::TooOld, error).await?;
            } else {
                let kept: Vec<Arc<Record>> = run
                    .iter()
                    .zip(&routes[start..end])
                    .filter(|(_, route)| **route == Route::Deliver)
                    .map(|(record, _)| record.clone())
                    .collect();
                if kept.len() < run.len() {
                    RecordsFiltered {
                        stream_arn: &self.key().stream,
                        shard_id: &self.key().shard_id,
                        records: run.len() - kept.len(),
                    }
                    .emit();
                    let filtered: Vec<Arc<Record>> = run
                        .iter()
                        .zip(&routes[start..end])
                        .filter(|(_, route)| **route == Route::Filtered)
                        .map(|(record, _)| record.clone())
                        .collect();
                    guarded(
                        self.signals,
                        self.shutdown,
                        None,
                        self.processor.records_filtered(&filtered),
                    )
                    .await?;
                }
                self.deliver_run(&kept).await?;
                if kept.last().map(|r| record_seq(r)) != run.last().map(|r| record_seq(r)) {
                    // Filtered records after the last delivered one.
                    self.done(run).await?;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Delivers records that pass the filter, under the failure policy: retries with
    /// backoff up to `max_retries`, bisection of failing batches, partial batch
    /// responses, and the failure handler for what is given up. An undecodable record
    /// ends the batch before it and is a failure of its own. Held records are retried in
    /// this loop, never by recursion.
    async fn deliver_run(&mut self, run: &[Arc<Record>]) -> Result<(), Interrupted> {
        type Item<F> = <<F as ProcessorFactory>::Processor as RecordProcessor>::Item;
        let shard_id = self.key().shard_id.clone();
        let (max_retries, bisect) = (self.delivery().max_retries, self.delivery().bisect_on_error);
        let mut todo: VecDeque<Range<usize>> = VecDeque::new();
        todo.push_back(0..run.len());
        let mut attempts: u32 = 0;
        let mut backoff = self.processing_backoff();
        while let Some(range) = todo.pop_front() {
            if range.is_empty() {
                continue;
            }
            let (changes, undecodable) = decode_prefix::<Item<F>>(&shard_id, &run[range.clone()]);
            let decoded_end = range.start + changes.len();
            if changes.is_empty() {
                if let Some((error, _)) = undecodable {
                    self.undecodable(&run[range.start], error).await?;
                }
                todo.push_front(range.start + 1..range.end);
                attempts = 0;
                continue;
            }
            todo.push_front(decoded_end..range.end);
            let tried = range.start..decoded_end;
            let failed = match self.attempt(changes).await? {
                Ok(()) => {
                    self.done(&run[tried]).await?;
                    attempts = 0;
                    backoff = self.processing_backoff();
                    continue;
                }
                Err(failed) => failed,
            };
            // Where the failure starts: a partial batch response names the record.
            let partial_at = failed.at.as_ref().and_then(|seq| {
                (tried.clone()).find(|&i| record_seq(&run[i]).as_ref() == Some(seq))
            });
            let from = partial_at.unwrap_or(tried.start);
            if from > tried.start {
                self.done(&run[tried.start..from]).await?;
                attempts = 0;
            }
            attempts += 1;
            let rest = from..tried.end;
            let exhausted = max_retries.is_some_and(|max| attempts > max);
            if bisect && partial_at.is_none() && rest.len() > 1 {
                let mid = rest.start + rest.len() / 2;
                todo.push_front(mid..rest.end);
                todo.push_front(rest.start..mid);
                tracing::warn!(%shard_id, records = rest.len(), error = %failed.error, "batch failed; bisecting it");
                attempts = 0;
                continue;
            }
            if exhausted && self.delivery().on_failure.is_some() {
                let gone = if partial_at.is_some() {
                    from..from + 1
                } else {
                    rest.clone()
                };
                todo.push_front(gone.end..rest.end);
                self.give_up(&run[gone], failed.reason, failed.error.to_string())
                    .await?;
                attempts = 0;
                backoff = self.processing_backoff();
                continue;
            }
            todo.push_front(rest);
            if exhausted {
                // No handler to take them: the shard holds here, retried at the longest pause.
                let mut held =
                    std::iter::repeat(self.consumer.shared.config.processing_backoff_max);
                self.pause_after_failure(&failed.error, attempts, &mut held)
                    .await?;
            } else {
                self.pause_after_failure(&failed.error, attempts, &mut backoff)
                    .await?;
            }
        }
        Ok(())
    }

    /// One `process` call with `changes`, raced against lease loss, the batch timeout and
    /// the shutdown timeout; a panic or a timeout is a failure like an error.
    async fn attempt(
        &mut self,
        changes: Vec<Change<<F::Processor as RecordProcessor>::Item>>,
    ) -> Result<Result<(), AttemptFailed>, Interrupted> {
        let shard_id = self.key().shard_id.clone();
        let Some(last_seq) = changes.last().map(|c| c.sequence_number.clone()) else {
            return Ok(Ok(()));
        };
        let behind_latest = changes
            .last()
            .and_then(|c| c.approximate_creation_time)
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        let count = changes.len();
        let batch = ChangeBatch {
            stream_arn: self.key().stream.clone(),
            shard_id: shard_id.clone(),
            changes,
            behind_latest,
        };
        let timeout = self.delivery().batch_timeout;
        self.checkpointer.begin(&last_seq);
        let started = Instant::now();
        let called = guarded(
            self.signals,
            self.shutdown,
            timeout,
            self.processor.process(batch, self.checkpointer),
        )
        .await;
        let failed = |reason, error: String, at| AttemptFailed {
            reason,
            error: Error::Processor {
                shard_id: shard_id.clone(),
                source: error.into(),
            },
            at,
        };
        let result = match called {
            Err(interrupted) => {
                self.checkpointer.end(None);
                return Err(interrupted);
            }
            Ok(Called::Returned(Ok(()))) => {
                BatchProcessed {
                    stream_arn: &self.key().stream,
                    shard_id: &shard_id,
                    records: count,
                    behind_latest,
                    duration: started.elapsed(),
                }
                .emit();
                Ok(())
            }
            Ok(Called::Returned(Err(source))) => Err(match source.downcast::<BatchFailure>() {
                Ok(partial) => AttemptFailed {
                    reason: FailureReason::RetriesExhausted,
                    error: Error::Processor {
                        shard_id: shard_id.clone(),
                        source: partial.source,
                    },
                    at: Some(partial.sequence_number),
                },
                Err(source) => AttemptFailed {
                    reason: FailureReason::RetriesExhausted,
                    error: Error::Processor {
                        shard_id: shard_id.clone(),
                        source,
                    },
                    at: None,
                },
            }),
            Ok(Called::Panicked) => Err(failed(
                FailureReason::Panicked,
                "`process` panicked".to_owned(),
                None,
            )),
            Ok(Called::TimedOut(limit)) => Err(failed(
                FailureReason::TimedOut,
                format!(
                    "`process` ran longer than the batch timeout ({})",
                    humanize(limit)
                ),
                None,
            )),
        };
        // What `process` staged for the records that succeeded commits with the checkpoint.
        let result = self.commit_staged(result, &last_seq).await?;
        // Done records are marked by the caller; a failed call leaves nothing covered.
        self.checkpointer.end(None);
        Ok(result)
    }

    /// Commits the DynamoDB writes `process` staged (exactly-once) for the records that
    /// succeeded, with the checkpoint. A commit that fails makes the records from the first
    /// uncommitted one fail (a partial batch failure), so the failure policy retries them.
    async fn commit_staged(
        &mut self,
        result: Result<(), AttemptFailed>,
        last: &SequenceNumber,
    ) -> Result<Result<(), AttemptFailed>, Interrupted> {
        let failed_at = match &result {
            Ok(()) => None,
            Err(AttemptFailed { at: Some(at), .. }) => Some(at.clone()),
            // Nothing succeeded: the staged writes are dropped.
            Err(_) => return Ok(result),
        };
        let lost = self.signals.lost.clone();
        let committed = tokio::select! {
            biased;
            _ = lost.cancelled() => Err(None),
            committed = self.checkpointer.commit_staged(failed_at.as_ref(), last) => {
                committed.map_err(Some)
            }
        };
        match committed {
            Ok(()) => Ok(result),
            Err(Some(failed)) if !is_lease_lost(&failed.error) => Ok(Err(AttemptFailed {
                reason: FailureReason::RetriesExhausted,
                error: failed.error,
                at: Some(failed.first_uncommitted),
            })),
            Err(_) => {
                self.checkpointer.end(None);
                Err(Interrupted::Lost)
            }
        }
    }

    /// Every record of `records` (and before) is done: checkpoint past them.
    async fn done(&mut self, records: &[Arc<Record>]) -> Result<(), Interrupted> {
        let Some(last) = records.last().and_then(|r| record_seq(r)) else {
            return Ok(());
        };
        self.checkpointer.delivered(&last);
        let lag = &self.consumer.shared.telemetry.lag;
        lag.processed(self.key(), &last);
        if self.consumer.shared.config.auto_checkpoint {
            self.checkpoint_delivered().await?;
        }
        Ok(())
    }

    /// Takes the records created before the shard's start time off the front of `records`,
    /// counts them and checkpoints past them (`start_time`).
    async fn skip_before_start(
        &mut self,
        skip: &mut StartTimeSkip,
        records: &mut Vec<Arc<Record>>,
    ) -> Result<(), Interrupted> {
        let skipped = skip.take_skipped(records);
        let Some(last) = skipped.last().and_then(|r| record_seq(r)) else {
            return Ok(());
        };
        RecordsSkippedBeforeStart {
            stream_arn: &self.key().stream,
            shard_id: &self.key().shard_id,
            records: skipped.len(),
            last: last.as_str(),
        }
        .emit();
        self.done(&skipped).await
    }

    /// A record whose image does not decode: to the failure handler if there is one (the
    /// shard moves on once it accepted it); else the shard holds here, reporting it on each
    /// retry, until the lease moves to a worker whose item type fits.
    async fn undecodable(&mut self, record: &Arc<Record>, error: Error) -> Result<(), Interrupted> {
        let shard_id = self.key().shard_id.clone();
        let has_handler = self.delivery().on_failure.is_some();
        let pause = if has_handler {
            Duration::ZERO
        } else {
            self.consumer.shared.config.processing_backoff_max
        };
        loop {
            DecodeFailed {
                shard_id: &shard_id,
                error: &error,
                pause,
            }
            .emit();
            guarded(
                self.signals,
                self.shutdown,
                None,
                self.processor.decode_failed(&error),
            )
            .await?;
            if has_handler {
                let records = std::slice::from_ref(record);
                return self
                    .give_up(records, FailureReason::Undecodable, error.to_string())
                    .await;
            }
            sleep_unless_stopped(self.signals, pause).await?;
        }
    }

    /// Hands `records` to the failure handler, retrying it (with the processing backoff)
    /// until it accepts them, then checkpoints past them. Reported first: error log,
    /// metric, `RecordProcessor::records_failed`.
    async fn give_up(
        &mut self,
        records: &[Arc<Record>],
        reason: FailureReason,
        error: String,
    ) -> Result<(), Interrupted> {
        let Some(handler) = self.delivery().on_failure.clone() else {
            // `build` refuses settings that lead here without a handler; hold if it happens.
            let pause = self.consumer.shared.config.processing_backoff_max;
            tracing::error!(shard_id = %self.key().shard_id, %reason, "no on-failure handler: the shard holds at these records");
            loop {
                sleep_unless_stopped(self.signals, pause).await?;
            }
        };
        let failed = FailedRecords {
            table: self.consumer.table.clone(),
            stream_arn: self.key().stream.clone(),
            shard_id: self.key().shard_id.clone(),
            reason,
            error,
            records: records.to_vec(),
        };
        RecordsFailed { failed: &failed }.emit();
        guarded(
            self.signals,
            self.shutdown,
            None,
            self.processor.records_failed(&failed),
        )
        .await?;
        let mut backoff = self.processing_backoff();
        loop {
            let called =
                guarded(self.signals, self.shutdown, None, handler.handle(&failed)).await?;
            match hook_result(&failed.shard_id, "the on-failure handler", called) {
                Ok(()) => break,
                Err(error) => self.pause_after_failure(&error, 0, &mut backoff).await?,
            }
        }
        self.done(records).await
    }

    /// The checkpoint after a batch, written while the next one is processed.
    async fn checkpoint_delivered(&mut self) -> Result<(), Interrupted> {
        match self.checkpointer.checkpoint_in_background().await {
            Ok(()) => Ok(()),
            Err(e) => self.checkpoint_failed(e),
        }
    }

    async fn flush_if_due(&mut self) -> Result<(), Interrupted> {
        match self.checkpointer.flush_in_background().await {
            Ok(()) => Ok(()),
            Err(e) => self.checkpoint_failed(e),
        }
    }

    /// A lost lease stops the shard; anything else is retried by the next flush.
    fn checkpoint_failed(&self, error: Error) -> Result<(), Interrupted> {
        match &error {
            Error::LeaseStore(e) if e.is_lease_lost() => Err(Interrupted::Lost),
            _ => {
                tracing::warn!(shard_id = %self.key().shard_id, %error, "checkpoint not written; will retry");
                Ok(())
            }
        }
    }

    async fn end_shard(&mut self) -> ShardOutcome {
        let shard_id = self.key().shard_id.clone();
        let mut backoff = self.processing_backoff();
        loop {
            let called = guarded(
                self.signals,
                self.shutdown,
                None,
                self.processor.shard_ended(self.checkpointer),
            )
            .await;
            let error = match called {
                Err(interrupted) => return self.finish(interrupted).await,
                Ok(called) => match hook_result(&shard_id, "shard_ended", called) {
                    Ok(()) => break,
                    Err(error) => error,
                },
            };
            if let Err(interrupted) = self.pause_after_failure(&error, 0, &mut backoff).await {
                return self.finish(interrupted).await;
            }
        }
        // A checkpoint still being written must not land after `SHARD_END`.
        if let Err(error) = self.checkpointer.settle().await {
            tracing::debug!(%shard_id, %error, "last checkpoint before SHARD_END not written");
        }
        let (consumer, lost) = (self.consumer, self.signals.lost.clone());
        let written = tokio::select! {
            biased;
            _ = lost.cancelled() => return self.finish(Interrupted::Lost).await,
            written = consumer.write_shard_end() => written,
        };
        if let Err(error) = written {
            return if is_lease_lost(&error) {
                self.finish(Interrupted::Lost).await
            } else {
                ShardOutcome::Failed(error)
            };
        }
        let children = match self.consumer.create_child_leases().await {
            Ok(children) => children,
            Err(error) => {
                // The children will still be found by the next full shard sync.
                tracing::warn!(%shard_id, %error, "could not create the children's leases yet");
                0
            }
        };
        ShardEnded {
            stream_arn: &self.key().stream,
            shard_id: &shard_id,
            children,
        }
        .emit();
        ShardOutcome::Ended
    }

    /// Ends the session: on release, the processor is told, checkpoints are flushed and the
    /// lease is released; on loss (also while releasing), the processor is told and nothing
    /// more is written.
    async fn finish(&mut self, interrupted: Interrupted) -> ShardOutcome {
        if interrupted != Interrupted::Lost {
            let lost = self.signals.lost.clone();
            let timed_out = interrupted == Interrupted::ShutdownTimedOut;
            tokio::select! {
                biased;
                _ = lost.cancelled() => {}
                outcome = self.release(timed_out) => return outcome,
            }
        }
        self.report_lost().await;
        ShardOutcome::LeaseLost
    }

    /// `lease_lost`, given at most the shutdown timeout.
    async fn report_lost(&mut self) {
        LeaseLost {
            lease: self.key(),
            reason: "another worker owns it, or this worker was fenced",
        }
        .emit();
        let limit = self.delivery().shutdown_timeout;
        let told = AssertUnwindSafe(self.processor.lease_lost()).catch_unwind();
        if tokio::time::timeout(limit, told).await.is_err() {
            tracing::error!(lease = %self.key(), ?limit, "`lease_lost` did not return within the shutdown timeout; dropped");
        }
    }

    /// `shutdown_requested` (unless the shutdown timeout already passed), the final
    /// checkpoint, the release: each lease-table write retried as the
    /// [`retry::lease_store`] policy says. A final checkpoint that cannot be written keeps
    /// the lease: releasing it would let another worker start from an older checkpoint
    /// while this one believes it finished.
    async fn release(&mut self, timed_out: bool) -> ShardOutcome {
        let key = self.key().clone();
        if !timed_out {
            let called = guarded(
                self.signals,
                self.shutdown,
                None,
                self.processor.shutdown_requested(self.checkpointer),
            )
            .await;
            match called {
                Err(Interrupted::Lost) => {
                    self.report_lost().await;
                    return ShardOutcome::LeaseLost;
                }
                Err(_) => {
                    tracing::error!(lease = %key, "`shutdown_requested` did not return within the shutdown timeout; dropped");
                }
                Ok(called) => {
                    if let Err(error) = hook_result(&key.shard_id, "shutdown_requested", called) {
                        tracing::error!(lease = %key, %error, "shutdown_requested failed; releasing anyway");
                    }
                }
            }
        } else {
            tracing::error!(lease = %key, "the processor did not finish within the shutdown timeout; dropped it");
        }
        self.checkpointer.end(None);
        if let Err(error) = self.checkpointer.flush_retrying().await {
            if is_lease_lost(&error) {
                self.report_lost().await;
                return ShardOutcome::LeaseLost;
            }
            tracing::error!(lease = %key, %error, "final checkpoint not written; keeping the lease (others take it after failover)");
            return ShardOutcome::Failed(error);
        }
        let ownership = self.checkpointer.ownership().clone();
        let store = &self.consumer.shared.store;
        let released = retry::call(retry::lease_store(), retry::is_retryable_store, || {
            store.release_lease(&key, &ownership)
        })
        .await;
        match released {
            Ok(lease) => {
                LeaseReleased {
                    lease: &key,
                    to: lease.handoff_to.as_deref(),
                }
                .emit();
                ShardOutcome::Released
            }
            Err(e) if e.is_lease_lost() => ShardOutcome::LeaseLost,
            Err(e) => {
                tracing::warn!(lease = %key, error = %e, "lease not released; others take it after failover");
                ShardOutcome::Released
            }
        }
    }

    /// Reports a failed delivery or hook and waits as the [`retry::processing`] policy
    /// says; `attempt` counts failed deliveries of a batch (0 for a hook).
    async fn pause_after_failure(
        &mut self,
        error: &Error,
        attempt: u32,
        backoff: &mut impl Iterator<Item = Duration>,
    ) -> Result<(), Interrupted> {
        let pause = backoff
            .next()
            .unwrap_or(self.consumer.shared.config.processing_backoff_max);
        ProcessingFailed {
            shard_id: &self.key().shard_id,
            error,
            attempt,
            pause,
        }
        .emit();
        sleep_unless_stopped(self.signals, pause).await
    }

    fn processing_backoff(&self) -> impl Iterator<Item = Duration> + use<F> {
        retry::processing(self.consumer.shared.config.processing_backoff_max).build()
    }
}

/// What a hook's call came to: `Ok`, or the error (a panic or a timeout as text).
fn hook_result(shard_id: &str, hook: &str, called: Called<Result<(), BoxError>>) -> Result<()> {
    let source: BoxError = match called {
        Called::Returned(Ok(())) => return Ok(()),
        Called::Returned(Err(source)) => source,
        Called::Panicked => format!("{hook} panicked").into(),
        Called::TimedOut(limit) => format!("{hook} ran longer than {}", humanize(limit)).into(),
    };
    Err(Error::Processor {
        shard_id: shard_id.to_owned(),
        source,
    })
}

/// A record's sequence number, parsed.
fn record_seq(record: &Record) -> Option<SequenceNumber> {
    sequence_text(record).and_then(|text| SequenceNumber::parse(text).ok())
}

/// `d` as people write it (`1m 30s`).
fn humanize(d: Duration) -> String {
    format!("{d:?}")
}

async fn sleep_unless_stopped(signals: &ShardSignals, pause: Duration) -> Result<(), Interrupted> {
    tokio::select! {
        biased;
        _ = signals.lost.cancelled() => Err(Interrupted::Lost),
        _ = signals.release.cancelled() => Err(Interrupted::Release),
        _ = tokio::time::sleep(pause) => Ok(()),
    }
}

fn is_lease_lost(error: &Error) -> bool {
    matches!(error, Error::LeaseStore(e) if e.is_lease_lost())
}

/// Where a lease's checkpoint says to read from; `None` for a finished shard.
pub(crate) fn start_position(checkpoint: &Checkpoint) -> Option<StartPosition> {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::Since(_) => Some(StartPosition::TrimHorizon),
        Checkpoint::Latest => Some(StartPosition::Latest),
        Checkpoint::At(seq) => Some(StartPosition::AfterSequenceNumber(seq.clone())),
        // A snapshot segment, not a shard: `snapshot::run_segment` runs it, never a reader.
        Checkpoint::ShardEnd | Checkpoint::Scan(_) => None,
    }
}

/// The fetch task: polls the shard and hands pages over until the shard ends, an error
/// stops it, or it is cancelled. Each page is paid for from the worker's `budget` before
/// it is asked for (see [`crate::budget`]).
async fn fetch(
    mut reader: ShardReader,
    budget: ByteBudget,
    tx: mpsc::Sender<Fetched>,
    policy: TrimmedDataPolicy,
    cancel: CancellationToken,
) {
    // What the next page is expected to cost: the last page received, and a margin (see
    // `FetchedPage::receive`).
    let expected = Arc::new(AtomicU64::new(FULL_PAGE_COST));
    loop {
        let (polled, reservation) = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            polled = async {
                reader.pause().await;
                let reservation = budget.reserve(expected.load(Ordering::Relaxed)).await;
                (reader.poll().await, reservation)
            } => polled,
        };
        let fetched = match polled {
            Ok(Page::Records(records)) => Fetched::Records(FetchedPage {
                records,
                reservation,
                expected: expected.clone(),
            }),
            Ok(Page::Empty) => {
                // Only a hint to flush checkpoints; skip it when the consumer is busy.
                let _ = tx.try_send(Fetched::Idle);
                continue;
            }
            Ok(Page::ShardEnd) => Fetched::ShardEnd,
            Err(Error::Api(e))
                if e.kind == ApiErrorKind::ResourceNotFound
                    && e.operation == "GetShardIterator" =>
            {
                let loss = DataLoss {
                    stream_arn: reader.stream_arn().to_owned(),
                    shard_id: reader.shard_id().to_owned(),
                    wanted: reader.resume_position().to_string(),
                    resumed_at:
                        "nowhere: the shard no longer exists; it is finished so its children run"
                            .to_owned(),
                };
                DataTrimmed {
                    stream_arn: &loss.stream_arn,
                    shard_id: &loss.shard_id,
                    wanted: &loss.wanted,
                    resumed_at: &loss.resumed_at,
                }
                .emit();
                Fetched::Vanished(loss)
            }
            Err(Error::Api(e)) if e.kind == ApiErrorKind::TrimmedDataAccess => {
                let loss = DataLoss {
                    stream_arn: reader.stream_arn().to_owned(),
                    shard_id: reader.shard_id().to_owned(),
                    wanted: reader.resume_position().to_string(),
                    resumed_at: StartPosition::TrimHorizon.to_string(),
                };
                let resumed_at = match policy {
                    TrimmedDataPolicy::ContinueFromTrimHorizon => loss.resumed_at.as_str(),
                    TrimmedDataPolicy::Stop => "nowhere: the policy stops the shard",
                };
                DataTrimmed {
                    stream_arn: &loss.stream_arn,
                    shard_id: &loss.shard_id,
                    wanted: &loss.wanted,
                    resumed_at,
                }
                .emit();
                match policy {
                    TrimmedDataPolicy::ContinueFromTrimHorizon => {
                        reader.restart_at(StartPosition::TrimHorizon);
                        Fetched::Trimmed(loss)
                    }
                    TrimmedDataPolicy::Stop => Fetched::Failed(Error::DataTrimmed {
                        shard_id: loss.shard_id,
                        wanted: loss.wanted,
                    }),
                }
            }
            Err(error) => Fetched::Failed(error),
        };
        let last = matches!(
            fetched,
            Fetched::ShardEnd | Fetched::Vanished(_) | Fetched::Failed(_)
        );
        if tx.send(fetched).await.is_err() || last {
            return;
        }
    }
}
