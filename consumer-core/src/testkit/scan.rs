//! The simulated tables read by a snapshot: a parallel Scan over a [`SimulatedStream`]'s
//! items, so simulation tests (and the explorer) run `with_snapshot` against the same
//! tables their writes go to, with writes landing while the scan runs.
//!
//! A segment holds the keys whose hash falls in it, read in key order; a page resumes after
//! the previous page's last key, and sees each item as it is when the page is read (a
//! consistent Scan).

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue as TableValue;

use super::{PausableStreams, SimulatedStream};
use crate::snapshot::{PageRequest, ScanPage, TableScan};
use crate::streams::{ApiError, ApiErrorKind};

type TableItem = HashMap<String, TableValue>;

/// An item of the streams SDK as the DynamoDB SDK has it (the two SDKs have their own
/// `AttributeValue` types).
fn to_table_item(item: super::Item) -> TableItem {
    serde_dynamo::Item::from(item).into()
}

#[async_trait]
impl TableScan for SimulatedStream {
    async fn key_attributes(&self, table: &str) -> Result<Vec<String>, ApiError> {
        self.latency().await;
        self.lock().key_attributes(table)
    }

    async fn scan_page(&self, request: PageRequest<'_>) -> Result<ScanPage, ApiError> {
        self.latency().await;
        let start = match request.start {
            Some(key) => Some(crate::snapshot::to_stream_item(key).ok_or_else(|| {
                ApiError::new(
                    ApiErrorKind::InvalidRequest,
                    "Scan",
                    format!("table {:?}", request.table),
                    "the ExclusiveStartKey holds a value the stream cannot carry",
                )
            })?),
            None => None,
        };
        let (items, resume) = self.lock().scan_segment(
            request.table,
            (request.segment, request.total_segments),
            start.as_ref(),
            request.limit,
        )?;
        Ok(ScanPage {
            items: items.into_iter().map(to_table_item).collect(),
            last_evaluated_key: resume.map(to_table_item),
        })
    }
}

#[async_trait]
impl<A: TableScan> TableScan for PausableStreams<A> {
    async fn key_attributes(&self, table: &str) -> Result<Vec<String>, ApiError> {
        self.switch().running().await;
        let answer = self.inner().key_attributes(table).await;
        self.switch().running().await;
        answer
    }

    async fn scan_page(&self, request: PageRequest<'_>) -> Result<ScanPage, ApiError> {
        self.switch().running().await;
        let answer = self.inner().scan_page(request).await;
        self.switch().running().await;
        answer
    }
}
