//! `ddbsc import-kcl`: take over from a KCL application (the Kinesis Client Library with
//! the DynamoDB Streams Kinesis Adapter) at the positions it checkpointed.
//!
//! KCL's lease items (`DynamoDBLeaseSerializer`): `leaseKey` (S, the hash key), `leaseOwner`
//! (S), `leaseCounter` (N, bumped by every renewal, take and eviction),
//! `ownerSwitchesSinceCheckpoint` (N), `checkpoint` (S: a sequence number, `TRIM_HORIZON`,
//! `LATEST`, `SHARD_END` or `AT_TIMESTAMP`), `checkpointSubSequenceNumber` (N),
//! `parentShardId` and `childShardIds` (SS), `pendingCheckpoint` (S) with
//! `pendingCheckpointSubSequenceNumber` (N), and KCL 3's `checkpointOwner` (S, during a
//! graceful handoff). The key is the shard id for a single-stream application (the
//! adapter's shape), or `STREAM_IDENTIFIER:shardId` for a multi-stream one, whose items
//! also carry `streamName` and `shardId` (S).
//!
//! The import:
//! 1. reads the KCL table twice, `--observe` apart (default 10 s, KCL's default failover
//!    time): a lease whose `leaseCounter` moved has a live KCL worker, and the import is
//!    refused naming it, unless `--force`;
//! 2. plans a lease per shard of T's current stream, parents before children: a KCL
//!    checkpoint `SEQ` becomes our `At(SEQ)` (processing resumes after it; a sub-sequence
//!    number other than 0, which DynamoDB Streams never uses, is refused), `TRIM_HORIZON`,
//!    `LATEST` and `SHARD_END` map to ours; parents come from DescribeStream and KCL's
//!    `parentShardId`. A shard KCL never leased is finished (`SHARD_END`) when KCL leased
//!    one of its descendants (KCL deletes the leases of finished parents, and a parent is
//!    never read after its child), starts at `TRIM_HORIZON` when KCL leased one of its
//!    ancestors (nothing between parent and child may be skipped), and else at
//!    `--initial-position`. A pending checkpoint (KCL's two-phase commit, not confirmed) is
//!    reported, not applied. KCL leases of other streams, or of shards no longer in the
//!    stream, are listed and skipped;
//! 3. refuses when APP already has leases for T's stream, unless `--force`, which moves
//!    them (taken, checkpointed, released: the writes `reset` uses) and prints each old and
//!    new position;
//! 4. creates APP's lease table when absent (as a worker does) and writes the leases
//!    through `DynamoDbLeaseStore`, parents first, so a running worker never sees a child
//!    whose parent lease is still to come. `--dry-run` prints the plan and writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use comfy_table::Table;
use dynamodb_streams_consumer::streams::{ApiError, ShardInfo};
use dynamodb_streams_leases::aws::{describe_stream_pages, error_message, scan_all};
use dynamodb_streams_leases::{
    Checkpoint, DynamoDbLeaseStore, Lease, LeaseKey, LeaseStore, SequenceNumber,
};
use serde_json::{Value, json};

use crate::context::Context;
use crate::{Failure, Outcome};

/// `ddbsc import-kcl --kcl-table KCL_LEASES --app APP --table T [--dry-run] [--force]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The KCL application's lease table.
    #[arg(long, value_name = "KCL_LEASES")]
    kcl_table: String,
    /// The application to import into (its lease table is created when absent).
    #[arg(long, value_name = "APP")]
    app: String,
    /// The table whose stream the KCL application consumed.
    #[arg(long, value_name = "T")]
    table: String,
    /// Print the plan, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Import even though the KCL application looks alive, and overwrite APP's leases
    /// for T.
    #[arg(long)]
    force: bool,
    /// How long to watch the KCL leases' counters before deciding whether the KCL
    /// application is alive (at least its failover time; KCL's default is 10 s).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "10s")]
    observe: Duration,
    /// Where shards with no KCL lease and no KCL-leased ancestor or descendant start.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    initial_position: InitialPosition,
}

/// The framework's initial position, as the workers' `--initial-position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialPosition {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// Only records written after a worker starts; closed shards are done.
    Latest,
}

