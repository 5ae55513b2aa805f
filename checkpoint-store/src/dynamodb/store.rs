//! The store itself: its client, table and settings, how it is made, and the scan of every
//! lease. A file of its own, below the files that add its requests (the
//! [`LeaseStore`](crate::LeaseStore) impl in `super`, the conditional writes in
//! `super::update`, the transactions in `super::transact`): they all name the type and it
//! names none of them, so they form no circle.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::Client;
use aws_types::SdkConfig;

use super::errors::Target;
use super::item::{Item, KIND_LEASE, names_in, s};
use super::membership::{MembershipCache, MembershipItems};
use super::table;
use crate::aws::{self, AwsClients};
use crate::error::Result;

const CLIENT_ENDPOINT: &str = "the endpoint configured on the DynamoDB client";

/// A [`LeaseStore`](crate::LeaseStore) in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoDbLeaseStore {
    pub(super) client: Client,
    pub(super) table: String,
    /// Where the client sends requests, for error messages.
    pub(super) endpoint: String,
    /// `Limit` of each scan page; `None` lets DynamoDB fill 1 MB pages.
    pub(super) scan_page_size: Option<i32>,
    /// Key attribute names of the tables transactions write to (DescribeTable, once each).
    pub(super) key_names: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Which workers joined through this store, and the membership items listed last.
    pub(super) membership: Arc<MembershipCache>,
    /// Items the last full scan read: the next one reads in parallel segments, one per
    /// [`ITEMS_PER_SEGMENT`] items (at most [`MAX_SCAN_SEGMENTS`]).
    pub(super) last_scan_items: Arc<AtomicUsize>,
}

/// Items of a full scan per parallel segment: a 1 MB page holds about 2,500 lease items,
/// so a segment reads about 4 pages one after the other.
const ITEMS_PER_SEGMENT: usize = 10_000;
/// The most parallel segments of one scan: 100,000 leases (about 40 MB) in 10 segments.
const MAX_SCAN_SEGMENTS: usize = 16;

impl fmt::Debug for DynamoDbLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoDbLeaseStore")
            .field("table", &self.table)
            .field("endpoint", &self.endpoint)
            .field("scan_page_size", &self.scan_page_size)
            .finish_non_exhaustive()
    }
}

impl DynamoDbLeaseStore {
    /// A store in `table`, using `client` as it is configured. Fails with
    /// `InvalidTableName` (before any request) if the name breaks DynamoDB's rules.
    pub fn new(client: Client, table: impl Into<String>) -> Result<Self> {
        Self::build(client, table.into(), CLIENT_ENDPOINT.to_owned())
    }

    /// A store in `table` with the clients of [`AwsClients::from_sdk_config`]: bounded
    /// timeouts, so that an unreachable endpoint fails with `Unreachable` instead of
    /// hanging, and no SDK retries (the caller's retry policy is the only one).
    pub fn from_sdk_config(config: &SdkConfig, table: impl Into<String>) -> Result<Self> {
        Self::from_clients(&AwsClients::from_sdk_config(config), table)
    }

    /// A store in `table` using the DynamoDB client of `clients`.
    pub fn from_clients(clients: &AwsClients, table: impl Into<String>) -> Result<Self> {
        Self::build(
            clients.dynamodb().clone(),
            table.into(),
            clients.endpoint().to_owned(),
        )
    }

    fn build(client: Client, table: String, endpoint: String) -> Result<Self> {
        table::validate_table_name(&table)?;
        Ok(Self {
            client,
            table,
            endpoint,
            scan_page_size: None,
            key_names: Arc::default(),
            membership: Arc::new(MembershipCache::new()),
            last_scan_items: Arc::default(),
        })
    }

    /// The requests on membership, coordination and inbox items.
    pub(super) fn members(&self) -> MembershipItems<'_> {
        MembershipItems {
            client: &self.client,
            target: self.target(),
            cache: &self.membership,
        }
    }

    /// Reads scans in pages of at most `items` items (before filtering), instead of
    /// DynamoDB's 1 MB pages. Tests use it to exercise pagination.
    pub fn with_scan_page_size(mut self, items: usize) -> Self {
        self.scan_page_size = Some(i32::try_from(items).unwrap_or(i32::MAX).max(1));
        self
    }

    /// The table's name.
    pub fn table_name(&self) -> &str {
        &self.table
    }

    /// What this store's errors name.
    pub(super) fn target(&self) -> Target<'_> {
        Target {
            table: &self.table,
            endpoint: &self.endpoint,
        }
    }

    /// Every lease item, read consistently, all pages: in parallel segments once the last
    /// scan showed a large table, so that a scan of 100,000 leases takes about as long as
    /// one of 10,000 (and, answering in time, is never discarded by its reader).
    pub(super) async fn scan_leases(&self) -> Result<Vec<Item>> {
        let filter = "#kind = :kind";
        let request = self
            .client
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .set_limit(self.scan_page_size)
            .filter_expression(filter)
            .set_expression_attribute_names(Some(names_in(&[filter])))
            .expression_attribute_values(":kind", s(KIND_LEASE));
        let segments = self
            .last_scan_items
            .load(Ordering::Relaxed)
            .div_ceil(ITEMS_PER_SEGMENT)
            .clamp(1, MAX_SCAN_SEGMENTS);
        let items = aws::parallel_scan_all(request, i32::try_from(segments).unwrap_or(1))
            .await
            .map_err(|err| self.target().sdk_error("Scan", None, err))?;
        self.last_scan_items.store(items.len(), Ordering::Relaxed);
        Ok(items)
    }
}
