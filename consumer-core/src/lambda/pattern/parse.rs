//! A filter pattern's JSON read into its types, with Lambda's limits; every error names the
//! JSON path of what is wrong.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{
    Comparison, Exclusion, FilterPattern, MAX_PATTERN_CHARS, Matcher, Node, ObjectPattern,
    PatternError,
};

/// The magnitude limit of numbers in `numeric` matchers (EventBridge's).
const MAX_NUMERIC: f64 = 5.0e9;

/// How many plain patterns one pattern may stand for once every `$or` is expanded.
const MAX_COMBINATIONS: u64 = 1000;

impl FilterPattern {
    /// Parses a pattern. Errors name the JSON path of what is wrong.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.chars().count() > MAX_PATTERN_CHARS {
            return Err(error(
                "$",
                format!(
                    "the pattern is longer than Lambda's limit of {MAX_PATTERN_CHARS} characters"
                ),
            ));
        }
        let raw: Raw =
            serde_json::from_str(text).map_err(|e| error("$", format!("not valid JSON: {e}")))?;
        let root = ObjectPattern::parse(raw, "$")?;
        let combinations = root.combinations();
        if combinations > MAX_COMBINATIONS {
            return Err(error(
                "$",
                format!(
                    "the pattern stands for {combinations} combinations once every \"$or\" is \
                     expanded; the limit is {MAX_COMBINATIONS}"
                ),
            ));
        }
        Ok(Self { root })
    }
}