/// One KCL lease item, as read.
#[derive(Clone, Debug, PartialEq)]
pub struct KclLease {
    /// `leaseKey`.
    pub lease_key: String,
    /// The stream part of a multi-stream key (`streamName`), `None` for the adapter's
    /// single-stream keys.
    pub stream: Option<String>,
    /// The shard id.
    pub shard_id: String,
    /// `leaseOwner`.
    pub owner: Option<String>,
    /// `leaseCounter`.
    pub counter: i64,
    /// `checkpoint`, as stored.
    pub checkpoint: String,
    /// `checkpointSubSequenceNumber`.
    pub sub_sequence: i64,
    /// `pendingCheckpoint`.
    pub pending_checkpoint: Option<String>,
    /// `parentShardId`.
    pub parents: Vec<String>,
}

impl KclLease {
    /// Reads an item as KCL's serializer writes it; a malformed one is an error naming its
    /// key and the attribute.
    pub fn from_item(item: &HashMap<String, AttributeValue>) -> Result<Self, Failure> {
        let text = |name: &str| match item.get(name) {
            Some(AttributeValue::S(s)) => Some(s.clone()),
            _ => None,
        };
        let lease_key = text("leaseKey")
            .ok_or_else(|| Failure("a KCL lease item has no leaseKey (S)".to_owned()))?;
        let bad = |name: &str, wanted: &str| {
            Failure(format!(
                "KCL lease {lease_key:?}: attribute {name} is not {wanted}"
            ))
        };
        let number = |name: &str| -> Result<i64, Failure> {
            match item.get(name) {
                None => Ok(0),
                Some(AttributeValue::N(n)) => n.parse().map_err(|_| bad(name, "a whole number")),
                Some(_) => Err(bad(name, "a number (N)")),
            }
        };
        let set = |name: &str| -> Result<Vec<String>, Failure> {
            match item.get(name) {
                None => Ok(Vec::new()),
                Some(AttributeValue::Ss(items)) => Ok(items.clone()),
                Some(_) => Err(bad(name, "a string set (SS)")),
            }
        };
        let (stream, shard_id) = match (text("streamName"), text("shardId")) {
            (Some(stream), Some(shard)) => (Some(stream), shard),
            _ => split_lease_key(&lease_key),
        };
        Ok(Self {
            checkpoint: text("checkpoint").ok_or_else(|| bad("checkpoint", "a string (S)"))?,
            owner: text("leaseOwner"),
            counter: number("leaseCounter")?,
            sub_sequence: number("checkpointSubSequenceNumber")?,
            pending_checkpoint: text("pendingCheckpoint").filter(|p| !p.is_empty()),
            parents: set("parentShardId")?,
            lease_key,
            stream,
            shard_id,
        })
    }
}

/// `shardId-…` alone (single-stream), or `STREAM_IDENTIFIER:shardId-…` (multi-stream; the
/// identifier may hold colons itself, e.g. `account:name:epoch` or an ARN).
fn split_lease_key(key: &str) -> (Option<String>, String) {
    match key.rsplit_once(':') {
        Some((stream, shard)) => (Some(stream.to_owned()), shard.to_owned()),
        None => (None, key.to_owned()),
    }
}

/// Whether a multi-stream identifier names `table`'s stream `stream_arn`: the ARN itself,
/// an identifier holding the ARN's `table/T/stream/LABEL`, or KCL's
/// `account:name:epoch` serialization with `name` = T.
fn names_stream(identifier: &str, stream_arn: &str, table: &str) -> bool {
    let resource = stream_arn.split_once(":table/").map(|(_, r)| r);
    identifier == stream_arn
        || resource.is_some_and(|r| identifier.contains(&format!("table/{r}")))
        || identifier.split(':').nth(1) == Some(table)
}

/// What the import does with one shard of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The shard.
    pub shard_id: String,
    /// Its KCL lease, if KCL had one.
    pub kcl: Option<KclLease>,
    /// Our checkpoint for it.
    pub position: Checkpoint,
    /// Its parent shards (the gate: processed only after they finished or are gone).
    pub parents: Vec<String>,
    /// Why this position, when it does not come straight from a KCL checkpoint; and the
    /// pending checkpoint, if any.
    pub note: String,
}

