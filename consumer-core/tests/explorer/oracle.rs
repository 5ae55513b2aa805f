//! The oracle: what was written, what each record became, and the invariants checked at
//! every step (a `process` call starting or ending, a handler call, a lease write) and at
//! the end of a run.
//!
//! Invariants (the numbering):
//! 1. nothing lost: every record ends delivered with `Ok`, accepted by the on-failure
//!    handler with a reason that holds, filtered, before its shard's start time, or trimmed
//!    with a data-loss report;
//! 2. per-key order: no record reaches `process` before every earlier record of its item
//!    is finished (or in the same batch before it); a sink applying every successful batch
//!    ends equal to the table;
//! 3. no two `process` calls for one shard at once on different workers (except calls of a
//!    paused worker), none by a worker that does not own the lease, and calls of one
//!    worker for one shard never share an item (key partitions);
//! 4. a checkpoint write never covers an unfinished record and never moves back, and a
//!    deleted lease is never created again;
//! 5. with staged writes, each record's write applied at most once, and once for every
//!    record processed with `Ok` that the stored checkpoint covers;
//! 6. (bounds on shutdown and calls: checked by the world);
//! 7. no stream record reaches a processor before every snapshot segment of its stream
//!    ended;
//!
//! With named pipelines, each pipeline has its own oracle (sharing one journal): it sees
//! only its pipeline's calls and handler, and judges the pipeline's own checkpoint (its
//! attribute of the lease item), so every invariant holds per pipeline.
//! 8. (drain after the last fault: checked by the world).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use dynamodb_streams_consumer::testkit::{StoreObserver, StoreOp, WrittenRecord};
use dynamodb_streams_consumer::{ChangeKind, FailedRecords, FailureReason, ShardContext};
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseKey, SequenceNumber};

use crate::journal::Journal;

/// A broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

/// How a record left the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    Ok,
    Handler(FailureReason),
    Filtered,
    DataLost,
}

/// One written record and what became of it.
#[derive(Debug)]
struct Rec {
    table: String,
    stream: String,
    shard: String,
    seq: SequenceNumber,
    event_id: String,
    /// The item (`pk` value).
    key: String,
    /// The new image's `n`; `None` for a removal.
    n: Option<u64>,
    /// The stream's creation time of the record (rounded down to the second).
    created: SystemTime,
    /// When it was written, in the journal's virtual milliseconds.
    written_ms: u64,
    filtered: bool,
    finished: Option<Finished>,
    /// Calls that included it, and those that failed.
    attempts: u32,
    failed_calls: u32,
    /// It went to the on-failure handler at least once.
    handled: bool,
    /// Since its last `Ok`, a call failed on it or it went to the handler (too old, say,
    /// without a call): a redelivery (the checkpoint lagged) that ended in the handler
    /// leaves the sink where the redelivery's earlier records put it, older than this
    /// record's first `Ok` (seeds 558, 104120).
    last_call_failed: bool,
}

/// One change of a batch, as the processor saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub kind: ChangeKind,
    pub seq: SequenceNumber,
    pub key: String,
    pub n: Option<u64>,
}

/// How a `process` call ended.
#[derive(Clone, Debug)]
pub enum CallEnd {
    Ok,
    /// A partial batch failure: the records before this one succeeded.
    FailedAt(SequenceNumber),
    Failed,
    /// Dropped by the framework (timeout, lease loss, shutdown) or panicked.
    Dropped,
}

#[derive(Debug)]
struct Call {
    worker: String,
    owner: String,
    stream: String,
    shard: String,
    table: String,
    changes: Vec<Seen>,
    /// Its worker was paused while it ran: exempt from the overlap rule.
    paused: bool,
}

/// Settings the oracle judges by.
#[derive(Clone, Debug)]
pub struct Rules {
    pub creation_time_margin: Duration,
    pub filter_modulus: Option<u64>,
    pub max_record_age: Option<Duration>,
    /// Snapshot, then stream: an item whose last record the stream skipped (written before
    /// the snapshot began) must reach the sink through the snapshot.
    pub snapshot: bool,
}

