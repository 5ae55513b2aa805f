//! Tables of items in process memory that the in-memory store's transactions write to
//! ([`InMemoryLeaseStore::checkpoint_with_writes`](crate::InMemoryLeaseStore)), with
//! `TransactWriteItems`' semantics: every write's condition is checked first and all of
//! them apply or none; two writes on one item are refused; a refused write is named by its
//! position with DynamoDB's cancellation code.
//!
//! Expressions are evaluated for a subset of DynamoDB's syntax, enough for tests:
//! conditions `attribute_exists(p)`, `attribute_not_exists(p)`, `p = :v`, `p <> :v`
//! joined by `AND`; updates `SET p = :v, ...`, `ADD p :n, ...` (numbers) and
//! `REMOVE p, ...`. `p` is an attribute name or a `#name` placeholder. Anything else is
//! refused as a `ValidationError` naming the expression, never guessed at.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem};

/// An item (or a key).
pub type Item = HashMap<String, AttributeValue>;

#[derive(Debug, Default)]
pub(crate) struct ItemTables {
    tables: BTreeMap<String, Table>,
}

#[derive(Debug)]
struct Table {
    key_attributes: Vec<String>,
    /// Items by their key's canonical text.
    items: BTreeMap<String, Item>,
}

/// What one write of a transaction does to one item.
pub(crate) struct Planned {
    table: String,
    key: String,
    /// The item after the write (`None`: deleted, or unchanged for a condition check).
    after: Option<Item>,
    writes: bool,
}

/// The expression placeholders of one write.
struct Placeholders<'a> {
    names: Option<&'a HashMap<String, String>>,
    values: Option<&'a HashMap<String, AttributeValue>>,
}

impl Placeholders<'_> {
    fn name(&self, path: &str) -> Result<String, String> {
        let path = path.trim();
        if let Some(alias) = path.strip_prefix('#') {
            return self
                .names
                .and_then(|names| names.get(path))
                .cloned()
                .ok_or_else(|| format!("ValidationError: the name #{alias} is not defined"));
        }
        if path.is_empty() || !path.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return Err(format!(
                "ValidationError: the in-memory store does not evaluate the path {path:?}"
            ));
        }
        Ok(path.to_owned())
    }

    fn value(&self, placeholder: &str) -> Result<AttributeValue, String> {
        let placeholder = placeholder.trim();
        self.values
            .and_then(|values| values.get(placeholder))
            .cloned()
            .ok_or_else(|| format!("ValidationError: the value {placeholder} is not defined"))
    }
}

impl ItemTables {
    /// Creates `table` with these key attributes (partition key first); an existing table
    /// keeps its items.
    pub(crate) fn create(&mut self, table: &str, key_attributes: Vec<String>) {
        self.tables
            .entry(table.to_owned())
            .or_insert_with(|| Table {
                key_attributes,
                items: BTreeMap::new(),
            });
    }

    pub(crate) fn key_attributes(&self, table: &str) -> Option<Vec<String>> {
        self.tables.get(table).map(|t| t.key_attributes.clone())
    }

    /// The item with `key` in `table`, if both exist.
    pub(crate) fn get(&self, table: &str, key: &Item) -> Option<Item> {
        let table = self.tables.get(table)?;
        let key = canonical_key(key, &table.key_attributes).ok()?;
        table.items.get(&key).cloned()
    }