/// A KCL lease the import leaves out, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// Its `leaseKey`.
    pub lease_key: String,
    /// Why.
    pub reason: String,
}

/// The import of one stream: an entry per shard, parents before children.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// One per shard of the stream.
    pub entries: Vec<Entry>,
    /// KCL leases not imported.
    pub skipped: Vec<Skipped>,
}

/// KCL's checkpoint text as ours; sub-sequence numbers other than 0 and `AT_TIMESTAMP`
/// are refused, naming the lease.
fn map_checkpoint(lease: &KclLease) -> Result<Checkpoint, Failure> {
    if lease.sub_sequence != 0 {
        return Err(Failure(format!(
            "KCL lease {:?} has checkpointSubSequenceNumber {} (DynamoDB Streams records have \
             none, so it must be 0): not a DynamoDB Streams lease, or damaged",
            lease.lease_key, lease.sub_sequence
        )));
    }
    match lease.checkpoint.as_str() {
        "TRIM_HORIZON" => Ok(Checkpoint::TrimHorizon),
        "LATEST" => Ok(Checkpoint::Latest),
        "SHARD_END" => Ok(Checkpoint::ShardEnd),
        other => SequenceNumber::parse(other)
            .map(Checkpoint::At)
            .map_err(|e| {
                Failure(format!(
                    "KCL lease {:?} has checkpoint {other:?}, neither TRIM_HORIZON, LATEST, \
                 SHARD_END nor a sequence number: {e}",
                    lease.lease_key
                ))
            }),
    }
}

/// Plans the import of `table`'s stream `stream_arn` from the KCL leases.
pub fn plan(
    stream_arn: &str,
    table: &str,
    shards: &[ShardInfo],
    kcl: Vec<KclLease>,
    initial: InitialPosition,
) -> Result<Plan, Failure> {
    let in_stream: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    let mut leased: HashMap<String, KclLease> = HashMap::new();
    let mut skipped = Vec::new();
    for lease in kcl {
        let other_stream = lease
            .stream
            .as_deref()
            .is_some_and(|s| !names_stream(s, stream_arn, table));
        let reason = if other_stream {
            Some(format!(
                "another stream ({})",
                lease.stream.as_deref().unwrap_or_default()
            ))
        } else if !in_stream.contains(lease.shard_id.as_str()) {
            Some(
                "its shard is not in the stream any more (trimmed 24 h after it closed)".to_owned(),
            )
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(Skipped {
                lease_key: lease.lease_key,
                reason,
            }),
            None => {
                map_checkpoint(&lease)?;
                if let Some(twice) = leased.insert(lease.shard_id.clone(), lease) {
                    return Err(Failure(format!(
                        "two KCL leases for shard {} (one is {:?}): import one stream's leases \
                         at a time",
                        twice.shard_id, twice.lease_key
                    )));
                }
            }
        }
    }
    let parent_of: HashMap<&str, &str> = shards
        .iter()
        .filter_map(|s| Some((s.shard_id.as_str(), s.parent_shard_id.as_deref()?)))
        .collect();
    let ancestors = |shard: &str| {
        let mut chain = Vec::new();
        let mut at = shard;
        while let Some(parent) = parent_of.get(at).copied() {
            if chain.contains(&parent) {
                break;
            }
            chain.push(parent);
            at = parent;
        }
        chain
    };
    // Shards with a KCL-leased descendant: KCL went past them.
    let mut finished_below: HashSet<&str> = HashSet::new();
    for shard in leased.keys() {
        finished_below.extend(ancestors(shard));
    }
    let mut entries = Vec::new();
    for shard in parents_first(shards) {
        let id = shard.shard_id.as_str();
        let mut parents: Vec<String> = shard.parent_shard_id.iter().cloned().collect();
        let kcl = leased.get(id).cloned();
        for parent in kcl.iter().flat_map(|l| l.parents.iter()) {
            if !parents.contains(parent) {
                parents.push(parent.clone());
            }
        }
        let (position, mut note) = match &kcl {
            Some(lease) => (map_checkpoint(lease)?, String::new()),
            None if finished_below.contains(id) => (
                Checkpoint::ShardEnd,
                "no KCL lease, a descendant has one: finished".to_owned(),
            ),
            None if ancestors(id).iter().any(|a| leased.contains_key(*a)) => (
                Checkpoint::TrimHorizon,
                "no KCL lease, child of a KCL shard: from its start".to_owned(),
            ),
            None => match initial {
                InitialPosition::TrimHorizon => (
                    Checkpoint::TrimHorizon,
                    "never leased by KCL: initial position".to_owned(),
                ),
                InitialPosition::Latest if shard.is_closed() => (
                    Checkpoint::ShardEnd,
                    "never leased by KCL, closed: initial position latest".to_owned(),
                ),
                InitialPosition::Latest => (
                    Checkpoint::Latest,
                    "never leased by KCL: initial position".to_owned(),
                ),
            },
        };
        if let Some(pending) = kcl.as_ref().and_then(|l| l.pending_checkpoint.as_deref()) {
            note = format!("pending checkpoint {pending} not applied (KCL never confirmed it)");
        }
        entries.push(Entry {
            shard_id: id.to_owned(),
            kcl,
            position,
            parents,
            note,
        });
    }
    Ok(Plan { entries, skipped })
}