struct State {
    rules: Rules,
    /// The named pipeline this oracle checks (`None`: the consumer's one processor).
    pipeline: Option<String>,
    /// Whether writes are logged (by one oracle of a run).
    log_writes: bool,
    journal: Journal,
    violation: Option<Violation>,
    records: Vec<Rec>,
    by_seq: BTreeMap<String, usize>,
    /// (table, key) -> record indexes in write order.
    by_item: BTreeMap<(String, String), Vec<usize>>,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    /// Start times (`Since`) seen on shard leases.
    since: BTreeMap<LeaseKey, SystemTime>,
    /// Shard leases created finished (`Latest` on a shard closed before the start).
    born_finished: BTreeSet<LeaseKey>,
    /// Shard leases created at `Latest`, and when their start time was stored (virtual ms):
    /// their first reader opens a `LATEST` iterator, so records written before may be
    /// passed.
    born_latest: BTreeMap<LeaseKey, Option<u64>>,
    /// Each lease's checkpoint now (deleted leases are gone).
    checkpoints: BTreeMap<LeaseKey, Checkpoint>,
    deleted: BTreeSet<LeaseKey>,
    paused: BTreeSet<String>,
    /// The item as a sink applying every successful batch has it: `Some(n)` or deleted.
    sink: BTreeMap<(String, String), Option<u64>>,
    handler_calls: BTreeMap<String, u32>,
    /// Snapshot plans seen in the lease table: stream ARN -> its segment ids.
    plans: BTreeMap<String, Vec<String>>,
    /// Segment leases seen at `ShardEnd`.
    segments_ended: BTreeSet<LeaseKey>,
    /// Deliveries of each snapshot item so far, by (stream, segment, key).
    snapshot_attempts: BTreeMap<(String, String, String), u32>,
    /// Snapshot items the on-failure handler accepted, by (table, key): their snapshot
    /// record left the normal path with its reason (invariant 1), so a sink never gets it.
    snapshot_handled: BTreeSet<(String, String)>,
    /// Streams replaced by a new stream of their table (disabled and enabled again), and
    /// when (virtual ms).
    replaced: BTreeMap<String, u64>,
    /// When the first lease (shard, segment or gate) of each stream was created.
    first_lease: BTreeMap<String, u64>,
}

/// Shared by the world, the processors, the handler and every worker's store link.
#[derive(Clone)]
pub struct Oracle {
    state: Arc<Mutex<State>>,
}

