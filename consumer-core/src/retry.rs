//! Every retry and backoff of the consumer, by name.
//!
//! The AWS clients do not retry on their own (one retry layer, ours): each lease-table and
//! streams call either goes through one of the policies below or is repeated by the loop
//! that makes it (lease scans every `scan_interval`, heartbeats every `renew_interval`,
//! shard sync every `shard_sync_interval`, checkpoints at the next flush).
//!
//! All policies are exponential [`backon`] builders with factor 2. "Jitter" means backon's:
//! a random amount between zero and the delay itself is added, so a jittered pause lies
//! between the delay and twice the delay; it keeps many workers that failed together from
//! retrying together.
//!
//! | policy | retries | first pause | longest pause | attempts | jitter |
//! | --- | --- | --- | --- | --- | --- |
//! | [`first_contact`] | the start-up check of the lease table and the stream lookups by table name | 200 ms | 1 s | 3 | yes |
//! | [`streams_read`] | GetRecords, GetShardIterator (throttling, 5xx, transport) | 50 ms | 10 s | unbounded | yes |
//! | [`describe_stream`] | DescribeStream pages and child-shard lookups | 100 ms | 5 s | 9 | yes |
//! | [`lease_store`] | lease-table writes that no loop repeats: `SHARD_END`, lease creation, final checkpoint, release, worker removal at shutdown | 100 ms | 5 s | 11 | yes |
//! | [`processing`] | a failing `process`, `initialize`, `shard_ended` or on-failure handler | 100 ms | `with_retry_backoff_max` (30 s) | unbounded | yes |
//! | [`joining`] | the first heartbeat of an incarnation (at start and after fencing), a snapshot's preparation | 200 ms | `renew_interval` | unbounded | no |
//! | [`heartbeat`] | a failed heartbeat, until the next one is confirmed | 100 ms | `renew_interval` / 4 (at least 100 ms) | unbounded | yes |
//! | [`table_scan`] | a snapshot segment's Scan pages and the key-schema lookup (throttling, 5xx, transport) | 50 ms | 10 s | unbounded | yes |
//! | [`idle_poll`] | pauses between polls of an idle shard (not an error) | `with_idle_backoff` min (100 ms) | max (1 s) | unbounded | no |
//!
//! Attempts count the first call. Only transient failures are retried (throttling, 5xx,
//! transport: [`is_retryable_api`], [`is_retryable_store`]); a lost lease, a race or a
//! refused request goes back to the caller at once.
//!
//! **What a worker gives up on.** Which failures are transient is decided once, by the
//! error's class (`dynamodb_streams_leases::Error::is_transient`, the SDK classification
//! of `dynamodb_streams_leases::aws::classify`): throttling, 5xx and transport failures
//! (connection refused, DNS, timeouts, a network partition) are; a missing table, access
//! denied or a refused request are not. A transient failure stops a worker at one point
//! only: the [`first_contact`], before the lease table (and a table's stream) ever
//! answered, where an endpoint that cannot be reached is most likely a wrong one, so the
//! start fails within seconds naming it. Once the lease table answered, the worker rides
//! out an outage of any length: the first heartbeat and a snapshot's preparation are
//! retried without end, raced against shutdown ([`until_passed`], with the [`joining`] pauses), and a running worker fences
//! itself, keeps trying, and comes back as a new incarnation. A running worker stops on
//! one error only: its lease table is gone (`is_table_missing`). Two pauses are fixed rather than
//! growing: a shard held at an undecodable record, and a shard consumer that stopped on an
//! error, both wait `with_retry_backoff_max` before trying again.
//!
//! A loop that lives long keeps its backoff in a [`ResettingBackoff`]: the pauses grow
//! while failures follow each other and start over after a quiet period without one. Each
//! shard's poll loop does so for [`streams_read`] (quiet period 10 s), so a shard that is
//! throttled again and again backs off further instead of starting at 50 ms each time.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::time::Instant;

use crate::streams::ApiError;

/// The longest pause between retries of GetRecords and GetShardIterator.
pub(crate) const STREAMS_READ_MAX_DELAY: Duration = Duration::from_secs(10);

