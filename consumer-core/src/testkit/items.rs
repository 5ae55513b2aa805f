//! Items and keys of simulated tables, and the deterministic hashing that routes keys.
//!
//! A key is identified by a canonical string of its key attributes in key-schema order
//! (`pk=S("a")`), which is stable across runs, unlike the iteration order of a `HashMap`;
//! FNV-1a over that string picks the key's shard family.

use std::collections::HashMap;

use aws_sdk_dynamodbstreams::types::AttributeValue;

/// An item or a key, as the streams SDK represents them.
pub type Item = HashMap<String, AttributeValue>;

/// A key (or item) with one string attribute: `string_key("pk", "a")`.
pub fn string_key(attribute: &str, value: &str) -> Item {
    HashMap::from([(attribute.to_owned(), AttributeValue::S(value.to_owned()))])
}

/// The key attributes of `item` and their canonical form, or the first missing attribute.
pub(crate) fn key_of(item: &Item, key_attributes: &[String]) -> Result<(Item, String), String> {
    let mut keys = Item::new();
    let mut canonical = String::new();
    for attribute in key_attributes {
        let Some(value) = item.get(attribute) else {
            return Err(attribute.clone());
        };
        if !canonical.is_empty() {
            canonical.push(',');
        }
        canonical.push_str(&format!("{attribute}={value:?}"));
        keys.insert(attribute.clone(), value.clone());
    }
    Ok((keys, canonical))
}

/// 64-bit FNV-1a.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A fresh 64-bit value from a previous one (splitmix64): the hash for the next level of
/// a shard family, so the two children of a split each get about half of the keys.
pub(crate) fn remix(hash: u64) -> u64 {
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks one of `n` slots for `hash` (`n` must be positive; zero yields slot 0).
pub(crate) fn slot(hash: u64, n: usize) -> usize {
    let n = u64::try_from(n.max(1)).unwrap_or(u64::MAX);
    usize::try_from(hash % n).unwrap_or(0)
}

/// An estimate of an item's size in bytes, in the spirit of DynamoDB's item size rules
/// (attribute names plus values).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::Bool(_) | AttributeValue::Null(_) => 1,
        AttributeValue::Ss(v) | AttributeValue::Ns(v) => v.iter().map(String::len).sum(),
        AttributeValue::Bs(v) => v.iter().map(|b| b.as_ref().len()).sum(),
        AttributeValue::L(v) => 3 + v.iter().map(|x| 1 + value_size(x)).sum::<usize>(),
        AttributeValue::M(m) => 3 + item_size(m) + m.len(),
        _ => 1,
    }
}
