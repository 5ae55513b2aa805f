//! Behaviour of the simulated stream, checked through the same `StreamsApi` the consumer
//! uses.
//!
//! The workspace's tokio has no `test-util` feature (no paused time), so these tests age
//! the simulation with [`SimulatedStream::advance_clock`]; both clocks feed the same
//! `tokio::time::Instant` arithmetic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record, StreamViewType};
use dynamodb_streams_leases::SequenceNumber;
use serde::Serialize;

use super::*;
use crate::streams::{ApiErrorKind, StartPosition, StreamsApi};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const HOUR: Duration = Duration::from_secs(60 * 60);

fn key(pk: &str) -> Item {
    string_key("pk", pk)
}

fn item(pk: &str, v: i64) -> Item {
    let mut item = key(pk);
    item.insert("v".to_owned(), AttributeValue::N(v.to_string()));
    item
}

fn seq(record: &Record) -> SequenceNumber {
    let text = record.dynamodb().unwrap().sequence_number().unwrap();
    SequenceNumber::parse(text).unwrap()
}

fn pk_of(record: &Record) -> String {
    match record
        .dynamodb()
        .unwrap()
        .keys()
        .unwrap()
        .get("pk")
        .unwrap()
    {
        AttributeValue::S(s) => s.clone(),
        other => panic!("unexpected key {other:?}"),
    }
}

fn kind<T: std::fmt::Debug>(result: Result<T, crate::streams::ApiError>) -> ApiErrorKind {
    result.unwrap_err().kind
}

fn only_shard(sim: &SimulatedStream, arn: &str) -> String {
    let shards = sim.open_shards(arn).unwrap();
    assert_eq!(shards.len(), 1);
    shards[0].shard_id.clone()
}

/// Reads a shard from `position` until shard end or an empty page; returns the records
/// and the page sizes, and whether the shard ended.
async fn drain(
    sim: &SimulatedStream,
    arn: &str,
    shard: &str,
    position: StartPosition,
    limit: u32,
) -> (Vec<Record>, Vec<usize>, bool) {
    let mut iterator = Some(sim.shard_iterator(arn, shard, &position).await.unwrap());
    let (mut records, mut pages) = (Vec::new(), Vec::new());
    while let Some(it) = iterator {
        let page = sim.get_records(&it, limit).await.unwrap();
        pages.push(page.records.len());
        let empty = page.records.is_empty();
        records.extend(page.records);
        iterator = page.next_iterator;
        if empty && iterator.is_some() {
            return (records, pages, false);
        }
    }
    (records, pages, true)
}

#[tokio::test]
async fn records_come_back_in_order_across_pages() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("orders");
    let shard = only_shard(&sim, &arn);
    let written: Vec<_> = (0..10)
        .map(|i| {
            sim.put("orders", item(&format!("k{i}"), i))
                .unwrap()
                .unwrap()
        })
        .collect();

    let (records, pages, ended) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 3).await;
    assert_eq!(
        pages,
        vec![3, 3, 3, 1, 0],
        "an open shard at its tip gives an empty page"
    );
    assert!(!ended, "an open shard never ends");
    let got: Vec<_> = records.iter().map(seq).collect();
    let want: Vec<_> = written.iter().map(|w| w.sequence_number.clone()).collect();
    assert_eq!(got, want);
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(sim.records(&arn, &shard).unwrap(), records);
}

