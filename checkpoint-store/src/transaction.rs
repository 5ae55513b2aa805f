//! Fitting a shard's staged DynamoDB writes into transactions that commit with its
//! checkpoint (the exactly-once path, [`crate::LeaseStore::checkpoint_with_writes`]).
//!
//! DynamoDB's `TransactWriteItems` takes at most [`MAX_ACTIONS`] actions and
//! [`MAX_BYTES`] of data, and refuses two actions on one item. Writes are staged per record
//! (a stream record's sequence number); [`split`] cuts them into transactions only at record
//! boundaries, so each transaction's checkpoint is the last record whose writes it holds and
//! a checkpoint never covers a record whose writes are not committed. A record whose writes
//! cannot fit in one transaction on their own is refused, naming the shard and record.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};

use crate::billing::value_size;
use crate::error::{Error, Result};
use crate::lease::LeaseKey;
use crate::sequence::SequenceNumber;

/// The most actions one `TransactWriteItems` takes (the service's limit).
pub const MAX_ACTIONS: usize = 100;
/// The most data one `TransactWriteItems` carries (the service's limit).
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Room left in every transaction for the lease's checkpoint update: one action and a
/// generous estimate of its size.
const CHECKPOINT_ACTIONS: usize = 1;
const CHECKPOINT_BYTES: usize = 4 * 1024;

/// The DynamoDB writes of one record, staged during `process`.
#[derive(Clone, Debug, PartialEq)]
pub struct StagedWrites {
    /// The record the writes belong to.
    pub sequence_number: SequenceNumber,
    /// Its writes, in order.
    pub writes: Vec<TransactWriteItem>,
}

/// One transaction to commit: writes of whole records, and the checkpoint at the last of
/// them.
#[derive(Clone, Debug, PartialEq)]
pub struct Transaction {
    /// The last record whose writes are in this transaction.
    pub checkpoint: SequenceNumber,
    /// The records whose writes it holds, in order (the checkpoint update is not among
    /// them: the store adds it).
    pub records: Vec<StagedWrites>,
}

impl Transaction {
    /// Every write, in record order: what the store sends with the checkpoint.
    pub fn writes(&self) -> Vec<TransactWriteItem> {
        self.records
            .iter()
            .flat_map(|record| record.writes.iter().cloned())
            .collect()
    }

    /// How many writes it holds.
    pub fn write_count(&self) -> usize {
        self.records.iter().map(|record| record.writes.len()).sum()
    }
}

/// The tables whose `Put`s need their key schema to tell which item they write: pass
/// [`crate::LeaseStore::key_attribute_names`] of each to [`split`].
pub fn put_tables<'a>(staged: impl IntoIterator<Item = &'a TransactWriteItem>) -> HashSet<String> {
    staged
        .into_iter()
        .filter_map(|write| write.put().map(|put| put.table_name().to_owned()))
        .collect()
}

/// Checks that one record's writes fit in a transaction on their own (with the checkpoint):
/// at most `MAX_ACTIONS - 1` writes, at most `MAX_BYTES` less the checkpoint's room, each
/// item written once. `key_names` must hold the key attributes of every table a `Put`
/// writes to (see [`put_tables`]).
pub fn check_record(
    lease: &LeaseKey,
    record: &StagedWrites,
    key_names: &HashMap<String, Vec<String>>,
) -> Result<()> {
    measure(lease, record, key_names).map(|_| ())
}

