//! The requests on the items that are not leases: membership items (heartbeats), the
//! coordination item (leases version, leader) and inboxes. Every write here is one
//! `UpdateItem` (or `DeleteItem`); reads of the membership go out as one `BatchGetItem`.
//! Liveness calls (heartbeats, the leader's heartbeat, the coordination read) use the
//! short attempt timeout ([`aws::liveness_overrides`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use super::errors::{ConditionFailed, Target};
use super::item::{
    COORDINATION_PK, Item, KIND_COORDINATION, KIND_INBOX, KIND_MEMBERSHIP, attr,
    decode_coordination, decode_inbox, decode_membership, encode_note, inbox_pk, member_names,
    membership_pk, millis, number, s, to_values, unix_millis, unix_secs,
};
use crate::aws::{self, ErrorClass};
use crate::error::{Error, Result};
use crate::lease::LeaseKey;
use crate::membership::{
    Coordination, MEMBERS_PER_SHARD, Membership, Notice, WorkerRecord, membership_shard,
};

/// How long an inbox outlives its last hint before the table's TTL removes it (a dead
/// worker's; a live worker empties its inbox every tick).
const INBOX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a store remembers between membership requests (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct MembershipCache {
    /// Ids that joined through this store: their next heartbeat must find the entry.
    joined: Mutex<HashSet<String>>,
    /// The membership items the coordination item listed last time, read in the same
    /// request as the coordination item next time.
    shards: Mutex<Vec<u16>>,
    /// Makes hint tokens unique: a random start, then counting.
    next_token: AtomicU64,
}

impl MembershipCache {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A per-process random start (std's hasher keys come from the OS), so that two
        // writers' tokens do not collide.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        Self {
            next_token: AtomicU64::new(hasher.finish()),
            ..Self::default()
        }
    }

    fn token(&self) -> String {
        format!("{:x}", self.next_token.fetch_add(1, Ordering::Relaxed))
    }
}

/// One `UpdateItem` on a membership, coordination or inbox item.
struct Update<'a> {
    operation: &'static str,
    pk: String,
    update: &'a str,
    condition: Option<&'a str>,
    /// Each `#placeholder` and its attribute name.
    names: Vec<(&'a str, String)>,
    values: Vec<(&'a str, AttributeValue)>,
    /// A liveness call: the short attempt timeout.
    liveness: bool,
}

/// The membership, coordination and inbox items as seen through one client.
pub(crate) struct MembershipItems<'a> {
    pub client: &'a Client,
    pub target: Target<'a>,
    pub cache: &'a Arc<MembershipCache>,
}

