//! Reading every page: Scan through the SDK's paginator (optionally in parallel segments),
//! BatchGetItem in requests of 100 keys, DescribeStream through one pager.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use aws_sdk_dynamodb::operation::batch_get_item::BatchGetItemError;
use aws_sdk_dynamodb::operation::scan::ScanError;
use aws_sdk_dynamodb::operation::scan::builders::ScanFluentBuilder;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::types::KeysAndAttributes;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;

/// Every item `scan` returns, all pages, through the SDK's paginator (which follows
/// `LastEvaluatedKey` and stops if the service repeats it). The request's `Limit`, if set,
/// is the page size.
pub async fn scan_all(
    scan: ScanFluentBuilder,
) -> Result<Vec<HashMap<String, AttributeValue>>, SdkError<ScanError, HttpResponse>> {
    let pages = scan.into_paginator().send().try_collect().await?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.items.unwrap_or_default())
        .collect())
}

/// Every item of a Scan read in `segments` parallel segments (DynamoDB's `Segment` /
/// `TotalSegments`), each through [`scan_all`]: a large table is read in a fraction of the
/// time one sequential Scan takes, for the same read units.
pub async fn parallel_scan_all(
    scan: ScanFluentBuilder,
    segments: i32,
) -> Result<Vec<HashMap<String, AttributeValue>>, SdkError<ScanError, HttpResponse>> {
    if segments <= 1 {
        return scan_all(scan).await;
    }
    let parts = (0..segments)
        .map(|segment| scan_all(scan.clone().segment(segment).total_segments(segments)));
    let mut items = Vec::new();
    for part in futures::future::join_all(parts).await {
        items.extend(part?);
    }
    Ok(items)
}

/// The most keys one BatchGetItem request takes.
pub const BATCH_GET_KEYS: usize = 100;

/// What [`batch_get_all`] read.
#[derive(Debug, Default)]
pub struct BatchGot {
    /// The items found (keys without an item are left out).
    pub items: Vec<HashMap<String, AttributeValue>>,
    /// Keys DynamoDB still left unprocessed after the last round (throttling): the caller
    /// treats a non-zero count as a transient failure.
    pub unprocessed: usize,
}

/// The items of `keys` in `table` through BatchGetItem: requests of [`BATCH_GET_KEYS`]
/// keys (sent together), and the keys DynamoDB leaves unprocessed asked again, up to three
/// more rounds 50 ms apart and doubling. `customize` applies per-request settings (the
/// liveness timeouts).
pub async fn batch_get_all(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<HashMap<String, AttributeValue>>,
    consistent: bool,
    customize: Option<fn() -> aws_sdk_dynamodb::config::Builder>,
) -> Result<BatchGot, SdkError<BatchGetItemError, HttpResponse>> {
    let mut got = BatchGot::default();
    let mut pending = keys;
    let mut pause = Duration::from_millis(50);
    for round in 0..4 {
        if pending.is_empty() {
            break;
        }
        if round > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let requests = pending.chunks(BATCH_GET_KEYS).map(|chunk| {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(chunk.to_vec()))
                .consistent_read(consistent)
                .build();
            async move {
                let request = request.map_err(SdkError::construction_failure)?;
                let send = client.batch_get_item().request_items(table, request);
                match customize {
                    Some(overrides) => send.customize().config_override(overrides()).send().await,
                    None => send.send().await,
                }
            }
        });
        let answers = futures::future::join_all(requests).await;
        pending = Vec::new();
        for answer in answers {
            let mut output = answer?;
            if let Some(items) = output.responses.as_mut().and_then(|r| r.remove(table)) {
                got.items.extend(items);
            }
            if let Some(left) = output
                .unprocessed_keys
                .as_mut()
                .and_then(|u| u.remove(table))
            {
                pending.extend(left.keys);
            }
        }
    }
    got.unprocessed = pending.len();
    Ok(got)
}

/// DescribeStream handed back a `LastEvaluatedShardId` it had already given: following it
/// would loop, and stopping would return a partial list of shards.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("DescribeStream of stream {stream_arn}: pagination did not advance past shard {cursor}")]
pub struct CursorStalled {
    /// The stream being described.
    pub stream_arn: String,
    /// The repeated `LastEvaluatedShardId`.
    pub cursor: String,
}

/// Every shard of a DescribeStream listing: calls `page` with the exclusive start shard id
/// (`None` first), which answers with that page's shards and its `LastEvaluatedShardId`,
/// until there is none. The one DescribeStream pager: the SDK streams (with or without a
/// shard filter) and any `StreamsApi` (the simulated stream too) go through it. A cursor
/// seen before fails with [`CursorStalled`], never a partial list and never a loop.
pub async fn describe_stream_pages<T, E, F, Fut>(stream_arn: &str, mut page: F) -> Result<Vec<T>, E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), E>>,
    E: From<CursorStalled>,
{
    let mut shards = Vec::new();
    let mut seen = HashSet::new();
    let mut start = None;
    loop {
        let (page_shards, next) = page(start.take()).await?;
        shards.extend(page_shards);
        match next {
            None => return Ok(shards),
            Some(cursor) if !seen.insert(cursor.clone()) => {
                return Err(CursorStalled {
                    stream_arn: stream_arn.to_owned(),
                    cursor,
                }
                .into());
            }
            Some(cursor) => start = Some(cursor),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Pages keyed by their start cursor.
    async fn list(
        pages: &[(Option<&str>, &[u32], Option<&str>)],
    ) -> Result<Vec<u32>, CursorStalled> {
        describe_stream_pages("arn:s", |start| {
            let (_, items, next) = pages
                .iter()
                .find(|(from, _, _)| from.map(str::to_owned) == start)
                .unwrap();
            let answer = (items.to_vec(), next.map(str::to_owned));
            async move { Ok(answer) }
        })
        .await
    }

    #[tokio::test]
    async fn pages_are_followed_until_no_cursor() {
        let pages = [
            (None, &[1, 2][..], Some("b")),
            (Some("b"), &[3][..], Some("c")),
            (Some("c"), &[][..], None),
        ];
        assert_eq!(list(&pages).await.unwrap(), [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_repeated_cursor_is_an_error_naming_the_stream() {
        let same = [
            (None, &[1][..], Some("a")),
            (Some("a"), &[2][..], Some("a")),
        ];
        let err = list(&same).await.unwrap_err();
        assert_eq!(err.cursor, "a");
        assert!(err.to_string().contains("arn:s"), "{err}");

        let cycle = [
            (None, &[1][..], Some("a")),
            (Some("a"), &[2][..], Some("b")),
            (Some("b"), &[3][..], Some("a")),
        ];
        assert_eq!(list(&cycle).await.unwrap_err().cursor, "a");
    }
}
