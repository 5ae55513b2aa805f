//! The conformance suite: the behaviour every [`LeaseStore`] must have.
//!
//! Each case is a public async function taking a fresh, empty store (its table already
//! ensured), so a failure names the case. [`conformance_tests!`](crate::conformance_tests)
//! turns every case into its own `#[tokio::test]`; [`run_all`] runs them one after another.
//!
//! ```text
//! dynamodb_streams_leases::conformance_tests!(|| async {
//!     std::sync::Arc::new(dynamodb_streams_leases::InMemoryLeaseStore::new())
//!         as std::sync::Arc<dyn dynamodb_streams_leases::LeaseStore>
//! });
//! ```

// This is test code: a failed assertion or unwrap is how a case reports a broken store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::LeaseStore;
use std::future::Future;
use std::sync::Arc;

/// Calls `$callback!` with the name of every case: the one list of cases.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($mode:ident $args:tt) => {
        $crate::__conformance_cases!(@expand $mode $args [
            round_trips_every_field,
            create_twice_fails_with_already_exists,
            take_of_unowned_lease,
            concurrent_takes_have_exactly_one_winner,
            take_with_stale_epoch_or_owner_fails,
            checkpoint_by_owner_succeeds_and_resets_owner_switches,
            checkpoint_after_losing_lease_is_rejected,
            retaken_lease_rejects_the_old_epoch,
            release_then_take_by_another,
            handoff_request_release_and_take,
            missing_lease_is_not_found,
            delete_is_idempotent,
            heartbeats_count_and_show_in_snapshots,
            delete_worker_removes_the_record,
            lists_many_leases_across_pages,
            long_sequence_number_text_round_trips,
            since_checkpoint_round_trips,
            a_full_membership_item_refuses_a_new_worker_clearly,
            snapshot_holds_every_lease_and_worker,
            writes_leave_the_leases_version_to_the_caller,
            a_second_handoff_request_on_a_pending_one_fails,
            a_worker_removed_as_dead_cannot_heartbeat_again,
            membership_reads_workers_of_every_item,
            leadership_is_claimed_once_renewed_and_resigned,
            notices_are_delivered_and_cleared_by_token,
            many_leases_are_read_at_once,
            reset_moves_the_checkpoint_and_frees_the_lease_in_one_write,
            pipeline_checkpoints_are_written_by_the_owner_with_the_read_position,
            a_removed_pipeline_leaves_the_other_pipelines_alone,
        ]);
    };
    (@expand tests ($make_store:expr) [$($case:ident),* $(,)?]) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let store = ($make_store)().await;
                $crate::conformance::$case(store).await;
            }
        )*
    };
    (@expand run_all ($make_store:ident) [$($case:ident),* $(,)?]) => {
        $(
            tracing::info!(case = stringify!($case), "conformance case");
            $case($make_store().await).await;
        )*
    };
}

/// Defines one `#[tokio::test]` (multi-threaded) per conformance case, each calling
/// `$make_store` (a closure or function returning a future of `Arc<dyn LeaseStore>`) for a
/// fresh, empty store. The calling crate needs `tokio` with the `macros` feature.
#[macro_export]
macro_rules! conformance_tests {
    ($make_store:expr) => {
        $crate::__conformance_cases!(tests($make_store));
    };
}

/// Runs every case in turn, each against a fresh, empty store from `make_store`.
pub async fn run_all<F, Fut>(make_store: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn LeaseStore>>,
{
    crate::__conformance_cases!(run_all(make_store));
}

mod fixtures;
mod leases;
mod pipelines;
mod workers;

pub use leases::*;
pub use pipelines::*;
pub use workers::*;
