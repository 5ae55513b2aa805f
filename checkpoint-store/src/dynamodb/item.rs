//! The item codec: how leases, membership items, the coordination item and inboxes are
//! laid out in DynamoDB items, and the small value and expression helpers every request of
//! the store uses. Pure functions of the model, no requests: billing sizes items with the
//! same encoders the store writes.
//!
//! | item | `pk` | attributes |
//! | --- | --- | --- |
//! | lease | `lease\|{stream}\|{shard_id}` | `kind`="lease", `stream`, `shard_id`, `owner` (absent when none), `epoch` (N), `checkpoint` (S), `parents` (L of S), `owner_switches` (N), `handoff_to` (S, optional), `created_at`, `updated_at` (N, unix ms) |
//! | membership | `membership\|{n}`, n < [`crate::MEMBERSHIP_SHARDS`] | `kind`="membership", `members` (N), and per worker `hb\|{id}` (N, heartbeat counter), `up\|{id}` (N, unix ms of the last heartbeat), `ex\|{id}` (N, unix s when operators may call it abandoned) |
//! | coordination | `coordination` | `kind`="coordination", `leases_version` (N), `leader` (S), `leader_hb` (N), `leader_up` (N, unix ms), `workers` (N) |
//! | inbox | `inbox\|{worker id}` | `kind`="inbox", `notes` (SS of `{token}\|{stream}\|{shard_id}`), `expires_at` (N, unix s: the table's TTL removes a dead worker's inbox) |

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseKey};
use crate::membership::{Coordination, LeaderRecord, Notice, WorkerRecord};

/// Attribute names. Expressions refer to them as `#name` (see [`names_in`]), which also
/// keeps DynamoDB's reserved words (`owner` is one) out of the way.
pub(crate) mod attr {
    pub const PK: &str = "pk";
    pub const KIND: &str = "kind";
    pub const STREAM: &str = "stream";
    pub const SHARD_ID: &str = "shard_id";
    pub const OWNER: &str = "owner";
    pub const EPOCH: &str = "epoch";
    pub const CHECKPOINT: &str = "checkpoint";
    pub const PARENTS: &str = "parents";
    pub const OWNER_SWITCHES: &str = "owner_switches";
    pub const HANDOFF_TO: &str = "handoff_to";
    pub const CREATED_AT: &str = "created_at";
    pub const UPDATED_AT: &str = "updated_at";
    /// A named pipeline's checkpoint on a lease: `{prefix}{pipeline}` (`crate::pipeline`).
    pub const PIPELINE_PREFIX: &str = "pl|";
    /// The pipelines the owner of a lease runs (a string set, absent when none).
    pub const OWNER_PIPELINES: &str = "owner_pipelines";
    /// The table's TTL attribute: set on inboxes, so a dead worker's inbox goes away.
    pub const EXPIRES_AT: &str = "expires_at";
    /// Per-worker attributes of a membership item: `{prefix}{worker id}`.
    pub const HEARTBEAT_PREFIX: &str = "hb|";
    pub const UPDATED_PREFIX: &str = "up|";
    pub const EXPIRES_PREFIX: &str = "ex|";
    /// How many workers a membership item holds.
    pub const MEMBERS: &str = "members";
    pub const LEASES_VERSION: &str = "leases_version";
    pub const LEADER: &str = "leader";
    pub const LEADER_HEARTBEAT: &str = "leader_hb";
    pub const LEADER_UPDATED: &str = "leader_up";
    pub const WORKERS: &str = "workers";
    pub const SHARDS: &str = "shards";
    pub const NOTES: &str = "notes";
}

pub(crate) const KIND_LEASE: &str = "lease";
pub(crate) const KIND_MEMBERSHIP: &str = "membership";
pub(crate) const KIND_COORDINATION: &str = "coordination";
pub(crate) const KIND_INBOX: &str = "inbox";
/// The key of the coordination item.
pub(crate) const COORDINATION_PK: &str = "coordination";

/// The key of membership item `shard`.
pub(crate) fn membership_pk(shard: u16) -> String {
    format!("membership|{shard}")
}

/// The key of a worker's inbox.
pub(crate) fn inbox_pk(worker_id: &str) -> String {
    format!("inbox|{worker_id}")
}

pub(crate) type Item = HashMap<String, AttributeValue>;

/// The placeholders of one worker's attributes in the membership item.
pub(crate) fn member_names(worker_id: &str) -> Vec<(&'static str, String)> {
    vec![
        ("#hb", format!("{}{worker_id}", attr::HEARTBEAT_PREFIX)),
        ("#up", format!("{}{worker_id}", attr::UPDATED_PREFIX)),
        ("#ex", format!("{}{worker_id}", attr::EXPIRES_PREFIX)),
    ]
}