/// A worker's first contact with AWS: checking the lease table and looking up the streams
/// of tables given by name. Few attempts, so that a wrong endpoint or a missing table fails
/// the start within seconds; 200 ms then up to 1 s, jittered, 2 retries. Only these calls:
/// after the lease table answered, a failure is an outage to ride out, not a wrong setting.
pub(crate) fn first_contact() -> ExponentialBuilder {
    exponential(millis(200), Duration::from_secs(1))
        .with_jitter()
        .with_max_times(2)
}

/// GetRecords and GetShardIterator of the poll loop, on throttling, 5xx and transport
/// errors: 50 ms then doubling up to 10 s, jittered, never giving up (a shard's reader has
/// nothing better to do; lease loss and shutdown stop it from outside).
pub(crate) fn streams_read() -> ExponentialBuilder {
    exponential(millis(50), STREAMS_READ_MAX_DELAY).with_jitter()
}

/// DescribeStream pages (shard sync, the reader) and child-shard lookups at shard end:
/// 100 ms then up to 5 s, jittered, 8 retries; after that the next sync interval tries
/// again.
pub(crate) fn describe_stream() -> ExponentialBuilder {
    exponential(millis(100), Duration::from_secs(5))
        .with_jitter()
        .with_max_times(8)
}

/// Lease-table writes that no loop repeats (writing `SHARD_END`, creating leases, the final
/// checkpoint and the release of a stopping shard, removing the worker item at shutdown), on
/// transient errors: 100 ms then up to 5 s, jittered, 10 retries. A lost lease is never
/// retried.
pub(crate) fn lease_store() -> ExponentialBuilder {
    exponential(millis(100), Duration::from_secs(5))
        .with_jitter()
        .with_max_times(10)
}

/// Redelivery of a batch whose processing failed (and of a failed `initialize` or
/// `shard_ended`): 100 ms then doubling up to `max` (`with_retry_backoff_max`, 30 s by
/// default), jittered, forever: nothing is skipped. Each batch starts over at 100 ms.
pub(crate) fn processing(max: Duration) -> ExponentialBuilder {
    exponential(millis(100).min(max), max).with_jitter()
}

/// A new incarnation until its first heartbeat is confirmed (at start, once the lease table
/// answered the first contact, and after fencing), and a snapshot's preparation: 200 ms
/// then doubling up to `renew_interval`, not jittered (only this worker is waiting),
/// forever: an outage of the lease table is waited out, shutdown stops the wait.
pub(crate) fn joining(renew_interval: Duration) -> ExponentialBuilder {
    exponential(millis(200).min(renew_interval), renew_interval)
}

/// A failed heartbeat, until the next one is confirmed: 100 ms doubling up to a quarter
/// of `renew_interval`, jittered, never giving up. Heartbeats have this budget of their
/// own (not the lease-store policy shared with checkpoint writes): waiting a whole renew
/// interval after a throttled heartbeat would leave two tries before the worker fences.
pub(crate) fn heartbeat(renew_interval: Duration) -> ExponentialBuilder {
    let max = (renew_interval / 4).max(millis(100));
    exponential(millis(100).min(max), max).with_jitter()
}

/// A snapshot segment's Scan pages, on throttling, 5xx and transport errors: like
/// [`streams_read`] (50 ms then doubling up to 10 s, jittered, never giving up): a segment
/// has nothing better to do, and lease loss and shutdown stop it from outside.
pub(crate) fn table_scan() -> ExponentialBuilder {
    streams_read()
}

/// Pauses between polls of an idle shard: `min` after the first empty page, doubling up to
/// `max`, not jittered; a page with records starts over. Bounds the delivery latency of a
/// quiet shard and the cost of polling it.
pub(crate) fn idle_poll(min: Duration, max: Duration) -> ExponentialBuilder {
    exponential(min, max)
}

/// Doubling from `min` up to `max`, without jitter, never giving up: what every policy
/// above starts from.
fn exponential(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}