#[tokio::test]
async fn page_size_is_capped_by_config() {
    let sim = SimulatedStream::new(SimConfig {
        max_records_per_page: 4,
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    for i in 0..9 {
        sim.put("t", item("a", i)).unwrap();
    }
    let (_, pages, _) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 1000).await;
    assert_eq!(pages, vec![4, 4, 1, 0]);
}

#[tokio::test]
async fn sequence_numbers_exceed_u64_and_increase() {
    let sim = SimulatedStream::with_seed(1);
    sim.add_table("t");
    let seqs: Vec<_> = (0..5)
        .map(|i| sim.put("t", item("a", i)).unwrap().unwrap().sequence_number)
        .collect();
    for s in &seqs {
        assert!(s.as_str().len() >= 21);
        assert!(
            s.as_str().parse::<u64>().is_err(),
            "{s} must not fit in u64"
        );
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn writes_emit_insert_modify_remove_with_images() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);

    let insert = sim.put("t", item("a", 1)).unwrap().unwrap();
    assert_eq!(insert.event_name, OperationType::Insert);
    assert_eq!(insert.shard_id, shard);
    assert_eq!(insert.key, r#"pk=S("a")"#);
    assert!(
        sim.put("t", item("a", 1)).unwrap().is_none(),
        "no record for no change"
    );
    let modify = sim.put("t", item("a", 2)).unwrap().unwrap();
    assert_eq!(modify.event_name, OperationType::Modify);
    let mut extra = key("a");
    extra.insert("w".to_owned(), AttributeValue::Bool(true));
    sim.update("t", extra).unwrap().unwrap();
    assert_eq!(
        sim.item("t", &key("a")).unwrap().unwrap().len(),
        3,
        "update merges"
    );
    let remove = sim.delete("t", key("a")).unwrap().unwrap();
    assert_eq!(remove.event_name, OperationType::Remove);
    assert!(
        sim.delete("t", key("a")).unwrap().is_none(),
        "nothing to delete"
    );
    assert!(sim.item("t", &key("a")).unwrap().is_none());

    let records = sim.records(&arn, &shard).unwrap();
    assert_eq!(records.len(), 4);
    let r = &records[0];
    assert_eq!(r.event_id(), Some(insert.event_id.as_str()));
    assert_eq!(r.event_version(), Some("1.1"));
    assert_eq!(r.event_source(), Some("aws:dynamodb"));
    assert!(r.aws_region().is_some());
    assert!(r.user_identity().is_none());
    let d = r.dynamodb().unwrap();
    assert_eq!(d.keys(), Some(&key("a")));
    assert_eq!(d.new_image(), Some(&item("a", 1)));
    assert_eq!(d.old_image(), None);
    assert_eq!(d.stream_view_type(), Some(&StreamViewType::NewAndOldImages));
    assert!(d.size_bytes().unwrap() > 0);
    assert_eq!(
        d.approximate_creation_date_time().unwrap().secs(),
        1_700_000_000
    );
    let m = records[1].dynamodb().unwrap();
    assert_eq!(m.old_image(), Some(&item("a", 1)));
    assert_eq!(m.new_image(), Some(&item("a", 2)));
    let rm = records[3].dynamodb().unwrap();
    assert_eq!(records[3].event_name(), Some(&OperationType::Remove));
    assert_eq!(rm.new_image(), None);
    assert_eq!(rm.old_image().unwrap().len(), 3);
    let ids: BTreeSet<_> = records.iter().map(|r| r.event_id().unwrap()).collect();
    assert_eq!(ids.len(), 4, "event ids are unique");
}

#[tokio::test]
async fn view_types_filter_images() {
    let sim = SimulatedStream::with_seed(1);
    let cases = [
        (StreamViewType::KeysOnly, false, false),
        (StreamViewType::NewImage, true, false),
        (StreamViewType::OldImage, false, true),
        (StreamViewType::NewAndOldImages, true, true),
    ];
    for (view, with_new, with_old) in cases {
        let table = view.as_str().to_owned();
        let arn = sim
            .add_table_with(&table, TableSpec::new("pk").with_view_type(view.clone()))
            .unwrap();
        sim.put(&table, item("a", 1)).unwrap();
        sim.put(&table, item("a", 2)).unwrap();
        let shard = only_shard(&sim, &arn);
        let records = sim.records(&arn, &shard).unwrap();
        let modify = records[1].dynamodb().unwrap();
        assert_eq!(modify.keys(), Some(&key("a")), "{view:?}");
        assert_eq!(modify.new_image().is_some(), with_new, "{view:?}");
        assert_eq!(modify.old_image().is_some(), with_old, "{view:?}");
        assert_eq!(modify.stream_view_type(), Some(&view));
        let page = sim.describe_stream(&arn, None).await.unwrap();
        assert_eq!(page.view_type, Some(view));
        assert_eq!(page.table_name.as_deref(), Some(table.as_str()));
    }
}

#[tokio::test]
async fn sort_keys_are_part_of_the_key() {
    let sim = SimulatedStream::with_seed(1);
    sim.add_table_with("t", TableSpec::new("pk").with_sort_key("sk"));
    let mut a1 = key("a");
    a1.insert("sk".to_owned(), AttributeValue::N("1".to_owned()));
    let mut a2 = key("a");
    a2.insert("sk".to_owned(), AttributeValue::N("2".to_owned()));
    let w1 = sim.put("t", a1).unwrap().unwrap();
    let w2 = sim.put("t", a2).unwrap().unwrap();
    assert_eq!(w1.event_name, OperationType::Insert);
    assert_eq!(w2.event_name, OperationType::Insert);
    assert_eq!(w2.key, r#"pk=S("a"),sk=N("2")"#);
    assert_eq!(
        sim.put("t", key("a")),
        Err(SimError::MissingKey {
            table: "t".to_owned(),
            attribute: "sk".to_owned()
        })
    );
}

#[tokio::test]
async fn ttl_delete_carries_service_identity() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    sim.put("t", item("a", 1)).unwrap();
    let w = sim.delete_by_ttl("t", key("a")).unwrap().unwrap();
    assert!(w.by_ttl);
    assert_eq!(w.event_name, OperationType::Remove);
    let records = sim.records(&arn, &w.shard_id).unwrap();
    let identity = records[1].user_identity().unwrap();
    assert_eq!(identity.principal_id(), Some("dynamodb.amazonaws.com"));
    assert_eq!(identity.r#type(), Some("Service"));
}

#[tokio::test]
async fn serde_values_become_items() {
    #[derive(Serialize)]
    struct Order {
        pk: String,
        total: u32,
    }
    let sim = SimulatedStream::with_seed(1);
    sim.add_table("t");
    let order = Order {
        pk: "o1".to_owned(),
        total: 7,
    };
    sim.put_value("t", &order).unwrap().unwrap();
    let stored = sim.item("t", &key("o1")).unwrap().unwrap();
    assert_eq!(
        stored.get("total"),
        Some(&AttributeValue::N("7".to_owned()))
    );
    let err = sim.put_value("t", &5_u32).unwrap_err();
    assert!(matches!(err, SimError::NotAnItem { .. }), "{err}");
}

#[tokio::test]
async fn control_errors_name_what_is_missing() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    sim.add_table_without_stream("plain");
    assert!(matches!(
        sim.put("nope", item("a", 1)),
        Err(SimError::NoSuchTable { .. })
    ));
    assert!(matches!(
        sim.put("t", string_key("other", "a")),
        Err(SimError::MissingKey { .. })
    ));
    assert_eq!(
        sim.put("plain", item("a", 1)),
        Ok(None),
        "no stream, no record"
    );
    assert!(matches!(
        sim.split_shard("arn:nope", "shardId-x"),
        Err(SimError::NoSuchStream { .. })
    ));
    assert!(matches!(
        sim.rotate_shard(&arn, "shardId-x"),
        Err(SimError::NoSuchShard { .. })
    ));
    let shard = only_shard(&sim, &arn);
    sim.rotate_shard(&arn, &shard).unwrap();
    let err = sim.split_shard(&arn, &shard).unwrap_err();
    assert!(matches!(err, SimError::ShardClosed { .. }));
    assert!(err.to_string().contains(&shard), "{err}");
    assert_eq!(
        sim.add_table("t"),
        arn,
        "adding again returns the same stream"
    );
}

#[tokio::test]
async fn api_errors_are_classified() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    sim.add_table_without_stream("plain");
    let shard = only_shard(&sim, &arn);
    let w = sim.put("t", item("a", 1)).unwrap().unwrap();

    assert_eq!(sim.latest_stream_arn("t").await.unwrap(), arn);
    assert_eq!(
        kind(sim.latest_stream_arn("nope").await),
        ApiErrorKind::ResourceNotFound
    );
    assert_eq!(
        kind(sim.latest_stream_arn("plain").await),
        ApiErrorKind::StreamNotEnabled
    );
    assert_eq!(
        kind(sim.describe_stream("arn:nope", None).await),
        ApiErrorKind::ResourceNotFound
    );
    assert_eq!(
        kind(sim.child_shards(&arn, "shardId-x").await),
        ApiErrorKind::ResourceNotFound
    );
    let err = sim
        .shard_iterator(&arn, "shardId-x", &StartPosition::TrimHorizon)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::ResourceNotFound);
    assert!(err.resource.contains("shardId-x"), "{err}");
    assert_eq!(err.operation, "GetShardIterator");

    let beyond = SequenceNumber::parse("9".repeat(30)).unwrap();
    let below = SequenceNumber::parse("000000000000000000001").unwrap();
    let huge = SequenceNumber::parse("9".repeat(60)).unwrap();
    for seq in [beyond, below, huge] {
        for position in [
            StartPosition::AtSequenceNumber(seq.clone()),
            StartPosition::AfterSequenceNumber(seq.clone()),
        ] {
            assert_eq!(
                kind(sim.shard_iterator(&arn, &shard, &position).await),
                ApiErrorKind::InvalidRequest,
                "{position}"
            );
        }
    }
    let it = sim
        .shard_iterator(
            &arn,
            &shard,
            &StartPosition::AtSequenceNumber(w.sequence_number),
        )
        .await
        .unwrap();
    assert_eq!(
        kind(sim.get_records(&it, 0).await),
        ApiErrorKind::InvalidRequest
    );
    assert_eq!(
        kind(sim.get_records(&it, 1001).await),
        ApiErrorKind::InvalidRequest
    );
    assert_eq!(
        kind(sim.get_records("garbage", 10).await),
        ApiErrorKind::InvalidRequest
    );
    assert_eq!(sim.get_records(&it, 1000).await.unwrap().records.len(), 1);
    assert_eq!(
        sim.get_records(&it, 1000).await.unwrap().records.len(),
        1,
        "an iterator may be reused within its lifetime"
    );
}

