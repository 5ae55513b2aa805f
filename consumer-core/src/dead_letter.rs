//! The built-in on-failure handler: a DynamoDB table of dead letters, one item per record.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use dynamodb_streams_leases::aws::{AwsClients, error_message, wait_until_table_active};
use tokio::sync::OnceCell;

use crate::error::BoxError;
use crate::failure::{FailedRecords, FailureHandler, sequence_text};

/// How long a new dead-letter table may take to become ACTIVE.
const TABLE_DEADLINE: Duration = Duration::from_secs(60);

/// A DynamoDB table that keeps the records the framework gave up on.
///
/// Created (on-demand billing, string key `pk`) on first use if absent. One item per
/// record, key `{stream}|{shard}|{sequence number}` (snapshot records: their item keys
/// instead of the sequence number; a record handed over twice is
/// one item): `reason`, `stream`, `shard`, `sequence_number`, `table`, `event`, `keys`
/// (the item's key attributes, to find it again), `error` (no item values) and
/// `failed_at` (Unix seconds). Images are not copied: they may hold personal data.
#[derive(Debug)]
pub struct DeadLetterTable {
    client: aws_sdk_dynamodb::Client,
    /// Named in error messages.
    endpoint: String,
    table: String,
    ready: OnceCell<()>,
}

impl DeadLetterTable {
    /// A dead-letter table named `table`, reached with `sdk_config`.
    pub fn new(sdk_config: &aws_types::SdkConfig, table: impl Into<String>) -> Self {
        let clients = AwsClients::from_sdk_config(sdk_config);
        Self {
            client: clients.dynamodb().clone(),
            endpoint: clients.endpoint().to_owned(),
            table: table.into(),
            ready: OnceCell::new(),
        }
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Creates the table if it does not exist and waits until it is ACTIVE.
    pub async fn ensure_table(&self) -> Result<(), BoxError> {
        self.ready
            .get_or_try_init(|| async {
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name("pk")
                            .attribute_type(ScalarAttributeType::S)
                            .build()?,
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name("pk")
                            .key_type(KeyType::Hash)
                            .build()?,
                    )
                    .send()
                    .await;
                match created {
                    Ok(_) => {}
                    Err(e) if e.code() == Some("ResourceInUseException") => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot create dead-letter table {:?}: {}",
                            self.table,
                            error_message(&e, &self.endpoint)
                        )
                        .into());
                    }
                }
                wait_until_table_active(&self.client, &self.table, TABLE_DEADLINE).await?;
                Ok::<(), BoxError>(())
            })
            .await
            .map(|_| ())
    }
}

/// `{stream}|{shard}|{sequence number}`, so a record handed over twice is one item. A
/// snapshot record has no sequence number: its item's keys (already stored in `keys`)
/// tell the items of one segment apart instead.
fn dead_letter_key(
    failed: &FailedRecords,
    seq: Option<&str>,
    keys: &HashMap<String, AttributeValue>,
) -> String {
    let prefix = format!("{}|{}", failed.stream_arn, failed.shard_id);
    if let Some(seq) = seq {
        return format!("{prefix}|{seq}");
    }
    let sorted: BTreeMap<&String, &AttributeValue> = keys.iter().collect();
    let rendered: Vec<String> = sorted
        .into_iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect();
    format!("{prefix}|keys:{}", rendered.join(","))
}

#[async_trait]
impl FailureHandler for DeadLetterTable {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        self.ensure_table().await?;
        let failed_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        for record in &failed.records {
            let seq = sequence_text(record);
            let seq_text = seq.unwrap_or("unknown");
            let keys: HashMap<String, AttributeValue> = record
                .dynamodb()
                .and_then(|d| d.keys.clone())
                .map(|keys| serde_dynamo::Item::from(keys).into())
                .unwrap_or_default();
            let s = |v: &str| AttributeValue::S(v.to_owned());
            let mut item = HashMap::from([
                ("pk".to_owned(), s(&dead_letter_key(failed, seq, &keys))),
                ("reason".to_owned(), s(failed.reason.as_str())),
                ("stream".to_owned(), s(&failed.stream_arn)),
                ("shard".to_owned(), s(&failed.shard_id)),
                ("sequence_number".to_owned(), s(seq_text)),
                ("error".to_owned(), s(&failed.error)),
                ("keys".to_owned(), AttributeValue::M(keys)),
                (
                    "failed_at".to_owned(),
                    AttributeValue::N(failed_at.to_string()),
                ),
            ]);
            if let Some(table) = &failed.table {
                item.insert("table".to_owned(), s(table));
            }
            if let Some(event) = record.event_name() {
                item.insert("event".to_owned(), s(event.as_str()));
            }
            self.client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "cannot write record {seq_text} of shard {} to dead-letter table {:?}: {}",
                        failed.shard_id,
                        self.table,
                        error_message(&e, &self.endpoint)
                    )
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureReason;

    fn failed() -> FailedRecords {
        FailedRecords {
            table: None,
            stream_arn: "arn:stream".into(),
            shard_id: "snapshot-0-of-2".into(),
            reason: FailureReason::Undecodable,
            error: "bad".into(),
            records: Vec::new(),
        }
    }

    #[test]
    fn records_are_keyed_by_sequence_number_or_else_by_item_keys() {
        let keys = |id: &str| {
            HashMap::from([
                ("pk".to_owned(), AttributeValue::S(id.to_owned())),
                ("sk".to_owned(), AttributeValue::N("1".to_owned())),
            ])
        };
        let failed = failed();
        assert_eq!(
            dead_letter_key(&failed, Some("42"), &keys("a")),
            "arn:stream|snapshot-0-of-2|42"
        );
        let a = dead_letter_key(&failed, None, &keys("a"));
        let b = dead_letter_key(&failed, None, &keys("b"));
        assert_ne!(
            a, b,
            "two snapshot items of one segment must not share a dead letter"
        );
        assert_eq!(a, dead_letter_key(&failed, None, &keys("a")));
    }
}