/// The expression attribute names used in `expressions`: every `#name` maps to `name`.
/// DynamoDB rejects names that no expression uses, so they are collected, not listed.
pub(crate) fn names_in(expressions: &[&str]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for expression in expressions {
        for (start, _) in expression.match_indices('#') {
            let name: String = expression[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            names.insert(format!("#{name}"), name);
        }
    }
    names
}

pub(crate) fn to_values(values: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    values
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect()
}

/// The attribute of `pipeline`'s checkpoint on a lease item.
pub(crate) fn pipeline_attribute(pipeline: &str) -> String {
    format!("{}{pipeline}", attr::PIPELINE_PREFIX)
}

pub(crate) fn lease_pk(key: &LeaseKey) -> AttributeValue {
    s(&format!("lease|{}|{}", key.stream, key.shard_id))
}

pub(crate) fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

pub(crate) fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

pub(crate) fn unix_millis(time: SystemTime) -> u64 {
    let millis = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    u64::try_from(millis).unwrap_or(u64::MAX)
}

pub(crate) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(crate) fn millis(time: SystemTime) -> AttributeValue {
    number(unix_millis(time))
}

/// A membership item holding `workers` (for sizing: the store itself only ever writes it
/// attribute by attribute).
pub(crate) fn encode_membership(shard: u16, workers: &[WorkerRecord]) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), s(&membership_pk(shard))),
        (attr::KIND.to_owned(), s(KIND_MEMBERSHIP)),
        (attr::MEMBERS.to_owned(), number(workers.len() as u64)),
    ]);
    for worker in workers {
        let id = &worker.worker_id;
        item.insert(
            format!("{}{id}", attr::HEARTBEAT_PREFIX),
            number(worker.heartbeat),
        );
        item.insert(
            format!("{}{id}", attr::UPDATED_PREFIX),
            millis(worker.updated_at),
        );
        item.insert(
            format!("{}{id}", attr::EXPIRES_PREFIX),
            number(unix_secs(worker.expires_at)),
        );
    }
    item
}

/// The coordination item holding `coordination` (for sizing).
pub(crate) fn encode_coordination(coordination: &Coordination) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), s(COORDINATION_PK)),
        (attr::KIND.to_owned(), s(KIND_COORDINATION)),
        (
            attr::LEASES_VERSION.to_owned(),
            number(coordination.leases_version),
        ),
        (attr::WORKERS.to_owned(), number(coordination.workers)),
    ]);
    if !coordination.shards.is_empty() {
        item.insert(
            attr::SHARDS.to_owned(),
            AttributeValue::Ns(coordination.shards.iter().map(u16::to_string).collect()),
        );
    }
    if let Some(leader) = &coordination.leader {
        item.insert(attr::LEADER.to_owned(), s(&leader.worker_id));
        item.insert(attr::LEADER_HEARTBEAT.to_owned(), number(leader.heartbeat));
        item.insert(attr::LEADER_UPDATED.to_owned(), millis(SystemTime::now()));
    }
    item
}

/// A worker's inbox holding `notices` (for sizing).
pub(crate) fn encode_inbox(worker_id: &str, notices: &[Notice]) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), s(&inbox_pk(worker_id))),
        (attr::KIND.to_owned(), s(KIND_INBOX)),
        (
            attr::EXPIRES_AT.to_owned(),
            number(unix_secs(SystemTime::now())),
        ),
    ]);
    if !notices.is_empty() {
        item.insert(
            attr::NOTES.to_owned(),
            AttributeValue::Ss(notices.iter().map(encode_note).collect()),
        );
    }
    item
}

/// A hint as an inbox holds it: `{token}|{stream}|{shard_id}` (stream ARNs and shard ids
/// hold no `|`, like lease keys).
pub(crate) fn encode_note(notice: &Notice) -> String {
    format!(
        "{}|{}|{}",
        notice.token, notice.key.stream, notice.key.shard_id
    )
}

/// The hints of an inbox item; a note that does not parse is reported and skipped.
pub(crate) fn decode_inbox(table: &str, item: &Item) -> Vec<Notice> {
    let Some(AttributeValue::Ss(notes)) = item.get(attr::NOTES) else {
        return Vec::new();
    };
    let mut notices = Vec::with_capacity(notes.len());
    for note in notes {
        let mut parts = note.splitn(3, '|');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(token), Some(stream), Some(shard)) => notices.push(Notice {
                token: token.to_owned(),
                key: LeaseKey::new(stream, shard),
            }),
            _ => tracing::error!(table, note, "inbox note does not decode; skipped"),
        }
    }
    notices
}