#[tokio::test]
async fn at_and_after_position_exactly() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    let w: Vec<_> = (0..4)
        .map(|i| sim.put("t", item("a", i)).unwrap().unwrap())
        .collect();
    let at = StartPosition::AtSequenceNumber(w[1].sequence_number.clone());
    let (records, _, _) = drain(&sim, &arn, &shard, at, 100).await;
    assert_eq!(records.len(), 3);
    assert_eq!(seq(&records[0]), w[1].sequence_number);
    let after = StartPosition::AfterSequenceNumber(w[3].sequence_number.clone());
    let (records, _, _) = drain(&sim, &arn, &shard, after, 100).await;
    assert!(records.is_empty(), "after the last record: nothing yet");
}

#[tokio::test]
async fn latest_starts_after_the_last_record() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    sim.put("t", item("a", 1)).unwrap();
    let it = sim
        .shard_iterator(&arn, &shard, &StartPosition::Latest)
        .await
        .unwrap();
    let page = sim.get_records(&it, 100).await.unwrap();
    assert!(page.records.is_empty());
    let next = page.next_iterator.unwrap();
    let w = sim.put("t", item("b", 2)).unwrap().unwrap();
    let page = sim.get_records(&next, 100).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(seq(&page.records[0]), w.sequence_number);
}

