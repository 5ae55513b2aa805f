//! Typed changes: stream records with their images decoded into the user's type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record};
use dynamodb_streams_leases::SequenceNumber;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// What happened to the item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// A new item was written.
    Insert,
    /// An existing item was changed.
    Modify,
    /// An item was deleted (by a user, or by TTL: see [`Change::deleted_by_ttl`]).
    Remove,
    /// The item as a snapshot of the table read it (`with_snapshot`): new image only, no
    /// stream record behind it. Delivered before the item's later stream changes.
    Snapshot,
}

impl ChangeKind {
    /// The stream's name for it: `INSERT`, `MODIFY` or `REMOVE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Modify => "MODIFY",
            Self::Remove => "REMOVE",
            Self::Snapshot => SNAPSHOT_EVENT,
        }
    }
}

/// The event name of the records a snapshot makes from scanned items (not a stream
/// operation: such records never come from DynamoDB Streams).
pub(crate) const SNAPSHOT_EVENT: &str = "SNAPSHOT";

/// One change of one item, with its images decoded into `T`.
///
/// Which images are present depends on the stream's view type: `new` needs `NEW_IMAGE` or
/// `NEW_AND_OLD_IMAGES` (and is absent on removes), `old` needs `OLD_IMAGE` or
/// `NEW_AND_OLD_IMAGES` (and is absent on inserts). Keys are always there.
#[derive(Clone, Debug)]
pub struct Change<T> {
    /// Insert, modify or remove.
    pub kind: ChangeKind,
    /// The item before the change.
    pub old: Option<T>,
    /// The item after the change.
    pub new: Option<T>,
    /// The record's position in its shard: what checkpoints are made of. Zero for a
    /// [`ChangeKind::Snapshot`] change, which has no stream record (its position is the
    /// scan's, kept by the framework).
    pub sequence_number: SequenceNumber,
    /// When DynamoDB wrote the change (second precision).
    pub approximate_creation_time: Option<SystemTime>,
    /// The size of the stream record in bytes.
    pub size_bytes: u64,
    /// Whether DynamoDB's Time to Live deleted the item (a service, not a user).
    pub deleted_by_ttl: bool,
    shard_id: Arc<str>,
    raw: Arc<Record>,
}

impl<T> Change<T> {
    /// The item's primary key attributes.
    pub fn keys(&self) -> &HashMap<String, AttributeValue> {
        static NO_KEYS: std::sync::OnceLock<HashMap<String, AttributeValue>> =
            std::sync::OnceLock::new();
        self.raw
            .dynamodb()
            .and_then(|stream_record| stream_record.keys.as_ref())
            .unwrap_or_else(|| NO_KEYS.get_or_init(HashMap::new))
    }

    /// The keys decoded into a type of your choice.
    pub fn keys_as<K: DeserializeOwned>(&self) -> Result<K, serde_dynamo::Error> {
        serde_dynamo::aws_sdk_dynamodbstreams_1::from_item(self.keys().clone())
    }

    /// The record's unique event id.
    pub fn event_id(&self) -> &str {
        self.raw.event_id().unwrap_or_default()
    }

    /// The shard the record was read from (tools that read a whole stream print it).
    pub fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream record as DynamoDB Streams returned it.
    pub fn raw(&self) -> &Record {
        &self.raw
    }
}

