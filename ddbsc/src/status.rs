//! `ddbsc status`: per lease, who owns it and how far it got; per worker, whether it is
//! alive and what it holds; with `--lag`, how far each active shard is from its tip; per
//! snapshot (`with_snapshot`), segments done of total and items delivered (`snapshots`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use comfy_table::Table;
use dynamodb_streams_consumer::snapshot::{
    GATE_ID, GateState, SnapshotProgress, is_gate, is_segment,
};
use dynamodb_streams_consumer::streams::{StartPosition, StreamsApi};
use dynamodb_streams_leases::pipeline::slowest;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseStore, SequenceNumber, WorkerRecord};
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::context::{Context, table_of_stream};
use crate::liveness::{Liveness, LivenessArgs};
use crate::{Failure, Outcome};

/// Pages with records read per shard by `--lag` before it stops counting (the count is
/// then a lower bound, shown with `+`): at 1000 records a page, 10 000 records.
const LAG_MAX_PAGES: usize = 10;

/// Empty pages in a row after which an open shard counts as read to its tip. DynamoDB
/// Streams also returns empty pages where a shard has no records yet further on ("it might
/// take multiple calls to get to a portion of the shard that contains stream records"), so
/// one empty page proves nothing; the shard's end (no `NextShardIterator`) is certain.
const LAG_EMPTY_PAGES_AT_TIP: usize = 4;

/// The pause between empty pages: GetRecords allows about 5 calls a second per shard,
/// shared with the workers reading it.
const LAG_EMPTY_PAGE_PAUSE: Duration = Duration::from_millis(200);

/// GetRecords calls per shard at most, however the pages come (a lower bound again).
const LAG_MAX_CALLS: usize = 2 * (LAG_MAX_PAGES + LAG_EMPTY_PAGES_AT_TIP);

/// Shards `--lag` reads at the same time.
const LAG_CONCURRENCY: usize = 8;

/// `ddbsc status --app APP [--lag]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The application (its lease table).
    #[arg(long, value_name = "APP")]
    app: String,
    /// Also read each active shard from its checkpoint to its tip: records behind and the
    /// age of the oldest unprocessed record.
    #[arg(long)]
    lag: bool,
    #[command(flatten)]
    liveness: LivenessArgs,
}

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Processed (or ready to be) now.
    Active,
    /// A parent shard is not finished yet.
    Waiting,
    /// Read to its end.
    Finished,
}

impl State {
    fn of(lease: &Lease, finished: &HashMap<(&str, &str), bool>) -> Self {
        if lease.checkpoint.is_shard_end() {
            return Self::Finished;
        }
        let parent_pending = lease.parent_shard_ids.iter().any(|parent| {
            finished
                .get(&(lease.key.stream.as_str(), parent.as_str()))
                .is_some_and(|done| !done)
        });
        if parent_pending {
            Self::Waiting
        } else {
            Self::Active
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Waiting => "waiting-for-parent",
            Self::Finished => "finished",
        }
    }
}

/// How far a shard is from its tip.
#[derive(Debug)]
struct Lag {
    /// Records after the checkpoint (a lower bound when `complete` is false).
    records: u64,
    complete: bool,
    /// Age of the oldest record after the checkpoint; `None` when there is none.
    oldest_age: Option<Duration>,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    args.liveness.check()?;
    let store = context.lease_store(&args.app).await?;
    let report = Report::read(context, &store, &args.app, args.lag, &args.liveness).await?;
    if context.json {
        context.print_json(&report.to_json())
    } else {
        report.print(context)
    }
}

/// One reading of an application's lease table (and, with `lag`, of its shards): what
/// `status` prints and what `serve` shows, computed in one place.
pub struct Report {
    app: String,
    /// The shard and segment leases (no coordination items), in key order.
    leases: Vec<Lease>,
    /// Per lease, in the same order.
    states: Vec<State>,
    /// Per lease, in the same order: `None` when not asked or not active.
    lags: Vec<Option<Result<ShardLag, String>>>,
    lag_asked: bool,
    /// The gates that hold a re-enabled stream's roots (coordination items).
    gates: Vec<Lease>,
    workers: Vec<WorkerRecord>,
    live: Liveness,
    snapshots: Vec<SnapshotProgress>,
    /// Leases held per owner.
    held: BTreeMap<String, usize>,
    /// When the lease table was read (this machine's clock): what ages are measured from.
    now: SystemTime,
}