fn error(path: &str, problem: impl Into<String>) -> PatternError {
    PatternError {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

const OPERATORS: &str = "prefix, suffix, equals-ignore-case, anything-but, numeric, exists, cidr";

impl ObjectPattern {
    fn parse(raw: Raw, path: &str) -> Result<Self, PatternError> {
        let Raw::Object(entries) = raw else {
            return Err(error(path, "expected an object of fields"));
        };
        if entries.is_empty() {
            return Err(error(
                path,
                "an empty pattern: name at least one field (leave the pattern out to keep every record)",
            ));
        }
        let mut pattern = ObjectPattern {
            fields: Vec::new(),
            any_of: Vec::new(),
        };
        for (name, value) in entries {
            let here = field_path(path, &name);
            if name == "$or" {
                let Raw::Array(options) = value else {
                    return Err(error(&here, "\"$or\" needs an array of patterns"));
                };
                if options.len() < 2 {
                    return Err(error(&here, "\"$or\" needs at least two patterns"));
                }
                let options = options
                    .into_iter()
                    .enumerate()
                    .map(|(i, option)| ObjectPattern::parse(option, &format!("{here}[{i}]")))
                    .collect::<Result<_, _>>()?;
                pattern.any_of.push(options);
                continue;
            }
            let node = match value {
                Raw::Array(items) => Node::Leaf(parse_matchers(items, &here)?),
                object @ Raw::Object(_) => Node::Object(ObjectPattern::parse(object, &here)?),
                _ => {
                    return Err(error(
                        &here,
                        "a field's matchers must be in an array, e.g. [\"value\"]",
                    ));
                }
            };
            pattern.add_field(name, node, &here)?;
        }
        Ok(pattern)
    }

    /// Adds a field; a field given twice is merged (objects) or refused (leaves).
    fn add_field(&mut self, name: String, node: Node, path: &str) -> Result<(), PatternError> {
        let Some((_, existing)) = self.fields.iter_mut().find(|(n, _)| *n == name) else {
            self.fields.push((name, node));
            return Ok(());
        };
        match (existing, node) {
            (Node::Object(existing), Node::Object(more)) => {
                for (name, node) in more.fields {
                    let here = field_path(path, &name);
                    existing.add_field(name, node, &here)?;
                }
                existing.any_of.extend(more.any_of);
                Ok(())
            }
            _ => Err(error(path, "the field is given twice")),
        }
    }

    fn combinations(&self) -> u64 {
        let nested = self.fields.iter().map(|(_, node)| match node {
            Node::Object(object) => object.combinations(),
            Node::Leaf(_) => 1,
        });
        let ors = self
            .any_of
            .iter()
            .map(|options| options.iter().map(Self::combinations).sum::<u64>());
        nested.chain(ors).fold(1, u64::saturating_mul)
    }
}

fn field_path(path: &str, name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-');
    if plain {
        format!("{path}.{name}")
    } else {
        format!("{path}[{}]", Value::String(name.to_owned()))
    }
}

fn parse_matchers(items: Vec<Raw>, path: &str) -> Result<Vec<Matcher>, PatternError> {
    if items.is_empty() {
        return Err(error(path, "an empty list of matchers matches nothing"));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| Matcher::parse(item, &format!("{path}[{i}]")))
        .collect()
}

impl Matcher {
    fn parse(raw: Raw, path: &str) -> Result<Self, PatternError> {
        let entries = match raw {
            Raw::Object(entries) => entries,
            Raw::Array(_) => return Err(error(path, "a matcher cannot be an array")),
            scalar => return Ok(Matcher::Exact(scalar.into_value())),
        };
        let [(operator, operand)]: [(String, Raw); 1] = entries.try_into().map_err(|_| {
            error(
                path,
                format!("a matcher object has exactly one operator ({OPERATORS})"),
            )
        })?;
        let here = field_path(path, &operator);
        match operator.as_str() {
            "prefix" | "suffix" => {
                let (text, ignore_case) = match operand {
                    Raw::String(text) => (text, false),
                    Raw::Object(inner) => (equals_ignore_case_inside(inner, &here)?, true),
                    _ => {
                        return Err(error(
                            &here,
                            "needs a string, or {\"equals-ignore-case\": string}",
                        ));
                    }
                };
                Ok(if operator == "prefix" {
                    Matcher::Prefix { text, ignore_case }
                } else {
                    Matcher::Suffix { text, ignore_case }
                })
            }
            "equals-ignore-case" => match operand {
                Raw::String(text) => Ok(Matcher::EqualsIgnoreCase(text)),
                _ => Err(error(&here, "needs a string")),
            },
            "anything-but" => Exclusion::parse(operand, &here).map(Matcher::AnythingBut),
            "numeric" => parse_numeric(operand, &here),
            "exists" => match operand {
                Raw::Bool(exists) => Ok(Matcher::Exists(exists)),
                _ => Err(error(&here, "needs true or false")),
            },
            "cidr" => match operand {
                Raw::String(text) => parse_cidr(&text, &here),
                _ => Err(error(&here, "needs a string such as \"10.0.0.0/24\"")),
            },
            other => Err(error(
                &here,
                format!("unknown operator {other:?}; Lambda's are {OPERATORS}"),
            )),
        }
    }
}

fn equals_ignore_case_inside(
    inner: Vec<(String, Raw)>,
    path: &str,
) -> Result<String, PatternError> {
    match <[(String, Raw); 1]>::try_from(inner) {
        Ok([(name, Raw::String(text))]) if name == "equals-ignore-case" => Ok(text),
        _ => Err(error(
            path,
            "needs a string, or {\"equals-ignore-case\": string}",
        )),
    }
}

impl Exclusion {
    fn parse(operand: Raw, path: &str) -> Result<Self, PatternError> {
        let scalar = |raw: Raw, path: &str| match raw {
            Raw::String(_) | Raw::Number(_) => Ok(raw.into_value()),
            _ => Err(error(path, "anything-but takes strings or numbers")),
        };
        match operand {
            Raw::Array(items) if items.is_empty() => {
                Err(error(path, "an empty list excludes nothing"))
            }
            Raw::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| scalar(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()
                .map(Exclusion::Values),
            Raw::Object(entries) => {
                let [(operator, inner)]: [(String, Raw); 1] = entries.try_into().map_err(|_| {
                    error(path, "needs one of prefix, suffix or equals-ignore-case")
                })?;
                let here = field_path(path, &operator);
                match (operator.as_str(), inner) {
                    ("prefix", Raw::String(p)) => Ok(Exclusion::Prefix(p)),
                    ("suffix", Raw::String(s)) => Ok(Exclusion::Suffix(s)),
                    ("equals-ignore-case", Raw::String(s)) => Ok(Exclusion::IgnoringCase(vec![s])),
                    ("equals-ignore-case", Raw::Array(items)) if !items.is_empty() => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| match item {
                            Raw::String(s) => Ok(s),
                            _ => Err(error(&format!("{here}[{i}]"), "needs a string")),
                        })
                        .collect::<Result<_, _>>()
                        .map(Exclusion::IgnoringCase),
                    ("prefix" | "suffix" | "equals-ignore-case", _) => {
                        Err(error(&here, "needs a string"))
                    }
                    (other, _) => Err(error(
                        &here,
                        format!(
                            "anything-but takes prefix, suffix or equals-ignore-case, not {other:?}"
                        ),
                    )),
                }
            }
            other => Ok(Exclusion::Values(vec![scalar(other, path)?])),
        }
    }
}

impl Comparison {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "=" => Self::Eq,
            "<" => Self::Lt,
            "<=" => Self::Le,
            ">" => Self::Gt,
            ">=" => Self::Ge,
            _ => return None,
        })
    }

    fn is_lower(self) -> bool {
        matches!(self, Self::Gt | Self::Ge)
    }

    fn is_upper(self) -> bool {
        matches!(self, Self::Lt | Self::Le)
    }
}