/// The shards ordered so that each comes after its parent (DescribeStream usually lists
/// them so; this does not rely on it).
fn parents_first(shards: &[ShardInfo]) -> Vec<&ShardInfo> {
    let by_id: HashMap<&str, &ShardInfo> =
        shards.iter().map(|s| (s.shard_id.as_str(), s)).collect();
    let mut placed: HashSet<&str> = HashSet::new();
    let mut ordered = Vec::new();
    for shard in shards {
        let mut chain = vec![shard];
        while let Some(parent) = chain
            .last()
            .and_then(|s| s.parent_shard_id.as_deref())
            .and_then(|p| by_id.get(p).copied())
            .filter(|p| !placed.contains(p.shard_id.as_str()) && !chain.contains(p))
        {
            chain.push(parent);
        }
        for s in chain.into_iter().rev() {
            if placed.insert(s.shard_id.as_str()) {
                ordered.push(s);
            }
        }
    }
    ordered
}

/// The KCL owners whose leases' counters moved between two reads.
pub fn live_owners(before: &[KclLease], after: &[KclLease]) -> Vec<String> {
    let seen: HashMap<&str, i64> = before
        .iter()
        .map(|l| (l.lease_key.as_str(), l.counter))
        .collect();
    let mut owners: Vec<String> = after
        .iter()
        .filter(|l| {
            seen.get(l.lease_key.as_str())
                .is_some_and(|c| *c != l.counter)
        })
        .map(|l| {
            l.owner
                .clone()
                .unwrap_or_else(|| format!("(none, lease {})", l.lease_key))
        })
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

async fn read_kcl(context: &Context, table: &str) -> Result<Vec<KclLease>, Failure> {
    let clients = context.clients();
    let scan = clients
        .dynamodb()
        .scan()
        .table_name(table)
        .consistent_read(true);
    let items = scan_all(scan).await.map_err(|e| {
        Failure(format!(
            "KCL lease table {table:?}: {}",
            error_message(&e, clients.endpoint())
        ))
    })?;
    items.iter().map(KclLease::from_item).collect()
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let stream_arn = context.stream_arn(&args.table).await?;
    let api = context.streams();
    let shards: Vec<ShardInfo> = describe_stream_pages(&stream_arn, |start| {
        let (api, arn) = (api.clone(), stream_arn.clone());
        async move {
            let page = api.describe_stream(&arn, start.as_deref()).await?;
            Ok::<_, ApiError>((page.shards, page.last_evaluated_shard_id))
        }
    })
    .await?;
    let first = read_kcl(context, &args.kcl_table).await?;
    // The wait is the measurement (do the counters move?), not a guess at when something
    // else is done.
    tokio::time::sleep(args.observe).await;
    let kcl = read_kcl(context, &args.kcl_table).await?;
    let live = live_owners(&first, &kcl);
    if !live.is_empty() {
        let message = format!(
            "the KCL application of {:?} looks alive: lease counters moved within {} \
             (owner {})",
            args.kcl_table,
            humantime::format_duration(args.observe),
            live.join(", ")
        );
        if !args.force {
            return Err(Failure(format!(
                "refused: {message}; stop it first, or use --force"
            )));
        }
        eprintln!("ddbsc: warning: {message}; importing anyway (--force)");
    }
    let plan = plan(
        &stream_arn,
        &args.table,
        &shards,
        kcl,
        args.initial_position,
    )?;

    let store = DynamoDbLeaseStore::from_clients(context.clients(), &args.app)
        .map_err(|e| Failure(format!("application {:?}: {e}", args.app)))?;
    let existing = existing_leases(&store, &stream_arn, args.dry_run).await?;
    if !existing.is_empty() && !args.force {
        return Err(Failure(format!(
            "refused: application {:?} already has {} leases for table {:?}; use --force to \
             overwrite them (each old and new position is printed)",
            args.app,
            existing.len(),
            args.table
        )));
    }
    if !args.dry_run {
        write(&store, &stream_arn, &plan, &existing).await?;
    }
    print(context, &args, &stream_arn, &plan, &existing)
}

/// APP's shard leases of the stream (none when its table does not exist yet, or on a dry
/// run that must not create it).
async fn existing_leases(
    store: &DynamoDbLeaseStore,
    stream_arn: &str,
    dry_run: bool,
) -> Result<BTreeMap<String, Lease>, Failure> {
    let ready = if dry_run {
        store.list_leases().await.ok()
    } else {
        // Created as a worker creates it, when absent.
        store.ensure_table().await?;
        Some(store.list_leases().await?)
    };
    Ok(ready
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l.key.stream == stream_arn && !l.key.is_coordination())
        .map(|l| (l.key.shard_id.clone(), l))
        .collect())
}