impl Report {
    /// Reads `store` (the lease table of `app`); with `lag`, each active shard towards its
    /// tip too.
    pub async fn read(
        context: &Context,
        store: &dyn LeaseStore,
        app: &str,
        lag: bool,
        liveness: &LivenessArgs,
    ) -> Result<Self, Failure> {
        let (leases, workers, live) = liveness.read(store).await?;
        let snapshots = dynamodb_streams_consumer::snapshot::progress(&leases);
        let (coordination, mut leases): (Vec<Lease>, Vec<Lease>) =
            leases.into_iter().partition(|l| l.key.is_coordination());
        leases.sort_by(|a, b| a.key.cmp(&b.key));
        // A parent is a shard's lease, or the gate that holds a re-enabled stream's roots
        // until the older stream is read to its end: a gate still in the table is unfinished.
        // A snapshot's gate holds a stream's roots until every segment finished (its
        // progress is in `snapshots`).
        let (gates, snapshot_gates): (Vec<Lease>, Vec<Lease>) = coordination
            .into_iter()
            .filter(|l| l.key.gated_stream().is_some() || is_gate(&l.key))
            .partition(|l| l.key.gated_stream().is_some());
        let finished: HashMap<(&str, &str), bool> = leases
            .iter()
            .chain(&gates)
            .chain(&snapshot_gates)
            .map(|l| {
                (
                    (l.key.stream.as_str(), l.key.shard_id.as_str()),
                    l.checkpoint.is_shard_end(),
                )
            })
            .collect();
        let states: Vec<State> = leases.iter().map(|l| State::of(l, &finished)).collect();

        // A shard that cannot be read (trimmed past its checkpoint, gone) says why in its
        // row; the rest of the status is still shown.
        // Shards are read a few at a time: quick with many shards, gentle on the stream's
        // GetRecords limit (5 calls per second per shard, shared with the workers).
        // The reads are made before they are streamed: a stream built from a closure over
        // borrowed leases is not `Send`, and `serve` runs this on its server's tasks.
        let api = context.streams();
        let reads: Vec<_> = leases
            .iter()
            .zip(&states)
            .map(|(lease, state)| {
                let api = api.clone();
                let wanted = lag && *state == State::Active && !is_segment(&lease.key);
                async move {
                    if !wanted {
                        return None;
                    }
                    let lag = shard_lag(api.as_ref(), lease).await;
                    Some(lag.map_err(|Failure(message)| message))
                }
            })
            .collect();
        let lags: Vec<Option<Result<ShardLag, String>>> = stream::iter(reads)
            .buffered(LAG_CONCURRENCY)
            .collect()
            .await;

        let mut held: BTreeMap<String, usize> = BTreeMap::new();
        for owner in leases.iter().filter_map(|l| l.owner.as_deref()) {
            *held.entry(owner.to_owned()).or_default() += 1;
        }
        Ok(Self {
            app: app.to_owned(),
            leases,
            states,
            lags,
            lag_asked: lag,
            gates,
            workers,
            live,
            snapshots,
            held,
            now: SystemTime::now(),
        })
    }

    fn held_by(&self, worker: &str) -> usize {
        self.held.get(worker).copied().unwrap_or(0)
    }

    /// The `--json` object (see the README for its fields).
    pub fn to_json(&self) -> Value {
        let leases: Vec<Value> = self
            .leases
            .iter()
            .zip(&self.states)
            .zip(&self.lags)
            .map(|((lease, state), lag)| {
                lease_json(
                    lease,
                    *state,
                    &self.live,
                    lag.as_ref(),
                    self.lag_asked,
                    self.now,
                )
            })
            .collect();
        let workers: Vec<Value> = self
            .workers
            .iter()
            .map(|w| {
                json!({
                    "id": w.worker_id,
                    "alive": self.live.is_alive(&w.worker_id),
                    "leases": self.held_by(&w.worker_id),
                    "heartbeat": w.heartbeat,
                    "heartbeat_age_ms": age(self.now, w.updated_at).as_millis() as u64,
                })
            })
            .collect();
        let snapshots: Vec<Value> = self.snapshots.iter().map(snapshot_json).collect();
        json!({
            "app": self.app,
            "leases": leases,
            "workers": workers,
            "snapshots": snapshots,
        })
    }

