//! A change as one line of plain JSON: `jsonl-worker`'s lines and `ddbsc tail --json`.
//!
//! ```
//! use aws_sdk_dynamodbstreams::types::AttributeValue;
//! use std::collections::HashMap;
//!
//! let item = HashMap::from([("id".to_owned(), AttributeValue::S("a".into()))]);
//! assert_eq!(dynamodb_streams_consumer::json::item_to_json(&item).to_string(), r#"{"id":"a"}"#);
//! ```

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::AttributeValue;
use serde_json::{Map, Number, Value};

use crate::{Change, ChangeKind};

/// One change as a `jsonl-worker` line (also `ddbsc tail --json`): `worker`, `table`,
/// `shard`, `seq`, `event`, `keys`, `old`, `new`, with images from the raw record as plain
/// JSON ([`item_to_json`]; `null` when the record has no such image). One function, so the
/// worker's and the tool's lines cannot drift apart. `table` and `shard` are `null` when
/// unknown (the lease-free reader does not say which shard a change came from).
pub fn change_to_json<T>(
    worker: &str,
    table: Option<&str>,
    shard: Option<&str>,
    change: &Change<T>,
) -> Value {
    let record = change.raw().dynamodb();
    let image =
        |image: Option<&HashMap<String, AttributeValue>>| image.map_or(Value::Null, item_to_json);
    serde_json::json!({
        "worker": worker,
        "table": table,
        "shard": shard,
        // A snapshot change has no stream record, so no sequence number.
        "seq": match change.kind {
            ChangeKind::Snapshot => "",
            _ => change.sequence_number.as_str(),
        },
        "event": change.kind.as_str(),
        "keys": item_to_json(change.keys()),
        "old": image(record.and_then(|r| r.old_image.as_ref())),
        "new": image(record.and_then(|r| r.new_image.as_ref())),
    })
}

/// A DynamoDB item (or key) as plain JSON: see [`attribute_to_json`].
pub fn item_to_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), attribute_to_json(value)))
            .collect::<Map<String, Value>>(),
    )
}

/// One DynamoDB attribute value as plain JSON.
///
/// - `S` is a string; `BOOL` a boolean; `NULL` is `null`; `L` an array; `M` an object.
/// - `N` is a JSON number: an integer when it parses as `i64`, else an `f64` (numbers with
///   more than about 15 significant digits lose precision); a number even `f64` cannot hold
///   stays a string.
/// - `B` is a base64 string (standard alphabet, padded), as in DynamoDB's own JSON.
/// - `SS`, `NS` and `BS` are arrays of the above.
/// - A type this SDK version does not know is `null`.
pub fn attribute_to_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number_to_json(n),
        AttributeValue::B(b) => Value::String(aws_smithy_types::base64::encode(b.as_ref())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Ss(items) => items.iter().cloned().map(Value::String).collect(),
        AttributeValue::Ns(items) => items.iter().map(|n| number_to_json(n)).collect(),
        AttributeValue::Bs(items) => items
            .iter()
            .map(|b| Value::String(aws_smithy_types::base64::encode(b.as_ref())))
            .collect(),
        AttributeValue::L(items) => items.iter().map(attribute_to_json).collect(),
        AttributeValue::M(map) => item_to_json(map),
        _ => Value::Null,
    }
}

fn number_to_json(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::Number(i.into());
    }
    n.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or_else(|| Value::String(n.to_owned()), Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::Blob;
    use serde_json::json;

    #[test]
    fn every_attribute_type_becomes_plain_json() {
        let item = HashMap::from([
            ("s".to_owned(), AttributeValue::S("text".into())),
            ("int".to_owned(), AttributeValue::N("-42".into())),
            ("float".to_owned(), AttributeValue::N("1.5".into())),
            ("big".to_owned(), AttributeValue::N("1e30".into())),
            ("b".to_owned(), AttributeValue::B(Blob::new(b"hi".to_vec()))),
            ("t".to_owned(), AttributeValue::Bool(true)),
            ("nil".to_owned(), AttributeValue::Null(true)),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["1".into(), "2.25".into()]),
            ),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(vec![0u8, 255])]),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::N("7".into())]),
            ),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([(
                    "k".to_owned(),
                    AttributeValue::S("v".into()),
                )])),
            ),
        ]);
        assert_eq!(
            item_to_json(&item),
            json!({
                "s": "text", "int": -42, "float": 1.5, "big": 1e30, "b": "aGk=", "t": true,
                "nil": null, "ss": ["a", "b"], "ns": [1, 2.25], "bs": ["AP8="], "l": [7],
                "m": {"k": "v"}
            })
        );
    }

    #[test]
    fn integers_stay_integers() {
        assert_eq!(
            number_to_json("9007199254740993").to_string(),
            "9007199254740993"
        );
        assert_eq!(number_to_json("0").to_string(), "0");
    }
}
