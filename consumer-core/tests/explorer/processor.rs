//! The explorer's processor and on-failure handler: they behave as the scenario draws
//! (succeed, slow, fail, panic, hang, partial failures, checkpoints in the middle of a
//! batch) and tell the oracle what they were given, when.
//!
//! A record's behaviour is a hash of the seed, its event id and its attempt number, so it
//! misbehaves the same way whichever worker or partition gets it, and stops misbehaving
//! after a bounded number of attempts (the run can drain).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue as TableValue, TransactWriteItem, Update};
use aws_sdk_dynamodbstreams::types::Record;
use dynamodb_streams_consumer::streams::StreamsApi;
use dynamodb_streams_consumer::testkit::{PauseSwitch, SimulatedStream};
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, ChangeKind, Checkpointer, DataLoss, FailedRecords,
    FailureHandler, ProcessorFactory, RecordProcessor, ShardContext,
};
use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseKey, LeaseStore};
use serde::{Deserialize, Serialize};

use crate::oracle::{CallEnd, Oracle, Seen, fnv};
use crate::scenario::Behaviour;

/// The text of a drawn panic (the panic hook keeps these quiet).
pub const DRAWN_PANIC: &str = "explorer: drawn panic";

/// The items of every simulated table.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Row {
    pub pk: String,
    pub n: u64,
}

/// What a record does on one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bad {
    Fail,
    Panic,
    Hang,
}

/// Everything a worker's processors and handler share.
#[derive(Clone)]
pub struct Explorer {
    pub seed: u64,
    pub oracle: Oracle,
    pub store: Arc<InMemoryLeaseStore>,
    pub sim: SimulatedStream,
    pub retention: Duration,
    pub behaviour: Behaviour,
    pub auto_checkpoint: bool,
    pub handler_failures: u32,
    pub switch: PauseSwitch,
    /// Stage one write per stream record (exactly-once).
    pub staged_writes: bool,
    /// The named pipeline its processors belong to.
    pub pipeline: Option<String>,
}

/// The item table staged writes go to: one item per record (`id` = its sequence number)
/// whose `n` counts how many times its write was applied.
pub const APPLIED_TABLE: &str = "applied";

/// The `id` of the item a record's staged write counts on: one per pipeline.
fn applied_id(pipeline: Option<&str>, seq: &dynamodb_streams_leases::SequenceNumber) -> String {
    match pipeline {
        Some(p) => format!("{p}/{seq}"),
        None => seq.to_string(),
    }
}

/// A number drawn for `what` of `parts` in the run of `seed`.
fn draw(seed: u64, what: &str, parts: &[&[u8]]) -> u64 {
    let seed = seed.to_le_bytes();
    let mut all: Vec<&[u8]> = vec![&seed, what.as_bytes()];
    all.extend_from_slice(parts);
    fnv(&all)
}

/// How the record with this event id behaves on attempt `attempt` (1 = first), and on how
/// many attempts it misbehaves in all.
fn misbehaviour(seed: u64, b: &Behaviour, event_id: &str, attempt: u32) -> Option<(Bad, u32)> {
    let h = draw(seed, "bad", &[event_id.as_bytes()]);
    if h % 1000 >= u64::from(b.bad_per_mille) {
        return None;
    }
    let spoiled = 1 + u32::try_from((h / 1000) % u64::from(b.max_bad_attempts.max(1))).unwrap_or(0);
    if attempt > spoiled {
        return None;
    }
    let kind = draw(seed, "kind", &[event_id.as_bytes()]);
    let bad = if kind % 1000 < u64::from(b.fail_per_mille) {
        Bad::Fail
    } else if kind.is_multiple_of(2) {
        Bad::Panic
    } else {
        Bad::Hang
    };
    Some((bad, spoiled))
}

/// The most time the record with this event id can cost by misbehaving: each spoiled
/// attempt may hang (up to `hang`, or the batch timeout) and is followed by a retry pause
/// (up to `backoff`).
pub fn worst_delay(
    seed: u64,
    b: &Behaviour,
    event_id: &str,
    batch_timeout: Option<Duration>,
    backoff: Duration,
) -> Duration {
    match misbehaviour(seed, b, event_id, 1) {
        None => Duration::ZERO,
        Some((bad, spoiled)) => {
            let hang = match bad {
                Bad::Hang => batch_timeout.map_or(b.hang, |t| t.min(b.hang)),
                _ => Duration::ZERO,
            };
            (hang + backoff) * spoiled
        }
    }
}