    /// The readable tables.
    fn print(&self, context: &Context) -> Outcome {
        let mut table = Table::new();
        let mut header = vec![
            "TABLE",
            "SHARD",
            "STATE",
            "OWNER",
            "ALIVE",
            "CHECKPOINT",
            "HANDOFF TO",
        ];
        if self.lag_asked {
            header.extend(["BEHIND", "OLDEST UNPROCESSED"]);
        }
        table
            .load_preset(comfy_table::presets::NOTHING)
            .set_header(header);
        let mut unreadable = Vec::new();
        for ((lease, state), lag) in self.leases.iter().zip(&self.states).zip(&self.lags) {
            let mut row = vec![
                table_of_stream(&lease.key.stream)
                    .unwrap_or(&lease.key.stream)
                    .to_owned(),
                lease.key.shard_id.clone(),
                state.as_str().to_owned(),
                lease.owner.clone().unwrap_or_else(|| "-".into()),
                match &lease.owner {
                    Some(owner) => yes_no(self.live.is_alive(owner)).to_owned(),
                    None => "-".into(),
                },
                lease.checkpoint.to_string(),
                lease.handoff_to.clone().unwrap_or_else(|| "-".into()),
            ];
            if self.lag_asked {
                row.extend(match lag {
                    Some(Err(message)) => {
                        unreadable.push(format!("shard {}: {message}", lease.key.shard_id));
                        ["?".into(), "?".into()]
                    }
                    Some(Ok(lag)) => lag_cells(&lag.lease),
                    None => ["-".into(), "-".into()],
                });
            }
            table.add_row(row);
            // One row per named pipeline under its lease: its checkpoint, and its lag.
            for (name, checkpoint) in &lease.pipelines {
                let mut row = vec![
                    String::new(),
                    format!("  pipeline {name}"),
                    if checkpoint.is_shard_end() {
                        State::Finished.as_str().to_owned()
                    } else {
                        String::new()
                    },
                    String::new(),
                    String::new(),
                    checkpoint.to_string(),
                    String::new(),
                ];
                if self.lag_asked {
                    row.extend(match lag {
                        Some(Err(_)) => ["?".into(), "?".into()],
                        Some(Ok(lag)) => lag
                            .pipelines
                            .get(name)
                            .map_or_else(|| ["-".into(), "-".into()], lag_cells),
                        None => ["-".into(), "-".into()],
                    });
                }
                table.add_row(row);
            }
        }
        context.line(&table)?;
        for line in &unreadable {
            context.line(format_args!("cannot read {line}"))?;
        }
        for gate in &self.gates {
            context.line(gate_line(gate))?;
        }
        context.line("")?;
        for snapshot in &self.snapshots {
            context.line(snapshot_line(snapshot))?;
        }
        if !self.snapshots.is_empty() {
            context.line("")?;
        }

        let mut table = Table::new();
        table
            .load_preset(comfy_table::presets::NOTHING)
            .set_header(["WORKER", "ALIVE", "LEASES", "LAST HEARTBEAT"]);
        for w in &self.workers {
            table.add_row([
                w.worker_id.clone(),
                yes_no(self.live.is_alive(&w.worker_id)).to_owned(),
                self.held_by(&w.worker_id).to_string(),
                format!(
                    "{} ago",
                    humantime::format_duration(whole_seconds(age(self.now, w.updated_at)))
                ),
            ]);
        }
        context.line(&table)
    }
}

/// A snapshot's progress in `--json`: `table`, `stream`, `started_at` (RFC 3339),
/// `segments`, `segments_done`, `done`, `items_in_open_segments` (a finished segment keeps
/// no count), `owners` of the open segments, and `gate`: the lease that holds the
/// stream's roots (`shard`) and its `state` (`open`, `finished`, or `absent`: none, as for
/// a snapshot planned before gates, whose roots name every segment).
fn snapshot_json(progress: &SnapshotProgress) -> Value {
    json!({
        "table": table_of_stream(&progress.stream_arn),
        "stream": progress.stream_arn,
        "started_at": progress
            .started_at
            .map(|t| humantime::format_rfc3339_millis(t).to_string()),
        "segments": progress.segments,
        "segments_done": progress.segments_done,
        "done": progress.is_done(),
        "items_in_open_segments": progress.items_in_open_segments,
        "owners": progress.owners,
        "gate": {
            "shard": GATE_ID,
            "state": progress.gate.as_str(),
        },
    })
}

