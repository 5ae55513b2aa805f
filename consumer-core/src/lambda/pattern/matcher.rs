//! A record in Lambda's JSON shape matched against a parsed pattern (EventBridge's rules,
//! as the module above describes them).

use std::net::IpAddr;

use serde_json::Value;

use super::{Comparison, Exclusion, FilterPattern, Matcher, Node, ObjectPattern};

impl FilterPattern {
    /// Whether `event` (a record in Lambda's JSON shape) matches.
    pub fn matches(&self, event: &Value) -> bool {
        self.root.matches(&[event])
    }
}

impl ObjectPattern {
    /// `contexts`: every value at this pattern's path (arrays looked into).
    fn matches(&self, contexts: &[&Value]) -> bool {
        self.fields.iter().all(|(name, node)| {
            let mut children = Vec::new();
            for context in contexts {
                if let Some(child) = context.get(name) {
                    flatten(child, &mut children);
                }
            }
            match node {
                Node::Object(object) => object.matches(&children),
                Node::Leaf(matchers) => {
                    let leaves: Vec<&Value> =
                        children.into_iter().filter(|v| !v.is_object()).collect();
                    matchers.iter().any(|m| m.matches(&leaves))
                }
            }
        }) && self
            .any_of
            .iter()
            .all(|options| options.iter().any(|option| option.matches(contexts)))
    }
}

/// `value`, or the elements of an array (recursively).
fn flatten<'a>(value: &'a Value, into: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, into)),
        other => into.push(other),
    }
}

impl Matcher {
    /// Whether this matcher accepts the leaves at its path.
    fn matches(&self, leaves: &[&Value]) -> bool {
        match self {
            Matcher::Exists(exists) => leaves.is_empty() != *exists,
            other => leaves.iter().any(|leaf| other.matches_value(leaf)),
        }
    }

    fn matches_value(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            Matcher::Exact(expected) => same_value(expected, value),
            Matcher::Prefix {
                text: p,
                ignore_case,
            } => text.is_some_and(|t| affix(t, p, *ignore_case, true)),
            Matcher::Suffix {
                text: s,
                ignore_case,
            } => text.is_some_and(|t| affix(t, s, *ignore_case, false)),
            Matcher::EqualsIgnoreCase(expected) => {
                text.is_some_and(|t| t.to_lowercase() == expected.to_lowercase())
            }
            Matcher::AnythingBut(exclusion) => !exclusion.excludes(value),
            Matcher::Numeric(bounds) => value
                .as_f64()
                .filter(|_| value.is_number())
                .is_some_and(|n| bounds.iter().all(|(op, bound)| op.holds(n, *bound))),
            Matcher::Exists(_) => true,
            Matcher::Cidr {
                network,
                prefix_len,
            } => text
                .and_then(|t| t.parse::<IpAddr>().ok())
                .is_some_and(|ip| in_network(ip, *network, *prefix_len)),
        }
    }
}

fn affix(text: &str, affix: &str, ignore_case: bool, prefix: bool) -> bool {
    let (text, affix) = if ignore_case {
        (text.to_lowercase(), affix.to_lowercase())
    } else {
        (text.to_owned(), affix.to_owned())
    };
    if prefix {
        text.starts_with(&affix)
    } else {
        text.ends_with(&affix)
    }
}

/// Strings, booleans and null by equality; numbers by value.
fn same_value(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

impl Exclusion {
    fn excludes(&self, value: &Value) -> bool {
        let text = value.as_str();
        match self {
            Exclusion::Values(values) => values.iter().any(|v| same_value(v, value)),
            Exclusion::Prefix(p) => text.is_some_and(|t| t.starts_with(p.as_str())),
            Exclusion::Suffix(s) => text.is_some_and(|t| t.ends_with(s.as_str())),
            Exclusion::IgnoringCase(values) => text.is_some_and(|t| {
                let t = t.to_lowercase();
                values.iter().any(|v| v.to_lowercase() == t)
            }),
        }
    }
}

impl Comparison {
    fn holds(self, n: f64, bound: f64) -> bool {
        match self {
            Self::Eq => n == bound,
            Self::Lt => n < bound,
            Self::Le => n <= bound,
            Self::Gt => n > bound,
            Self::Ge => n >= bound,
        }
    }
}

fn in_network(ip: IpAddr, network: IpAddr, prefix_len: u8) -> bool {
    let (ip, network, bits) = match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u128::from(u32::from(a)), u128::from(u32::from(n)), 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    let shift = bits - u32::from(prefix_len);
    if shift >= 128 {
        return true;
    }
    (ip >> shift) == (network >> shift)
}