#[tokio::test]
async fn shard_end_yields_no_next_iterator() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    for i in 0..3 {
        sim.put("t", item("a", i)).unwrap();
    }
    sim.rotate_shard(&arn, &shard).unwrap();

    let (records, pages, ended) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 3).await;
    assert_eq!((records.len(), pages, ended), (3, vec![3], true));
    let (_, pages, ended) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 2).await;
    assert_eq!((pages, ended), (vec![2, 1], true));
    let (_, pages, ended) = drain(&sim, &arn, &shard, StartPosition::Latest, 2).await;
    assert_eq!(
        (pages, ended),
        (vec![0], true),
        "LATEST on a closed shard is its end"
    );

    let info = &sim.all_shards(&arn).unwrap()[0];
    assert!(info.is_closed());
    assert_eq!(
        info.ending_sequence_number.as_ref(),
        Some(&seq(&records[2]))
    );
}

#[tokio::test]
async fn shard_end_after_an_empty_page_when_configured() {
    let sim = SimulatedStream::new(SimConfig {
        empty_page_before_shard_end: true,
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    for i in 0..3 {
        sim.put("t", item("a", i)).unwrap();
    }
    sim.rotate_shard(&arn, &shard).unwrap();
    let it = sim
        .shard_iterator(&arn, &shard, &StartPosition::TrimHorizon)
        .await
        .unwrap();
    let page = sim.get_records(&it, 10).await.unwrap();
    assert_eq!(page.records.len(), 3);
    let last = sim
        .get_records(&page.next_iterator.unwrap(), 10)
        .await
        .unwrap();
    assert!(last.records.is_empty());
    assert!(last.next_iterator.is_none());
}

#[tokio::test]
async fn empty_closed_shard_has_a_range_and_ends() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    let child = sim.rotate_shard(&arn, &shard).unwrap();
    let shards = sim.all_shards(&arn).unwrap();
    let (parent, child_info) = (&shards[0], &shards[1]);
    let start = parent.starting_sequence_number.clone().unwrap();
    let end = parent.ending_sequence_number.clone().unwrap();
    assert!(start <= end);
    assert!(child_info.starting_sequence_number.clone().unwrap() > end);
    assert_eq!(child_info.shard_id, child);
    let (records, pages, ended) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 10).await;
    assert_eq!((records.len(), pages, ended), (0, vec![0], true));
    let at_end = StartPosition::AfterSequenceNumber(end);
    assert!(drain(&sim, &arn, &shard, at_end, 10).await.2);
}