/// What a stream gate holds back, as one readable line.
fn gate_line(gate: &Lease) -> String {
    let stream = &gate.key.stream;
    let table = table_of_stream(stream).unwrap_or(stream);
    let older = gate.key.gated_stream().unwrap_or_default();
    format!(
        "{table}: stream {stream} waits until {older} is read to its end (the table's stream \
         was disabled and enabled again)"
    )
}

/// A snapshot's progress as one readable line.
fn snapshot_line(progress: &SnapshotProgress) -> String {
    let table = table_of_stream(&progress.stream_arn).unwrap_or(&progress.stream_arn);
    let started = progress
        .started_at
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "?".into());
    let gate = match progress.gate {
        GateState::Open => format!("the stream waits at gate {GATE_ID}"),
        GateState::Finished => format!("gate {GATE_ID} finished: the stream runs"),
        GateState::Absent => format!("no gate {GATE_ID}"),
    };
    if progress.is_done() {
        return format!(
            "snapshot of {table}: done ({} segments; started {started}); {gate}",
            progress.segments
        );
    }
    format!(
        "snapshot of {table}: {} of {} segments done, {} items delivered by the open segments (started {started}); {gate}",
        progress.segments_done, progress.segments, progress.items_in_open_segments
    )
}

/// A lag in `--json`.
fn lag_json(lag: &Lag) -> Value {
    json!({
        "records": lag.records,
        "complete": lag.complete,
        "oldest_unprocessed_age_ms": lag.oldest_age.map(|a| a.as_millis() as u64),
    })
}

fn lease_json(
    lease: &Lease,
    state: State,
    live: &Liveness,
    lag: Option<&Result<ShardLag, String>>,
    lag_asked: bool,
    now: SystemTime,
) -> Value {
    let mut value = json!({
        "table": table_of_stream(&lease.key.stream),
        "stream": lease.key.stream,
        "shard": lease.key.shard_id,
        "state": state.as_str(),
        "owner": lease.owner,
        "owner_alive": lease.owner.as_deref().map(|o| live.is_alive(o)),
        "checkpoint": lease.checkpoint.to_string(),
        "handoff_to": lease.handoff_to,
        "parents": lease.parent_shard_ids,
        "epoch": lease.epoch,
        // The checkpoint's age, or less: the last write is a checkpoint, an owner change or
        // a handoff request.
        "last_write_age_ms": age(now, lease.updated_at).as_millis() as u64,
    });
    // Each named pipeline's checkpoint, and its own lag with `--lag` (the same figures
    // as the lease's, counted from the pipeline's checkpoint).
    let pipelines: serde_json::Map<String, Value> = lease
        .pipelines
        .iter()
        .map(|(name, checkpoint)| {
            let mut entry = json!({ "checkpoint": checkpoint.to_string() });
            if lag_asked {
                entry["lag"] = match lag {
                    Some(Err(message)) => json!({ "error": message }),
                    Some(Ok(lag)) => lag.pipelines.get(name).map_or(Value::Null, lag_json),
                    None => Value::Null,
                };
            }
            (name.clone(), entry)
        })
        .collect();
    value["pipelines"] = Value::Object(pipelines);
    if lag_asked {
        value["lag"] = match lag {
            Some(Err(message)) => json!({ "error": message }),
            Some(Ok(lag)) => lag_json(&lag.lease),
            None => Value::Null,
        };
    }
    value
}

/// How far the lease and each of its named pipelines are from the shard's tip.
#[derive(Debug)]
struct ShardLag {
    /// From the lease's checkpoint (with pipelines, the read position: the slowest's).
    lease: Lag,
    /// From each pipeline's own checkpoint.
    pipelines: BTreeMap<String, Lag>,
}

/// Which records a checkpoint has still to process, as far as a lag count goes.
#[derive(Clone, Copy, Debug)]
enum Behind<'a> {
    /// None: it starts at the tip when first read (`LATEST`), or it is finished, or it is a
    /// snapshot segment (whose progress is in `snapshots`).
    Nothing,
    /// Every record: from a start time too (records before the time are counted, an
    /// upper bound).
    Everything,
    /// The records after this one.
    After(&'a SequenceNumber),
}