const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Calls `call` until it succeeds, fails with an error `when` rejects, or `policy` gives up,
/// pausing between attempts as `policy` says.
///
/// A plain loop rather than backon's `Retryable`: the futures of `async_trait` methods
/// borrow their arguments, and backon's retry future holding them is not provably `Send`
/// for every lifetime, which `tokio::spawn` needs.
pub(crate) async fn call<T, E, Fut>(
    policy: impl BackoffBuilder,
    when: impl Fn(&E) -> bool,
    mut call: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut pauses = policy.build();
    loop {
        match call().await {
            Err(error) if when(&error) => pause_or_give_up(&mut pauses, error).await?,
            result => return result,
        }
    }
}

/// Whether shutdown may cut the first attempt of [`until_passed`] short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FirstAttempt {
    /// Shutdown ends the wait at once, before or during the first attempt too: a worker
    /// asked to stop before it joined writes nothing.
    Raced,
    /// The first attempt runs to its end whatever shutdown does, so that its answer (a
    /// refusal, such as a `KEYS_ONLY` stream) reaches even a worker asked to stop at once;
    /// only the pauses and attempts after a transient failure give way to shutdown.
    Completed,
}

/// Calls `call` until it passes, raced against `shutdown`: what a worker does once the
/// lease table answered its first contact, where an outage is waited out, not reported
/// (the first heartbeat of an incarnation, a snapshot's preparation).
///
/// Promises:
/// - errors `retried` accepts (the transient ones: [`is_retryable_store`], [`is_retryable`])
///   are tried again after the [`joining`] policy's pause, without end;
/// - it gives up only on an error `retried` rejects (returned at once, untried again) or on
///   shutdown (`Ok(None)`, at once, in the middle of an attempt or a pause);
/// - shutdown is checked before each attempt and pause resumes (a shutdown that came
///   together with an answer wins); whether the first attempt is raced is `first`'s choice.
pub(crate) async fn until_passed<T, E, Fut>(
    renew_interval: Duration,
    retried: impl Fn(&E) -> bool,
    first: FirstAttempt,
    shutdown: impl Future<Output = ()>,
    mut call: impl FnMut() -> Fut,
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut pauses = joining(renew_interval).build();
    let mut raced = first == FirstAttempt::Raced;
    loop {
        // Not called before it is polled: a raced attempt that shutdown beat did nothing.
        let attempt = async { call().await };
        let answer = if raced {
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(None),
                answer = attempt => answer,
            }
        } else {
            attempt.await
        };
        raced = true;
        match answer {
            Err(error) if retried(&error) => {
                let pause = pause_or_give_up(&mut pauses, error);
                tokio::select! {
                    biased;
                    () = &mut shutdown => return Ok(None),
                    paused = pause => paused?,
                }
            }
            answer => return answer.map(Some),
        }
    }
}

/// After a retryable failure: sleeps the backoff's next pause, or hands `error` back when
/// the backoff gives up.
pub(crate) async fn pause_or_give_up<E>(
    pauses: &mut impl Iterator<Item = Duration>,
    error: E,
) -> Result<(), E> {
    match pauses.next() {
        Some(pause) => {
            tokio::time::sleep(pause).await;
            Ok(())
        }
        None => Err(error),
    }
}

/// `pause` cut to whole milliseconds. backon computes pauses in `f32` (100 ms doubled is
/// 200.000003 ms), and tokio's timer, which counts whole milliseconds, would round that up.
pub(crate) fn whole_millis(pause: Duration) -> Duration {
    Duration::from_millis(u64::try_from(pause.as_millis()).unwrap_or(u64::MAX))
}

/// Whether a failed streams call is worth repeating (throttling, 5xx, transport).
pub(crate) fn is_retryable_api(error: &ApiError) -> bool {
    error.kind.is_retryable()
}

/// Whether a failed lease-store call is worth repeating (throttling, 5xx, transport); a
/// lost lease, a race or a refused write is not.
pub(crate) fn is_retryable_store(error: &dynamodb_streams_leases::Error) -> bool {
    error.is_transient()
}

/// Whether a consumer error wraps a retryable lease-store or streams failure.
pub(crate) fn is_retryable(error: &crate::Error) -> bool {
    match error {
        crate::Error::LeaseStore(e) => is_retryable_store(e),
        crate::Error::Api(e) => is_retryable_api(e),
        _ => false,
    }
}