impl<T: DeserializeOwned> Change<T> {
    /// Decodes a stream record of `shard_id`. Any image that does not decode into `T` is an
    /// error naming the shard, the record and the field: a record is never dropped.
    pub fn decode(shard_id: &str, raw: impl Into<Arc<Record>>) -> Result<Self> {
        let raw = raw.into();
        let malformed = |problem: &str| Error::MalformedRecord {
            shard_id: shard_id.to_owned(),
            problem: problem.to_owned(),
        };
        let stream_record = raw
            .dynamodb()
            .ok_or_else(|| malformed("the record has no `dynamodb` section"))?;
        let snapshot = raw.event_name().map(OperationType::as_str) == Some(SNAPSHOT_EVENT);
        let seq_text = match stream_record.sequence_number() {
            Some(text) => text,
            None if snapshot => "0",
            None => return Err(malformed("the record has no sequence number")),
        };
        let sequence_number =
            SequenceNumber::parse(seq_text).map_err(|e| Error::MalformedRecord {
                shard_id: shard_id.to_owned(),
                problem: e.to_string(),
            })?;
        let kind = match raw.event_name() {
            Some(OperationType::Insert) => ChangeKind::Insert,
            Some(OperationType::Modify) => ChangeKind::Modify,
            Some(OperationType::Remove) => ChangeKind::Remove,
            _ if snapshot => ChangeKind::Snapshot,
            other => {
                return Err(malformed(&format!(
                    "record {sequence_number} has event name {other:?}, expected INSERT, MODIFY or REMOVE"
                )));
            }
        };
        let decode_image = |image: &'static str, item: Option<&HashMap<String, AttributeValue>>| {
            item.map(|item| decode_item::<T>(shard_id, &sequence_number, image, item))
                .transpose()
        };
        let old = decode_image("OldImage", stream_record.old_image.as_ref())?;
        let new = decode_image("NewImage", stream_record.new_image.as_ref())?;
        let approximate_creation_time = stream_record
            .approximate_creation_date_time()
            .and_then(|t| SystemTime::try_from(*t).ok());
        let size_bytes = stream_record
            .size_bytes()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let deleted_by_ttl = raw.user_identity().is_some_and(|identity| {
            identity.principal_id() == Some("dynamodb.amazonaws.com")
                && identity.r#type() == Some("Service")
        });
        Ok(Self {
            kind,
            old,
            new,
            sequence_number,
            approximate_creation_time,
            size_bytes,
            deleted_by_ttl,
            shard_id: Arc::from(shard_id),
            raw,
        })
    }
}

fn decode_item<T: DeserializeOwned>(
    shard_id: &str,
    sequence_number: &SequenceNumber,
    image: &'static str,
    item: &HashMap<String, AttributeValue>,
) -> Result<T> {
    // Straight from the SDK's values, borrowed: no copy of the image. The field path costs
    // an allocation per key, so it is only tracked on a second pass, for the error.
    if let Ok(decoded) = T::deserialize(crate::attribute_de::ItemDeserializer(item)) {
        return Ok(decoded);
    }
    let deserializer = crate::attribute_de::ItemDeserializer(item);
    serde_path_to_error::deserialize(deserializer).map_err(|e| Error::Decode {
        shard_id: shard_id.to_owned(),
        sequence_number: sequence_number.clone(),
        image,
        path: e.path().to_string(),
        message: redact(&e.into_inner().to_string()),
    })
}

/// `message` with every quoted part (`'…'`, `"…"`, `` `…` ``) blanked out. serde and
/// serde_dynamo quote the offending value in their messages (`Failed to parse 'x' as an
/// integer`, `invalid type: string "x"`), and images may hold personal data: errors and
/// logs name the shard, record and field path, never item values.
fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(quote) if c == quote => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None => {
                out.push(c);
                if matches!(c, '\'' | '"' | '`') {
                    open = Some(c);
                }
            }
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

/// The changes of one delivery: consecutive records of one shard, in order.
#[derive(Clone, Debug)]
pub struct ChangeBatch<T> {
    /// The stream the shard belongs to.
    pub stream_arn: String,
    /// The shard.
    pub shard_id: String,
    /// The changes, in sequence order.
    pub changes: Vec<Change<T>>,
    /// How far this batch's last record is behind the stream's tip, when known (from the
    /// record's creation time: DynamoDB Streams has no `millisBehindLatest`).
    pub behind_latest: Option<std::time::Duration>,
}

impl<T> ChangeBatch<T> {
    /// The number of changes.
    pub fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether the batch has no changes.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The sequence number of the last change: a checkpoint there covers the whole batch.
    pub fn last_sequence_number(&self) -> Option<&SequenceNumber> {
        self.changes.last().map(|c| &c.sequence_number)
    }

    /// Iterates over the changes.
    pub fn iter(&self) -> std::slice::Iter<'_, Change<T>> {
        self.changes.iter()
    }
}

impl<T> IntoIterator for ChangeBatch<T> {
    type Item = Change<T>;
    type IntoIter = std::vec::IntoIter<Change<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a ChangeBatch<T> {
    type Item = &'a Change<T>;
    type IntoIter = std::slice::Iter<'a, Change<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.changes.iter()
    }
}

