//! `ddbsc reset`: moves checkpoints, one conditional write per lease.
//!
//! Each lease moves with [`LeaseStore::reset_lease`]: checkpoint set, epoch bumped, owner
//! and pending handoff removed, conditioned on the owner and epoch just read. The previous
//! owner is fenced (its next checkpoint is refused by the store, so it stops that shard);
//! a worker that took the lease after it was read makes that one write fail whole, and the
//! shard is reported refused with the worker's position untouched: a shard is moved or not,
//! never half. Workers take the moved leases on their next scan and resume from the new
//! position. One line per shard says what happened (moved, refused and why, or not moved
//! because it is finished); any refusal makes the exit code 1.
//!
//! Checked before anything moves (a refusal moves nothing): a lease whose owner is alive
//! (unless `--force`); a finished shard named with `--shard` (unless `--include-finished`);
//! a sequence number outside the shard's range (DescribeStream), or where a worker could
//! not resume (GetShardIterator after it).

use dynamodb_streams_consumer::snapshot::is_segment;
use dynamodb_streams_consumer::streams::StartPosition;
use dynamodb_streams_leases::{Checkpoint, Error as StoreError, Lease, LeaseStore, SequenceNumber};
use serde_json::{Value, json};

use crate::context::{Context, table_of_stream};
use crate::liveness::LivenessArgs;
use crate::{Failure, Outcome};

/// `ddbsc reset --app APP --table T [--shard S] --to trim-horizon|latest|SEQ [--force]
/// [--include-finished]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The application (its lease table).
    #[arg(long, value_name = "APP")]
    app: String,
    /// The table whose stream's checkpoints move.
    #[arg(long, value_name = "T")]
    table: String,
    /// Only this shard. Without it, every unfinished shard of the table moves.
    #[arg(long, value_name = "S")]
    shard: Option<String>,
    /// The new position: `trim-horizon`, `latest`, or a sequence number of the shard
    /// (processing resumes after it).
    #[arg(long, value_name = "POSITION")]
    to: String,
    /// Move leases owned by live workers too: the owner is fenced (its next checkpoint is
    /// refused) and stops that shard.
    #[arg(long)]
    force: bool,
    /// Move finished shards (SHARD_END) too: they are read again, although their children
    /// may have started already.
    #[arg(long)]
    include_finished: bool,
    #[command(flatten)]
    liveness: LivenessArgs,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    args.liveness.check()?;
    let target = parse_position(&args.to)?;
    let store = context.lease_store(&args.app).await?;
    let (leases, _, live) = args.liveness.read(&store).await?;
    let Plan { chosen, finished } = plan(&args, &leases)?;
    if let Checkpoint::At(seq) = &target {
        match chosen.as_slice() {
            [] => {}
            [lease] => check_resumable(context, lease, seq).await?,
            _ => {
                return Err(Failure(format!(
                    "sequence number {seq} belongs to one shard, and table {:?} has {} shards \
                     to move: name it with --shard",
                    args.table,
                    chosen.len()
                )));
            }
        }
    }
    if !args.force {
        for lease in &chosen {
            if let Some(owner) = lease.owner.as_deref().filter(|o| live.is_alive(o)) {
                return Err(Failure(format!(
                    "refused: lease of shard {} of table {:?} is owned by live worker {owner:?}; \
                     stop it first, or use --force to take the lease from it",
                    lease.key.shard_id, args.table
                )));
            }
        }
    }

    // In shard order, each lease in its own write.
    let mut order: Vec<(&Lease, bool)> = chosen
        .into_iter()
        .map(|l| (l, true))
        .chain(finished.into_iter().map(|l| (l, false)))
        .collect();
    order.sort_by(|(a, _), (b, _)| a.key.cmp(&b.key));
    let mut outcomes = Vec::with_capacity(order.len());
    for (lease, moves) in order {
        outcomes.push(if moves {
            move_and_report(&store, lease, &target).await
        } else {
            ShardOutcome::Finished { lease }
        });
    }
    let refused = outcomes.iter().filter(|o| o.is_refused()).count();
    let moved = outcomes.iter().filter(|o| o.is_moved()).count();
    if context.json {
        context.print_json(&outcomes_json(&args, &target, &outcomes))?;
    } else {
        for outcome in &outcomes {
            context.line(outcome.line(&target))?;
        }
    }
    if refused > 0 {
        return Err(Failure(format!(
            "refused for {refused} of {} shards of table {:?} ({moved} moved): each refused \
             lease changed since it was read and keeps its position; look again \
             (ddbsc status) and rerun",
            refused + moved,
            args.table
        )));
    }
    Ok(())
}

/// The leases to move, and the finished ones left alone.
struct Plan<'a> {
    chosen: Vec<&'a Lease>,
    finished: Vec<&'a Lease>,
}