/// The coordination item's content; missing attributes read as zero or none.
pub(crate) fn decode_coordination(item: &Item) -> Coordination {
    let number_at = |name: &str| match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    let leader = match item.get(attr::LEADER) {
        Some(AttributeValue::S(id)) => Some(LeaderRecord {
            worker_id: id.clone(),
            heartbeat: number_at(attr::LEADER_HEARTBEAT).unwrap_or(0),
        }),
        _ => None,
    };
    let mut shards: Vec<u16> = match item.get(attr::SHARDS) {
        Some(AttributeValue::Ns(shards)) => shards.iter().filter_map(|n| n.parse().ok()).collect(),
        _ => Vec::new(),
    };
    shards.sort_unstable();
    Coordination {
        leases_version: number_at(attr::LEASES_VERSION).unwrap_or(0),
        leader,
        workers: number_at(attr::WORKERS).unwrap_or(0),
        shards,
    }
}

pub(crate) fn encode_lease(lease: &Lease) -> Item {
    let mut item = Item::from([
        (attr::PK.to_owned(), lease_pk(&lease.key)),
        (attr::KIND.to_owned(), s(KIND_LEASE)),
        (attr::STREAM.to_owned(), s(&lease.key.stream)),
        (attr::SHARD_ID.to_owned(), s(&lease.key.shard_id)),
        (attr::EPOCH.to_owned(), number(lease.epoch)),
        (attr::CHECKPOINT.to_owned(), s(&lease.checkpoint.encode())),
        (
            attr::PARENTS.to_owned(),
            AttributeValue::L(lease.parent_shard_ids.iter().map(|id| s(id)).collect()),
        ),
        (
            attr::OWNER_SWITCHES.to_owned(),
            number(lease.owner_switches_since_checkpoint),
        ),
        (attr::CREATED_AT.to_owned(), millis(lease.created_at)),
        (attr::UPDATED_AT.to_owned(), millis(lease.updated_at)),
    ]);
    let optional = [
        (attr::OWNER, lease.owner.clone()),
        (attr::HANDOFF_TO, lease.handoff_to.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            item.insert(name.to_owned(), AttributeValue::S(value));
        }
    }
    for (pipeline, checkpoint) in &lease.pipelines {
        item.insert(pipeline_attribute(pipeline), s(&checkpoint.encode()));
    }
    if !lease.owner_pipelines.is_empty() {
        item.insert(
            attr::OWNER_PIPELINES.to_owned(),
            AttributeValue::Ss(lease.owner_pipelines.clone()),
        );
    }
    item
}

/// Reads typed attributes out of an item, naming the table, item and attribute on failure.
struct ItemReader<'a> {
    table: &'a str,
    item: &'a Item,
}