/// The backoff of a long-lived loop: pauses grow while failures follow each other, and
/// start over from the policy's first pause once `quiet` has passed without one (counted
/// from the end of the last pause, so a long pause never resets the backoff by itself).
///
/// Like kube-runtime's `ResetTimerBackoff`. A policy that gives up (bounded attempts)
/// yields `None` until the quiet period has passed.
#[derive(Debug)]
pub(crate) struct ResettingBackoff<B: BackoffBuilder + Clone> {
    policy: B,
    quiet: Duration,
    current: Option<B::Backoff>,
    /// When the backoff starts over if no failure comes first.
    resets_at: Option<Instant>,
}

impl<B: BackoffBuilder + Clone> ResettingBackoff<B> {
    /// A backoff following `policy` that resets after `quiet` without a failure.
    pub(crate) fn new(policy: B, quiet: Duration) -> Self {
        Self {
            policy,
            quiet,
            current: None,
            resets_at: None,
        }
    }

    /// The pause after a failure now; `None` when the policy gives up.
    pub(crate) fn next_pause(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self.resets_at.is_some_and(|at| now >= at) {
            self.current = None;
        }
        let pause = self
            .current
            .get_or_insert_with(|| self.policy.clone().build())
            .next();
        self.resets_at = Some(now + pause.unwrap_or_default() + self.quiet);
        pause
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn millis(pause: Option<Duration>) -> u128 {
        pause.unwrap().as_millis()
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_grow_while_failures_follow_each_other() {
        let policy = idle_poll(Duration::from_millis(100), Duration::from_millis(500));
        let mut backoff = ResettingBackoff::new(policy, Duration::from_secs(10));
        let pauses: Vec<u128> = (0..5).map(|_| millis(backoff.next_pause())).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_start_over_after_a_quiet_period() {
        let policy = idle_poll(Duration::from_millis(100), Duration::from_secs(1));
        let mut backoff = ResettingBackoff::new(policy, Duration::from_secs(10));
        backoff.next_pause();
        backoff.next_pause();
        // The quiet period counts from the end of the last pause (200 ms).
        tokio::time::advance(Duration::from_millis(10_100)).await;
        assert_eq!(millis(backoff.next_pause()), 400, "not quiet long enough");
        tokio::time::advance(Duration::from_millis(10_500)).await;
        assert_eq!(millis(backoff.next_pause()), 100, "quiet: starts over");
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_policy_gives_up_until_the_quiet_period_passed() {
        let policy = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_times(2);
        let mut backoff = ResettingBackoff::new(policy, Duration::from_secs(1));
        assert!(backoff.next_pause().is_some());
        assert!(backoff.next_pause().is_some());
        assert!(backoff.next_pause().is_none());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(millis(backoff.next_pause()), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_is_retried_only_on_accepted_errors_and_until_the_policy_gives_up() {
        let attempts = std::cell::Cell::new(0);
        let failing = || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>("transient") }
        };
        assert_eq!(
            call(first_contact(), |_| true, failing).await,
            Err("transient")
        );
        assert_eq!(attempts.get(), 3, "the first call and 2 retries");
        attempts.set(0);
        assert_eq!(
            call(first_contact(), |_| false, failing).await,
            Err("transient")
        );
        assert_eq!(attempts.get(), 1, "a rejected error is not retried");
    }

    /// The rule of the module docs: only the first contact gives up on a transient
    /// failure; a new incarnation waits out an outage of any length, never pausing longer
    /// than a renew interval. Partitions and timeouts are transient like throttling.
    #[test]
    fn only_the_first_contact_gives_up_on_an_outage() {
        assert_eq!(first_contact().build().count(), 2);
        let renew = Duration::from_secs(3);
        let pauses: Vec<Duration> = joining(renew).build().take(10_000).collect();
        assert_eq!(pauses.len(), 10_000, "never gives up");
        assert!(pauses.iter().all(|pause| *pause <= renew));
        let partitioned = dynamodb_streams_leases::Error::Unreachable {
            endpoint: "http://localhost:1".to_owned(),
            operation: "UpdateItem",
            table: "leases".to_owned(),
            source: "connection refused".into(),
        };
        assert!(is_retryable_store(&partitioned));
        assert!(is_retryable(&crate::Error::LeaseStore(partitioned)));
    }

    /// A call failing with `error` `failures` times before it passes (answering its
    /// attempt's number), counting its attempts in `attempts`.
    fn failing<'a>(
        attempts: &'a std::cell::Cell<u32>,
        failures: u32,
        error: &'static str,
    ) -> impl FnMut() -> std::future::Ready<Result<u32, &'static str>> + 'a {
        move || {
            attempts.set(attempts.get() + 1);
            std::future::ready(if attempts.get() <= failures {
                Err(error)
            } else {
                Ok(attempts.get())
            })
        }
    }

    const RENEW: Duration = Duration::from_secs(10);

    fn transient(error: &&str) -> bool {
        *error == "transient"
    }

    #[tokio::test(start_paused = true)]
    async fn until_passed_retries_a_transient_error_with_the_joining_pauses() {
        let attempts = std::cell::Cell::new(0);
        let start = Instant::now();
        let shutdown = std::future::pending();
        let passed = until_passed(
            RENEW,
            transient,
            FirstAttempt::Raced,
            shutdown,
            failing(&attempts, 2, "transient"),
        );
        assert_eq!(passed.await, Ok(Some(3)));
        // Pauses of 200 and 400 ms (backon's `f32` pauses, rounded up to a whole ms).
        let paused = start.elapsed();
        let (least, most) = (Duration::from_millis(600), Duration::from_millis(602));
        assert!(paused >= least && paused <= most, "{paused:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn until_passed_returns_a_fatal_error_at_once() {
        let attempts = std::cell::Cell::new(0);
        let start = Instant::now();
        let fatal = failing(&attempts, u32::MAX, "fatal");
        let shutdown = std::future::pending();
        let failed = until_passed(RENEW, transient, FirstAttempt::Raced, shutdown, fatal);
        assert_eq!(failed.await, Err("fatal"));
        assert_eq!(attempts.get(), 1, "never tried again");
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_pause_of_until_passed_ends_it_at_once() {
        let attempts = std::cell::Cell::new(0);
        let start = Instant::now();
        // Attempts at 0 and 200 ms; shutdown in the middle of the 400 ms pause after.
        let shutdown = tokio::time::sleep(Duration::from_millis(300));
        let never = until_passed(
            RENEW,
            transient,
            FirstAttempt::Raced,
            shutdown,
            failing(&attempts, u32::MAX, "transient"),
        );
        assert_eq!(never.await, Ok(None));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(300),
            "not at the pause's end"
        );
        assert_eq!(attempts.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_completed_first_attempt_runs_despite_shutdown() {
        let attempts = std::cell::Cell::new(0);
        let stopped = std::future::ready(());
        let refusing = failing(&attempts, u32::MAX, "fatal");
        let raced = until_passed(RENEW, transient, FirstAttempt::Raced, stopped, refusing);
        assert_eq!(raced.await, Ok(None), "a raced first attempt gives way");
        assert_eq!(attempts.get(), 0);
        let slow_refusal = || {
            attempts.set(attempts.get() + 1);
            async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Err::<(), _>("fatal")
            }
        };
        let stopped = std::future::ready(());
        let completed = until_passed(
            RENEW,
            transient,
            FirstAttempt::Completed,
            stopped,
            slow_refusal,
        );
        assert_eq!(completed.await, Err("fatal"), "the refusal is reported");
        attempts.set(0);
        let stopped = std::future::ready(());
        let completed = until_passed(
            RENEW,
            transient,
            FirstAttempt::Completed,
            stopped,
            failing(&attempts, u32::MAX, "transient"),
        );
        assert_eq!(completed.await, Ok(None), "the retries give way");
        assert_eq!(attempts.get(), 1);
    }

    #[test]
    fn jittered_pauses_stay_within_twice_the_bounds() {
        let mut pauses = streams_read().build();
        let first = pauses.next().unwrap();
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        let late = pauses.nth(20).unwrap();
        assert!(late >= STREAMS_READ_MAX_DELAY && late < STREAMS_READ_MAX_DELAY * 2);
        assert_eq!(lease_store().build().count(), 10);
        assert_eq!(describe_stream().build().count(), 8);
        assert_eq!(first_contact().build().count(), 2);
    }
}
