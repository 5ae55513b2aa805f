//! What DynamoDB bills for the lease table: item sizes computed by DynamoDB's rules for the
//! items [`crate::DynamoDbLeaseStore`] writes, and the read and write units an access to
//! them costs. Used by the cost model (`dynamodb-streams-consumer`'s `lease_cost` example) to price
//! counted calls as the bill would, not as a count of calls.
//!
//! Rules (DynamoDB developer guide, "Item sizes and formats" and "Read/write capacity
//! mode"): an item's size is the UTF-8 length of each attribute name plus its value
//! (strings by UTF-8 length, numbers about one byte per two significant digits plus one,
//! lists and maps 3 bytes plus their elements plus one byte per element). A write costs one
//! unit per started KB of the larger of the item before and after (a failed conditional
//! write too); a strongly consistent read one unit per started 4 KB, an eventually
//! consistent one half that; Scan sums the items of each page (up to 1 MB) before rounding.

use aws_sdk_dynamodb::types::AttributeValue;

use crate::dynamodb::item::{encode_coordination, encode_inbox, encode_lease, encode_membership};
use crate::lease::Lease;
use crate::membership::{Coordination, Notice, WorkerRecord};

/// Read units are counted in halves (eventually consistent reads cost half a unit per
/// 4 KB), so they are reported as `f64`.
pub type ReadUnits = f64;

/// DynamoDB's item size limit (400 KB).
pub const MAX_ITEM_BYTES: usize = 400 * 1024;

/// The largest page a Scan returns before it rounds its read units.
pub const SCAN_PAGE_BYTES: usize = 1024 * 1024;

/// The size DynamoDB bills for a lease item as the DynamoDB store writes it.
pub fn lease_item_size(lease: &Lease) -> usize {
    item_size(encode_lease(lease).iter())
}

/// The size DynamoDB bills for membership item `shard` holding `workers`.
pub fn membership_item_size(shard: u16, workers: &[WorkerRecord]) -> usize {
    item_size(encode_membership(shard, workers).iter())
}

/// The size DynamoDB bills for the coordination item holding `coordination`.
pub fn coordination_item_size(coordination: &Coordination) -> usize {
    item_size(encode_coordination(coordination).iter())
}

/// The size DynamoDB bills for `worker_id`'s inbox holding `notices`.
pub fn inbox_item_size(worker_id: &str, notices: &[Notice]) -> usize {
    item_size(encode_inbox(worker_id, notices).iter())
}

/// Write units of a write to an item of `bytes` (the larger of before and after).
pub fn write_units(bytes: usize) -> u64 {
    bytes.div_ceil(1024).max(1) as u64
}

/// Read units of a GetItem of an item of `bytes`.
pub fn read_units(bytes: usize, consistent: bool) -> ReadUnits {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// Read units of a Scan returning items of these sizes: summed per 1 MB page, then rounded.
pub fn scan_read_units(sizes: impl IntoIterator<Item = usize>, consistent: bool) -> ReadUnits {
    let mut units = 0.0;
    let mut page = 0usize;
    for size in sizes {
        if page + size > SCAN_PAGE_BYTES && page > 0 {
            units += read_units(page, consistent);
            page = 0;
        }
        page += size;
    }
    units + read_units(page, consistent)
}

fn item_size<'a>(attributes: impl Iterator<Item = (&'a String, &'a AttributeValue)>) -> usize {
    attributes
        .map(|(name, value)| name.len() + value_size(value))
        .sum()
}

/// The size DynamoDB counts for one attribute value (also used to size transactions).
pub(crate) fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(text) => text.len(),
        AttributeValue::N(number) => {
            let digits = number
                .trim_start_matches('-')
                .trim_start_matches('0')
                .chars()
                .filter(char::is_ascii_digit)
                .count();
            digits.div_ceil(2) + 1
        }
        AttributeValue::B(bytes) => bytes.as_ref().len(),
        AttributeValue::L(items) => 3 + items.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::Ss(items) => items.iter().map(String::len).sum(),
        AttributeValue::Ns(items) => items
            .iter()
            .map(|n| value_size(&AttributeValue::N(n.clone())))
            .sum(),
        _ => 1,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{Checkpoint, LeaseKey, SequenceNumber, WorkerRecord};
    use std::time::{Duration, SystemTime};

    #[test]
    fn units_round_up_per_kb_and_per_4_kb() {
        assert_eq!(write_units(1), 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(100, false), 0.5);
        // 1,000 items of 300 bytes: 300,000 bytes in one page, 74 units (not 1,000).
        assert_eq!(scan_read_units(std::iter::repeat_n(300, 1000), true), 74.0);
        // Pages round separately: 3 MB in 1 MB pages.
        assert_eq!(
            scan_read_units(std::iter::repeat_n(1024, 3 * 1024), true),
            768.0
        );
    }

    #[test]
    fn a_lease_item_is_a_few_hundred_bytes_and_a_membership_item_grows_with_its_workers() {
        let arn =
            "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000";
        let mut lease = Lease::new(
            LeaseKey::new(arn, "shardId-00000001700000000000-0123abcd"),
            Checkpoint::At(SequenceNumber::parse("1".repeat(30)).unwrap()),
            vec!["shardId-00000001690000000000-4567ef01".into()],
        );
        lease.owner = Some("worker-7#19abc0123ff0".into());
        let size = lease_item_size(&lease);
        assert!((300..600).contains(&size), "{size}");
        let worker = |i: usize| WorkerRecord {
            worker_id: format!("worker-{i}#19abc0123ff0"),
            heartbeat: 12_345,
            updated_at: SystemTime::now(),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        };
        let one = membership_item_size(0, &[worker(1)]);
        let full: Vec<WorkerRecord> = (0..crate::MEMBERS_PER_SHARD as usize).map(worker).collect();
        let most = membership_item_size(0, &full);
        assert!(one < 200, "{one}");
        // A full membership item stays far under DynamoDB's limit (and a few KB).
        assert!(most < 8 * 1024, "{most}");
        let coordination = coordination_item_size(&crate::Coordination {
            leases_version: 123_456,
            leader: Some(crate::LeaderRecord {
                worker_id: "worker-1#19abc0123ff0".into(),
                heartbeat: 99,
            }),
            workers: 1000,
            shards: (0..crate::MEMBERSHIP_SHARDS).collect(),
        });
        assert!(coordination < 1024, "{coordination}");
    }
}