/// Cuts `staged` (in record order) into as few transactions as the limits allow, each
/// ending at a record boundary. Records without writes are skipped (they need no
/// transaction). Fails, naming the shard and record, when one record alone does not fit.
pub fn split(
    lease: &LeaseKey,
    staged: Vec<StagedWrites>,
    key_names: &HashMap<String, Vec<String>>,
) -> Result<Vec<Transaction>> {
    let write_limit = MAX_ACTIONS - CHECKPOINT_ACTIONS;
    let byte_limit = MAX_BYTES - CHECKPOINT_BYTES;
    let mut transactions = Vec::new();
    let mut current: Option<Transaction> = None;
    let mut bytes = 0;
    let mut items: HashSet<ItemId> = HashSet::new();
    for record in staged {
        if record.writes.is_empty() {
            continue;
        }
        let (record_bytes, record_items) = measure(lease, &record, key_names)?;
        let fits = current.as_ref().is_some_and(|t| {
            t.write_count() + record.writes.len() <= write_limit
                && bytes + record_bytes <= byte_limit
                && items.is_disjoint(&record_items)
        });
        if !fits {
            transactions.extend(current.take());
            bytes = 0;
            items.clear();
        }
        let transaction = current.get_or_insert_with(|| Transaction {
            checkpoint: record.sequence_number.clone(),
            records: Vec::new(),
        });
        transaction.checkpoint = record.sequence_number.clone();
        transaction.records.push(record);
        bytes += record_bytes;
        items.extend(record_items);
    }
    transactions.extend(current);
    Ok(transactions)
}

/// Which item a write touches: its table and its key, as text (attribute names sorted).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ItemId {
    table: String,
    key: String,
}

/// The size and items of one record's writes, or why they cannot be one transaction's.
fn measure(
    lease: &LeaseKey,
    record: &StagedWrites,
    key_names: &HashMap<String, Vec<String>>,
) -> Result<(usize, HashSet<ItemId>)> {
    let refuse = |problem: String| Error::TransactionTooLarge {
        key: lease.clone(),
        sequence_number: record.sequence_number.clone(),
        problem,
    };
    let write_limit = MAX_ACTIONS - CHECKPOINT_ACTIONS;
    if record.writes.len() > write_limit {
        return Err(refuse(format!(
            "it has {} writes; a transaction holds {write_limit} besides the checkpoint",
            record.writes.len()
        )));
    }
    let mut bytes = 0;
    // Each item and the first write touching it. Errors name writes by position and
    // tables by name, never key values: they end up in logs and dead-letter items.
    let mut items: HashMap<ItemId, usize> = HashMap::new();
    for (i, write) in record.writes.iter().enumerate() {
        bytes += write_size(write);
        let id =
            item_of(write, key_names).map_err(|problem| refuse(format!("write {i}: {problem}")))?;
        if let Some(first) = items.get(&id) {
            return Err(refuse(format!(
                "write {i} touches the same item of table {:?} as write {first}; DynamoDB allows one action per item in a transaction",
                id.table
            )));
        }
        items.insert(id, i);
    }
    let byte_limit = MAX_BYTES - CHECKPOINT_BYTES;
    if bytes > byte_limit {
        return Err(refuse(format!(
            "its writes are about {bytes} bytes; a transaction holds {byte_limit} besides the checkpoint"
        )));
    }
    Ok((bytes, items.into_keys().collect()))
}

/// The table a write goes to (`None` for an empty `TransactWriteItem`).
pub fn table_of(write: &TransactWriteItem) -> Option<&str> {
    if let Some(put) = write.put() {
        Some(put.table_name())
    } else if let Some(update) = write.update() {
        Some(update.table_name())
    } else if let Some(delete) = write.delete() {
        Some(delete.table_name())
    } else {
        write.condition_check().map(|check| check.table_name())
    }
}