#[tokio::test]
async fn split_routes_the_parents_keys_to_its_children() {
    let sim = SimulatedStream::new(SimConfig {
        initial_shards: 2,
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let roots = sim.open_shards(&arn).unwrap();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let before: BTreeMap<String, String> = keys
        .iter()
        .map(|k| {
            (
                k.clone(),
                sim.put("t", item(k, 0)).unwrap().unwrap().shard_id,
            )
        })
        .collect();
    let split = &roots[0].shard_id;
    let untouched = &roots[1].shard_id;
    assert!(before.values().any(|s| s == split) && before.values().any(|s| s == untouched));
    let parent_end = sim.records(&arn, split).unwrap().last().map(seq).unwrap();

    let (left, right) = sim.split_shard(&arn, split).unwrap();
    let mut after = BTreeMap::new();
    for round in 1..=3 {
        for k in &keys {
            let w = sim.put("t", item(k, round)).unwrap().unwrap();
            assert!(w.sequence_number > parent_end);
            let shard = after.entry(k.clone()).or_insert_with(|| w.shard_id.clone());
            assert_eq!(*shard, w.shard_id, "{k} stays in one child");
        }
    }
    for k in &keys {
        if before[k] == *untouched {
            assert_eq!(after[k], *untouched);
        } else {
            assert!(
                after[k] == left || after[k] == right,
                "{k} went to {}",
                after[k]
            );
        }
    }
    let children: BTreeSet<_> = after.values().filter(|s| *s != untouched).collect();
    assert_eq!(children.len(), 2, "both children get keys");

    let infos = sim.all_shards(&arn).unwrap();
    for child in [&left, &right] {
        let info = infos.iter().find(|s| &s.shard_id == child).unwrap();
        assert_eq!(info.parent_shard_id.as_ref(), Some(split));
        assert!(info.starting_sequence_number.clone().unwrap() > parent_end);
        assert!(!info.is_closed());
    }
    let listed: Vec<_> = sim
        .child_shards(&arn, split)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    assert_eq!(listed, vec![left.clone(), right.clone()]);
    assert!(sim.child_shards(&arn, &left).await.unwrap().is_empty());
    assert_eq!(sim.open_shards(&arn).unwrap().len(), 3);

    // Reading parent then child gives every key's records in write order.
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for shard in [split, &left, &right, untouched] {
        let (records, _, _) = drain(&sim, &arn, shard, StartPosition::TrimHorizon, 7).await;
        for r in records {
            let v = match r.dynamodb().unwrap().new_image().unwrap().get("v").unwrap() {
                AttributeValue::N(n) => n.parse::<i64>().unwrap(),
                _ => unreachable!(),
            };
            seen.entry(pk_of(&r)).or_default().push(v);
        }
    }
    for k in &keys {
        assert_eq!(seen[k], vec![0, 1, 2, 3], "{k}");
    }
}

#[tokio::test]
async fn shard_ids_sort_in_creation_order() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let mut open = only_shard(&sim, &arn);
    for _ in 0..12 {
        open = sim.rotate_shard(&arn, &open).unwrap();
    }
    let ids: Vec<_> = sim
        .all_shards(&arn)
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    assert_eq!(ids.len(), 13);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(
        ids[0].starts_with("shardId-00000001700000000000-"),
        "{}",
        ids[0]
    );
}

#[tokio::test]
async fn trimming_hides_old_records() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    let old1 = sim.put("t", item("a", 1)).unwrap().unwrap();
    let old2 = sim.put("t", item("a", 2)).unwrap().unwrap();
    sim.advance_clock(12 * HOUR);
    let young = sim.put("t", item("a", 3)).unwrap().unwrap();
    sim.advance_clock(12 * HOUR + Duration::from_secs(1));

    let after_old1 = StartPosition::AfterSequenceNumber(old1.sequence_number.clone());
    assert_eq!(
        kind(sim.shard_iterator(&arn, &shard, &after_old1).await),
        ApiErrorKind::TrimmedDataAccess
    );
    let at_old2 = StartPosition::AtSequenceNumber(old2.sequence_number.clone());
    assert_eq!(
        kind(sim.shard_iterator(&arn, &shard, &at_old2).await),
        ApiErrorKind::TrimmedDataAccess
    );
    // After the last trimmed record nothing is lost.
    let after_old2 = StartPosition::AfterSequenceNumber(old2.sequence_number);
    let (records, _, _) = drain(&sim, &arn, &shard, after_old2, 10).await;
    assert_eq!(
        records.iter().map(seq).collect::<Vec<_>>(),
        vec![young.sequence_number.clone()]
    );
    let (records, _, _) = drain(&sim, &arn, &shard, StartPosition::TrimHorizon, 10).await;
    assert_eq!(
        records.iter().map(seq).collect::<Vec<_>>(),
        vec![young.sequence_number]
    );
    assert_eq!(
        sim.records(&arn, &shard).unwrap().len(),
        3,
        "history keeps trimmed records"
    );
}

