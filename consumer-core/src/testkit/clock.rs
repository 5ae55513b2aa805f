//! The simulation's clock: monotonic `tokio::time` plus a wall clock derived from it.
//!
//! Trimming and iterator expiry are measured on [`tokio::time::Instant`], so a test that
//! pauses tokio time controls them with `tokio::time::advance`. A test can also age only
//! the stream with a manual skew (a consumer that was down for a day). Record timestamps
//! and shard ids need wall-clock time; it is a fixed epoch plus elapsed simulated time, so
//! two runs print the same values.

use std::time::Duration;

use tokio::time::Instant;

/// The simulated wall clock at the start of every simulation: 2023-11-14T22:13:20Z.
pub(crate) const EPOCH_MILLIS: i64 = 1_700_000_000_000;

/// Monotonic and wall time of one simulation.
#[derive(Debug)]
pub(crate) struct SimClock {
    start: Instant,
    skew: Duration,
}

impl SimClock {
    /// A clock starting now, at [`EPOCH_MILLIS`].
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            skew: Duration::ZERO,
        }
    }

    /// The simulation's current instant.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.skew
    }

    /// Moves the simulation's time forward without moving tokio's.
    pub(crate) fn skew_by(&mut self, by: Duration) {
        self.skew = self.skew.saturating_add(by);
    }

    /// Milliseconds from the simulation's start to `at`.
    pub(crate) fn elapsed_millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant `millis` after the simulation's start.
    pub(crate) fn instant_at(&self, millis: u64) -> Instant {
        self.start + Duration::from_millis(millis)
    }

    /// The simulated wall clock at `at`, in milliseconds since the Unix epoch.
    pub(crate) fn wall_millis(&self, at: Instant) -> i64 {
        let elapsed = i64::try_from(self.elapsed_millis(at)).unwrap_or(i64::MAX);
        EPOCH_MILLIS.saturating_add(elapsed)
    }
}