/// Which of `leases` move; bad names and a named finished shard (without
/// `--include-finished`) are errors.
fn plan<'a>(args: &Args, leases: &'a [Lease]) -> Result<Plan<'a>, Failure> {
    let of_table = |l: &&Lease| table_of_stream(&l.key.stream) == Some(args.table.as_str());
    // Shards only: a snapshot segment's position is a scan key, and a gate has none.
    let shards: Vec<&Lease> = leases
        .iter()
        .filter(of_table)
        .filter(|l| !is_segment(&l.key) && !l.key.is_coordination())
        .collect();
    if shards.is_empty() {
        return Err(Failure(format!(
            "application {:?} has no leases for table {:?} (is a worker consuming it?)",
            args.app, args.table
        )));
    }
    let Some(shard) = &args.shard else {
        let (finished, unfinished): (Vec<&Lease>, Vec<&Lease>) = shards
            .into_iter()
            .partition(|l| l.checkpoint.is_shard_end());
        return Ok(if args.include_finished {
            Plan {
                chosen: finished.into_iter().chain(unfinished).collect(),
                finished: Vec::new(),
            }
        } else {
            Plan {
                chosen: unfinished,
                finished,
            }
        });
    };
    let names_a_segment = leases
        .iter()
        .filter(of_table)
        .any(|l| &l.key.shard_id == shard && is_segment(&l.key));
    if names_a_segment {
        return Err(Failure(format!(
            "{shard:?} is a snapshot segment of table {:?}, not a shard: reset moves shard \
             checkpoints only",
            args.table
        )));
    }
    let chosen: Vec<&Lease> = shards
        .into_iter()
        .filter(|l| &l.key.shard_id == shard)
        .collect();
    if chosen.is_empty() {
        return Err(Failure(format!(
            "application {:?} has no lease for shard {shard:?} of table {:?}",
            args.app, args.table
        )));
    }
    if !args.include_finished && chosen.iter().any(|l| l.checkpoint.is_shard_end()) {
        return Err(Failure(format!(
            "refused: shard {shard} of table {:?} is finished (SHARD_END) and its children may \
             have started; use --include-finished to read it again anyway",
            args.table
        )));
    }
    Ok(Plan {
        chosen,
        finished: Vec::new(),
    })
}

/// Refuses a sequence number outside the shard's range (DescribeStream), or after which a
/// worker could not resume (GetShardIterator, as the worker would call it): an open shard's
/// range has no end yet, and records before the stream's trim horizon are gone.
async fn check_resumable(context: &Context, lease: &Lease, seq: &SequenceNumber) -> Outcome {
    let (stream, shard) = (&lease.key.stream, &lease.key.shard_id);
    let shards = context.shards(stream).await?;
    let Some(info) = shards.iter().find(|s| &s.shard_id == shard) else {
        return Err(Failure(format!(
            "refused: --to {seq}: shard {shard} is no longer in stream {stream} (its records \
             are past the stream's retention); use trim-horizon or latest"
        )));
    };
    let range = format!(
        "{} to {}",
        info.starting_sequence_number
            .as_ref()
            .map_or_else(|| "?".to_owned(), ToString::to_string),
        info.ending_sequence_number
            .as_ref()
            .map_or_else(|| "(open)".to_owned(), ToString::to_string),
    );
    let before_start = info
        .starting_sequence_number
        .as_ref()
        .is_some_and(|s| seq < s);
    let after_end = info
        .ending_sequence_number
        .as_ref()
        .is_some_and(|e| seq > e);
    if before_start || after_end {
        return Err(Failure(format!(
            "refused: sequence number {seq} is outside shard {shard}'s range ({range}); \
             nothing moved"
        )));
    }
    let after = StartPosition::AfterSequenceNumber(seq.clone());
    if let Err(error) = context
        .streams()
        .shard_iterator(stream, shard, &after)
        .await
    {
        return Err(Failure(format!(
            "refused: a worker could not resume after sequence number {seq} in shard {shard} \
             (range {range}): {error}; nothing moved"
        )));
    }
    Ok(())
}

