//! Stream records in the JSON shape AWS Lambda gives a function for a DynamoDB stream.
//!
//! One conversion, used by the filter patterns (they match this shape), by `jsonl-worker
//! --format lambda` and by `lambda-bridge` (a handler reads exactly what Lambda would
//! have sent it):
//!
//! ```text
//! {"Records": [{"eventID": "…", "eventName": "INSERT", "eventVersion": "1.1",
//!   "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
//!   "dynamodb": {"ApproximateCreationDateTime": 1428537600, "Keys": {"id": {"S": "a"}},
//!                "NewImage": {…}, "OldImage": {…}, "SequenceNumber": "4421…",
//!                "SizeBytes": 26, "StreamViewType": "NEW_AND_OLD_IMAGES"},
//!   "eventSourceARN": "arn:aws:dynamodb:…:table/T/stream/…"}]}
//! ```
//!
//! Attribute values stay in DynamoDB JSON (`{"N": "5"}`, numbers as strings; binary as
//! base64), as Lambda gives them. Fields the record does not have are left out (a `REMOVE`
//! has no `NewImage`); `userIdentity` is there for items Time to Live deleted.

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::{AttributeValue, Record};
use serde_json::{Map, Number, Value};

/// What Lambda writes for records that DynamoDB Streams hands over without these fields
/// (snapshot records have none).
const DEFAULT_EVENT_SOURCE: &str = "aws:dynamodb";
const DEFAULT_EVENT_VERSION: &str = "1.1";

/// One record as Lambda shows it. `stream_arn` becomes `eventSourceARN`, which Lambda adds
/// (GetRecords does not return it); `None` leaves it out.
pub fn record_to_json(record: &Record, stream_arn: Option<&str>) -> Value {
    let mut out = Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            out.insert(name.to_owned(), value);
        }
    };
    let text = |s: Option<&str>| s.map(|s| Value::String(s.to_owned()));
    put("eventID", text(record.event_id()));
    put("eventName", text(record.event_name().map(|n| n.as_str())));
    put(
        "eventVersion",
        text(Some(
            record.event_version().unwrap_or(DEFAULT_EVENT_VERSION),
        )),
    );
    put(
        "eventSource",
        text(Some(record.event_source().unwrap_or(DEFAULT_EVENT_SOURCE))),
    );
    put("awsRegion", text(record.aws_region()));
    put("dynamodb", record.dynamodb().map(stream_record_to_json));
    put("eventSourceARN", text(stream_arn));
    put(
        "userIdentity",
        record.user_identity().map(|identity| {
            let mut who = Map::new();
            if let Some(kind) = identity.r#type() {
                who.insert("type".into(), kind.into());
            }
            if let Some(principal) = identity.principal_id() {
                who.insert("principalId".into(), principal.into());
            }
            Value::Object(who)
        }),
    );
    Value::Object(out)
}

/// A batch as the event Lambda invokes a function with: `{"Records": [...]}`.
pub fn event_to_json<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    stream_arn: Option<&str>,
) -> Value {
    let records = records
        .into_iter()
        .map(|record| record_to_json(record, stream_arn))
        .collect();
    let mut event = Map::new();
    event.insert("Records".into(), Value::Array(records));
    Value::Object(event)
}

fn stream_record_to_json(record: &aws_sdk_dynamodbstreams::types::StreamRecord) -> Value {
    let mut out = Map::new();
    if let Some(time) = record.approximate_creation_date_time() {
        out.insert("ApproximateCreationDateTime".into(), epoch_seconds(time));
    }
    let images = [
        ("Keys", record.keys.as_ref()),
        ("NewImage", record.new_image.as_ref()),
        ("OldImage", record.old_image.as_ref()),
    ];
    for (name, image) in images {
        if let Some(image) = image {
            out.insert(name.into(), item_to_dynamodb_json(image));
        }
    }
    if let Some(seq) = record.sequence_number() {
        out.insert("SequenceNumber".into(), seq.into());
    }
    if let Some(size) = record.size_bytes() {
        out.insert("SizeBytes".into(), size.into());
    }
    if let Some(view) = record.stream_view_type() {
        out.insert("StreamViewType".into(), view.as_str().into());
    }
    Value::Object(out)
}

/// Seconds since the epoch, a JSON number as Lambda sends it: whole seconds as an integer
/// (DynamoDB Streams rounds creation times to the second), a fraction otherwise.
fn epoch_seconds(time: &aws_smithy_types::DateTime) -> Value {
    if time.subsec_nanos() == 0 {
        return time.secs().into();
    }
    Number::from_f64(time.as_secs_f64()).map_or(Value::Null, Value::Number)
}

/// An item (or key) in DynamoDB JSON: each attribute `{"TYPE": value}`.
pub fn item_to_dynamodb_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), attribute_to_dynamodb_json(value)))
            .collect(),
    )
}

