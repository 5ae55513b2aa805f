//! The conformance suite against the in-memory store.

use std::sync::Arc;

use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseStore};

async fn fresh_store() -> Arc<dyn LeaseStore> {
    Arc::new(InMemoryLeaseStore::new())
}

dynamodb_streams_leases::conformance_tests!(fresh_store);

/// `run_all` runs the same cases in one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes() {
    dynamodb_streams_leases::conformance::run_all(fresh_store).await;
}
