//! `ddbsc pipelines` and `ddbsc drop-pipeline`: the named pipelines of an application
//! (`ConsumerBuilder::with_pipeline`), and removing the checkpoints of one that left the
//! code.
//!
//! A pipeline's checkpoints live in the lease items (`pl|NAME`, one per shard); the
//! pipelines a lease's owner runs are listed in the item too (`owner_pipelines`), which is
//! how a live worker running a pipeline is recognised. Workers keep the checkpoints of a
//! pipeline they do not run untouched, so a pipeline removed from the code keeps them (and
//! would start from them if it came back) until `drop-pipeline` removes them.

use std::collections::{BTreeMap, BTreeSet};

use comfy_table::Table;
use dynamodb_streams_consumer::Pipelines;
use dynamodb_streams_leases::{Checkpoint, Lease, LeaseStore};
use serde_json::{Value, json};

use crate::context::{Context, table_of_stream};
use crate::liveness::{Liveness, LivenessArgs};
use crate::{Failure, Outcome};

/// `ddbsc pipelines --app APP`
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The application (its lease table).
    #[arg(long, value_name = "APP")]
    app: String,
    #[command(flatten)]
    liveness: LivenessArgs,
}

/// `ddbsc drop-pipeline --app APP --name N [--force]`
#[derive(Debug, clap::Args)]
pub struct DropArgs {
    /// The application (its lease table).
    #[arg(long, value_name = "APP")]
    app: String,
    /// The pipeline whose checkpoints are removed.
    #[arg(long, value_name = "N")]
    name: String,
    /// Remove them from leases whose live owner still runs the pipeline too: the lease is
    /// taken first (the owner stops that shard and the next owner starts the pipeline at
    /// its initial position).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    liveness: LivenessArgs,
}

/// The owner of every lease ddbsc holds while it drops a pipeline from it.
const OWNER_PREFIX: &str = "ddbsc#";

/// One pipeline across the leases of an application.
#[derive(Debug, Default)]
struct Summary {
    /// Leases holding a checkpoint of it.
    leases: usize,
    /// Of those, leases where it reached `SHARD_END`.
    finished: usize,
    /// Unfinished leases where it is the slowest pipeline and some other is ahead: it
    /// holds the shared read back there.
    holding_back: usize,
    /// Live workers that run it (owners of a lease that lists it).
    live_workers: BTreeSet<String>,
}

/// Every named pipeline of `leases`, by name.
fn summarize(leases: &[Lease], live: &Liveness) -> BTreeMap<String, Summary> {
    let mut pipelines: BTreeMap<String, Summary> = BTreeMap::new();
    for lease in leases.iter().filter(|l| !l.key.is_coordination()) {
        for (name, checkpoint) in &lease.pipelines {
            let summary = pipelines.entry(name.clone()).or_default();
            summary.leases += 1;
            if checkpoint.is_shard_end() {
                summary.finished += 1;
            }
            let others_ahead = lease.pipelines.values().any(|other| other != checkpoint);
            let slowest = Pipelines::read_position(lease.pipelines.values());
            if others_ahead && slowest.as_ref() == Some(checkpoint) {
                summary.holding_back += 1;
            }
        }
        if let Some(owner) = lease.owner.as_deref().filter(|o| live.is_alive(o)) {
            for name in &lease.owner_pipelines {
                let summary = pipelines.entry(name.clone()).or_default();
                summary.live_workers.insert(owner.to_owned());
            }
        }
    }
    pipelines
}

pub async fn list(context: &Context, args: ListArgs) -> Outcome {
    args.liveness.check()?;
    let store = context.lease_store(&args.app).await?;
    let (leases, _, live) = args.liveness.read(&store).await?;
    let pipelines = summarize(&leases, &live);
    if context.json {
        let list: Vec<Value> = pipelines
            .iter()
            .map(|(name, s)| {
                json!({
                    "name": name,
                    "leases": s.leases,
                    "finished": s.finished,
                    "holding_back": s.holding_back,
                    "live_workers": s.live_workers,
                })
            })
            .collect();
        return context.print_json(&json!({"app": args.app, "pipelines": list}));
    }
    if pipelines.is_empty() {
        return context.line(format_args!(
            "application {:?} has no named pipelines (one unnamed pipeline: its checkpoints are the leases' own, see `ddbsc status`)",
            args.app
        ));
    }
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "PIPELINE",
            "LEASES",
            "FINISHED",
            "HOLDING BACK",
            "LIVE WORKERS",
        ]);
    for (name, s) in &pipelines {
        let workers: Vec<&str> = s.live_workers.iter().map(String::as_str).collect();
        table.add_row([
            name.clone(),
            s.leases.to_string(),
            s.finished.to_string(),
            s.holding_back.to_string(),
            if workers.is_empty() {
                "- (not run by a live worker)".to_owned()
            } else {
                workers.join(", ")
            },
        ]);
    }
    context.line(&table)
}

