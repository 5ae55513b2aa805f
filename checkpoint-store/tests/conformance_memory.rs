//! The conformance suite against the in-memory store.

use std::sync::Arc;

use checkpoint_store::{InMemoryLeaseStore, LeaseStore};

async fn fresh_store() -> Arc<dyn LeaseStore> {
    Arc::new(InMemoryLeaseStore::new())
}

checkpoint_store::conformance_tests!(fresh_store);

/// `run_all` runs the same cases in one go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_passes() {
    checkpoint_store::conformance::run_all(fresh_store).await;
}