impl<'a> Behind<'a> {
    fn of(checkpoint: &'a Checkpoint) -> Self {
        match checkpoint {
            Checkpoint::TrimHorizon | Checkpoint::Since(_) => Self::Everything,
            Checkpoint::At(seq) => Self::After(seq),
            Checkpoint::Latest | Checkpoint::ShardEnd | Checkpoint::Scan(_) => Self::Nothing,
        }
    }

    fn counts(self, seq: Option<&SequenceNumber>) -> bool {
        match self {
            Self::Nothing => false,
            Self::Everything => true,
            Self::After(done) => seq.is_some_and(|seq| seq > done),
        }
    }
}

/// Reads the shard once, from the slowest of the lease's and its named pipelines'
/// checkpoints towards its tip, and counts for each checkpoint the records after it: to the
/// shard's end (no `NextShardIterator`), or until [`LAG_EMPTY_PAGES_AT_TIP`] empty pages in
/// a row (following `NextShardIterator` past fewer), or until the page budget is spent (a
/// lower bound then).
async fn shard_lag(api: &dyn StreamsApi, lease: &Lease) -> Result<ShardLag, Failure> {
    let (stream, shard) = (&lease.key.stream, &lease.key.shard_id);
    let fresh = || Lag {
        records: 0,
        complete: false,
        oldest_age: None,
    };
    // The lease's own (no name), then each pipeline's.
    let mut lags: Vec<(Option<&String>, Behind<'_>, Lag)> =
        std::iter::once((None, &lease.checkpoint))
            .chain(lease.pipelines.iter().map(|(name, cp)| (Some(name), cp)))
            .map(|(name, checkpoint)| (name, Behind::of(checkpoint), fresh()))
            .collect();
    let from = slowest(std::iter::once(&lease.checkpoint).chain(lease.pipelines.values()));
    let position = match from.as_ref().map(Behind::of) {
        Some(Behind::Everything) => Some(StartPosition::TrimHorizon),
        Some(Behind::After(seq)) => Some(StartPosition::AfterSequenceNumber(seq.clone())),
        Some(Behind::Nothing) | None => None,
    };
    let mut iterator = match position {
        Some(position) => Some(api.shard_iterator(stream, shard, &position).await?),
        None => None,
    };
    let mut complete = iterator.is_none();
    let (mut pages_with_records, mut empty_in_a_row) = (0, 0);
    for _ in 0..LAG_MAX_CALLS {
        let Some(current) = iterator.take() else {
            break;
        };
        if empty_in_a_row > 0 {
            tokio::time::sleep(LAG_EMPTY_PAGE_PAUSE).await;
        }
        let page = api.get_records(&current, 1000).await?;
        iterator = page.next_iterator;
        if page.records.is_empty() {
            empty_in_a_row += 1;
            if empty_in_a_row >= LAG_EMPTY_PAGES_AT_TIP {
                complete = true;
                break;
            }
            continue;
        }
        empty_in_a_row = 0;
        let now = SystemTime::now();
        for record in &page.records {
            let data = record.dynamodb();
            let seq = data
                .and_then(|d| d.sequence_number())
                .and_then(|text| SequenceNumber::parse(text).ok());
            let created = data
                .and_then(|d| d.approximate_creation_date_time())
                .and_then(|t| SystemTime::try_from(*t).ok());
            for (_, behind, lag) in &mut lags {
                if behind.counts(seq.as_ref()) {
                    if lag.records == 0 {
                        lag.oldest_age = created.map(|t| age(now, t));
                    }
                    lag.records += 1;
                }
            }
        }
        pages_with_records += 1;
        if pages_with_records >= LAG_MAX_PAGES {
            break;
        }
    }
    // Read to the shard's end, or to its tip.
    complete |= iterator.is_none();
    let mut result = ShardLag {
        lease: fresh(),
        pipelines: BTreeMap::new(),
    };
    for (name, _, mut lag) in lags {
        lag.complete = complete;
        match name {
            Some(name) => {
                result.pipelines.insert(name.clone(), lag);
            }
            None => result.lease = lag,
        }
    }
    Ok(result)
}

/// The BEHIND and OLDEST UNPROCESSED cells of a lag.
fn lag_cells(lag: &Lag) -> [String; 2] {
    [
        format!("{}{}", lag.records, if lag.complete { "" } else { "+" }),
        lag.oldest_age
            .map(|a| humantime::format_duration(whole_seconds(a)).to_string())
            .unwrap_or_else(|| "-".into()),
    ]
}

fn age(now: SystemTime, then: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or(Duration::ZERO)
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}
