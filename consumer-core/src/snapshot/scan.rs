//! Reading a table one Scan page at a time, and the text form of a segment's position.
//!
//! A snapshot segment is a parallel Scan segment read page by page, each page resumed from
//! the previous page's `LastEvaluatedKey`. That key is the segment's checkpoint, stored in
//! the lease table as text ([`Position`]). The Scan sits behind the small [`TableScan`]
//! trait so a test can drive the segment consumer with a fake table; the SDK version goes
//! through the clients, timeouts and error classes of `dynamodb_streams_leases::aws` (via
//! [`SdkStreams`]), and retries are the caller's ([`crate::retry::table_scan`]).

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue as TableValue;
use aws_sdk_dynamodbstreams::types::AttributeValue as StreamValue;
use serde_json::{Map, Value};

use crate::streams::{ApiError, ApiErrorKind, SdkStreams};

/// An item (or a key) as the DynamoDB API returns it.
pub(crate) type Item = HashMap<String, TableValue>;

/// One page of one segment.
#[derive(Debug, Default)]
pub(crate) struct ScanPage {
    pub items: Vec<Item>,
    /// Where the next page starts; `None` once the segment is read to its end.
    pub last_evaluated_key: Option<Item>,
}

/// What one page read asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PageRequest<'a> {
    pub table: &'a str,
    pub segment: u32,
    pub total_segments: u32,
    /// Resume after this key (`None`: the segment's start).
    pub start: Option<&'a Item>,
    pub limit: u32,
}

/// The two table calls a snapshot makes.
#[async_trait]
pub(crate) trait TableScan: Send + Sync + fmt::Debug {
    /// The names of the table's key attributes (what a change's `keys` holds).
    async fn key_attributes(&self, table: &str) -> Result<Vec<String>, ApiError>;

    /// One page of a parallel Scan segment, read consistently: a change committed before
    /// the snapshot started is in the page (or in a later state of the item).
    async fn scan_page(&self, request: PageRequest<'_>) -> Result<ScanPage, ApiError>;
}

#[async_trait]
impl TableScan for SdkStreams {
    async fn key_attributes(&self, table: &str) -> Result<Vec<String>, ApiError> {
        let output = self
            .dynamodb()
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|err| self.map_error(err, "DescribeTable", format!("table {table:?}")))?;
        let names: Vec<String> = output
            .table
            .map(|t| t.key_schema.unwrap_or_default())
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.attribute_name)
            .collect();
        if names.is_empty() {
            return Err(ApiError::new(
                ApiErrorKind::Other,
                "DescribeTable",
                format!("table {table:?}"),
                "the answer has no key schema",
            ));
        }
        Ok(names)
    }

    async fn scan_page(&self, request: PageRequest<'_>) -> Result<ScanPage, ApiError> {
        let resource = || {
            format!(
                "table {:?} segment {} of {}",
                request.table, request.segment, request.total_segments
            )
        };
        let output = self
            .dynamodb()
            .scan()
            .table_name(request.table)
            .segment(i32::try_from(request.segment).unwrap_or(i32::MAX))
            .total_segments(i32::try_from(request.total_segments).unwrap_or(i32::MAX))
            .consistent_read(true)
            .limit(i32::try_from(request.limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(request.start.cloned())
            .send()
            .await
            .map_err(|err| self.map_error(err, "Scan", resource()))?;
        Ok(ScanPage {
            items: output.items.unwrap_or_default(),
            last_evaluated_key: output.last_evaluated_key.filter(|key| !key.is_empty()),
        })
    }
}

/// A segment's stored position: items delivered so far and the key to resume after.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Position {
    /// Items of the segment delivered (and checkpointed) so far: progress for operators.
    pub items: u64,
    /// The last evaluated key; `None` before the first page.
    pub after: Option<Item>,
}

impl Position {
    /// The text stored in the segment lease's checkpoint: JSON
    /// `{"items":N,"after":{"id":{"S":"a"}}}` with key values in DynamoDB's JSON form
    /// (binary as base64), so the key round-trips exactly.
    pub(crate) fn encode(&self) -> String {
        let after = self.after.as_ref().map_or(Value::Null, |key| {
            Value::Object(
                key.iter()
                    .map(|(name, value)| (name.clone(), key_value_to_json(value)))
                    .collect(),
            )
        });
        serde_json::json!({"items": self.items, "after": after}).to_string()
    }