/// The item a write touches. A `Put` names it through the table's key attributes.
fn item_of(
    write: &TransactWriteItem,
    key_names: &HashMap<String, Vec<String>>,
) -> std::result::Result<ItemId, String> {
    let table =
        table_of(write).ok_or("it is neither a Put, an Update, a Delete nor a ConditionCheck")?;
    let key = if let Some(update) = write.update() {
        Some(update.key())
    } else if let Some(delete) = write.delete() {
        Some(delete.key())
    } else {
        write.condition_check().map(|check| check.key())
    };
    let key: Vec<(&String, &AttributeValue)> = match (key, write.put()) {
        (Some(key), _) => key.iter().collect(),
        (None, Some(put)) => {
            let names = key_names
                .get(table)
                .ok_or_else(|| format!("the key schema of table {table:?} is not known"))?;
            names
                .iter()
                .map(|name| {
                    put.item().get_key_value(name).ok_or_else(|| {
                        format!("the Put into {table:?} lacks key attribute {name:?}")
                    })
                })
                .collect::<std::result::Result<_, _>>()?
        }
        (None, None) => Vec::new(),
    };
    let mut key = key;
    key.sort_by(|a, b| a.0.cmp(b.0));
    let text = key
        .iter()
        .map(|(name, value)| format!("{name}={value:?}"))
        .collect::<Vec<_>>()
        .join(",");
    Ok(ItemId {
        table: table.to_owned(),
        key: text,
    })
}