#[tokio::test]
async fn an_iterator_whose_position_is_trimmed_fails() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    sim.put("t", item("a", 1)).unwrap();
    sim.advance_clock(DAY - Duration::from_secs(5 * 60));
    let it = sim
        .shard_iterator(&arn, &shard, &StartPosition::TrimHorizon)
        .await
        .unwrap();
    sim.advance_clock(Duration::from_secs(6 * 60));
    let err = sim.get_records(&it, 10).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::TrimmedDataAccess);
    assert!(err.resource.contains(&shard), "{err}");
}

#[tokio::test]
async fn closed_shards_age_out_of_describe_stream() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let parent = only_shard(&sim, &arn);
    sim.put("t", item("a", 1)).unwrap();
    let child = sim.rotate_shard(&arn, &parent).unwrap();
    sim.advance_clock(DAY - Duration::from_secs(1));
    let page = sim.describe_stream(&arn, None).await.unwrap();
    assert_eq!(
        page.shards.len(),
        2,
        "within retention the parent is still listed"
    );
    sim.advance_clock(Duration::from_secs(2));
    let page = sim.describe_stream(&arn, None).await.unwrap();
    let ids: Vec<_> = page.shards.iter().map(|s| s.shard_id.clone()).collect();
    assert_eq!(ids, vec![child.clone()]);
    assert_eq!(
        page.shards[0].parent_shard_id.as_ref(),
        Some(&parent),
        "the child keeps its parent link"
    );
    assert_eq!(sim.all_shards(&arn).unwrap().len(), 2);
    let err = sim
        .shard_iterator(&arn, &parent, &StartPosition::TrimHorizon)
        .await
        .unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::ResourceNotFound);
    let children = sim.child_shards(&arn, &parent).await.unwrap();
    assert_eq!(children.len(), 1);
}

