//! `ddbsc reset`: moves checkpoints, safely.
//!
//! Each lease is moved with the same conditional writes a worker uses: take it (conditional
//! on the owner and epoch just read, which fences any previous owner: its next checkpoint
//! is refused by the store), write the checkpoint as the new owner, release it. Workers
//! then take it on their next scan and resume from the new position. A lease whose owner is
//! alive is refused (exit 1, naming the owner) unless `--force`.

use std::fmt;

use checkpoint_store::{Checkpoint, Lease, LeaseStore, SequenceNumber};
use consumer_core::snapshot::is_segment;
use serde_json::{Value, json};

use crate::context::{Context, table_of_stream};
use crate::liveness::LivenessArgs;
use crate::{Failure, Outcome};

/// `ddbsc reset --app APP --table T [--shard S] --to trim-horizon|latest|SEQ [--force]`
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
    /// The new position: `trim-horizon`, `latest`, or a sequence number (processing
    /// resumes after it).
    #[arg(long, value_name = "POSITION")]
    to: String,
    /// Move leases owned by live workers too: the lease is taken first, so the owner's
    /// next checkpoint is refused and it stops that shard.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    liveness: LivenessArgs,
}

/// The owner of every lease ddbsc holds while it moves it, for the moment of the move.
const OWNER_PREFIX: &str = "ddbsc#";

pub async fn run(context: &Context, args: Args) -> Outcome {
    args.liveness.check()?;
    let target = parse_position(&args.to)?;
    let store = context.lease_store(&args.app).await?;
    let (leases, _, live) = args.liveness.read(&store).await?;
    // Shards only: a snapshot segment's position is a scan key, and a stream gate has none.
    let of_table: Vec<&Lease> = leases
        .iter()
        .filter(|l| table_of_stream(&l.key.stream) == Some(args.table.as_str()))
        .filter(|l| !is_segment(&l.key) && l.key.gated_stream().is_none())
        .collect();
    if of_table.is_empty() {
        return Err(Failure(format!(
            "application {:?} has no leases for table {:?} (is a worker consuming it?)",
            args.app, args.table
        )));
    }
    let chosen: Vec<&Lease> = match &args.shard {
        Some(shard) => {
            let found: Vec<&Lease> = of_table
                .iter()
                .copied()
                .filter(|l| &l.key.shard_id == shard)
                .collect();
            let names_a_segment = leases.iter().any(|l| {
                &l.key.shard_id == shard
                    && is_segment(&l.key)
                    && table_of_stream(&l.key.stream) == Some(args.table.as_str())
            });
            if names_a_segment {
                return Err(Failure(format!(
                    "{shard:?} is a snapshot segment of table {:?}, not a shard: reset moves \
                     shard checkpoints only",
                    args.table
                )));
            }
            if found.is_empty() {
                return Err(Failure(format!(
                    "application {:?} has no lease for shard {shard:?} of table {:?}",
                    args.app, args.table
                )));
            }
            found
        }
        None => of_table
            .iter()
            .copied()
            .filter(|l| !l.checkpoint.is_shard_end())
            .collect(),
    };
    if matches!(target, Checkpoint::At(_)) && chosen.len() > 1 {
        return Err(Failure(format!(
            "sequence number {} belongs to one shard, and table {:?} has {} unfinished \
             shards: name it with --shard",
            args.to,
            args.table,
            chosen.len()
        )));
    }
    // Check every lease before moving any: a refusal moves nothing.
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

    let me = format!("{OWNER_PREFIX}{}", std::process::id());
    let mut moved = Vec::new();
    for lease in chosen {
        let from = lease.checkpoint.clone();
        move_lease(&store, lease, &me, &target)
            .await
            .map_err(|e| Failure(format!("shard {}: {e}", lease.key.shard_id)))?;
        moved.push(Moved {
            shard: lease.key.shard_id.clone(),
            from,
            previous_owner: lease.owner.clone(),
        });
    }

    if context.json {
        let shards: Vec<Value> = moved
            .iter()
            .map(|m| {
                json!({"shard": m.shard, "from": m.from.to_string(), "to": target.to_string(),
                       "previous_owner": m.previous_owner})
            })
            .collect();
        context.print_json(&json!({"app": args.app, "table": args.table, "reset": shards}))?;
    } else {
        for m in &moved {
            context.line(format_args!("{m} -> {target}"))?;
        }
    }
    Ok(())
}

/// Take (fencing the previous owner), checkpoint, release: the worker's own writes.
pub(crate) async fn move_lease(
    store: &dyn LeaseStore,
    lease: &Lease,
    me: &str,
    target: &Checkpoint,
) -> checkpoint_store::Result<()> {
    let taken = store
        .take_lease(&lease.key, lease.owner.as_deref(), lease.epoch, me)
        .await?;
    let Some(ownership) = taken.ownership() else {
        return Ok(());
    };
    let moved = store.checkpoint(&lease.key, &ownership, target).await?;
    let ownership = moved.ownership().unwrap_or(ownership);
    store.release_lease(&lease.key, &ownership).await?;
    Ok(())
}

struct Moved {
    shard: String,
    from: Checkpoint,
    previous_owner: Option<String>,
}

impl fmt::Display for Moved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {}: {}", self.shard, self.from)?;
        if let Some(owner) = &self.previous_owner {
            write!(f, " (taken from {owner})")?;
        }
        Ok(())
    }
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