impl Explorer {
    fn draw(&self, what: &str, parts: &[&[u8]]) -> u64 {
        draw(self.seed, what, parts)
    }

    fn per_mille(&self, what: &str, parts: &[&[u8]], rate: u32) -> bool {
        self.draw(what, parts) % 1000 < u64::from(rate)
    }

    /// How the record with this event id behaves on attempt `attempt` (1 = first).
    fn misbehaves(&self, event_id: &str, attempt: u32) -> Option<Bad> {
        if attempt == 0 {
            return None;
        }
        misbehaviour(self.seed, &self.behaviour, event_id, attempt).map(|(bad, _)| bad)
    }

    /// Whether the lease table names this processor's caller as the owner, at its epoch.
    async fn owns(&self, ctx: &ShardContext) -> Result<(), String> {
        let key = LeaseKey::new(ctx.stream_arn.clone(), ctx.shard_id.clone());
        match self.store.get_lease(&key).await {
            Ok(Some(lease))
                if lease.owner.as_deref() == Some(ctx.lease_owner.as_str())
                    && lease.epoch == ctx.lease_epoch =>
            {
                Ok(())
            }
            Ok(Some(lease)) => Err(format!(
                "the lease table names {:?} at epoch {}",
                lease.owner, lease.epoch
            )),
            Ok(None) => Err("the lease does not exist".into()),
            Err(error) => Err(format!("the lease cannot be read: {error}")),
        }
    }
}

impl ProcessorFactory for Explorer {
    type Processor = Processor;

    fn create(&self, shard: &ShardContext) -> Processor {
        Processor {
            explorer: self.clone(),
            ctx: shard.clone(),
        }
    }
}

/// One processor (of a shard, or of one key partition of a shard).
pub struct Processor {
    explorer: Explorer,
    ctx: ShardContext,
}

/// Tells the oracle how the call ended, also when the framework drops it mid-way or it
/// panics.
struct CallGuard {
    oracle: Oracle,
    id: u64,
    end: CallEnd,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.oracle
            .call_ended(self.id, std::mem::replace(&mut self.end, CallEnd::Dropped));
    }
}

#[async_trait]
impl RecordProcessor for Processor {
    type Item = Row;