/// What happened to one shard.
enum ShardOutcome<'a> {
    /// Moved from `lease.checkpoint`.
    Moved { lease: &'a Lease },
    /// Not moved: the write was refused.
    Refused { lease: &'a Lease, reason: String },
    /// Not moved: finished, and `--include-finished` was not given.
    Finished { lease: &'a Lease },
}

impl<'a> ShardOutcome<'a> {
    fn is_moved(&self) -> bool {
        matches!(self, Self::Moved { .. })
    }

    fn is_refused(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    fn lease(&self) -> &'a Lease {
        match self {
            Self::Moved { lease } | Self::Refused { lease, .. } | Self::Finished { lease } => lease,
        }
    }

    /// The shard's line: `shard S: FROM [(taken from OWNER)] -> TO`, `shard S: refused:
    /// WHY`, or `shard S: not moved: finished …`.
    fn line(&self, target: &Checkpoint) -> String {
        let lease = self.lease();
        let shard = &lease.key.shard_id;
        match self {
            Self::Moved { .. } => {
                let taken = lease
                    .owner
                    .as_ref()
                    .map(|owner| format!(" (taken from {owner})"))
                    .unwrap_or_default();
                format!("shard {shard}: {}{taken} -> {target}", lease.checkpoint)
            }
            Self::Refused { reason, .. } => format!("shard {shard}: refused: {reason}"),
            Self::Finished { .. } => format!(
                "shard {shard}: not moved: finished (SHARD_END); --include-finished moves it too"
            ),
        }
    }
}

/// `{"app", "table", "reset": [{"shard", "from", "to", "previous_owner"}], "refused":
/// [{"shard", "reason"}], "skipped": [{"shard", "reason"}]}` (skipped: finished shards).
fn outcomes_json(args: &Args, target: &Checkpoint, outcomes: &[ShardOutcome<'_>]) -> Value {
    let mut moved = Vec::new();
    let mut refused = Vec::new();
    let mut skipped = Vec::new();
    for outcome in outcomes {
        let lease = outcome.lease();
        match outcome {
            ShardOutcome::Moved { .. } => moved.push(json!({
                "shard": lease.key.shard_id,
                "from": lease.checkpoint.to_string(),
                "to": target.to_string(),
                "previous_owner": lease.owner,
            })),
            ShardOutcome::Refused { reason, .. } => {
                refused.push(json!({"shard": lease.key.shard_id, "reason": reason}));
            }
            ShardOutcome::Finished { .. } => skipped.push(json!({
                "shard": lease.key.shard_id,
                "reason": "finished (SHARD_END); --include-finished moves it too",
            })),
        }
    }
    json!({
        "app": args.app,
        "table": args.table,
        "reset": moved,
        "refused": refused,
        "skipped": skipped,
    })
}

/// Moves `lease` (as it was read) to `target` in one conditional write, fencing its owner:
/// reset's write, also `import-kcl --force`'s.
pub(crate) async fn move_lease(
    store: &dyn LeaseStore,
    lease: &Lease,
    target: &Checkpoint,
) -> dynamodb_streams_leases::Result<Lease> {
    store
        .reset_lease(&lease.key, lease.owner.as_deref(), lease.epoch, target)
        .await
}

/// [`move_lease`]; a refusal says what the lease looks like now.
async fn move_and_report<'a>(
    store: &dyn LeaseStore,
    lease: &'a Lease,
    target: &Checkpoint,
) -> ShardOutcome<'a> {
    let key = &lease.key;
    let written = move_lease(store, lease, target).await;
    let reason = match written {
        Ok(_) => return ShardOutcome::Moved { lease },
        Err(StoreError::LeaseChanged { .. }) => {
            let now = match store.get_lease(key).await {
                Ok(Some(now)) => format!(
                    "owner {}, epoch {}, checkpoint {}",
                    now.owner.as_deref().unwrap_or("none"),
                    now.epoch,
                    now.checkpoint
                ),
                Ok(None) => "deleted".to_owned(),
                Err(error) => format!("unknown ({error})"),
            };
            format!(
                "the lease changed since it was read (owner {}, epoch {}; now {now}), \
                 nothing moved",
                lease.owner.as_deref().unwrap_or("none"),
                lease.epoch
            )
        }
        Err(StoreError::LeaseNotFound { .. }) => {
            "the lease was deleted since it was read (the shard finished and its children \
             started), nothing moved"
                .to_owned()
        }
        Err(error) => format!("{error}; nothing moved"),
    };
    ShardOutcome::Refused { lease, reason }
}

/// `trim-horizon`, `latest` or a sequence number; anything else is an error naming it.
fn parse_position(text: &str) -> Result<Checkpoint, Failure> {
    match text {
        "trim-horizon" | "TRIM_HORIZON" => Ok(Checkpoint::TrimHorizon),
        "latest" | "LATEST" => Ok(Checkpoint::Latest),
        other => SequenceNumber::parse(other)
            .map(Checkpoint::At)
            .map_err(|e| {
                Failure(format!(
                    "--to {other:?} is neither trim-horizon, latest nor a sequence number: {e}"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_position("trim-horizon").ok(),
            Some(Checkpoint::TrimHorizon)
        );
        assert_eq!(parse_position("latest").ok(), Some(Checkpoint::Latest));
        assert!(matches!(
            parse_position("000000000000000000042"),
            Ok(Checkpoint::At(_))
        ));
        let Err(Failure(message)) = parse_position("12ab") else {
            panic!("a malformed sequence number was accepted");
        };
        assert!(message.contains("12ab"), "{message}");
    }
}