impl ItemReader<'_> {
    fn corrupt(&self, attribute: &'static str, problem: impl Into<String>) -> Error {
        let item = match self.item.get(attr::PK) {
            Some(AttributeValue::S(pk)) => pk.clone(),
            Some(other) => format!("{other:?}"),
            None => "(no pk)".to_owned(),
        };
        Error::CorruptItem {
            table: self.table.to_owned(),
            item,
            attribute,
            problem: problem.into(),
        }
    }

    fn optional_string(&self, name: &'static str) -> Result<Option<String>> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text.clone())),
            Some(other) => Err(self.corrupt(name, format!("is not a string: {other:?}"))),
        }
    }

    fn string(&self, name: &'static str) -> Result<String> {
        self.optional_string(name)?
            .ok_or_else(|| self.corrupt(name, "is missing"))
    }

    fn number(&self, name: &'static str) -> Result<u64> {
        match self.item.get(name) {
            Some(AttributeValue::N(text)) => text.parse().map_err(|_| {
                self.corrupt(name, format!("is not a non-negative integer: {text:?}"))
            }),
            Some(other) => Err(self.corrupt(name, format!("is not a number: {other:?}"))),
            None => Err(self.corrupt(name, "is missing")),
        }
    }

    fn checkpoint(&self, name: &'static str) -> Result<Checkpoint> {
        Checkpoint::decode(&self.string(name)?).map_err(|err| self.corrupt(name, err.to_string()))
    }

    /// Every `pl|{pipeline}` attribute, decoded.
    fn pipelines(&self) -> Result<BTreeMap<String, Checkpoint>> {
        let mut pipelines = BTreeMap::new();
        for (name, value) in self.item {
            let Some(pipeline) = name.strip_prefix(attr::PIPELINE_PREFIX) else {
                continue;
            };
            let checkpoint = match value {
                AttributeValue::S(text) => Checkpoint::decode(text).map_err(|e| e.to_string()),
                other => Err(format!("is not a string: {other:?}")),
            };
            let checkpoint = checkpoint.map_err(|problem| {
                self.corrupt(
                    "pl|{pipeline}",
                    format!("(pipeline {pipeline:?}) {problem}"),
                )
            })?;
            pipelines.insert(pipeline.to_owned(), checkpoint);
        }
        Ok(pipelines)
    }

    fn string_set(&self, name: &'static str) -> Result<Vec<String>> {
        match self.item.get(name) {
            None => Ok(Vec::new()),
            Some(AttributeValue::Ss(values)) => {
                let mut values = values.clone();
                values.sort();
                Ok(values)
            }
            Some(other) => Err(self.corrupt(name, format!("is not a string set: {other:?}"))),
        }
    }

    fn string_list(&self, name: &'static str) -> Result<Vec<String>> {
        match self.item.get(name) {
            None => Ok(Vec::new()),
            Some(AttributeValue::L(values)) => values
                .iter()
                .map(|value| match value {
                    AttributeValue::S(text) => Ok(text.clone()),
                    other => {
                        Err(self.corrupt(name, format!("has a non-string element: {other:?}")))
                    }
                })
                .collect(),
            Some(other) => Err(self.corrupt(name, format!("is not a list: {other:?}"))),
        }
    }
}

/// A lease item as the model's [`Lease`]; a missing or malformed attribute is `CorruptItem`
/// naming `table`, the item and the attribute.
pub(crate) fn decode_lease(table: &str, item: &Item) -> Result<Lease> {
    let r = ItemReader { table, item };
    Ok(Lease {
        key: LeaseKey::new(r.string(attr::STREAM)?, r.string(attr::SHARD_ID)?),
        owner: r.optional_string(attr::OWNER)?,
        epoch: r.number(attr::EPOCH)?,
        checkpoint: r.checkpoint(attr::CHECKPOINT)?,
        parent_shard_ids: r.string_list(attr::PARENTS)?,
        owner_switches_since_checkpoint: r.number(attr::OWNER_SWITCHES)?,
        handoff_to: r.optional_string(attr::HANDOFF_TO)?,
        created_at: UNIX_EPOCH + Duration::from_millis(r.number(attr::CREATED_AT)?),
        updated_at: UNIX_EPOCH + Duration::from_millis(r.number(attr::UPDATED_AT)?),
        pipelines: r.pipelines()?,
        owner_pipelines: r.string_set(attr::OWNER_PIPELINES)?,
    })
}

/// A membership item's worker records (sorted by id). An entry with a missing or
/// unreadable part is reported and skipped, like an undecodable lease.
pub(crate) fn decode_membership(table: &str, item: &Item) -> Vec<WorkerRecord> {
    let number_at = |name: &str| match item.get(name) {
        Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
        _ => None,
    };
    let mut workers = Vec::new();
    for name in item.keys() {
        let Some(id) = name.strip_prefix(attr::HEARTBEAT_PREFIX) else {
            continue;
        };
        let parts = (
            number_at(name),
            number_at(&format!("{}{id}", attr::UPDATED_PREFIX)),
            number_at(&format!("{}{id}", attr::EXPIRES_PREFIX)),
        );
        match parts {
            (Some(heartbeat), Some(updated), Some(expires)) => workers.push(WorkerRecord {
                worker_id: id.to_owned(),
                heartbeat,
                updated_at: UNIX_EPOCH + Duration::from_millis(updated),
                expires_at: UNIX_EPOCH + Duration::from_secs(expires),
            }),
            _ => {
                tracing::error!(table = %table, worker_id = id, "membership entry of this worker does not decode; skipped")
            }
        }
    }
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    workers
}