/// `[op, n]` or `[lower-op, a, upper-op, b]`.
fn parse_numeric(operand: Raw, path: &str) -> Result<Matcher, PatternError> {
    let usage = "needs [op, number] or a range [\">\" or \">=\", a, \"<\" or \"<=\", b]; ops: =, <, <=, >, >=";
    let Raw::Array(items) = operand else {
        return Err(error(path, usage));
    };
    if items.len() != 2 && items.len() != 4 {
        return Err(error(path, usage));
    }
    let mut bounds = Vec::new();
    let mut items = items.into_iter().enumerate();
    while let (Some((i, op)), Some((j, number))) = (items.next(), items.next()) {
        let op = match op {
            Raw::String(text) => Comparison::parse(&text),
            _ => None,
        }
        .ok_or_else(|| error(&format!("{path}[{i}]"), "not an operator (=, <, <=, >, >=)"))?;
        let here = format!("{path}[{j}]");
        let Raw::Number(number) = number else {
            return Err(error(&here, "needs a number"));
        };
        let value = number
            .as_f64()
            .filter(|v| v.abs() <= MAX_NUMERIC)
            .ok_or_else(|| error(&here, "numbers must be between -5.0e9 and 5.0e9"))?;
        bounds.push((op, value));
    }
    if let [(first, low), (second, high)] = bounds[..] {
        if !(first.is_lower() && second.is_upper()) {
            return Err(error(
                path,
                "a range is a lower bound (> or >=) then an upper bound (< or <=)",
            ));
        }
        if low > high {
            return Err(error(
                path,
                "the range is empty: its lower bound exceeds its upper bound",
            ));
        }
    }
    Ok(Matcher::Numeric(bounds))
}

fn parse_cidr(text: &str, path: &str) -> Result<Matcher, PatternError> {
    let bad = || {
        error(
            path,
            format!("{text:?} is not an IP range such as \"10.0.0.0/24\" or \"2001:db8::/32\""),
        )
    };
    let (address, length) = text.split_once('/').ok_or_else(bad)?;
    let network: IpAddr = address.parse().map_err(|_| bad())?;
    let prefix_len: u8 = length.parse().map_err(|_| bad())?;
    let max = if network.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(bad());
    }
    Ok(Matcher::Cidr {
        network,
        prefix_len,
    })
}

/// JSON as written, objects keeping every entry (a field may be given twice).
#[derive(Debug)]
enum Raw {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Raw>),
    Object(Vec<(String, Raw)>),
}

impl Raw {
    /// A scalar as a JSON value (containers never get here).
    fn into_value(self) -> Value {
        match self {
            Raw::Null => Value::Null,
            Raw::Bool(b) => Value::Bool(b),
            Raw::Number(n) => Value::Number(n),
            Raw::String(s) => Value::String(s),
            Raw::Array(_) | Raw::Object(_) => Value::Null,
        }
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Raw, E> {
        Ok(Raw::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Raw, E> {
        Ok(Raw::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Raw, E> {
        Ok(Raw::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Raw, E> {
        Ok(Raw::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Raw, E> {
        serde_json::Number::from_f64(n)
            .map(Raw::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Raw, E> {
        Ok(Raw::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Raw, E> {
        Ok(Raw::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Raw::Object(entries))
    }
}