/// Decodes records in order until the first that fails: the decoded prefix can still be
/// delivered, and the error comes with the index of the record that stopped it.
pub(crate) fn decode_prefix<T: DeserializeOwned>(
    shard_id: &str,
    records: &[Arc<Record>],
) -> (Vec<Change<T>>, Option<(Error, usize)>) {
    let mut changes = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        match Change::decode(shard_id, record.clone()) {
            Ok(change) => changes.push(change),
            Err(error) => return (changes, Some((error, index))),
        }
    }
    (changes, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::{Identity, StreamRecord};
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Counter {
        name: String,
        count: u32,
    }

    fn s(v: &str) -> AttributeValue {
        AttributeValue::S(v.to_owned())
    }

    fn n(v: &str) -> AttributeValue {
        AttributeValue::N(v.to_owned())
    }

    fn record(kind: OperationType, old: Option<(&str, &str)>, new: Option<(&str, &str)>) -> Record {
        let image = |(name, count): (&str, &str)| {
            HashMap::from([("name".to_owned(), s(name)), ("count".to_owned(), n(count))])
        };
        let stream_record = StreamRecord::builder()
            .set_keys(Some(HashMap::from([("name".to_owned(), s("test"))])))
            .set_old_image(old.map(image))
            .set_new_image(new.map(image))
            .sequence_number("000000000000000000123")
            .size_bytes(42)
            .build();
        Record::builder()
            .event_id("ev-1")
            .event_name(kind)
            .dynamodb(stream_record)
            .build()
    }

    #[test]
    fn decodes_modify_with_both_images() {
        let change = Change::<Counter>::decode(
            "shard-1",
            record(
                OperationType::Modify,
                Some(("test", "1")),
                Some(("test", "2")),
            ),
        )
        .unwrap();
        assert_eq!(change.kind, ChangeKind::Modify);
        assert_eq!(change.old.as_ref().unwrap().count, 1);
        assert_eq!(change.new.as_ref().unwrap().count, 2);
        assert_eq!(change.sequence_number.as_str(), "000000000000000000123");
        assert_eq!(change.size_bytes, 42);
        assert_eq!(change.event_id(), "ev-1");
        assert!(!change.deleted_by_ttl);
    }

    #[test]
    fn keys_decode_into_any_type() {
        #[derive(Deserialize)]
        struct Key {
            name: String,
        }
        let change = Change::<Counter>::decode(
            "s",
            record(OperationType::Remove, Some(("test", "1")), None),
        )
        .unwrap();
        assert_eq!(change.keys_as::<Key>().unwrap().name, "test");
        assert!(change.new.is_none());
    }

    #[test]
    fn undecodable_image_names_shard_sequence_and_field() {
        let err = Change::<Counter>::decode(
            "shard-7",
            record(OperationType::Insert, None, Some(("test", "-5"))),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("shard-7"), "{text}");
        assert!(text.contains("000000000000000000123"), "{text}");
        assert!(text.contains("count"), "{text}");
        assert!(text.contains("NewImage"), "{text}");
    }

    #[test]
    fn decode_errors_carry_no_item_values() {
        let err = Change::<Counter>::decode(
            "shard-7",
            record(
                OperationType::Insert,
                None,
                Some(("test", "alice@example.com")),
            ),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("alice"), "{text}");
        assert!(text.contains("count"), "{text}");
    }

    #[test]
    fn ttl_deletions_are_flagged() {
        let mut raw = record(OperationType::Remove, Some(("test", "1")), None);
        raw.user_identity = Some(
            Identity::builder()
                .principal_id("dynamodb.amazonaws.com")
                .r#type("Service")
                .build(),
        );
        assert!(Change::<Counter>::decode("s", raw).unwrap().deleted_by_ttl);
    }

    #[test]
    fn decode_prefix_stops_at_the_first_bad_record_and_keeps_the_rest() {
        let good = record(OperationType::Insert, None, Some(("a", "1")));
        let bad = record(OperationType::Insert, None, Some(("b", "x")));
        let records: Vec<Arc<Record>> = vec![good.clone().into(), bad.into(), good.into()];
        let (ok, failed) = decode_prefix::<Counter>("s", &records);
        assert_eq!(ok.len(), 1);
        let (error, index) = failed.unwrap();
        assert!(matches!(error, Error::Decode { .. }));
        assert_eq!(index, 1);
    }
}