/// The leases among scanned items. An item that does not decode is reported (error log
/// naming table and key) and skipped: one item written by a newer version must not stop
/// every worker from taking leases. Items of other kinds are not leases.
pub(crate) fn decode_leases(table: &str, items: &[Item]) -> Vec<Lease> {
    let mut leases = Vec::new();
    for item in items {
        match item.get(attr::KIND) {
            Some(AttributeValue::S(kind)) if kind == KIND_LEASE => {
                match decode_lease(table, item) {
                    Ok(lease) => leases.push(lease),
                    Err(error) => {
                        tracing::error!(%error, "lease item does not decode; skipped by this scan")
                    }
                }
            }
            // Items of other kinds are not leases (or written by a newer version).
            _ => {}
        }
    }
    leases
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "t-test";

    #[test]
    fn names_are_collected_from_expressions() {
        let names = names_in(&[
            "SET #owner = :o, #epoch = #epoch + :one",
            "attribute_exists(#pk)",
        ]);
        let mut keys: Vec<_> = names.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["#epoch", "#owner", "#pk"]);
        assert_eq!(names["#owner"], "owner");
    }

    #[test]
    fn lease_items_round_trip() {
        let mut lease = Lease::new(
            LeaseKey::new("arn:stream", "shard-1"),
            Checkpoint::TrimHorizon,
            vec!["p1".into(), "p2".into()],
        );
        lease.owner = Some("w1".into());
        lease.epoch = 7;
        lease.handoff_to = Some("w2".into());
        lease.created_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        lease.updated_at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_456);
        assert_eq!(decode_lease(TABLE, &encode_lease(&lease)).unwrap(), lease);
        lease
            .pipelines
            .insert("search".into(), Checkpoint::ShardEnd);
        lease
            .pipelines
            .insert("cache v2".into(), Checkpoint::TrimHorizon);
        lease.owner_pipelines = vec!["cache v2".into(), "search".into()];
        assert_eq!(decode_lease(TABLE, &encode_lease(&lease)).unwrap(), lease);
    }

    #[test]
    fn scans_skip_an_item_that_does_not_decode_and_keep_the_rest() {
        let good = Lease::new(LeaseKey::new("s", "good"), Checkpoint::Latest, vec![]);
        let mut bad = encode_lease(&Lease::new(
            LeaseKey::new("s", "bad"),
            Checkpoint::Latest,
            vec![],
        ));
        // As a newer version might write it: a field in a shape we do not know.
        bad.insert(attr::EPOCH.into(), AttributeValue::S("v2:7".into()));
        let worker = WorkerRecord {
            worker_id: "w#1".into(),
            heartbeat: 9,
            updated_at: UNIX_EPOCH + Duration::from_millis(1_000),
            expires_at: UNIX_EPOCH + Duration::from_secs(60),
        };
        let membership = encode_membership(3, std::slice::from_ref(&worker));
        let leases = decode_leases(TABLE, &[bad, encode_lease(&good), membership.clone()]);
        let keys: Vec<&LeaseKey> = leases.iter().map(|l| &l.key).collect();
        assert_eq!(keys, [&good.key]);
        assert_eq!(decode_membership(TABLE, &membership), [worker]);
    }

    #[test]
    fn coordination_and_inbox_items_round_trip() {
        let coordination = Coordination {
            leases_version: 12,
            leader: Some(LeaderRecord {
                worker_id: "w#2".into(),
                heartbeat: 40,
            }),
            workers: 7,
            shards: vec![3, 90],
        };
        assert_eq!(
            decode_coordination(&encode_coordination(&coordination)),
            coordination
        );
        let notices = vec![Notice {
            token: "1f".into(),
            key: LeaseKey::new("arn:aws:dynamodb:r:1:table/t/stream/x", "shardId-1"),
        }];
        assert_eq!(decode_inbox(TABLE, &encode_inbox("w#2", &notices)), notices);
    }

    #[test]
    fn corrupt_items_name_table_item_and_attribute() {
        let mut item = encode_lease(&Lease::new(
            LeaseKey::new("s", "sh"),
            Checkpoint::Latest,
            vec![],
        ));
        item.insert(attr::EPOCH.into(), AttributeValue::S("seven".into()));
        let msg = decode_lease(TABLE, &item).unwrap_err().to_string();
        assert!(
            msg.contains("t-test") && msg.contains("lease|s|sh") && msg.contains("epoch"),
            "{msg}"
        );

        item.insert(attr::EPOCH.into(), number(1));
        item.insert(attr::CHECKPOINT.into(), s("SOMEWHERE"));
        let msg = decode_lease(TABLE, &item).unwrap_err().to_string();
        assert!(
            msg.contains("checkpoint") && msg.contains("SOMEWHERE"),
            "{msg}"
        );

        item.remove(attr::CHECKPOINT);
        let msg = decode_lease(TABLE, &item).unwrap_err().to_string();
        assert!(msg.contains("\"checkpoint\" is missing"), "{msg}");
    }
}