impl MembershipItems<'_> {
    /// One `UpdateItem`; the updated attributes, or the failed condition (with the old
    /// item, when DynamoDB returned it).
    async fn update(
        &self,
        request: Update<'_>,
    ) -> Result<std::result::Result<Item, (ConditionFailed, Option<Item>)>> {
        let Update {
            operation,
            pk,
            update,
            condition,
            names,
            values,
            liveness,
        } = request;
        let mut request = self
            .client
            .update_item()
            .table_name(self.target.table)
            .key(attr::PK, s(&pk))
            .update_expression(update)
            .set_condition_expression(condition.map(str::to_owned))
            .set_expression_attribute_names(Some(
                names
                    .into_iter()
                    .map(|(placeholder, name)| (placeholder.to_owned(), name))
                    .collect(),
            ))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if !values.is_empty() {
            request = request.set_expression_attribute_values(Some(to_values(values)));
        }
        let sent = if liveness {
            request
                .customize()
                .config_override(aws::liveness_overrides())
                .send()
                .await
        } else {
            request.send().await
        };
        match sent {
            Ok(output) => Ok(Ok(output.attributes.unwrap_or_default())),
            Err(err) => match err.as_service_error() {
                Some(UpdateItemError::ConditionalCheckFailedException(failed)) => {
                    let old = failed.item().cloned();
                    Ok(Err((
                        ConditionFailed {
                            old_item_present: old.is_some(),
                        },
                        old,
                    )))
                }
                _ => Err(self.target.sdk_error(operation, None, err)),
            },
        }
    }

    /// The first heartbeat of `worker_id`: its entry in its membership item, if the item
    /// has room; then the item is listed in the coordination item.
    pub async fn join(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let shard = membership_shard(worker_id);
        let now = SystemTime::now();
        let joined = self.update(Update {
operation: "UpdateItem (join)",
pk: membership_pk(shard),
update: "SET #kind = :kind, #up = :now, #ex = :expires ADD #members :one, #hb :one",
condition: Some("attribute_not_exists(#hb) AND (attribute_not_exists(#members) OR #members < :max)"),
names: [
                    member_names(worker_id),
                    vec![
                        ("#kind", attr::KIND.to_owned()),
                        ("#members", attr::MEMBERS.to_owned()),
                    ],
                ]
                .concat(),
values: vec![
                    (":kind", s(KIND_MEMBERSHIP)),
                    (":now", millis(now)),
                    (":expires", number(unix_secs(now + ttl))),
                    (":one", number(1)),
                    (":max", number(u64::from(MEMBERS_PER_SHARD))),
                ],
liveness: true,
})
            .await?;
        let record = match joined {
            Ok(attributes) => self.record(worker_id, &attributes, now, ttl)?,
            Err((_, old)) => {
                let member = format!("{}{worker_id}", attr::HEARTBEAT_PREFIX);
                if old.is_some_and(|item| item.contains_key(&member)) {
                    // An earlier attempt of this join went through: heartbeat as a member.
                    self.remember(worker_id);
                    return self.beat(worker_id, ttl).await;
                }
                return Err(Error::MembershipFull {
                    table: self.target.table.to_owned(),
                    worker_id: worker_id.to_owned(),
                    shard,
                    limit: MEMBERS_PER_SHARD,
                });
            }
        };
        self.remember(worker_id);
        let listed = self
            .cache
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&shard);
        if !listed {
            self.update(Update {
                operation: "UpdateItem (list membership item)",
                pk: COORDINATION_PK.to_owned(),
                update: "SET #kind = :kind ADD #shards :shard",
                condition: None,
                names: vec![
                    ("#kind", attr::KIND.to_owned()),
                    ("#shards", attr::SHARDS.to_owned()),
                ],
                values: vec![
                    (":kind", s(KIND_COORDINATION)),
                    (":shard", AttributeValue::Ns(vec![shard.to_string()])),
                ],
                liveness: true,
            })
            .await?
            .map_err(|_| self.unexpected_condition("UpdateItem (list membership item)"))?;
        }
        Ok(record)
    }

    /// Whether `worker_id` joined through this store.
    pub fn has_joined(&self, worker_id: &str) -> bool {
        self.cache
            .joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(worker_id)
    }

    fn remember(&self, worker_id: &str) {
        self.cache
            .joined
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(worker_id.to_owned());
    }

    /// A heartbeat of a member: fails with `WorkerRemoved` if its entry is gone.
    pub async fn beat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord> {
        let now = SystemTime::now();
        let beaten = self
            .update(Update {
                operation: "UpdateItem (heartbeat)",
                pk: membership_pk(membership_shard(worker_id)),
                update: "SET #up = :now, #ex = :expires ADD #hb :one",
                condition: Some("attribute_exists(#hb)"),
                names: member_names(worker_id),
                values: vec![
                    (":now", millis(now)),
                    (":expires", number(unix_secs(now + ttl))),
                    (":one", number(1)),
                ],
                liveness: true,
            })
            .await?;
        match beaten {
            Ok(attributes) => self.record(worker_id, &attributes, now, ttl),
            Err(_) => Err(Error::WorkerRemoved {
                table: self.target.table.to_owned(),
                worker_id: worker_id.to_owned(),
            }),
        }
    }

    fn record(
        &self,
        worker_id: &str,
        attributes: &Item,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<WorkerRecord> {
        let heartbeat = match attributes.get(&format!("{}{worker_id}", attr::HEARTBEAT_PREFIX)) {
            Some(AttributeValue::N(n)) => n.parse::<u64>().ok(),
            _ => None,
        };
        let heartbeat = heartbeat.ok_or_else(|| Error::CorruptItem {
            table: self.target.table.to_owned(),
            item: membership_pk(membership_shard(worker_id)),
            attribute: "hb|{worker id}",
            problem: format!("the heartbeat of {worker_id} did not come back as a number"),
        })?;
        Ok(WorkerRecord {
            worker_id: worker_id.to_owned(),
            heartbeat,
            updated_at: UNIX_EPOCH + Duration::from_millis(unix_millis(now)),
            expires_at: UNIX_EPOCH + Duration::from_secs(unix_secs(now + ttl)),
        })
    }

    /// Removes `worker_id`'s entry, if its counter is `seen` (or whatever it is, with
    /// `None`), and its inbox; returns whether an entry was removed.
    pub async fn remove(&self, worker_id: &str, seen: Option<u64>) -> Result<bool> {
        let mut values = vec![(":minus_one", AttributeValue::N("-1".to_owned()))];
        let condition = match seen {
            Some(seen) => {
                values.push((":seen", number(seen)));
                "#hb = :seen"
            }
            None => "attribute_exists(#hb)",
        };
        let removed = self
            .update(Update {
                operation: "UpdateItem (remove worker)",
                pk: membership_pk(membership_shard(worker_id)),
                update: "REMOVE #hb, #up, #ex ADD #members :minus_one",
                condition: Some(condition),
                names: [
                    member_names(worker_id),
                    vec![("#members", attr::MEMBERS.to_owned())],
                ]
                .concat(),
                values,
                liveness: false,
            })
            .await?
            .is_ok();
        if removed || seen.is_none() {
            self.client
                .delete_item()
                .table_name(self.target.table)
                .key(attr::PK, s(&inbox_pk(worker_id)))
                .send()
                .await
                .map_err(|err| self.target.sdk_error("DeleteItem (inbox)", None, err))?;
        }
        Ok(removed)
    }

    /// The coordination item and every membership item it lists, in one BatchGetItem when
    /// the list did not change since the last read (a second one for new items).
    pub async fn read(&self) -> Result<Membership> {
        let cached = self
            .cache
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut pks: Vec<String> = std::iter::once(COORDINATION_PK.to_owned())
            .chain(cached.iter().map(|shard| membership_pk(*shard)))
            .collect();
        let mut items = self.batch_get(&pks).await?;
        let coordination = items
            .iter()
            .find(|item| matches!(item.get(attr::PK), Some(AttributeValue::S(pk)) if pk == COORDINATION_PK))
            .map(decode_coordination)
            .unwrap_or_default();
        let missing: Vec<String> = coordination
            .shards
            .iter()
            .filter(|shard| !cached.contains(shard))
            .map(|shard| membership_pk(*shard))
            .collect();
        if !missing.is_empty() {
            items.extend(self.batch_get(&missing).await?);
            pks.extend(missing);
        }
        coordination.shards.clone_into(
            &mut self
                .cache
                .shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let mut workers: Vec<WorkerRecord> = items
            .iter()
            .filter(|item| matches!(item.get(attr::KIND), Some(AttributeValue::S(kind)) if kind == KIND_MEMBERSHIP))
            .flat_map(|item| decode_membership(self.target.table, item))
            .collect();
        workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        Ok(Membership {
            coordination,
            workers,
        })
    }

    async fn batch_get(&self, pks: &[String]) -> Result<Vec<Item>> {
        let keys = pks
            .iter()
            .map(|pk| Item::from([(attr::PK.to_owned(), s(pk))]))
            .collect();
        let got = aws::batch_get_all(
            self.client,
            self.target.table,
            keys,
            false,
            Some(aws::liveness_overrides),
        )
        .await
        .map_err(|err| {
            self.target
                .sdk_error("BatchGetItem (membership)", None, err)
        })?;
        if got.unprocessed > 0 {
            return Err(self.unprocessed("BatchGetItem (membership)", got.unprocessed));
        }
        Ok(got.items)
    }

    /// The coordination item alone (eventually consistent).
    pub async fn coordination(&self) -> Result<Coordination> {
        let output = self
            .client
            .get_item()
            .table_name(self.target.table)
            .key(attr::PK, s(COORDINATION_PK))
            .customize()
            .config_override(aws::liveness_overrides())
            .send()
            .await
            .map_err(|err| self.target.sdk_error("GetItem (coordination)", None, err))?;
        Ok(output
            .item
            .as_ref()
            .map(decode_coordination)
            .unwrap_or_default())
    }

    pub async fn bump_leases_version(&self) -> Result<u64> {
        let attributes = self
            .update(Update {
                operation: "UpdateItem (leases version)",
                pk: COORDINATION_PK.to_owned(),
                update: "SET #kind = :kind ADD #v :one",
                condition: None,
                names: vec![
                    ("#kind", attr::KIND.to_owned()),
                    ("#v", attr::LEASES_VERSION.to_owned()),
                ],
                values: vec![(":kind", s(KIND_COORDINATION)), (":one", number(1))],
                liveness: true,
            })
            .await?
            .map_err(|_| self.unexpected_condition("UpdateItem (leases version)"))?;
        match attributes.get(attr::LEASES_VERSION) {
            Some(AttributeValue::N(n)) => n.parse().map_err(|_| Error::CorruptItem {
                table: self.target.table.to_owned(),
                item: COORDINATION_PK.to_owned(),
                attribute: attr::LEASES_VERSION,
                problem: format!("{n:?} is not a counter"),
            }),
            _ => Ok(0),
        }
    }

    /// Claims (`replacing` set or none named) or renews (`workers` set) the leader's name.
    pub async fn lead(
        &self,
        worker_id: &str,
        claim: Option<Option<&str>>,
        workers: Option<u64>,
    ) -> Result<bool> {
        let mut values = vec![
            (":kind", s(KIND_COORDINATION)),
            (":me", s(worker_id)),
            (":now", millis(SystemTime::now())),
            (":one", number(1)),
        ];
        let mut update = "SET #kind = :kind, #leader = :me, #leader_up = :now".to_owned();
        let mut names = vec![
            ("#kind", attr::KIND.to_owned()),
            ("#leader", attr::LEADER.to_owned()),
            ("#leader_up", attr::LEADER_UPDATED.to_owned()),
            ("#leader_hb", attr::LEADER_HEARTBEAT.to_owned()),
        ];
        if let Some(workers) = workers {
            update.push_str(", #workers = :workers");
            names.push(("#workers", attr::WORKERS.to_owned()));
            values.push((":workers", number(workers)));
        }
        update.push_str(" ADD #leader_hb :one");
        let condition = match claim {
            None => "#leader = :me".to_owned(),
            Some(None) => "attribute_not_exists(#leader) OR #leader = :me".to_owned(),
            Some(Some(replacing)) => {
                values.push((":replacing", s(replacing)));
                "attribute_not_exists(#leader) OR #leader = :me OR #leader = :replacing".to_owned()
            }
        };
        let operation = if claim.is_some() {
            "UpdateItem (claim leadership)"
        } else {
            "UpdateItem (leader heartbeat)"
        };
        Ok(self
            .update(Update {
                operation,
                pk: COORDINATION_PK.to_owned(),
                update: &update,
                condition: Some(&condition),
                names,
                values,
                liveness: true,
            })
            .await?
            .is_ok())
    }

    pub async fn resign(&self, worker_id: &str) -> Result<()> {
        self.update(Update {
            operation: "UpdateItem (resign leadership)",
            pk: COORDINATION_PK.to_owned(),
            update: "REMOVE #leader",
            condition: Some("#leader = :me"),
            names: vec![("#leader", attr::LEADER.to_owned())],
            values: vec![(":me", s(worker_id))],
            liveness: false,
        })
        .await?
        .ok();
        Ok(())
    }

    pub async fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let notes = keys
            .iter()
            .map(|key| {
                encode_note(&Notice {
                    token: self.cache.token(),
                    key: key.clone(),
                })
            })
            .collect();
        self.update(Update {
            operation: "UpdateItem (notify)",
            pk: inbox_pk(worker_id),
            update: "SET #kind = :kind, #expires_at = :expires ADD #notes :notes",
            condition: None,
            names: vec![
                ("#kind", attr::KIND.to_owned()),
                ("#expires_at", attr::EXPIRES_AT.to_owned()),
                ("#notes", attr::NOTES.to_owned()),
            ],
            values: vec![
                (":kind", s(KIND_INBOX)),
                (":expires", number(unix_secs(SystemTime::now() + INBOX_TTL))),
                (":notes", AttributeValue::Ss(notes)),
            ],
            liveness: false,
        })
        .await?
        .map_err(|_| self.unexpected_condition("UpdateItem (notify)"))?;
        Ok(())
    }

    pub async fn notices(&self, worker_id: &str) -> Result<Vec<Notice>> {
        let output = self
            .client
            .get_item()
            .table_name(self.target.table)
            .key(attr::PK, s(&inbox_pk(worker_id)))
            .send()
            .await
            .map_err(|err| self.target.sdk_error("GetItem (inbox)", None, err))?;
        Ok(output
            .item
            .map(|item| decode_inbox(self.target.table, &item))
            .unwrap_or_default())
    }

    pub async fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()> {
        if notices.is_empty() {
            return Ok(());
        }
        self.update(Update {
            operation: "UpdateItem (clear notices)",
            pk: inbox_pk(worker_id),
            update: "DELETE #notes :notes",
            condition: None,
            names: vec![("#notes", attr::NOTES.to_owned())],
            values: vec![(
                ":notes",
                AttributeValue::Ss(notices.iter().map(encode_note).collect()),
            )],
            liveness: false,
        })
        .await?
        .map_err(|_| self.unexpected_condition("UpdateItem (clear notices)"))?;
        Ok(())
    }

    fn unexpected_condition(&self, operation: &'static str) -> Error {
        self.target.build_error(
            operation,
            ErrorClass::Other,
            "a write without a condition failed its condition",
        )
    }

    pub fn unprocessed(&self, operation: &'static str, left: usize) -> Error {
        self.target.build_error(
            operation,
            ErrorClass::Throttling,
            format!("{left} keys were still unprocessed (throttled) after four rounds"),
        )
    }
}