/// One attribute value in DynamoDB JSON: `{"S": "x"}`, `{"N": "5"}` (numbers stay
/// strings), `{"B": "base64"}`, `{"BOOL": true}`, `{"NULL": true}`, `{"SS"|"NS"|"BS": [..]}`,
/// `{"L": [..]}`, `{"M": {..}}`. A type this SDK version does not know is `{}`.
pub fn attribute_to_dynamodb_json(value: &AttributeValue) -> Value {
    let base64 = |b: &aws_smithy_types::Blob| Value::String(aws_smithy_types::base64::encode(b));
    let strings = |items: &[String]| items.iter().map(|s| Value::String(s.clone())).collect();
    let (kind, inner) = match value {
        AttributeValue::S(s) => ("S", Value::String(s.clone())),
        AttributeValue::N(n) => ("N", Value::String(n.clone())),
        AttributeValue::B(b) => ("B", base64(b)),
        AttributeValue::Bool(b) => ("BOOL", Value::Bool(*b)),
        AttributeValue::Null(b) => ("NULL", Value::Bool(*b)),
        AttributeValue::Ss(items) => ("SS", strings(items)),
        AttributeValue::Ns(items) => ("NS", strings(items)),
        AttributeValue::Bs(items) => ("BS", items.iter().map(base64).collect()),
        AttributeValue::L(items) => ("L", items.iter().map(attribute_to_dynamodb_json).collect()),
        AttributeValue::M(map) => ("M", item_to_dynamodb_json(map)),
        _ => return Value::Object(Map::new()),
    };
    let mut typed = Map::new();
    typed.insert(kind.into(), inner);
    Value::Object(typed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::{Identity, OperationType, StreamRecord, StreamViewType};
    use aws_smithy_types::{Blob, DateTime};
    use serde_json::json;

    fn record() -> Record {
        let item = HashMap::from([
            ("id".to_owned(), AttributeValue::S("a".into())),
            ("n".to_owned(), AttributeValue::N("5".into())),
            ("b".to_owned(), AttributeValue::B(Blob::new(b"hi".to_vec()))),
            ("ok".to_owned(), AttributeValue::Bool(true)),
            ("none".to_owned(), AttributeValue::Null(true)),
            (
                "tags".to_owned(),
                AttributeValue::Ss(vec!["x".into(), "y".into()]),
            ),
            (
                "list".to_owned(),
                AttributeValue::L(vec![AttributeValue::M(HashMap::from([(
                    "k".to_owned(),
                    AttributeValue::N("1".into()),
                )]))]),
            ),
        ]);
        Record::builder()
            .event_id("e1")
            .event_name(OperationType::Remove)
            .event_version("1.1")
            .event_source("aws:dynamodb")
            .aws_region("eu-west-1")
            .user_identity(
                Identity::builder()
                    .r#type("Service")
                    .principal_id("dynamodb.amazonaws.com")
                    .build(),
            )
            .dynamodb(
                StreamRecord::builder()
                    .approximate_creation_date_time(DateTime::from_secs(1_428_537_600))
                    .set_keys(Some(HashMap::from([(
                        "id".to_owned(),
                        AttributeValue::S("a".into()),
                    )])))
                    .set_old_image(Some(item))
                    .sequence_number("4421584500000000017450439091")
                    .size_bytes(26)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build(),
            )
            .build()
    }

    #[test]
    fn a_record_has_lambdas_shape_with_attribute_values_in_dynamodb_json() {
        let json = record_to_json(
            &record(),
            Some("arn:aws:dynamodb:eu-west-1:1:table/T/stream/L"),
        );
        assert_eq!(
            json,
            json!({
                "eventID": "e1",
                "eventName": "REMOVE",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "eu-west-1",
                "eventSourceARN": "arn:aws:dynamodb:eu-west-1:1:table/T/stream/L",
                "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
                "dynamodb": {
                    "ApproximateCreationDateTime": 1_428_537_600,
                    "Keys": {"id": {"S": "a"}},
                    "OldImage": {
                        "id": {"S": "a"}, "n": {"N": "5"}, "b": {"B": "aGk="},
                        "ok": {"BOOL": true}, "none": {"NULL": true},
                        "tags": {"SS": ["x", "y"]},
                        "list": {"L": [{"M": {"k": {"N": "1"}}}]}
                    },
                    "SequenceNumber": "4421584500000000017450439091",
                    "SizeBytes": 26,
                    "StreamViewType": "NEW_AND_OLD_IMAGES"
                }
            })
        );
    }

    #[test]
    fn an_event_wraps_the_records_and_leaves_out_what_is_unknown() {
        let bare = Record::builder().event_name(OperationType::Insert).build();
        let event = event_to_json([&bare], None);
        assert_eq!(
            event,
            json!({"Records": [{"eventName": "INSERT", "eventVersion": "1.1",
                                "eventSource": "aws:dynamodb"}]})
        );
    }
}