pub async fn drop(context: &Context, args: DropArgs) -> Outcome {
    args.liveness.check()?;
    let store = context.lease_store(&args.app).await?;
    let (leases, _, live) = args.liveness.read(&store).await?;
    let name = args.name.as_str();
    let holding: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.key.is_coordination())
        .filter(|l| l.pipelines.contains_key(name) || l.owner_pipelines.iter().any(|p| p == name))
        .collect();
    if holding.is_empty() {
        return Err(Failure(format!(
            "application {:?} has no checkpoint of pipeline {name:?} (see `ddbsc pipelines --app {}`)",
            args.app, args.app
        )));
    }
    let runs_it = |lease: &Lease| {
        lease.owner.as_deref().is_some_and(|o| live.is_alive(o))
            && lease.owner_pipelines.iter().any(|p| p == name)
    };
    // Check every lease before changing any: a refusal changes nothing.
    if !args.force
        && let Some(lease) = holding.iter().find(|l| runs_it(l))
    {
        return Err(Failure(format!(
            "refused: live worker {:?} runs pipeline {name:?} (shard {} of table {:?}); remove \
             the pipeline from its code and restart it first, or use --force to take the \
             lease from it",
            lease.owner.as_deref().unwrap_or("?"),
            lease.key.shard_id,
            table_of_stream(&lease.key.stream).unwrap_or(&lease.key.stream),
        )));
    }
    let me = format!("{OWNER_PREFIX}{}", std::process::id());
    let mut removed = Vec::new();
    for lease in holding {
        let taken_from = runs_it(lease).then(|| lease.owner.clone()).flatten();
        let result = if taken_from.is_some() {
            drop_from_owned(&store, lease, &me, name).await
        } else {
            store
                .remove_pipeline(&lease.key, name, None)
                .await
                .map(|_| ())
        };
        match result {
            Ok(()) => {}
            // Deleted since it was read (a finished shard cleaned up): nothing to remove.
            Err(dynamodb_streams_leases::Error::LeaseNotFound { .. }) => continue,
            Err(error) => {
                return Err(Failure(format!(
                    "pipeline {name:?}, shard {}: {error}",
                    lease.key.shard_id
                )));
            }
        }
        removed.push((lease, lease.pipelines.get(name).cloned(), taken_from));
    }
    if context.json {
        let list: Vec<Value> = removed
            .iter()
            .map(|(lease, checkpoint, taken_from)| {
                json!({
                    "table": table_of_stream(&lease.key.stream),
                    "stream": lease.key.stream,
                    "shard": lease.key.shard_id,
                    "checkpoint": checkpoint.as_ref().map(Checkpoint::to_string),
                    "taken_from": taken_from,
                })
            })
            .collect();
        return context.print_json(&json!({"app": args.app, "pipeline": name, "removed": list}));
    }
    for (lease, checkpoint, taken_from) in &removed {
        let checkpoint = checkpoint
            .as_ref()
            .map_or_else(|| "none".to_owned(), Checkpoint::to_string);
        let taken = taken_from
            .as_deref()
            .map(|owner| format!(" (taken from {owner})"))
            .unwrap_or_default();
        context.line(format_args!(
            "pipeline {name}: shard {} of {}: removed checkpoint {checkpoint}{taken}",
            lease.key.shard_id,
            table_of_stream(&lease.key.stream).unwrap_or(&lease.key.stream),
        ))?;
    }
    Ok(())
}

/// Take (fencing the owner that runs the pipeline), remove, release: the writes a worker
/// makes, as `reset --force` does.
async fn drop_from_owned(
    store: &dyn LeaseStore,
    lease: &Lease,
    me: &str,
    name: &str,
) -> dynamodb_streams_leases::Result<()> {
    let taken = store
        .take_lease(&lease.key, lease.owner.as_deref(), lease.epoch, me)
        .await?;
    let Some(ownership) = taken.ownership() else {
        return Ok(());
    };
    let removed = store
        .remove_pipeline(&lease.key, name, Some(&ownership))
        .await?;
    let ownership = removed.ownership().unwrap_or(ownership);
    store.release_lease(&lease.key, &ownership).await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, SystemTime};

    use dynamodb_streams_leases::LeaseKey;

    use super::*;

    /// A snapshot segment lease whose pipelines scanned different numbers of items: the one
    /// that scanned fewer holds the read back (`SCAN:` positions used to compare equal, so
    /// neither or both were counted).
    #[test]
    fn on_a_segment_the_pipeline_that_scanned_fewer_items_holds_the_read_back() {
        let scan = |items: u64| Checkpoint::Scan(format!(r#"{{"items":{items},"after":null}}"#));
        let mut lease = Lease::new(
            LeaseKey::new(
                "arn:aws:dynamodb:eu-west-1:1:table/t/stream/s",
                "snapshot-0-of-2",
            ),
            scan(10),
            Vec::new(),
        );
        lease.pipelines.insert("search".into(), scan(10));
        lease.pipelines.insert("cache".into(), scan(40));
        let live = Liveness::from_stored_times(&[], Duration::from_secs(15), SystemTime::now());
        let pipelines = summarize(&[lease], &live);
        assert_eq!(pipelines["search"].holding_back, 1);
        assert_eq!(pipelines["cache"].holding_back, 0);
    }
}