async fn write(
    store: &DynamoDbLeaseStore,
    stream_arn: &str,
    plan: &Plan,
    existing: &BTreeMap<String, Lease>,
) -> Outcome {
    for entry in &plan.entries {
        let key = LeaseKey::new(stream_arn, entry.shard_id.clone());
        let written = match existing.get(&entry.shard_id) {
            Some(old) => crate::reset::move_lease(store, old, &entry.position)
                .await
                .map(drop),
            None => {
                let lease = Lease::new(key, entry.position.clone(), entry.parents.clone());
                store.create_lease(&lease).await
            }
        };
        written.map_err(|e| Failure(format!("shard {}: {e}", entry.shard_id)))?;
    }
    Ok(())
}

fn print(
    context: &Context,
    args: &Args,
    stream_arn: &str,
    plan: &Plan,
    existing: &BTreeMap<String, Lease>,
) -> Outcome {
    let previous = |shard: &str| existing.get(shard).map(|l| l.checkpoint.to_string());
    if context.json {
        let shards: Vec<Value> = plan
            .entries
            .iter()
            .map(|e| {
                json!({
                    "shard": e.shard_id,
                    "kcl_lease_key": e.kcl.as_ref().map(|l| &l.lease_key),
                    "kcl_checkpoint": e.kcl.as_ref().map(|l| &l.checkpoint),
                    "kcl_owner": e.kcl.as_ref().and_then(|l| l.owner.as_ref()),
                    "pending_checkpoint": e.kcl.as_ref().and_then(|l| l.pending_checkpoint.as_ref()),
                    "position": e.position.to_string(),
                    "previous": previous(&e.shard_id),
                    "parents": e.parents,
                    "note": e.note,
                })
            })
            .collect();
        let skipped: Vec<Value> = plan
            .skipped
            .iter()
            .map(|s| json!({"kcl_lease_key": s.lease_key, "reason": s.reason}))
            .collect();
        return context.print_json(&json!({
            "app": args.app, "table": args.table, "stream": stream_arn,
            "kcl_table": args.kcl_table, "dry_run": args.dry_run,
            "shards": shards, "skipped": skipped,
        }));
    }
    let verb = if args.dry_run {
        "would import"
    } else {
        "imported"
    };
    context.line(format!(
        "{verb} {} shards of {stream_arn} from KCL table {:?} into application {:?}",
        plan.entries.len(),
        args.kcl_table,
        args.app
    ))?;
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "SHARD",
            "KCL CHECKPOINT",
            "KCL OWNER",
            "POSITION",
            "PREVIOUS",
            "PARENTS",
            "NOTE",
        ]);
    let dash = || "-".to_owned();
    for e in &plan.entries {
        table.add_row([
            e.shard_id.clone(),
            e.kcl.as_ref().map_or_else(dash, |l| l.checkpoint.clone()),
            e.kcl
                .as_ref()
                .and_then(|l| l.owner.clone())
                .unwrap_or_else(dash),
            e.position.to_string(),
            previous(&e.shard_id).unwrap_or_else(dash),
            if e.parents.is_empty() {
                dash()
            } else {
                e.parents.join(",")
            },
            if e.note.is_empty() {
                dash()
            } else {
                e.note.clone()
            },
        ]);
    }
    context.line(table)?;
    for s in &plan.skipped {
        context.line(format!("skipped KCL lease {}: {}", s.lease_key, s.reason))?;
    }
    Ok(())
}