/// About what a write adds to the transaction's size: its table name, key or item,
/// expressions and expression values (DynamoDB's item-size rules for the values).
fn write_size(write: &TransactWriteItem) -> usize {
    fn attributes(map: Option<&HashMap<String, AttributeValue>>) -> usize {
        map.map_or(0, |map| {
            map.iter()
                .map(|(name, value)| name.len() + value_size(value))
                .sum()
        })
    }
    fn names(map: Option<&HashMap<String, String>>) -> usize {
        map.map_or(0, |map| map.iter().map(|(k, v)| k.len() + v.len()).sum())
    }
    let text = |s: Option<&str>| s.map_or(0, str::len);
    if let Some(put) = write.put() {
        put.table_name().len()
            + attributes(Some(put.item()))
            + text(put.condition_expression())
            + names(put.expression_attribute_names.as_ref())
            + attributes(put.expression_attribute_values.as_ref())
    } else if let Some(update) = write.update() {
        update.table_name().len()
            + attributes(Some(update.key()))
            + update.update_expression().len()
            + text(update.condition_expression())
            + names(update.expression_attribute_names.as_ref())
            + attributes(update.expression_attribute_values.as_ref())
    } else if let Some(delete) = write.delete() {
        delete.table_name().len()
            + attributes(Some(delete.key()))
            + text(delete.condition_expression())
            + names(delete.expression_attribute_names.as_ref())
            + attributes(delete.expression_attribute_values.as_ref())
    } else if let Some(check) = write.condition_check() {
        check.table_name().len()
            + attributes(Some(check.key()))
            + check.condition_expression().len()
            + names(check.expression_attribute_names.as_ref())
            + attributes(check.expression_attribute_values.as_ref())
    } else {
        0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::types::{Put, Update};

    fn seq(n: u64) -> SequenceNumber {
        SequenceNumber::parse(format!("{n:021}")).unwrap()
    }

    fn lease() -> LeaseKey {
        LeaseKey::new("arn:stream", "shard-7")
    }

    fn update(table: &str, id: &str) -> TransactWriteItem {
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(table)
                    .key("id", AttributeValue::S(id.into()))
                    .update_expression("SET n = :n")
                    .expression_attribute_values(":n", AttributeValue::N("1".into()))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn put(table: &str, id: &str, padding: usize) -> TransactWriteItem {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(table)
                    .item("id", AttributeValue::S(id.into()))
                    .item("pad", AttributeValue::S("x".repeat(padding)))
                    .build()
                    .unwrap(),
            )
            .build()
    }

    fn record(n: u64, writes: Vec<TransactWriteItem>) -> StagedWrites {
        StagedWrites {
            sequence_number: seq(n),
            writes,
        }
    }

    fn keys() -> HashMap<String, Vec<String>> {
        HashMap::from([("T2".to_owned(), vec!["id".to_owned()])])
    }

    /// (checkpoint, number of writes) of each transaction.
    fn shape(transactions: &[Transaction]) -> Vec<(SequenceNumber, usize)> {
        transactions
            .iter()
            .map(|t| (t.checkpoint.clone(), t.writes().len()))
            .collect()
    }

    #[test]
    fn records_share_a_transaction_until_the_action_limit_and_split_only_between_records() {
        // 30 records of 4 writes each: 24 records (96 writes) fit besides the checkpoint.
        let staged: Vec<StagedWrites> = (1..=30)
            .map(|n| {
                record(
                    n,
                    (0..4).map(|i| update("T2", &format!("{n}-{i}"))).collect(),
                )
            })
            .collect();
        let transactions = split(&lease(), staged, &keys()).unwrap();
        assert_eq!(shape(&transactions), [(seq(24), 96), (seq(30), 24)]);
    }

    #[test]
    fn exactly_99_writes_fit_with_the_checkpoint_and_100_do_not() {
        let writes = |n: usize| (0..n).map(|i| update("T2", &i.to_string())).collect();
        let fits = split(&lease(), vec![record(1, writes(99))], &keys()).unwrap();
        assert_eq!(shape(&fits), [(seq(1), 99)]);
        let err = split(&lease(), vec![record(5, writes(100))], &keys()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("shard-7")
                && text.contains(seq(5).as_str())
                && text.contains("100 writes"),
            "{text}"
        );
    }

    #[test]
    fn an_item_written_again_starts_a_new_transaction() {
        let staged = vec![
            record(1, vec![update("T2", "a"), update("T2", "b")]),
            record(2, vec![update("T2", "c")]),
            // `a` again: DynamoDB refuses two actions on one item in one transaction.
            record(3, vec![put("T2", "a", 1)]),
            // Same key in another table is another item.
            record(4, vec![update("T3", "a")]),
        ];
        let transactions = split(&lease(), staged, &keys()).unwrap();
        assert_eq!(shape(&transactions), [(seq(2), 3), (seq(4), 2)]);
    }

    #[test]
    fn one_record_touching_an_item_twice_is_refused_without_naming_key_values() {
        let err = check_record(
            &lease(),
            &record(
                9,
                vec![
                    update("T2", "other"),
                    update("T2", "customer-4711"),
                    put("T2", "customer-4711", 1),
                ],
            ),
            &keys(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("write 2 touches the same item of table \"T2\" as write 1"),
            "{text}"
        );
        // The error goes to logs and the dead-letter item's `error` field.
        assert!(!text.contains("customer-4711"), "{text}");
    }

    #[test]
    fn a_put_into_a_table_of_unknown_key_schema_is_refused() {
        let err = check_record(&lease(), &record(9, vec![put("T9", "a", 1)]), &keys()).unwrap_err();
        assert!(
            err.to_string().contains("key schema of table \"T9\""),
            "{err}"
        );
    }

    #[test]
    fn the_size_limit_splits_between_records_and_refuses_a_record_too_big_alone() {
        let mb = 1024 * 1024;
        let staged = vec![
            record(1, vec![put("T2", "a", mb)]),
            record(2, vec![put("T2", "b", mb)]),
            record(3, vec![put("T2", "c", mb)]),
            // A fourth MB does not fit beside the checkpoint's room.
            record(4, vec![put("T2", "d", mb)]),
        ];
        let transactions = split(&lease(), staged, &keys()).unwrap();
        assert_eq!(shape(&transactions), [(seq(3), 3), (seq(4), 1)]);
        let big: Vec<TransactWriteItem> = (0..5).map(|i| put("T2", &i.to_string(), mb)).collect();
        let err = split(&lease(), vec![record(6, big)], &keys()).unwrap_err();
        assert!(err.to_string().contains("bytes"), "{err}");
    }

    #[test]
    fn records_without_writes_need_no_transaction() {
        let staged = vec![
            record(1, vec![]),
            record(2, vec![update("T2", "a")]),
            record(3, vec![]),
        ];
        let transactions = split(&lease(), staged, &keys()).unwrap();
        assert_eq!(shape(&transactions), [(seq(2), 1)]);
        assert!(split(&lease(), vec![], &keys()).unwrap().is_empty());
    }
}