    /// Every item of `table`, in key order.
    pub(crate) fn items(&self, table: &str) -> Vec<Item> {
        self.tables
            .get(table)
            .map(|t| t.items.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Checks `writes` as one transaction: `Ok` with what to apply, or DynamoDB's reason
    /// for each write (`None` for those that were fine) when one is refused.
    pub(crate) fn check(
        &self,
        writes: &[TransactWriteItem],
    ) -> Result<Vec<Planned>, Vec<Option<String>>> {
        let mut planned = Vec::with_capacity(writes.len());
        let mut reasons = Vec::with_capacity(writes.len());
        let mut refused = false;
        for write in writes {
            match self.plan(write) {
                Ok(plan) => {
                    let twice = planned
                        .iter()
                        .any(|p: &Planned| p.table == plan.table && p.key == plan.key);
                    if twice {
                        refused = true;
                        reasons.push(Some(
                            "ValidationError: two actions on one item in a transaction".into(),
                        ));
                    } else {
                        reasons.push(None);
                    }
                    planned.push(plan);
                }
                Err(reason) => {
                    refused = true;
                    reasons.push(Some(reason));
                }
            }
        }
        if refused { Err(reasons) } else { Ok(planned) }
    }

    /// Applies what [`check`](Self::check) accepted (under the same lock).
    pub(crate) fn apply(&mut self, planned: Vec<Planned>) {
        for plan in planned.into_iter().filter(|p| p.writes) {
            let Some(table) = self.tables.get_mut(&plan.table) else {
                continue;
            };
            match plan.after {
                Some(item) => table.items.insert(plan.key, item),
                None => table.items.remove(&plan.key),
            };
        }
    }

    fn plan(&self, write: &TransactWriteItem) -> Result<Planned, String> {
        let (table_name, key_or_item, condition, names, values) = if let Some(put) = write.put() {
            (
                put.table_name(),
                put.item(),
                put.condition_expression(),
                put.expression_attribute_names(),
                put.expression_attribute_values(),
            )
        } else if let Some(update) = write.update() {
            (
                update.table_name(),
                update.key(),
                update.condition_expression(),
                update.expression_attribute_names(),
                update.expression_attribute_values(),
            )
        } else if let Some(delete) = write.delete() {
            (
                delete.table_name(),
                delete.key(),
                delete.condition_expression(),
                delete.expression_attribute_names(),
                delete.expression_attribute_values(),
            )
        } else if let Some(check) = write.condition_check() {
            (
                check.table_name(),
                check.key(),
                Some(check.condition_expression()),
                check.expression_attribute_names(),
                check.expression_attribute_values(),
            )
        } else {
            return Err("ValidationError: an empty TransactWriteItem".into());
        };
        let table = self
            .tables
            .get(table_name)
            .ok_or_else(|| format!("ResourceNotFound: table {table_name:?}"))?;
        let key = canonical_key(key_or_item, &table.key_attributes)?;
        let before = table.items.get(&key);
        let placeholders = Placeholders { names, values };
        if let Some(condition) = condition
            && !holds(condition, before, &placeholders)?
        {
            return Err("ConditionalCheckFailed".into());
        }
        let (after, writes) = if let Some(put) = write.put() {
            (Some(put.item().clone()), true)
        } else if let Some(update) = write.update() {
            let mut item = before.cloned().unwrap_or_else(|| update.key().clone());
            apply_update(update.update_expression(), &mut item, &placeholders)?;
            (Some(item), true)
        } else if write.delete().is_some() {
            (None, true)
        } else {
            (None, false)
        };
        Ok(Planned {
            table: table_name.to_owned(),
            key,
            after,
            writes,
        })
    }
}

/// The canonical text of the key attributes of `item` (`a=S("x"),b=N("1")`).
fn canonical_key(item: &Item, key_attributes: &[String]) -> Result<String, String> {
    let mut text = String::new();
    for name in key_attributes {
        let value = item
            .get(name)
            .ok_or_else(|| format!("ValidationError: the key lacks the attribute {name:?}"))?;
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(&format!("{name}={value:?}"));
    }
    Ok(text)
}

/// Whether `condition` holds for `item` (`None`: no such item).
fn holds(condition: &str, item: Option<&Item>, p: &Placeholders<'_>) -> Result<bool, String> {
    let unsupported = || {
        format!(
            "ValidationError: the in-memory store does not evaluate the condition {condition:?}"
        )
    };
    for term in split_keyword(condition, "AND") {
        let term = term.trim();
        let function = |name: &str| {
            term.strip_prefix(name)
                .map(str::trim_start)
                .and_then(|rest| rest.strip_prefix('('))
                .and_then(|rest| rest.strip_suffix(')'))
        };
        let ok = if let Some(path) = function("attribute_not_exists") {
            let name = p.name(path)?;
            item.is_none_or(|item| !item.contains_key(&name))
        } else if let Some(path) = function("attribute_exists") {
            let name = p.name(path)?;
            item.is_some_and(|item| item.contains_key(&name))
        } else if let Some((path, value)) = term.split_once("<>") {
            let (name, value) = (p.name(path)?, p.value(value)?);
            item.and_then(|item| item.get(&name)) != Some(&value)
        } else if let Some((path, value)) = term.split_once('=') {
            let (name, value) = (p.name(path)?, p.value(value)?);
            item.and_then(|item| item.get(&name)) == Some(&value)
        } else {
            return Err(unsupported());
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `text` split on a keyword (case-insensitive, as a whole word).
fn split_keyword<'a>(text: &'a str, keyword: &str) -> Vec<&'a str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let words: Vec<(usize, &str)> = text
        .split_whitespace()
        .map(|w| (w.as_ptr() as usize - text.as_ptr() as usize, w))
        .collect();
    for (at, word) in words {
        if word.eq_ignore_ascii_case(keyword) {
            parts.push(&text[start..at]);
            start = at + word.len();
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Applies an update expression's `SET`, `ADD` and `REMOVE` clauses to `item`.
fn apply_update(expression: &str, item: &mut Item, p: &Placeholders<'_>) -> Result<(), String> {
    let unsupported = || {
        format!("ValidationError: the in-memory store does not evaluate the update {expression:?}")
    };
    // Clauses start at the keywords SET, ADD and REMOVE.
    let mut clauses: Vec<(&str, String)> = Vec::new();
    for word in expression.split_whitespace() {
        let upper = word.to_ascii_uppercase();
        if matches!(upper.as_str(), "SET" | "ADD" | "REMOVE") {
            clauses.push((
                match upper.as_str() {
                    "SET" => "SET",
                    "ADD" => "ADD",
                    _ => "REMOVE",
                },
                String::new(),
            ));
        } else if let Some((_, body)) = clauses.last_mut() {
            body.push(' ');
            body.push_str(word);
        } else {
            return Err(unsupported());
        }
    }
    for (clause, body) in clauses {
        for action in body.split(',') {
            match clause {
                "SET" => {
                    let (path, value) = action.split_once('=').ok_or_else(unsupported)?;
                    item.insert(p.name(path)?, p.value(value)?);
                }
                "ADD" => {
                    let mut words = action.split_whitespace();
                    let (Some(path), Some(value), None) =
                        (words.next(), words.next(), words.next())
                    else {
                        return Err(unsupported());
                    };
                    let name = p.name(path)?;
                    let AttributeValue::N(add) = p.value(value)? else {
                        return Err(unsupported());
                    };
                    let number = |text: &str| text.parse::<i128>().map_err(|_| unsupported());
                    let sum = match item.get(&name) {
                        None => number(&add)?,
                        Some(AttributeValue::N(old)) => number(old)? + number(&add)?,
                        Some(_) => {
                            return Err(format!(
                                "ValidationError: ADD to {name:?}, which is not a number"
                            ));
                        }
                    };
                    item.insert(name, AttributeValue::N(sum.to_string()));
                }
                _ => {
                    item.remove(&p.name(action)?);
                }
            }
        }
    }
    Ok(())
}