impl fmt::Display for KclLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.lease_key, self.checkpoint)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ARN: &str =
        "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000";

    fn shard(id: &str, parent: Option<&str>, closed: bool) -> ShardInfo {
        ShardInfo {
            shard_id: id.to_owned(),
            parent_shard_id: parent.map(str::to_owned),
            starting_sequence_number: None,
            ending_sequence_number: closed.then(|| SequenceNumber::parse("900").unwrap()),
        }
    }

    fn kcl(key: &str, checkpoint: &str) -> KclLease {
        let (stream, shard_id) = split_lease_key(key);
        KclLease {
            lease_key: key.to_owned(),
            stream,
            shard_id,
            owner: Some("kcl-worker-1".into()),
            counter: 7,
            checkpoint: checkpoint.to_owned(),
            sub_sequence: 0,
            pending_checkpoint: None,
            parents: Vec::new(),
        }
    }

    fn positions(plan: &Plan) -> Vec<(&str, String)> {
        plan.entries
            .iter()
            .map(|e| (e.shard_id.as_str(), e.position.to_string()))
            .collect()
    }

    /// A graph: a (cleaned-up parent, no lease) -> b (SHARD_END) -> c (checkpoint) -> d
    /// (never leased); e a root KCL never saw; listed children first.
    #[test]
    fn lineage_finished_parents_and_unleased_shards() {
        let shards = [
            shard("d", Some("c"), false),
            shard("c", Some("b"), false),
            shard("b", Some("a"), true),
            shard("a", None, true),
            shard("e", None, false),
        ];
        let leases = vec![kcl("b", "SHARD_END"), kcl("c", "000000000000000000042")];
        let plan = plan(ARN, "orders", &shards, leases, InitialPosition::TrimHorizon).unwrap();
        assert_eq!(
            positions(&plan),
            [
                ("a", "SHARD_END".to_owned()),
                ("b", "SHARD_END".to_owned()),
                ("c", "000000000000000000042".to_owned()),
                ("d", "TRIM_HORIZON".to_owned()),
                ("e", "TRIM_HORIZON".to_owned()),
            ],
            "parents first; a is finished (its descendant was leased); d is a child of a KCL shard"
        );
        let parents: Vec<&[String]> = plan.entries.iter().map(|e| &e.parents[..]).collect();
        assert_eq!(parents[3], ["c".to_owned()]);
        let latest = super::plan(ARN, "orders", &shards, vec![], InitialPosition::Latest).unwrap();
        assert_eq!(
            positions(&latest),
            [
                ("a", "SHARD_END".to_owned()),
                ("b", "SHARD_END".to_owned()),
                ("c", "LATEST".to_owned()),
                ("d", "LATEST".to_owned()),
                ("e", "LATEST".to_owned()),
            ]
        );
    }

    #[test]
    fn multi_stream_keys_of_this_stream_are_imported_and_others_skipped() {
        let shards = [shard("shardId-1", None, false)];
        let leases = vec![
            kcl("123456789012:orders:1704067200:shardId-1", "LATEST"),
            kcl("123456789012:other:1704067200:shardId-1", "TRIM_HORIZON"),
            kcl(&format!("{ARN}:shardId-9"), "SHARD_END"),
        ];
        let plan = plan(ARN, "orders", &shards, leases, InitialPosition::TrimHorizon).unwrap();
        assert_eq!(positions(&plan), [("shardId-1", "LATEST".to_owned())]);
        assert_eq!(plan.skipped.len(), 2);
        assert!(plan.skipped[0].reason.contains("another stream"));
        assert!(plan.skipped[1].reason.contains("not in the stream"));
        assert!(names_stream(ARN, ARN, "orders"));
        assert!(names_stream(
            "123456789012:table/orders/stream/2024-01-01T00:00:00.000",
            ARN,
            "orders"
        ));
    }

    #[test]
    fn sub_sequence_numbers_and_unknown_checkpoints_are_refused_naming_the_lease() {
        let shards = [shard("s", None, false)];
        let mut sub = kcl("s", "000000000000000000042");
        sub.sub_sequence = 3;
        let Err(Failure(error)) = plan(
            ARN,
            "orders",
            &shards,
            vec![sub],
            InitialPosition::TrimHorizon,
        ) else {
            panic!("accepted a sub-sequence number");
        };
        assert!(
            error.contains("\"s\"") && error.contains("checkpointSubSequenceNumber 3"),
            "{error}"
        );
        let at = kcl("s", "AT_TIMESTAMP");
        let Err(Failure(error)) = plan(
            ARN,
            "orders",
            &shards,
            vec![at],
            InitialPosition::TrimHorizon,
        ) else {
            panic!("accepted AT_TIMESTAMP");
        };
        assert!(error.contains("AT_TIMESTAMP"), "{error}");
    }

    #[test]
    fn a_pending_checkpoint_is_reported_not_applied() {
        let shards = [shard("s", None, false)];
        let mut lease = kcl("s", "000000000000000000042");
        lease.pending_checkpoint = Some("000000000000000000050".into());
        let plan = plan(
            ARN,
            "orders",
            &shards,
            vec![lease],
            InitialPosition::TrimHorizon,
        )
        .unwrap();
        assert_eq!(
            plan.entries[0].position.to_string(),
            "000000000000000000042"
        );
        assert!(plan.entries[0].note.contains("000000000000000000050"));
    }

    #[test]
    fn items_are_read_as_kcls_serializer_writes_them() {
        let item = HashMap::from([
            (
                "leaseKey".to_owned(),
                AttributeValue::S("acct:orders:1:shardId-7".into()),
            ),
            (
                "streamName".to_owned(),
                AttributeValue::S("acct:orders:1".into()),
            ),
            ("shardId".to_owned(), AttributeValue::S("shardId-7".into())),
            ("leaseOwner".to_owned(), AttributeValue::S("w".into())),
            ("leaseCounter".to_owned(), AttributeValue::N("12".into())),
            (
                "checkpoint".to_owned(),
                AttributeValue::S("SHARD_END".into()),
            ),
            (
                "checkpointSubSequenceNumber".to_owned(),
                AttributeValue::N("0".into()),
            ),
            (
                "parentShardId".to_owned(),
                AttributeValue::Ss(vec!["shardId-6".into()]),
            ),
        ]);
        let lease = KclLease::from_item(&item).unwrap();
        assert_eq!(lease.stream.as_deref(), Some("acct:orders:1"));
        assert_eq!(lease.shard_id, "shardId-7");
        assert_eq!(lease.counter, 12);
        assert_eq!(lease.parents, ["shardId-6"]);
        let mut bad = item.clone();
        bad.insert("leaseCounter".into(), AttributeValue::S("12".into()));
        let Err(Failure(error)) = KclLease::from_item(&bad) else {
            panic!("accepted a string counter");
        };
        assert!(
            error.contains("leaseCounter") && error.contains("acct:orders:1:shardId-7"),
            "{error}"
        );
    }

    #[test]
    fn owners_whose_counters_moved_are_alive() {
        let before = vec![kcl("a", "LATEST"), kcl("b", "LATEST")];
        let mut after = before.clone();
        after[1].counter += 1;
        after[1].owner = Some("kcl-worker-2".into());
        assert_eq!(live_owners(&before, &after), ["kcl-worker-2"]);
        assert!(live_owners(&before, &before).is_empty());
    }
}