#[tokio::test]
async fn iterators_expire_after_their_lifetime() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    sim.put("t", item("a", 1)).unwrap();
    let it = sim
        .shard_iterator(&arn, &shard, &StartPosition::TrimHorizon)
        .await
        .unwrap();
    sim.advance_clock(Duration::from_secs(15 * 60 - 1));
    let page = sim.get_records(&it, 10).await.unwrap();
    assert_eq!(page.records.len(), 1, "valid within its lifetime");
    sim.advance_clock(Duration::from_secs(2));
    let err = sim.get_records(&it, 10).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::ExpiredIterator);
    // A next iterator is fresh.
    assert!(
        sim.get_records(&page.next_iterator.unwrap(), 10)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn pruned_iterators_still_report_expiry() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    let first = sim
        .shard_iterator(&arn, &shard, &StartPosition::Latest)
        .await
        .unwrap();
    for _ in 0..1100 {
        sim.shard_iterator(&arn, &shard, &StartPosition::Latest)
            .await
            .unwrap();
    }
    sim.advance_clock(Duration::from_secs(16 * 60));
    for _ in 0..1100 {
        sim.shard_iterator(&arn, &shard, &StartPosition::Latest)
            .await
            .unwrap();
    }
    let err = sim.get_records(&first, 10).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::ExpiredIterator);
}

#[tokio::test]
async fn injected_faults_fire_exactly_times() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    let shard = only_shard(&sim, &arn);
    let it = sim
        .shard_iterator(&arn, &shard, &StartPosition::TrimHorizon)
        .await
        .unwrap();
    sim.inject(
        SimOperation::GetRecords,
        ApiErrorKind::InternalServerError,
        2,
    );
    sim.inject(SimOperation::GetRecords, ApiErrorKind::Throttled, 1);
    sim.inject(SimOperation::DescribeTable, ApiErrorKind::Transport, 1);
    sim.inject(SimOperation::DescribeStream, ApiErrorKind::Other, 0);

    let mut kinds = Vec::new();
    for _ in 0..5 {
        kinds.push(sim.get_records(&it, 10).await.err().map(|e| e.kind));
    }
    assert_eq!(
        kinds,
        vec![
            Some(ApiErrorKind::InternalServerError),
            Some(ApiErrorKind::InternalServerError),
            Some(ApiErrorKind::Throttled),
            None,
            None
        ]
    );
    let err = sim.latest_stream_arn("t").await.unwrap_err();
    assert_eq!(
        (err.kind, err.operation),
        (ApiErrorKind::Transport, "DescribeTable")
    );
    assert!(sim.latest_stream_arn("t").await.is_ok());
    assert!(sim.describe_stream(&arn, None).await.is_ok());

    assert_eq!(sim.calls(SimOperation::GetRecords), 5);
    assert_eq!(sim.failures(SimOperation::GetRecords), 3);
    assert_eq!(sim.calls(SimOperation::DescribeTable), 2);
    assert_eq!(sim.calls(SimOperation::GetShardIterator), 1);
    assert_eq!(sim.calls(SimOperation::DescribeStream), 1);
    assert_eq!(sim.failures(SimOperation::DescribeStream), 0);

    sim.inject(SimOperation::GetRecords, ApiErrorKind::Throttled, 5);
    sim.clear_faults();
    assert!(sim.get_records(&it, 10).await.is_ok());
}

#[tokio::test]
async fn throttle_rates_are_clamped() {
    let sim = SimulatedStream::with_seed(1);
    let arn = sim.add_table("t");
    sim.set_throttle_rate(SimOperation::DescribeStream, 7.0);
    let err = sim.describe_stream(&arn, None).await.unwrap_err();
    assert_eq!(err.kind, ApiErrorKind::Throttled);
    assert!(err.kind.is_retryable());
    sim.set_throttle_rate(SimOperation::DescribeStream, f64::NAN);
    assert!(sim.describe_stream(&arn, None).await.is_ok());
    sim.set_throttle_rate(SimOperation::DescribeStream, -1.0);
    assert!(sim.describe_stream(&arn, None).await.is_ok());
}