    async fn process(
        &mut self,
        batch: ChangeBatch<Row>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let ex = &self.explorer;
        let seen: Vec<Seen> = batch
            .changes
            .iter()
            .map(|change| Seen {
                kind: change.kind,
                seq: change.sequence_number.clone(),
                key: match change.keys().get("pk") {
                    Some(aws_sdk_dynamodbstreams::types::AttributeValue::S(pk)) => pk.clone(),
                    other => format!("{other:?}"),
                },
                n: match change.kind {
                    ChangeKind::Remove => None,
                    _ => change.new.as_ref().map(|row| row.n),
                },
            })
            .collect();
        let owns = ex.owns(&self.ctx).await;
        let (id, attempts) = ex.oracle.call_started(&self.ctx, seen, owns);
        let mut guard = CallGuard {
            oracle: ex.oracle.clone(),
            id,
            end: CallEnd::Dropped,
        };
        // A paused worker's call was made, but runs only once the worker does.
        ex.switch.running().await;
        if ex.staged_writes {
            for change in batch
                .changes
                .iter()
                .filter(|c| c.kind != ChangeKind::Snapshot)
            {
                let write = Update::builder()
                    .table_name(APPLIED_TABLE)
                    .key(
                        "id",
                        TableValue::S(applied_id(ex.pipeline.as_deref(), &change.sequence_number)),
                    )
                    .update_expression("ADD n :one")
                    .expression_attribute_values(":one", TableValue::N("1".into()))
                    .build()?;
                if let Err(error) = checkpointer
                    .stage(
                        &change.sequence_number,
                        [TransactWriteItem::builder().update(write).build()],
                    )
                    .await
                {
                    ex.oracle.violate(
                        "5 exactly once",
                        format!(
                            "staging the write of {} was refused: {error}",
                            change.sequence_number
                        ),
                    );
                    guard.end = CallEnd::Failed;
                    return Err(error.into());
                }
            }
        }
        let ids: Vec<&str> = batch.changes.iter().map(|c| c.event_id()).collect();
        let first_id = ids.first().copied().unwrap_or_default();
        let attempt_bytes = attempts.first().copied().unwrap_or(0).to_le_bytes();
        let call_key: [&[u8]; 2] = [first_id.as_bytes(), &attempt_bytes];
        let b = ex.behaviour.clone();
        if ex.per_mille("slow", &call_key, b.slow_per_mille) {
            let pause = ex.draw("slow-for", &call_key) % (b.slow.as_millis() as u64 + 1);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            ex.switch.running().await;
        }
        if ex.per_mille("mid-checkpoint", &call_key, b.mid_checkpoint_per_mille) {
            let _ = checkpointer.checkpoint().await;
        }
        if ex.per_mille("mid-flush", &call_key, b.mid_flush_per_mille) {
            let _ = checkpointer.flush().await;
        }
        // Snapshot items (no event id) do not misbehave; their attempt numbers only vary
        // the call's draws, so a slow one is not slow on every redelivery.
        let bad = ids
            .iter()
            .zip(&attempts)
            .enumerate()
            .filter(|(j, _)| batch.changes[*j].kind != ChangeKind::Snapshot)
            .find_map(|(j, (event_id, attempt))| {
                ex.misbehaves(event_id, *attempt).map(|bad| (j, bad))
            });
        match bad {
            None => {
                if !ex.auto_checkpoint
                    && ex.per_mille("manual", &call_key, b.manual_checkpoint_per_mille)
                {
                    let _ = checkpointer.checkpoint().await;
                }
                guard.end = CallEnd::Ok;
                Ok(())
            }
            Some((_, Bad::Panic)) => panic!("{DRAWN_PANIC}"),
            Some((_, Bad::Hang)) => {
                tokio::time::sleep(b.hang).await;
                ex.switch.running().await;
                guard.end = CallEnd::Failed;
                Err("hung, then failed".into())
            }
            Some((j, Bad::Fail)) => {
                let failed = &batch.changes[j].sequence_number;
                if ex.per_mille("partial", &call_key, b.partial_per_mille) {
                    if ex.per_mille("outside", &call_key, b.outside_per_mille) {
                        // A record after the batch: the whole batch failed.
                        let outside = dynamodb_streams_leases::SequenceNumber::parse(format!(
                            "9{}",
                            failed.as_str()
                        ))
                        .unwrap_or_else(|_| failed.clone());
                        guard.end = CallEnd::Failed;
                        return Err(BatchFailure::at(outside, "drawn failure, outside").into());
                    }
                    guard.end = CallEnd::FailedAt(failed.clone());
                    return Err(BatchFailure::at(failed.clone(), "drawn failure").into());
                }
                guard.end = CallEnd::Failed;
                Err("drawn failure".into())
            }
        }
    }

    async fn shutdown_requested(&mut self, _: &mut Checkpointer) -> Result<(), BoxError> {
        self.explorer.oracle.log(format!(
            "shutdown_requested {} {}",
            self.ctx.lease_owner, self.ctx.shard_id
        ));
        Ok(())
    }

    async fn lease_lost(&mut self) {
        self.explorer.oracle.log(format!(
            "lease_lost {} {}",
            self.ctx.lease_owner, self.ctx.shard_id
        ));
    }

    async fn data_lost(&mut self, loss: &DataLoss) {
        let now = StreamsApi::now(&self.explorer.sim);
        let trimmed_before = now
            .checked_sub(self.explorer.retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.explorer
            .oracle
            .data_lost(&loss.stream_arn, &loss.shard_id, trimmed_before);
    }

    async fn records_filtered(&mut self, records: &[Arc<Record>]) {
        let seqs: Vec<String> = records
            .iter()
            .filter_map(|r| r.dynamodb().and_then(|d| d.sequence_number()))
            .map(str::to_owned)
            .collect();
        self.explorer.oracle.filtered(&self.ctx.shard_id, &seqs);
    }
}

/// The on-failure handler: accepts each group of records after refusing it
/// `handler_failures` times.
pub struct Handler(pub Explorer);

#[async_trait]
impl FailureHandler for Handler {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        self.0.switch.running().await;
        let now = StreamsApi::now(&self.0.sim);
        if self
            .0
            .oracle
            .handler_called(failed, self.0.handler_failures, now)
        {
            Ok(())
        } else {
            Err("the handler refuses, this time".into())
        }
    }
}
