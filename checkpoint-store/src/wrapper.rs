//! [`StoreWrapper`]: a lease store that wraps another and changes a few of its methods.
//!
//! Several stores are decorators: one announces ownership changes, one turns checkpoints
//! into a pipeline's, one counts and prices calls, test stores add transactions. Each used
//! to forward some twenty methods by hand, so adding a [`LeaseStore`] method meant editing
//! every decorator, and a forgotten one fell back to the trait's default (a refusal) without
//! a word. Here the list of methods is written once, in the `forwarding!` invocation at the
//! end of this file: it makes both the wrapper trait's forwarding defaults and the blanket
//! `impl<W: StoreWrapper> LeaseStore for W`.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::TransactWriteItem;

use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::lease::{Lease, LeaseKey, Ownership};
use crate::membership::{Coordination, Membership, Notice, WorkerRecord};
use crate::pipeline::PipelineCheckpoints;
use crate::store::LeaseStore;

/// Writes the [`StoreWrapper`] trait (each method forwarding to the wrapped store by
/// default) and the blanket [`LeaseStore`] impl that calls the wrapper's methods, from one
/// list of the store's method signatures.
macro_rules! forwarding {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        /// A [`LeaseStore`] that wraps another ([`wrapped`](Self::wrapped)): every method
        /// forwards to it unless the wrapper overrides it, and every `StoreWrapper` is a
        /// `LeaseStore` (a blanket impl). A wrapper writes only the methods it changes:
        ///
        /// ```
        /// # use dynamodb_streams_leases::{InMemoryLeaseStore, LeaseKey, LeaseStore, Result};
        /// #[derive(Debug)]
        /// struct NoDeletes(InMemoryLeaseStore);
        ///
        /// #[async_trait::async_trait]
        /// impl dynamodb_streams_leases::StoreWrapper for NoDeletes {
        ///     type Inner = InMemoryLeaseStore;
        ///     fn wrapped(&self) -> &InMemoryLeaseStore {
        ///         &self.0
        ///     }
        ///     async fn delete_lease(&self, _key: &LeaseKey) -> Result<()> {
        ///         Ok(())
        ///     }
        /// }
        /// # async fn check(store: &NoDeletes) -> Result<Vec<dynamodb_streams_leases::Lease>> {
        /// store.list_leases().await // forwarded
        /// # }
        /// ```
        ///
        /// Why this shape: the forwarding is written once, here, and adding a method to
        /// [`LeaseStore`] means one line in this module's list, not one per wrapper; a
        /// wrapper's overrides are ordinary trait methods, documented and checked by the
        /// compiler (a misspelt one is an error, not a silent fallback). Delegation crates
        /// (`delegate`, `ambassador`) either make each wrapper list every method again or
        /// generate the whole impl with no way to change one method, and a `Deref` to the
        /// inner store would skip a wrapper's overrides when called through the trait.
        ///
        /// Implement it with its path (`impl dynamodb_streams_leases::StoreWrapper for …`)
        /// rather than importing it where the wrapper's methods are called: with both
        /// traits in scope, a call such as `store.get_lease(…)` on the concrete type names
        /// two methods and does not compile. Calls through `dyn LeaseStore` never are.
        #[async_trait]
        pub trait StoreWrapper: Send + Sync + fmt::Debug {
            /// The store this one wraps (a `dyn LeaseStore` or a concrete store).
            type Inner: LeaseStore + ?Sized;

            /// The wrapped store: where every method not overridden goes.
            fn wrapped(&self) -> &Self::Inner;

            $(
                #[doc = concat!(
                    "[`LeaseStore::", stringify!($name), "`]: the wrapped store's unless overridden."
                )]
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    self.wrapped().$name($($arg),*).await
                }
            )*
        }

        #[async_trait]
        impl<W: StoreWrapper> LeaseStore for W {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    StoreWrapper::$name(self $(, $arg)*).await
                }
            )*
        }
    };
}