#[tokio::test]
async fn describe_stream_paginates() {
    let sim = SimulatedStream::new(SimConfig {
        describe_page_size: 2,
        initial_shards: 5,
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let mut start: Option<String> = None;
    let mut pages = Vec::new();
    loop {
        let page = sim.describe_stream(&arn, start.as_deref()).await.unwrap();
        assert_eq!(page.stream_arn, arn);
        pages.push(
            page.shards
                .iter()
                .map(|s| s.shard_id.clone())
                .collect::<Vec<_>>(),
        );
        match page.last_evaluated_shard_id {
            Some(last) => {
                assert_eq!(Some(&last), page.shards.last().map(|s| &s.shard_id));
                start = Some(last);
            }
            None => break,
        }
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![2, 2, 1]
    );
    let all: Vec<_> = pages.concat();
    let want: Vec<_> = sim
        .all_shards(&arn)
        .unwrap()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    assert_eq!(all, want);
    assert_eq!(sim.calls(SimOperation::DescribeStream), 3);
}

#[tokio::test]
async fn shards_rotate_automatically_when_configured() {
    let sim = SimulatedStream::new(SimConfig {
        auto_rotate: Some(4 * HOUR),
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let w0 = sim.put("t", item("a", 0)).unwrap().unwrap();
    sim.advance_clock(9 * HOUR);
    let w1 = sim.put("t", item("a", 1)).unwrap().unwrap();
    let shards = sim.all_shards(&arn).unwrap();
    assert_eq!(shards.len(), 3, "rotated at 4 h and 8 h");
    assert_eq!(
        shards[1].parent_shard_id.as_ref(),
        Some(&shards[0].shard_id)
    );
    assert_eq!(
        shards[2].parent_shard_id.as_ref(),
        Some(&shards[1].shard_id)
    );
    assert_eq!(w0.shard_id, shards[0].shard_id);
    assert_eq!(w1.shard_id, shards[2].shard_id);
    assert_eq!(sim.open_shards(&arn).unwrap().len(), 1);
}

/// Runs one scenario and prints everything observable into a transcript.
async fn scenario(seed: u64) -> Vec<String> {
    let sim = SimulatedStream::new(SimConfig {
        seed,
        initial_shards: 2,
        ..SimConfig::default()
    });
    let arn = sim.add_table("t");
    let mut out = vec![arn.clone()];
    sim.set_throttle_rate(SimOperation::GetRecords, 0.5);
    sim.set_throttle_rate(SimOperation::GetShardIterator, 0.2);
    for i in 0..30 {
        let w = sim
            .put("t", item(&format!("k{}", i % 7), i))
            .unwrap()
            .unwrap();
        out.push(format!(
            "{} {} {}",
            w.shard_id, w.sequence_number, w.event_id
        ));
        if i == 10 {
            let first = sim.open_shards(&arn).unwrap()[0].shard_id.clone();
            let (l, r) = sim.split_shard(&arn, &first).unwrap();
            out.push(format!("split {first} -> {l} {r}"));
        }
    }
    for shard in sim.all_shards(&arn).unwrap() {
        out.push(format!("{shard:?}"));
        let mut iterator = None;
        for _ in 0..20 {
            let it = match iterator.take() {
                Some(it) => it,
                None => match sim
                    .shard_iterator(&arn, &shard.shard_id, &StartPosition::TrimHorizon)
                    .await
                {
                    Ok(it) => it,
                    Err(e) => {
                        out.push(format!("iterator: {}", e.kind));
                        continue;
                    }
                },
            };
            match sim.get_records(&it, 4).await {
                Ok(page) => {
                    let seqs: Vec<_> = page.records.iter().map(|r| seq(r).to_string()).collect();
                    out.push(format!(
                        "page {seqs:?} end={}",
                        page.next_iterator.is_none()
                    ));
                    iterator = page.next_iterator;
                }
                Err(e) => {
                    out.push(format!("records: {}", e.kind));
                    iterator = Some(it);
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn same_seed_same_run() {
    let a = scenario(42).await;
    let b = scenario(42).await;
    assert_eq!(a, b);
    assert!(a.iter().any(|l| l.contains("throttled")));
    let c = scenario(43).await;
    assert_ne!(a, c, "another seed throttles differently");
}

#[tokio::test]
async fn clones_share_state_and_debug_is_short() {
    let sim = SimulatedStream::with_seed(9);
    let other = sim.clone();
    other.add_table("t");
    sim.put("t", item("a", 1)).unwrap();
    assert_eq!(other.written().len(), 1);
    let debug = format!("{sim:?}");
    assert!(
        debug.contains("SimulatedStream") && debug.len() < 200,
        "{debug}"
    );
}
