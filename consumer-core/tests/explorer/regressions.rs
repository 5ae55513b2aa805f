//! Seeds that broke an invariant, kept as named tests: each runs its seed (in the full
//! space, [`Space::FULL`], unless it says otherwise) and expects every invariant to hold.
//! Defects fixed here run with the suite; defects whose fix is pending in another
//! engineer's files are `#[ignore]`d until then (the reason says which and where).
//!
//! A seed names a scenario of the drawer as it was when the test was added; dimensions
//! draw from their own generators, so adding one later keeps the others.

use crate::scenario::Space;
use crate::{SeedRun, explore_one_in};

fn holds(seed: u64, space: Space) {
    let run: SeedRun = explore_one_in(seed, space);
    assert!(run.invariant.is_none(), "{}", run.output);
}

/// Seed 116: a handoff requested while the owner hangs in `process` is forced after the
/// failover time; the requester's `process` runs while the owner's still does. Fixed by
/// the leader's handoffs: a request is never forced on an owner that is alive.
#[test]
fn a_forced_handoff_never_overlaps_a_live_owners_batch() {
    holds(116, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 9: a record a second old goes to the handler as too old for a 5-60 s maximum age.
/// Fixed in `shard/session.rs` (`deliver`: the age on `StreamsApi::now`).
#[test]
fn the_maximum_record_age_is_measured_on_the_streams_clock() {
    holds(9, Space::NOW);
}

/// Seed 74: under `Latest`, a record written after the lease stored its start time but
/// before its `LATEST` iterator opened is never delivered.
/// Fixed in `shard/fetch.rs` (`store_latest_start`: the iterator opens before the write).
#[test]
fn a_latest_start_delivers_what_was_written_after_its_start_time() {
    holds(74, Space::NOW);
}

/// Seed 224: with key parallelism 7, a graceful stop while one partition runs and another
/// has records queued never ends (the delivery loop spins on a due batching-window timer).
/// Fixed in `shard/partitioned.rs` (no batching-window timer once stopping).
#[test]
fn a_key_parallel_shard_stops_without_spinning() {
    holds(224, Space::NOW);
}

/// Seed 22: `flush()` in the middle of `process`, after `checkpoint()`, wrote a checkpoint
/// covering the batch in flight, which then failed. Fixed in `checkpointer.rs` (`flush`
/// writes only what was done before the batch).
#[test]
fn a_flush_during_process_never_covers_the_batch_in_flight() {
    holds(22, Space::NOW);
}

/// Seed 70 (`slow_handoffs`: a 9.99 s shutdown timeout against a 6.97 s failover time): the
/// leader, stopping gracefully while a batch runs, stopped renewing its role at once; a
/// failover time later the next leader judged it dead and handed out its lease while its
/// `process` still ran. Fixed in `worker/shutdown.rs` (the role is renewed until given up).
#[test]
fn a_leader_that_stops_slowly_is_not_judged_dead() {
    holds(70, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 1184 (snapshot with pipelines; seed 1804 without pipelines is the same defect): a
/// table's stream was enabled again, and a worker starting later planned a second snapshot
/// for the new stream, skipping its records made before that snapshot. An item deleted in
/// between is in no snapshot, so every sink kept it (invariant 2). Fixed in
/// `snapshot/mod.rs` (`prepare`: a stream that replaced one the application consumed gets
/// no snapshot; it is read from its first record after the older one). The oracle now also
/// counts a record that a snapshot covers as pending until its snapshot ended (the drain
/// had stopped before the second snapshot ran).
#[test]
fn a_snapshot_with_pipelines_ends_equal_to_the_table() {
    holds(1184, Space::NOW);
}

/// Seed 1942 (1329, 1519 and 1920 too, in [`crate::FOUND_SEEDS`]): with a snapshot, a
/// table's stream disabled and enabled again while the old stream still had records; a
/// worker starting after that ran a second snapshot on the new stream, whose roots waited
/// for that snapshot's gate only, so a new-stream record of a key reached a processor
/// before the old stream's earlier record of the key finished (invariant 2, per-key
/// order). Fixed in `snapshot/mod.rs` (`prepare`: a stream that replaced one this
/// application consumes gets no snapshot; the shard sync gates its roots behind the older
/// stream).
#[test]
fn per_key_order_holds_across_shards_with_a_snapshot() {
    holds(1942, Space::NOW);
}

/// Seed 2451 (`snapshots`): the leader took a snapshot segment on behalf of a worker and
/// could not hint it (its own lease-table link throttled); nothing sent the hint again, so
/// the segment stayed with a live worker that never heard of it, and the snapshot never
/// ended (invariant 8; before the explorer counted open segments as pending, invariant 2:
/// the run ended with the item missing from the sink). The defect of seed 821, fixed by
/// `worker/hints.rs` (an undelivered hint is kept and sent again every tick).
#[test]
fn a_lease_taken_for_a_worker_whose_hint_failed_is_not_forgotten() {
    holds(2451, Space::parse("snapshots").expect("a space"));
}

/// Seed 2712 (`snapshots`, staged writes): a plain checkpoint written in the background
/// was applied but its answer lost; the next batch's transaction waits for that write, got
/// its error, and failed the batch although its `process` returned `Ok`: the record went
/// to the on-failure handler as retries-exhausted (invariant 1). Fixed in
/// `checkpointer/staged.rs` (`commit_staged` reads the stored position after such a write
/// instead of failing; a transaction given up the same way is read back too).
#[test]
fn a_lost_checkpoint_answer_does_not_fail_the_next_transaction() {
    holds(2712, Space::parse("snapshots").expect("a space"));
}

/// Seed 821 (found by `make explore SEEDS=2000` in the widened space): the leader, whose
/// link was throttled, handed a lease over to a worker (a take on its behalf, not
/// announced) and could not write the hint; it was fenced, and no one told the new owner,
/// which never ran the shard (invariant 8: records pending for good, not just past the
/// bound). Fixed in `worker/hints.rs` (an undelivered hint is kept, across incarnations, and
/// sent again every tick) and `leader.rs` (`remind` hints a finished handoff's new owner).
#[test]
fn everything_drains_within_the_bound_after_slow_shutdowns() {
    holds(821, Space::NOW);
}

/// Seed 847: the same lost hint from the leader's own takes on behalf (its link throttled
/// while it planned): the workers never learnt the leases were theirs. Fixed with seed 821
/// (`leader.rs` `deliver` returns the hints it could not write; the worker resends them).
#[test]
fn a_hint_the_leader_could_not_write_is_sent_again() {
    holds(847, Space::NOW);
}

/// Seed 857: the worker that finished a snapshot's last segment could not finish the gate
/// (its link throttled) and stopped; the shard sync, the backstop, looked for the plan in
/// the leader's view, which holds no coordination leases, so the gate stayed open and the
/// table's stream never started. Fixed in `shard_sync.rs` (`finish_snapshot_gate` reads
/// the plan).
#[test]
fn a_snapshot_gate_left_open_is_finished_by_the_shard_sync() {
    holds(857, Space::NOW);
}

/// Seed 5010 (two pipelines, staged writes, `max_retries` 0, the lease-table link
/// throttled): p0's `process` returned `Ok` for records 225..228, then the commit of their
/// staged writes failed on the throttled link (after the store's own retries); the failure
/// policy took that for a partial failure at record 225, counted it against `max_retries`
/// and handed 225 to p0's handler as retries-exhausted (its `process` never failed), then
/// delivered 226..228 again. Not the oracle mixing pipelines: the handler was p0's own (the
/// journal's handler lines now name their pipeline). Fixed in `checkpointer/staged.rs`
/// (`CommitFailed::is_the_records`) and `shard/session/attempts.rs` (a commit failure that
/// is the store's is redelivered after a pause, never given up to the handler).
#[test]
fn a_commit_the_store_failed_is_redelivered_not_given_up() {
    holds(5010, Space::NOW);
}

/// Seed 6734 (three pipelines): the same defect as seed 5010 on p2, the commit of a
/// single-record batch failing on the checkpoint write the throttled link refused.
#[test]
fn a_throttled_commit_never_sends_a_processed_record_to_the_handler() {
    holds(6734, Space::NOW);
}

/// Seed 8256 (two pipelines, `Latest`): the same defect as seed 5010 in both pipelines,
/// right after the handler took the batch before (its checkpoint write, throttled, failed
/// the next batch's commit).
#[test]
fn a_commit_after_a_given_up_batch_fails_without_losing_the_next_batch() {
    holds(8256, Space::NOW);
}

/// Seed 6085 (`slow_handoffs`): a shard of a table's stream ended while the lease table was
/// frozen, so its children got no leases; the table's stream was then disabled and enabled
/// again, and the old stream, all of whose leases were at `SHARD_END`, was retired with
/// those children never read: the new stream's record for a key ran before the old
/// stream's. Fixed in `shard_sync.rs` (`retire_replaced_streams` syncs a replaced stream
/// first and retires it only when every shard has a finished lease).
#[test]
fn a_replaced_stream_is_retired_only_after_every_shard_of_it_is_read() {
    holds(6085, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 18896 (`slow_handoffs`: an 8 KB memory budget, one-record pages, a 2.6 s batching
/// window): every page reserved the whole budget (the 64 KB floor of a reservation), so one
/// page was in flight at a time and every batching window waited out in full for records
/// the fetch task could not ask for: one record per window, and the backlog did not drain
/// within the bound. Seed 19012 (pipelines) was the same. Fixed in `budget.rs`
/// (`least_reservation`: at most a quarter of the budget).
#[test]
fn a_small_memory_budget_still_fills_a_batching_window() {
    holds(18896, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 13898 (`slow_handoffs`, a snapshot): a worker held a lease still waiting for its
/// parent (the snapshot's gate) when a handoff was asked for; its link throttled, the
/// hand-over write failed, and the worker forgot the lease anyway: it stayed owned by a
/// live worker that ran it no more, the leader never forces a live owner, and its records
/// stayed pending. Fixed in `worker/leases.rs` (`reconcile` keeps the lease until the
/// hand-over write succeeds, so the next read of it tries again).
#[test]
fn a_failed_handover_of_a_waiting_lease_is_tried_again() {
    holds(13898, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 24898 (`slow_handoffs`): the lease-table link of a worker was partitioned 11 ms
/// after it started, once the start-up check of the table had answered; the first heartbeat
/// was retried with the start-up policy (three tries in a second) and `run` returned
/// "cannot reach DynamoDB": a transient failure stopped the worker. Fixed in `retry.rs`
/// (only the first contact gives up on a transient failure; the first heartbeat is retried
/// with the `joining` policy until it is confirmed) and `worker/mod.rs` (that wait is raced
/// against shutdown).
#[test]
fn a_partition_right_after_start_up_is_ridden_out() {
    holds(24898, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 30696 (`slow_handoffs`, a snapshot): a second worker's link was partitioned for
/// 27.5 s while it prepared the snapshot; its lease scan, retried with the start-up policy,
/// gave up and `run` returned the transient error. Fixed in `consumer.rs` (the snapshot's
/// preparation, idempotent, is run again whole after a transient failure, raced against
/// shutdown) and `snapshot/mod.rs` (its calls use the policies of their kind).
#[test]
fn a_partition_while_a_snapshot_is_prepared_is_ridden_out() {
    holds(30696, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 47407: a table's stream was disabled and enabled again; the leader retired the
/// finished old stream, deleted two of its leases, and its link throttled the next delete.
/// Its next pass saw leases missing, synced the old stream and created them again at
/// `TRIM_HORIZON`: their shards were read again from the start. Fixed in `shard_sync.rs`
/// (`retire_replaced_streams` marks the stream retiring before any delete; a pass that
/// finds the mark only deletes what is left).
#[test]
fn a_replaced_stream_retired_midway_never_gets_its_leases_back() {
    holds(47407, Space::NOW);
}

/// Seed 48578: the framework's background checkpoint write of a shard was held by a
/// frozen lease-table link; a `flush` in the next `process` call waited for it and the
/// batch timeout dropped the call. The write had been taken out of the checkpointer
/// before the wait, so it ran on unseen and the next batch's write ran beside it; when the
/// link came back the older one could land last: "checkpoint moved the checkpoint of
/// shardId-...-00000007 back from ...23 to ...11". Fixed in `checkpointer.rs` (`settle`
/// keeps the write until it finished). The healed link once woke its held calls in an
/// order drawn from tokio's per-process RNG (the seed did not replay; without the fix it
/// failed 6 runs in 30, so this test ran it 25 times); it wakes them in the order they
/// came since (`testkit/gate.rs`), and `a_seed_replays_exactly` checks the seed replays.
#[test]
fn a_flush_cut_by_the_batch_timeout_never_lets_an_older_checkpoint_land_last() {
    holds(48578, Space::NOW);
}

/// Seed 110687 (`slow_handoffs`: a 1,049-byte memory budget, one-record pages, a 2.6 s
/// batching window, two shards): the budget let one page in at a time, and every batching
/// window was waited out in full for records that could not come until the batch was
/// delivered (the budget kept the next page out until the batch's bytes came back): one
/// record per ~5.4 s, and the backlog did not drain within the bound. Fixed in
/// `shard/batching.rs` (a batch stops waiting once a page waits for the budget, for the
/// plain path and key parallelism alike).
#[test]
fn a_batching_window_ends_once_the_budget_keeps_the_next_page_out() {
    holds(110687, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 106452 (`slow_handoffs`): the leader, which owned a lease the plan moved to a new
/// worker, handed it over (a take on the new owner's behalf, not announced); its link was
/// throttled, so the hint stayed in its memory, and it crashed before sending it again.
/// The new owner, leading next, saw in its first scan a lease owned by a live worker
/// (itself) and planned nothing; its self-audit reads only the leases it knows of: the
/// shard was never run again (invariant 8). Fixed in `leader.rs` (`in_doubt`: each scan
/// hints the live owners of leases taken since their last checkpoint by a write the leader
/// did not make, and a new leader's first scan hints every such lease; its own worker's
/// are reconciled at once).
#[test]
fn a_hint_lost_with_a_crashed_owner_does_not_strand_the_lease() {
    holds(106452, Space::parse("slow_handoffs").expect("a space"));
}

/// Seed 183976 (`slow_handoffs`, one worker after the other stopped): the worker, leading,
/// was paused and throttled past its failover time and came back as a new incarnation,
/// which claimed the role and judged the old one dead. Its takes of two of the old
/// incarnation's leases failed on the throttled link, and so did the rescan they asked for;
/// that spent the request, nothing bumped the leases version afterwards, and the two
/// shards' records stayed pending until the leader's audit, minutes later (invariant 8).
/// Fixed in `leader.rs` (a rescan stays asked until a scan succeeds; takes that keep
/// failing are scanned for again a scan interval later).
#[test]
fn a_take_that_failed_with_its_rescan_is_tried_again() {
    holds(183976, Space::parse("slow_handoffs").expect("a space"));
}