/// The FNV-1a hash the filter and the behaviours draw from.
pub fn fnv(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Whether the drawn filter drops the record with this event id.
pub fn filtered_out(modulus: Option<u64>, event_id: &str) -> bool {
    modulus.is_some_and(|m| fnv(&[b"filter", event_id.as_bytes()]).is_multiple_of(m))
}

impl State {
    /// " p0" for the oracle of pipeline p0, "" without pipelines: journal lines name the
    /// pipeline whose call or handler they record.
    fn pipeline_tag(&self) -> String {
        self.pipeline
            .as_ref()
            .map(|p| format!(" {p}"))
            .unwrap_or_default()
    }

    fn violate(&mut self, invariant: &'static str, detail: String) {
        self.journal
            .push(format!("VIOLATION {invariant}: {detail}"));
        if self.violation.is_none() {
            self.violation = Some(Violation { invariant, detail });
        }
    }

    /// Whether the framework may leave record `i` undelivered by a documented rule.
    fn passed_by_rule(&self, i: usize) -> bool {
        let rec = &self.records[i];
        if rec.filtered || self.never_consumed(&rec.stream, &rec.table) {
            return true;
        }
        let key = LeaseKey::new(rec.stream.clone(), rec.shard.clone());
        if self.born_finished.contains(&key) {
            return true;
        }
        if let Some(started) = self.born_latest.get(&key)
            && started.is_none_or(|at| rec.written_ms <= at)
        {
            return true;
        }
        self.since.get(&key).is_some_and(|since| {
            let cutoff = since
                .checked_sub(self.rules.creation_time_margin)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            rec.created < cutoff
        })
    }

    /// Whether `stream` (of `table`) was replaced before the application's first lease of
    /// the table and never got a lease: only a table's current stream is read (README, "A
    /// re-enabled stream"), so an application that starts after the re-enable never reads
    /// the older one (with a snapshot, the scan covers its records).
    fn never_consumed(&self, stream: &str, table: &str) -> bool {
        if self.first_lease.contains_key(stream) {
            return false;
        }
        let Some(&replaced) = self.replaced.get(stream) else {
            return false;
        };
        self.first_lease
            .iter()
            .filter(|(s, _)| table_of(s) == Some(table))
            .map(|(_, &at)| at)
            .min()
            .is_some_and(|first| replaced <= first)
    }

    /// Whether the stored checkpoint of `key` covers `seq` (a deleted lease was finished).
    fn covers(&self, key: &LeaseKey, seq: &SequenceNumber) -> bool {
        match self.checkpoints.get(key) {
            Some(Checkpoint::At(at)) => seq <= at,
            Some(Checkpoint::ShardEnd) => true,
            Some(_) => false,
            None => self.deleted.contains(key),
        }
    }

    /// Whether record `i` needs nothing more: it finished, or a rule passes it. A record
    /// the stream skips because a snapshot covers it (written before the snapshot began)
    /// is done only once every segment of its stream's snapshot ended: until then the
    /// sink does not have the item yet.
    fn done(&self, i: usize) -> bool {
        let rec = &self.records[i];
        rec.finished.is_some()
            || (self.passed_by_rule(i) && (rec.filtered || !self.snapshot_open(&rec.stream)))
    }

    /// Whether `stream` has a snapshot plan with a segment not ended yet.
    fn snapshot_open(&self, stream: &str) -> bool {
        self.plans.get(stream).is_some_and(|segments| {
            segments.iter().any(|segment| {
                !self
                    .segments_ended
                    .contains(&LeaseKey::new(stream.to_owned(), segment.clone()))
            })
        })
    }

    fn describe(&self, i: usize) -> String {
        let r = &self.records[i];
        format!(
            "record {} ({} {}={:?} in {} of table {}, attempts {}, {:?})",
            r.seq, r.event_id, r.key, r.n, r.shard, r.table, r.attempts, r.finished
        )
    }

    fn finish(&mut self, i: usize, how: Finished) {
        let rec = &mut self.records[i];
        if rec.finished.is_none() || how == Finished::Ok {
            rec.finished = Some(how);
        }
    }
}

impl Oracle {
    pub fn new(rules: Rules) -> Self {
        Self::with(rules, None, Journal::new(), true)
    }

    /// The oracle of pipeline `name`, writing to this one's journal: it checks the
    /// pipeline's calls and its own checkpoint (an attribute of each lease).
    pub fn for_pipeline(&self, name: &str, log_writes: bool) -> Self {
        let state = self.state();
        Self::with(
            state.rules.clone(),
            Some(name.to_owned()),
            state.journal.clone(),
            log_writes,
        )
    }

    fn with(rules: Rules, pipeline: Option<String>, journal: Journal, log_writes: bool) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rules,
                pipeline,
                log_writes,
                journal,
                violation: None,
                records: Vec::new(),
                by_seq: BTreeMap::new(),
                by_item: BTreeMap::new(),
                calls: BTreeMap::new(),
                next_call: 0,
                since: BTreeMap::new(),
                born_finished: BTreeSet::new(),
                born_latest: BTreeMap::new(),
                checkpoints: BTreeMap::new(),
                deleted: BTreeSet::new(),
                paused: BTreeSet::new(),
                sink: BTreeMap::new(),
                handler_calls: BTreeMap::new(),
                plans: BTreeMap::new(),
                segments_ended: BTreeSet::new(),
                snapshot_attempts: BTreeMap::new(),
                snapshot_handled: BTreeSet::new(),
                replaced: BTreeMap::new(),
                first_lease: BTreeMap::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the journal's clock at the paused runtime's now: the oracle is made before
    /// the runtime, on the real clock, and how long the runtime took to start must not
    /// shift every event's time (a seed replayed 4 ms apart on a loaded machine).
    pub fn start_clock(&self) {
        self.state().journal.start_clock();
    }

    pub fn log(&self, event: impl AsRef<str>) {
        self.state().journal.push(event);
    }

    pub fn violate(&self, invariant: &'static str, detail: String) {
        self.state().violate(invariant, detail);
    }

    pub fn violation(&self) -> Option<Violation> {
        self.state().violation.clone()
    }

    pub fn journal_hash(&self) -> (u64, u64) {
        let state = self.state();
        (state.journal.hash(), state.journal.len())
    }

    pub fn full_log(&self) -> Option<String> {
        self.state().journal.all()
    }

    pub fn tail(&self) -> String {
        self.state().journal.tail()
    }

    /// A record the world wrote; `created` is the streams' clock when it was written.
    pub fn wrote(&self, written: &WrittenRecord, n: Option<u64>, created: SystemTime) {
        let mut state = self.state();
        let created_secs = created
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let key = match written.keys.get("pk") {
            Some(aws_sdk_dynamodbstreams::types::AttributeValue::S(pk)) => pk.clone(),
            other => format!("{other:?}"),
        };
        let filtered = filtered_out(state.rules.filter_modulus, &written.event_id);
        let i = state.records.len();
        if state.log_writes {
            state.journal.push(format!(
                "write {} {key}={n:?} -> {} {}{}",
                written.table,
                written.shard_id,
                written.sequence_number,
                if filtered { " (filtered)" } else { "" }
            ));
        }
        state.by_seq.insert(written.sequence_number.to_string(), i);
        state
            .by_item
            .entry((written.table.clone(), key.clone()))
            .or_default()
            .push(i);
        let written_ms = state.journal.millis();
        state.records.push(Rec {
            table: written.table.clone(),
            stream: written.stream_arn.clone(),
            shard: written.shard_id.clone(),
            seq: written.sequence_number.clone(),
            event_id: written.event_id.clone(),
            key,
            n,
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(created_secs),
            written_ms,
            filtered,
            finished: None,
            attempts: 0,
            failed_calls: 0,
            last_call_failed: false,
            handled: false,
        });
    }

    /// The world replaced `stream` by a new stream of its table.
    pub fn stream_replaced(&self, stream: &str) {
        let mut state = self.state();
        let now = state.journal.millis();
        state.replaced.entry(stream.to_owned()).or_insert(now);
    }

    pub fn paused(&self, worker: &str, paused: bool) {
        let mut state = self.state();
        if paused {
            state.paused.insert(worker.to_owned());
            for call in state.calls.values_mut().filter(|c| c.worker == worker) {
                call.paused = true;
            }
        } else {
            state.paused.remove(worker);
        }
    }

    /// A `process` call starts; `owns` says whether the lease table names its caller as
    /// the owner at this epoch. Returns the call's id and each change's attempt number
    /// (1 for a first delivery; snapshot items are counted per segment and key).
    pub fn call_started(
        &self,
        ctx: &ShardContext,
        changes: Vec<Seen>,
        owns: Result<(), String>,
    ) -> (u64, Vec<u32>) {
        let mut state = self.state();
        let table = ctx.table.clone().unwrap_or_default();
        let id = state.next_call;
        state.next_call += 1;
        let worker_paused = state.paused.contains(&ctx.worker_id);
        let tag = state.pipeline_tag();
        state.journal.push(format!(
            "call{tag} {id} start {} {} epoch {} [{}]",
            ctx.lease_owner,
            ctx.shard_id,
            ctx.lease_epoch,
            changes
                .iter()
                .map(|c| match c.kind {
                    ChangeKind::Snapshot => format!("snap {}", c.key),
                    _ => c.seq.to_string().trim_start_matches('0').to_owned(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        ));
        if let Err(why) = owns {
            state.violate(
                "3 overlap",
                format!(
                    "{} started process on {} at epoch {}, but {why}",
                    ctx.lease_owner, ctx.shard_id, ctx.lease_epoch
                ),
            );
        }
        // Invariant 7: no stream record before every segment of the stream's snapshot ended.
        if changes.iter().any(|c| c.kind != ChangeKind::Snapshot)
            && let Some(segments) = state.plans.get(&ctx.stream_arn)
            && let Some(open) = segments.iter().find(|segment| {
                !state
                    .segments_ended
                    .contains(&LeaseKey::new(ctx.stream_arn.clone(), (*segment).clone()))
            })
        {
            let detail = format!(
                "{} got stream records of {} (call {id}) while snapshot segment {open} had not ended",
                ctx.lease_owner, ctx.shard_id
            );
            state.violate("7 snapshot first", detail);
        }
        // Invariant 3: no other worker's call on this shard; none of ours on these items.
        let mut problems = Vec::new();
        for (other_id, other) in &state.calls {
            if other.stream != ctx.stream_arn || other.shard != ctx.shard_id {
                continue;
            }
            if other.owner != ctx.lease_owner {
                if !other.paused {
                    problems.push(format!(
                        "call {id} of {} on {} overlaps call {other_id} of {} still running",
                        ctx.lease_owner, ctx.shard_id, other.owner
                    ));
                }
            } else if let Some(shared) = changes
                .iter()
                .find(|c| other.changes.iter().any(|o| o.key == c.key))
            {
                problems.push(format!(
                    "calls {other_id} and {id} of {} on {} both hold item {}",
                    ctx.lease_owner, ctx.shard_id, shared.key
                ));
            }
        }
        for problem in problems {
            state.violate("3 overlap", problem);
        }
        // Invariant 2: every earlier record of each item is finished or earlier in this batch.
        let mut attempts = Vec::with_capacity(changes.len());
        let mut problems = Vec::new();
        for (j, change) in changes.iter().enumerate() {
            if change.kind == ChangeKind::Snapshot {
                let item = (
                    ctx.stream_arn.clone(),
                    ctx.shard_id.clone(),
                    change.key.clone(),
                );
                let n = state.snapshot_attempts.entry(item).or_default();
                *n += 1;
                attempts.push(*n);
                continue;
            }
            let Some(&i) = state.by_seq.get(change.seq.as_str()) else {
                problems.push((
                    "1 nothing lost",
                    format!(
                        "{} got record {} that was never written",
                        ctx.shard_id, change.seq
                    ),
                ));
                attempts.push(0);
                continue;
            };
            let rec = &state.records[i];
            if rec.shard != ctx.shard_id || rec.stream != ctx.stream_arn {
                problems.push((
                    "1 nothing lost",
                    format!(
                        "record {} of {} delivered as one of {}",
                        rec.seq, rec.shard, ctx.shard_id
                    ),
                ));
            }
            let earlier = state
                .by_item
                .get(&(rec.table.clone(), rec.key.clone()))
                .map(|all| {
                    all.iter()
                        .copied()
                        .take_while(|&e| e != i)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            for e in earlier {
                let in_batch = changes[..j].iter().any(|c| c.seq == state.records[e].seq);
                if !in_batch && !state.done(e) {
                    problems.push((
                        "2 per-key order",
                        format!(
                            "{} reached {} (call {id}) before the earlier {} was finished",
                            state.describe(i),
                            ctx.lease_owner,
                            state.describe(e)
                        ),
                    ));
                    break;
                }
            }
            state.records[i].attempts += 1;
            attempts.push(state.records[i].attempts);
        }
        for (invariant, problem) in problems {
            state.violate(invariant, problem);
        }
        state.calls.insert(
            id,
            Call {
                worker: ctx.worker_id.clone(),
                owner: ctx.lease_owner.clone(),
                stream: ctx.stream_arn.clone(),
                shard: ctx.shard_id.clone(),
                table,
                changes,
                paused: worker_paused,
            },
        );
        (id, attempts)
    }

    /// A `process` call ended (or was dropped).
    pub fn call_ended(&self, id: u64, end: CallEnd) {
        let mut state = self.state();
        let Some(call) = state.calls.remove(&id) else {
            return;
        };
        let tag = state.pipeline_tag();
        state.journal.push(format!("call{tag} {id} end {end:?}"));
        let succeeded = match &end {
            CallEnd::Ok => call.changes.len(),
            CallEnd::FailedAt(seq) => call.changes.iter().position(|c| &c.seq == seq).unwrap_or(0),
            CallEnd::Failed | CallEnd::Dropped => 0,
        };
        for (j, change) in call.changes.iter().enumerate() {
            let index = state.by_seq.get(change.seq.as_str()).copied();
            if j < succeeded {
                state
                    .sink
                    .insert((call.table.clone(), change.key.clone()), change.n);
                if let Some(i) = index
                    && change.kind != ChangeKind::Snapshot
                {
                    state.finish(i, Finished::Ok);
                    state.records[i].last_call_failed = false;
                }
            } else if let Some(i) = index
                && change.kind != ChangeKind::Snapshot
            {
                state.records[i].failed_calls += 1;
                state.records[i].last_call_failed = !matches!(end, CallEnd::Dropped);
            }
        }
    }

    /// The on-failure handler was given `failed`; `accepted` is what it answers.
    /// Returns whether it accepts them (it fails each group `failures` times first).
    pub fn handler_called(&self, failed: &FailedRecords, failures: u32, now: SystemTime) -> bool {
        let mut state = self.state();
        let first = failed
            .sequence_numbers()
            .next()
            .unwrap_or_default()
            .to_owned();
        let calls = state.handler_calls.entry(first.clone()).or_default();
        *calls += 1;
        let accept = *calls > failures;
        let tag = state.pipeline_tag();
        // Snapshot records carry no sequence number: named by their item.
        let snapshot_items: Vec<String> = failed
            .records
            .iter()
            .filter(|r| r.dynamodb().and_then(|d| d.sequence_number()).is_none())
            .filter_map(|r| match r.dynamodb()?.keys()?.get("pk") {
                Some(aws_sdk_dynamodbstreams::types::AttributeValue::S(pk)) => Some(pk.clone()),
                _ => None,
            })
            .collect();
        state.journal.push(format!(
            "handler{tag} {} {} {}[{}] {}",
            failed.reason,
            failed.shard_id,
            failed
                .table
                .as_deref()
                .map(|t| format!("of {t} "))
                .unwrap_or_default(),
            failed
                .sequence_numbers()
                .map(|s| s.trim_start_matches('0').to_owned())
                .chain(snapshot_items.iter().map(|k| format!("snap {k}")))
                .collect::<Vec<_>>()
                .join(" "),
            if accept { "accepted" } else { "refused" }
        ));
        if !accept {
            return false;
        }
        let table = failed.table.clone().unwrap_or_default();
        for key in snapshot_items {
            state.snapshot_handled.insert((table.clone(), key));
        }
        let mut problems = Vec::new();
        for seq in failed.sequence_numbers() {
            let Some(&i) = state.by_seq.get(seq) else {
                problems.push(format!(
                    "the handler got record {seq} that was never written"
                ));
                continue;
            };
            let rec = &state.records[i];
            let holds = match failed.reason {
                FailureReason::TooOld => state.rules.max_record_age.is_some_and(|max| {
                    now.duration_since(rec.created)
                        .is_ok_and(|age| age + Duration::from_secs(1) >= max)
                }),
                FailureReason::RetriesExhausted
                | FailureReason::Panicked
                | FailureReason::TimedOut => rec.failed_calls > 0,
                _ => true,
            };
            if !holds {
                problems.push(format!(
                    "{} went to the handler as {} (created {:?}, now {:?})",
                    state.describe(i),
                    failed.reason,
                    rec.created,
                    now
                ));
            }
            state.records[i].handled = true;
            state.records[i].last_call_failed = true;
            state.finish(i, Finished::Handler(failed.reason));
        }
        for problem in problems {
            state.violate("1 nothing lost", problem);
        }
        true
    }

    pub fn filtered(&self, shard: &str, seqs: &[String]) {
        let mut state = self.state();
        state
            .journal
            .push(format!("filtered {shard} {} records", seqs.len()));
        for seq in seqs {
            match state.by_seq.get(seq.as_str()).copied() {
                Some(i) if state.records[i].filtered => state.finish(i, Finished::Filtered),
                Some(i) => {
                    let detail = format!(
                        "{} filtered out, but the filter keeps it",
                        state.describe(i)
                    );
                    state.violate("1 nothing lost", detail);
                }
                None => {}
            }
        }
    }

    /// Records of `shard` were trimmed before they were read: those older than the
    /// retention at `trimmed_before` count as reported.
    pub fn data_lost(&self, stream: &str, shard: &str, trimmed_before: SystemTime) {
        let mut state = self.state();
        state.journal.push(format!("data lost {shard}"));
        let lost: Vec<usize> = (0..state.records.len())
            .filter(|&i| {
                let r = &state.records[i];
                r.stream == stream
                    && r.shard == shard
                    && r.finished.is_none()
                    && r.created < trimmed_before
            })
            .collect();
        for i in lost {
            state.finish(i, Finished::DataLost);
        }
    }

    /// Records neither finished nor passed by a rule.
    /// Records not finished yet, then snapshot segments not ended yet (their items reach
    /// the sink only through them: a run has not drained while one is open).
    pub fn pending(&self) -> Vec<String> {
        let state = self.state();
        let records = (0..state.records.len())
            .filter(|&i| !state.done(i))
            .map(|i| state.describe(i));
        let segments = state.plans.iter().flat_map(|(stream, segments)| {
            segments
                .iter()
                .map(|segment| LeaseKey::new(stream.clone(), segment.clone()))
                .filter(|key| !state.segments_ended.contains(key))
                .map(|key| format!("snapshot segment {key} not ended"))
        });
        records.chain(segments).collect()
    }

    /// Shards whose stored checkpoint does not cover a finished record yet (what a drain
    /// with automatic checkpoints waits for).
    pub fn lagging_checkpoints(&self) -> Vec<String> {
        let state = self.state();
        let mut lagging = BTreeSet::new();
        for (i, rec) in state.records.iter().enumerate() {
            if rec.finished.is_none() || state.passed_by_rule(i) {
                continue;
            }
            let key = LeaseKey::new(rec.stream.clone(), rec.shard.clone());
            if !state.covers(&key, &rec.seq) {
                lagging.insert(format!("{} (record {})", rec.shard, rec.seq));
            }
        }
        lagging.into_iter().collect()
    }

    /// How many records were written.
    pub fn written(&self) -> usize {
        self.state().records.len()
    }

    /// `process` calls running now.
    pub fn running_calls(&self) -> usize {
        self.state().calls.len()
    }

    /// Invariant 5 with staged writes: `applied` says how many times the write staged for
    /// a record (by sequence number) was applied. Never twice; at the end, once for every
    /// record that was processed with `Ok` (never handed to the handler) and that the
    /// stored checkpoint covers.
    pub fn check_applied(&self, applied_by_id: impl Fn(&str) -> u64, end: bool) {
        let mut state = self.state();
        let prefix = state
            .pipeline
            .as_ref()
            .map(|p| format!("{p}/"))
            .unwrap_or_default();
        let applied = |seq: &str| applied_by_id(&format!("{prefix}{seq}"));
        let mut problems = Vec::new();
        for i in 0..state.records.len() {
            let rec = &state.records[i];
            let n = applied(rec.seq.as_str());
            let key = LeaseKey::new(rec.stream.clone(), rec.shard.clone());
            if n > 1 {
                problems.push(format!(
                    "the writes of {} were applied {n} times",
                    state.describe(i)
                ));
            } else if end
                && n == 0
                && rec.finished == Some(Finished::Ok)
                && !rec.handled
                && !state.passed_by_rule(i)
                && state.covers(&key, &rec.seq)
            {
                problems.push(format!(
                    "the checkpoint covers {}, processed with Ok, but its writes were never applied",
                    state.describe(i)
                ));
            }
        }
        if end {
            let applied: u64 = state.records.iter().map(|r| applied(r.seq.as_str())).sum();
            state
                .journal
                .push(format!("staged writes applied: {applied}"));
        }
        for problem in problems {
            state.violate("5 exactly once", problem);
        }
    }

    /// Invariant 2's sink check, given the table's item `n` (or `None`) per (table, key).
    pub fn check_sink(&self, table_item: impl Fn(&str, &str) -> Option<u64>) {
        let mut state = self.state();
        let mut problems = Vec::new();
        for ((table, key), records) in &state.by_item {
            let Some(&last) = records.last() else {
                continue;
            };
            let rec = &state.records[last];
            let shard = LeaseKey::new(rec.stream.clone(), rec.shard.clone());
            // A shard whose checkpoint lags may be delivered again from it: the sink holds
            // what the last (partial) redelivery left. With a snapshot, an item whose last
            // record the stream skipped (before the snapshot began) came through the scan,
            // unless its snapshot record went to the on-failure handler (seed 73761).
            let through_snapshot = state.rules.snapshot
                && rec.finished.is_none()
                && !rec.filtered
                && state.passed_by_rule(last)
                && state.plans.contains_key(&rec.stream)
                && !state
                    .snapshot_handled
                    .contains(&(table.clone(), key.clone()));
            if !through_snapshot
                && (rec.finished != Some(Finished::Ok)
                    || rec.last_call_failed
                    || !state.covers(&shard, &rec.seq))
            {
                continue;
            }
            let sink = state
                .sink
                .get(&(table.clone(), key.clone()))
                .copied()
                .flatten();
            let item = table_item(table, key);
            if sink != item {
                problems.push(format!(
                    "item {key} of {table}: the sink has {sink:?}, the table {item:?} (last record {})",
                    state.describe(last)
                ));
            }
        }
        for problem in problems {
            state.violate("2 per-key order", problem);
        }
    }
}

/// Checkpoint order: start positions, then sequence numbers, then the end.
fn rank(checkpoint: &Checkpoint) -> Option<(u8, Option<&SequenceNumber>)> {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::Latest | Checkpoint::Since(_) => Some((0, None)),
        Checkpoint::At(seq) => Some((1, Some(seq))),
        Checkpoint::ShardEnd => Some((2, None)),
        _ => None,
    }
}

impl StoreObserver for Oracle {
    fn lease_written(
        &self,
        op: StoreOp,
        key: &LeaseKey,
        before: Option<&Lease>,
        after: Option<&Lease>,
    ) {
        let mut state = self.state();
        if state.log_writes {
            let shown = after.map_or_else(
                || "deleted".to_owned(),
                |l| {
                    let pipelines: String = l
                        .pipelines
                        .iter()
                        .map(|(p, c)| format!(" {p}={c}"))
                        .collect();
                    format!("{} {:?}#{}{pipelines}", l.checkpoint, l.owner, l.epoch)
                },
            );
            state
                .journal
                .push(format!("store {} {} -> {shown}", op.name(), key.shard_id));
        }
        if let (Some(stream), Some(plan)) = (key.shard_id.strip_prefix("snapshot|"), after)
            && key.is_coordination()
        {
            state
                .plans
                .entry(stream.to_owned())
                .or_insert_with(|| plan.parent_shard_ids.clone());
        }
        if op == StoreOp::CreateLease && key.stream != LeaseKey::COORDINATION_STREAM {
            let now = state.journal.millis();
            state.first_lease.entry(key.stream.clone()).or_insert(now);
        }
        if dynamodb_streams_consumer::snapshot::is_segment(key)
            && after.is_some_and(|l| l.checkpoint == Checkpoint::ShardEnd)
        {
            state.segments_ended.insert(key.clone());
        }
        if key.is_coordination() || dynamodb_streams_consumer::snapshot::is_segment(key) {
            return;
        }
        if op == StoreOp::DeleteLease {
            state.deleted.insert(key.clone());
            state.checkpoints.remove(key);
            return;
        }
        let Some(lease) = after else { return };
        // A pipeline's checkpoint is its attribute of the lease; before the pipeline wrote
        // one, the lease's start position.
        let pipeline = state.pipeline.clone();
        let effective = |l: &Lease| match &pipeline {
            None => l.checkpoint.clone(),
            Some(p) => match (l.pipelines.get(p), &l.checkpoint) {
                (Some(own), _) => own.clone(),
                (None, Checkpoint::At(_)) => Checkpoint::TrimHorizon,
                (None, start) => start.clone(),
            },
        };
        let with_effective = |l: &Lease| {
            let mut l = l.clone();
            l.checkpoint = effective(&l);
            l
        };
        let after = &with_effective(lease);
        let before = before.map(with_effective);
        let before = before.as_ref();
        state
            .checkpoints
            .insert(key.clone(), after.checkpoint.clone());
        if op == StoreOp::CreateLease {
            if state.deleted.contains(key) {
                state.violate(
                    "4 checkpoint",
                    format!("lease {key} was created again after it was deleted"),
                );
            }
            if after.checkpoint == Checkpoint::ShardEnd {
                state.born_finished.insert(key.clone());
            }
            if after.checkpoint == Checkpoint::Latest {
                state.born_latest.insert(key.clone(), None);
            }
        }
        let now = state.journal.millis();
        if let Some(started @ None) = state.born_latest.get_mut(key)
            && after.checkpoint != Checkpoint::Latest
        {
            *started = Some(now);
        }
        if let Checkpoint::Since(t) = &after.checkpoint {
            state.since.entry(key.clone()).or_insert(*t);
        }
        if let (Some(before), Some(new)) = (
            before.and_then(|b| rank(&b.checkpoint)),
            rank(&after.checkpoint),
        ) && new < before
        {
            let was = before_text(before);
            state.violate(
                "4 checkpoint",
                format!(
                    "{} moved the checkpoint of {} back from {was} to {}",
                    op.name(),
                    key.shard_id,
                    after.checkpoint
                ),
            );
        }
        let covered: Vec<usize> = (0..state.records.len())
            .filter(|&i| {
                let r = &state.records[i];
                r.stream == key.stream
                    && r.shard == key.shard_id
                    && match &after.checkpoint {
                        Checkpoint::At(seq) => r.seq <= *seq,
                        Checkpoint::ShardEnd => true,
                        _ => false,
                    }
            })
            .collect();
        if let Some(&i) = covered.iter().find(|&&i| !state.done(i)) {
            let detail = format!(
                "{} wrote {} on {} by {:?}, covering the unfinished {}",
                op.name(),
                after.checkpoint,
                key.shard_id,
                after.owner,
                state.describe(i)
            );
            state.violate("4 checkpoint", detail);
        }
    }
}

/// The table name inside a stream ARN (`arn:…:table/NAME/stream/LABEL`).
fn table_of(stream_arn: &str) -> Option<&str> {
    let (_, rest) = stream_arn.split_once(":table/")?;
    rest.split_once("/stream/").map(|(table, _)| table)
}

fn before_text(rank: (u8, Option<&SequenceNumber>)) -> String {
    match rank {
        (0, _) => "a start position".into(),
        (1, Some(seq)) => seq.to_string(),
        _ => "SHARD_END".into(),
    }
}
