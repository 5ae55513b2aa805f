//! The shard consumer: one shard under one lease, from set-up to its end; and the page
//! loop it shares with snapshot segments.
//!
//! [`run`] sets up a checkpointer and the fetch task ([`fetch`]) and hands them to
//! [`drive`], the page loop of every task: it makes the processors (one per key
//! partition), then goes through what the source hands over: pages go to the [`session`]
//! (gathered into batches, delivered under the failure policy, checkpointed) or, with key
//! parallelism, to [`partitioned`]; idle polls flush checkpoints; the source's end, a
//! release or a lost lease end it ([`ending`]). A snapshot segment runs the same loop over
//! its Scan pages, with its own end ([`EndOfSource`]).
//!
//! A task ends in one of four ways ([`ShardOutcome`]): read to its end (`SHARD_END`
//! written, a shard's children have leases), stopped gracefully (shutdown or handoff:
//! checkpoints flushed, lease released), the lease lost (no further writes), or an error
//! it cannot get past.

mod batching;
pub(crate) mod ending;
pub(crate) mod fetch;
pub(crate) mod page;
mod partitioned;
pub(crate) mod pipelines;
mod progress;
pub(crate) mod session;

use dynamodb_streams_leases::Checkpoint;
use tokio::sync::mpsc;

use crate::callback::Callbacks;
use crate::checkpointer::Checkpointer;
use crate::error::Error;
use crate::processor::ProcessorFactory;
use crate::runtime::{LeaseTask, ShardOutcome, ShardSignals};
use crate::start_time::StartTimeSkip;
use ending::{EndOfSource, ShardEnd};
use fetch::{begin_read, fetch, write_before_start};
use page::Fetched;
use session::{Gathered, Session};

/// Runs the shard of `task`'s lease until it ends, is stopped, or fails.
pub(crate) async fn run<F: ProcessorFactory>(
    task: LeaseTask<F>,
    signals: ShardSignals,
) -> ShardOutcome {
    if !task.runtime.pipelines.is_empty() {
        return pipelines::run(task, signals).await;
    }
    let key = task.key().clone();
    let _lag_tracked = task.runtime.telemetry.lag.track(&key, None);
    let runtime = &task.runtime;
    let config = &runtime.config;
    let mut start = [task.lease.checkpoint.clone()];
    let begun = begin_read(&task, &mut start, async |starts: &[Checkpoint]| {
        // Only a `LATEST` start, made a time, is new to the store.
        if starts[0] == task.lease.checkpoint {
            return Ok(());
        }
        write_before_start(|| runtime.store.checkpoint(&key, &task.ownership, &starts[0]))
            .await
            .map(|_| ())
    });
    let reader = match begun.await {
        Ok(Some(reader)) => reader,
        Ok(None) => return ShardOutcome::Ended,
        Err(outcome) => return outcome,
    };
    let [stored] = start;
    let checkpointer = Checkpointer::new(
        runtime.store.clone(),
        key.clone(),
        task.ownership.clone(),
        stored,
        config.checkpoint_interval,
    );
    let stop_fetch = signals.lost.child_token();
    let (tx, rx) = mpsc::channel(config.prefetch_pages.max(1));
    let fetcher = tokio::spawn(fetch(
        reader,
        runtime.budget.clone(),
        tx,
        config.trimmed_data_policy,
        stop_fetch.clone(),
    ));
    let _stop_fetch_on_exit = stop_fetch.drop_guard();
    let outcome = drive(&task, &signals, checkpointer, rx, ShardEnd).await;
    fetcher.abort();
    outcome
}

/// The page loop of a task (a shard's or a segment's): delivers what `rx` brings with the
/// lease's processors until the source ends (then `end` ends the lease as its kind says),
/// a release or a lost lease stops it, or an error does.
pub(crate) async fn drive<F: ProcessorFactory>(
    task: &LeaseTask<F>,
    signals: &ShardSignals,
    mut checkpointer: Checkpointer,
    mut rx: mpsc::Receiver<Fetched>,
    end: impl EndOfSource<F>,
) -> ShardOutcome {
    let key = task.key();
    let config = &task.runtime.config;
    let ctx = task.context();
    let callbacks = Callbacks::new(signals, config.delivery.shutdown_timeout, &key.shard_id);
    let mut processor = task.runtime.factory.create(&ctx);
    // With key parallelism, the processors of partitions 1..n (partition 0 is `processor`).
    let partitions = config.delivery.key_parallelism.max(1);
    let mut extra: Vec<F::Processor> = (1..partitions)
        .map(|_| task.runtime.factory.create(&ctx))
        .collect();
    for processor in &mut extra {
        let mut detached = checkpointer.detached();
        let mut session = Session::new(task, processor, &mut detached, &callbacks);
        if let Err(interrupted) = session.initialize(&ctx).await {
            return session.finish(interrupted).await;
        }
    }
    // From the stored position: a `LATEST` lease stored its start time before this.
    let mut skip = StartTimeSkip::new(checkpointer.stored(), config.creation_time_margin);
    let mut session = Session::new(task, &mut processor, &mut checkpointer, &callbacks);
    if let Err(interrupted) = session.initialize(&ctx).await {
        return session.finish(interrupted).await;
    }
    let max_batch = config
        .delivery
        .max_batch_size
        .unwrap_or(config.poll.batch_limit as usize)
        .max(1);
    let mut carried: Option<Fetched> = None;
    let mut batch = Gathered::default();
    let outcome = loop {
        let next = match carried.take() {
            Some(next) => Some(next),
            None => match callbacks.until_stopped(rx.recv()).await {
                Ok(next) => next,
                Err(interrupted) => break session.finish(interrupted).await,
            },
        };
        let step = match next {
            Some(Fetched::Records(page)) => {
                let (mut records, reservation) = match session.take_in(page).await {
                    Ok(taken) => taken,
                    Err(interrupted) => break session.finish(interrupted).await,
                };
                if skip.is_active()
                    && let Err(interrupted) =
                        session.skip_before_start(&mut skip, &mut records).await
                {
                    break session.finish(interrupted).await;
                }
                if records.is_empty() {
                    continue;
                }
                batch.add(records, reservation);
                if extra.is_empty() {
                    match session.gather(&mut rx, &mut batch, max_batch).await {
                        Ok(next) => carried = next,
                        Err(interrupted) => break session.finish(interrupted).await,
                    }
                    session.deliver_all(&mut batch.records, max_batch).await
                } else {
                    session
                        .deliver_partitioned(&mut extra, &mut rx, &mut batch, max_batch)
                        .await
                        .map(|next| carried = next)
                }
            }
            Some(Fetched::Idle) => session.flush_if_due().await,
            Some(Fetched::Trimmed(loss)) => session.data_lost(&loss).await,
            Some(Fetched::Vanished(loss)) => match session.data_lost(&loss).await {
                Ok(()) => break end.end(&mut session).await,
                Err(interrupted) => Err(interrupted),
            },
            Some(Fetched::ShardEnd) => break end.end(&mut session).await,
            Some(Fetched::Failed(error)) => break ShardOutcome::Failed(error),
            None => {
                break ShardOutcome::Failed(Error::Internal {
                    shard_id: key.shard_id.clone(),
                    problem: "the fetch task stopped unexpectedly".into(),
                });
            }
        };
        batch.delivered();
        if let Err(interrupted) = step {
            break session.finish(interrupted).await;
        }
    };
    partitioned::tell_extra_partitions(&mut extra, &mut checkpointer, &outcome, &callbacks).await;
    outcome
}
