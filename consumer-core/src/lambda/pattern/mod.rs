//! Lambda's event filtering patterns (the EventBridge pattern language), parsed once and
//! matched against records in Lambda's JSON shape ([`super::event`]).
//!
//! A pattern names fields of the record; each leaf is a list of matchers, any of which may
//! match (OR), and every field named must match (AND):
//!
//! ```text
//! {"eventName": ["INSERT", "MODIFY"],
//!  "dynamodb": {"NewImage": {"status": {"S": [{"anything-but": ["draft"]}]}}}}
//! ```
//!
//! Matchers: exact values (string, number, boolean, `null`; `""` is the empty string),
//! `{"prefix": s}` and `{"suffix": s}` (each also `{"equals-ignore-case": s}` inside),
//! `{"equals-ignore-case": s}`, `{"anything-but": value | [values] | {"prefix"|"suffix": s} |
//! {"equals-ignore-case": s | [s]}}`, `{"numeric": [op, n]}` or a range
//! `{"numeric": [">", a, "<=", b]}` (ops `=`, `<`, `<=`, `>`, `>=`), `{"exists": bool}`,
//! `{"cidr": "10.0.0.0/24"}` (IPv4 or IPv6); and `"$or": [pattern, ...]` beside fields at
//! any level.
//!
//! How a record is matched (EventBridge's rules, which Lambda follows):
//! - The values at a field path are its leaves: arrays are looked into (a matcher on
//!   `dynamodb.NewImage.tags.SS` matches when any element does), objects are not leaves. So
//!   `exists` works on leaves only: `{"Organizations": [{"exists": true}]}` never matches an
//!   attribute (an object `{"L": …}`); write `{"Organizations": {"L": {"S": [{"exists":
//!   true}]}}}`.
//! - `anything-but`, `prefix`, `numeric` and the others match only a value that exists;
//!   `{"exists": false}` matches when the path has no leaf.
//! - Strings compare exactly, character by character. Numbers compare by value. DynamoDB
//!   numbers are strings in the record (`{"N": "101"}`), so `numeric` never matches an
//!   attribute (Lambda's documentation says the same): match them as strings.
//! - A field given twice in one object (Lambda's own Boolean AND example repeats
//!   `"dynamodb"`) is merged; a leaf given twice is refused.
//!
//! Limits, as Lambda documents them: a pattern of at most 4,096 characters; numbers in
//! `numeric` between -5.0e9 and 5.0e9; at most 1,000 combinations once every `$or` is
//! expanded. [`super::FilterCriteria`] adds the limit on patterns per consumer.
//!
//! The pattern's types are here; `parse.rs` reads a pattern's JSON into them (checking
//! Lambda's limits, errors naming the JSON path), `matcher.rs` matches a record against them.

mod matcher;
mod parse;

use std::net::IpAddr;

use serde_json::Value;

/// The longest pattern Lambda accepts (the `Filter.Pattern` length constraint).
pub const MAX_PATTERN_CHARS: usize = 4096;

/// A pattern that could not be parsed: where, as a JSON path from `$`, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at {path}: {problem}")]
pub struct PatternError {
    /// The JSON path of what is wrong, e.g. `$.dynamodb.Keys.id.S[0].prefix`.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

/// One parsed filter pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct FilterPattern {
    root: ObjectPattern,
}

/// Fields that must all match, and `$or` groups of which one pattern each must match.
#[derive(Clone, Debug, PartialEq)]
struct ObjectPattern {
    fields: Vec<(String, Node)>,
    any_of: Vec<Vec<ObjectPattern>>,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Object(ObjectPattern),
    Leaf(Vec<Matcher>),
}

#[derive(Clone, Debug, PartialEq)]
enum Matcher {
    Exact(Value),
    Prefix { text: String, ignore_case: bool },
    Suffix { text: String, ignore_case: bool },
    EqualsIgnoreCase(String),
    AnythingBut(Exclusion),
    Numeric(Vec<(Comparison, f64)>),
    Exists(bool),
    Cidr { network: IpAddr, prefix_len: u8 },
}

#[derive(Clone, Debug, PartialEq)]
enum Exclusion {
    Values(Vec<Value>),
    Prefix(String),
    Suffix(String),
    IgnoringCase(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Comparison {
    Eq,
    Lt,
    Le,
    Gt,
    Ge,
}