// One line per `LeaseStore` method, in the trait's order: a method added to the trait is
// added here, and every wrapper forwards it.
forwarding! {
    fn ensure_table(&self) -> Result<()>;
    fn list_leases(&self) -> Result<Vec<Lease>>;
    fn get_lease(&self, key: &LeaseKey) -> Result<Option<Lease>>;
    fn get_leases(&self, keys: &[LeaseKey]) -> Result<Vec<Lease>>;
    fn create_lease(&self, lease: &Lease) -> Result<()>;
    fn take_lease(&self, key: &LeaseKey, seen_owner: Option<&str>, seen_epoch: u64, new_owner: &str) -> Result<Lease>;
    fn checkpoint(&self, key: &LeaseKey, ownership: &Ownership, checkpoint: &Checkpoint) -> Result<Lease>;
    fn checkpoint_pipelines(&self, key: &LeaseKey, ownership: &Ownership, update: &PipelineCheckpoints) -> Result<Lease>;
    fn remove_pipeline(&self, key: &LeaseKey, pipeline: &str, ownership: Option<&Ownership>) -> Result<Lease>;
    fn release_lease(&self, key: &LeaseKey, ownership: &Ownership) -> Result<Lease>;
    fn reset_lease(&self, key: &LeaseKey, seen_owner: Option<&str>, seen_epoch: u64, checkpoint: &Checkpoint) -> Result<Lease>;
    fn request_handoff(&self, key: &LeaseKey, current: &Ownership, requester: &str) -> Result<Lease>;
    fn delete_lease(&self, key: &LeaseKey) -> Result<()>;
    fn heartbeat(&self, worker_id: &str, ttl: Duration) -> Result<WorkerRecord>;
    fn snapshot(&self) -> Result<(Vec<Lease>, Vec<WorkerRecord>)>;
    fn membership(&self) -> Result<Membership>;
    fn coordination(&self) -> Result<Coordination>;
    fn bump_leases_version(&self) -> Result<u64>;
    fn delete_worker(&self, worker_id: &str) -> Result<()>;
    fn remove_worker(&self, worker_id: &str, seen: u64) -> Result<bool>;
    fn claim_leadership(&self, worker_id: &str, replacing: Option<&str>) -> Result<bool>;
    fn renew_leadership(&self, worker_id: &str, workers: u64) -> Result<bool>;
    fn resign_leadership(&self, worker_id: &str) -> Result<()>;
    fn notify(&self, worker_id: &str, keys: &[LeaseKey]) -> Result<()>;
    fn notices(&self, worker_id: &str) -> Result<Vec<Notice>>;
    fn clear_notices(&self, worker_id: &str, notices: &[Notice]) -> Result<()>;
    fn checkpoint_with_writes(&self, key: &LeaseKey, ownership: &Ownership, previous: &Checkpoint, checkpoint: &Checkpoint, writes: Vec<TransactWriteItem>) -> Result<()>;
    fn checkpoint_pipeline_with_writes(&self, key: &LeaseKey, ownership: &Ownership, pipeline: &str, previous: Option<&Checkpoint>, update: &PipelineCheckpoints, writes: Vec<TransactWriteItem>) -> Result<()>;
    fn key_attribute_names(&self, table: &str) -> Result<Vec<String>>;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::InMemoryLeaseStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts deletes, forwards the rest.
    #[derive(Debug, Default)]
    struct CountingDeletes {
        inner: InMemoryLeaseStore,
        deletes: AtomicUsize,
    }

    #[async_trait]
    impl StoreWrapper for CountingDeletes {
        type Inner = InMemoryLeaseStore;
        fn wrapped(&self) -> &InMemoryLeaseStore {
            &self.inner
        }
        async fn delete_lease(&self, key: &LeaseKey) -> Result<()> {
            self.deletes.fetch_add(1, Ordering::Relaxed);
            self.inner.delete_lease(key).await
        }
    }

    #[tokio::test]
    async fn a_wrapper_changes_what_it_overrides_and_forwards_the_rest() {
        let store = CountingDeletes::default();
        let dyn_store: &dyn LeaseStore = &store;
        let lease = Lease::new(LeaseKey::new("arn", "s"), Checkpoint::TrimHorizon, vec![]);
        dyn_store.create_lease(&lease).await.unwrap();
        assert_eq!(dyn_store.list_leases().await.unwrap().len(), 1);
        assert_eq!(store.inner.list_leases().await.unwrap().len(), 1);
        dyn_store.delete_lease(&lease.key).await.unwrap();
        assert_eq!(store.deletes.load(Ordering::Relaxed), 1);
        assert!(store.inner.list_leases().await.unwrap().is_empty());
    }
}