    /// Reads [`Position::encode`]'s text; the error says what is wrong with it.
    pub(crate) fn decode(text: &str) -> Result<Self, String> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not a scan position: {e}"))?;
        let items = value
            .get("items")
            .and_then(Value::as_u64)
            .ok_or("a scan position without an item count")?;
        let after = match value.get("after") {
            None | Some(Value::Null) => None,
            Some(Value::Object(key)) => Some(
                key.iter()
                    .map(|(name, value)| Ok((name.clone(), key_value_from_json(name, value)?)))
                    .collect::<Result<Item, String>>()?,
            ),
            Some(_) => return Err("a scan position whose key is not an object".into()),
        };
        Ok(Self { items, after })
    }
}

/// A key attribute (`S`, `N` or `B`; other types cannot be keys) in DynamoDB's JSON form.
fn key_value_to_json(value: &TableValue) -> Value {
    let (tag, text) = match value {
        TableValue::S(s) => ("S", s.clone()),
        TableValue::N(n) => ("N", n.clone()),
        TableValue::B(b) => ("B", aws_smithy_types::base64::encode(b.as_ref())),
        // Not a key type: kept as its debug text, refused when read back.
        other => ("?", format!("{other:?}")),
    };
    let mut object = Map::new();
    object.insert(tag.to_owned(), Value::String(text));
    Value::Object(object)
}

fn key_value_from_json(name: &str, value: &Value) -> Result<TableValue, String> {
    let bad = || format!("key attribute {name:?} of a scan position is not S, N or B");
    let (tag, text) = value
        .as_object()
        .and_then(|o| o.iter().next())
        .and_then(|(tag, text)| Some((tag.as_str(), text.as_str()?)))
        .ok_or_else(bad)?;
    match tag {
        "S" => Ok(TableValue::S(text.to_owned())),
        "N" => Ok(TableValue::N(text.to_owned())),
        "B" => aws_smithy_types::base64::decode(text)
            .map(|bytes| TableValue::B(bytes.into()))
            .map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A scanned value in the streams SDK's type (the two SDKs have separate but identical
/// `AttributeValue` types), so snapshot changes decode and print like stream records.
/// `None` for a type this SDK version does not know.
pub(crate) fn to_stream_value(value: &TableValue) -> Option<StreamValue> {
    Some(match value {
        TableValue::S(s) => StreamValue::S(s.clone()),
        TableValue::N(n) => StreamValue::N(n.clone()),
        TableValue::B(b) => StreamValue::B(b.clone()),
        TableValue::Bool(b) => StreamValue::Bool(*b),
        TableValue::Null(n) => StreamValue::Null(*n),
        TableValue::Ss(v) => StreamValue::Ss(v.clone()),
        TableValue::Ns(v) => StreamValue::Ns(v.clone()),
        TableValue::Bs(v) => StreamValue::Bs(v.clone()),
        TableValue::L(items) => {
            StreamValue::L(items.iter().map(to_stream_value).collect::<Option<_>>()?)
        }
        TableValue::M(map) => StreamValue::M(to_stream_item(map)?),
        _ => return None,
    })
}

/// A scanned item in the streams SDK's type; `None` if an attribute has an unknown type.
pub(crate) fn to_stream_item(item: &Item) -> Option<HashMap<String, StreamValue>> {
    item.iter()
        .map(|(name, value)| Some((name.clone(), to_stream_value(value)?)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_with_every_key_type() {
        for after in [
            None,
            Some(Item::from([(
                "id".to_owned(),
                TableValue::S("a\"b".into()),
            )])),
            Some(Item::from([
                ("pk".to_owned(), TableValue::N("-12.5".into())),
                ("sk".to_owned(), TableValue::B(vec![0u8, 255, 7].into())),
            ])),
        ] {
            let position = Position { items: 42, after };
            assert_eq!(Position::decode(&position.encode()).unwrap(), position);
        }
    }

    #[test]
    fn a_damaged_position_is_an_error_not_a_restart() {
        assert!(Position::decode("{\"after\":null}").is_err());
        assert!(Position::decode("{\"items\":1,\"after\":{\"id\":{\"M\":\"x\"}}}").is_err());
        assert!(Position::decode("nonsense").is_err());
    }

    #[test]
    fn nested_items_convert_between_the_sdks() {
        let item = Item::from([(
            "doc".to_owned(),
            TableValue::M(HashMap::from([(
                "list".to_owned(),
                TableValue::L(vec![
                    TableValue::Bool(true),
                    TableValue::Ns(vec!["1".into()]),
                ]),
            )])),
        )]);
        let converted = to_stream_item(&item).unwrap();
        let StreamValue::M(doc) = &converted["doc"] else {
            panic!("not a map")
        };
        assert_eq!(
            doc["list"],
            StreamValue::L(vec![
                StreamValue::Bool(true),
                StreamValue::Ns(vec!["1".into()])
            ])
        );
    }
}
