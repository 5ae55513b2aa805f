//! The clock fencing deadlines are measured on: tokio's clock plus the time the machine
//! spent suspended.
//!
//! A worker fences itself when no heartbeat was confirmed for its fencing deadline, so that
//! it stops before anyone may take its leases. Monotonic clocks (and tokio's timers) stop
//! while a laptop or VM is suspended: a worker suspended for a minute would resume
//! believing a few seconds passed, and deliver batches of leases others took meanwhile. On
//! Linux, `CLOCK_BOOTTIME` keeps counting through a suspend; the fencing clock is tokio's
//! `Instant::now()` plus how much further `CLOCK_BOOTTIME` ran than `CLOCK_MONOTONIC` since
//! the process started. Under tokio's paused clock (the simulation) the suspended time stays
//! zero, so the fencing clock is the virtual clock, and tests inject a suspend with
//! [`FencingClock::with_suspend`].

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

/// Where the suspended time comes from.
type SuspendSource = Arc<dyn Fn() -> Duration + Send + Sync>;

/// Tokio's clock plus the time spent suspended since the process started.
#[derive(Clone)]
pub(crate) struct FencingClock {
    suspended: SuspendSource,
}

impl std::fmt::Debug for FencingClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencingClock")
            .field("suspended", &(self.suspended)())
            .finish()
    }
}

impl Default for FencingClock {
    fn default() -> Self {
        Self {
            suspended: Arc::new(system_suspended),
        }
    }
}

impl FencingClock {
    /// A clock whose suspended time is `suspended()`: for tests.
    #[cfg(test)]
    pub(crate) fn with_suspend(suspended: impl Fn() -> Duration + Send + Sync + 'static) -> Self {
        Self {
            suspended: Arc::new(suspended),
        }
    }

    /// Now: tokio's clock plus the time suspended so far.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + (self.suspended)()
    }
}

/// How much longer `CLOCK_BOOTTIME` ran than `CLOCK_MONOTONIC` since the first call: the
/// time the machine was suspended since (zero where there is no such clock).
fn system_suspended() -> Duration {
    static START: OnceLock<Duration> = OnceLock::new();
    let gap = boot_minus_monotonic();
    suspended_since(*START.get_or_init(|| gap), gap)
}

/// The suspended time between two readings of the clocks' gap, in whole milliseconds. The
/// two clocks are read one after the other, so each gap is off by the nanoseconds between
/// the reads; counted, that noise moved fencing deadlines by a millisecond now and then,
/// and a simulation (paused tokio clock, explorer seed 337) did not replay exactly. A
/// suspend lasts far longer than a millisecond.
fn suspended_since(start: Duration, gap: Duration) -> Duration {
    let suspended = gap.saturating_sub(start);
    suspended - Duration::from_nanos(u64::from(suspended.subsec_nanos() % 1_000_000))
}

#[cfg(target_os = "linux")]
fn boot_minus_monotonic() -> Duration {
    use rustix::time::{ClockId, clock_gettime};
    let since = |spec: rustix::time::Timespec| {
        Duration::new(
            u64::try_from(spec.tv_sec).unwrap_or(0),
            u32::try_from(spec.tv_nsec).unwrap_or(0),
        )
    };
    let monotonic = since(clock_gettime(ClockId::Monotonic));
    let boot = since(clock_gettime(ClockId::Boottime));
    boot.saturating_sub(monotonic)
}

#[cfg(not(target_os = "linux"))]
fn boot_minus_monotonic() -> Duration {
    Duration::ZERO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_clock_has_not_been_suspended_during_a_test() {
        // Not a proof of anything but that the clocks read: the gap moves by less than a
        // second while the test runs.
        assert!(system_suspended() < Duration::from_secs(1));
        let clock = FencingClock::default();
        let before = std::time::Instant::now();
        let _ = clock.now();
        assert!(before.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn only_whole_milliseconds_count_as_suspended() {
        let start = Duration::from_nanos(1_234_567);
        let noise = start + Duration::from_nanos(700);
        assert_eq!(
            suspended_since(start, noise),
            Duration::ZERO,
            "reading noise"
        );
        assert_eq!(suspended_since(noise, start), Duration::ZERO);
        let suspend = start + Duration::from_secs(60) + Duration::from_micros(1_500);
        assert_eq!(
            suspended_since(start, suspend),
            Duration::from_millis(60_001)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspend_moves_the_fencing_clock_but_not_tokios() {
        let suspended = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let source = suspended.clone();
        let clock =
            FencingClock::with_suspend(move || *source.lock().unwrap_or_else(|e| e.into_inner()));
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(clock.now() - start, Duration::from_secs(2));
        *suspended.lock().unwrap_or_else(|e| e.into_inner()) = Duration::from_secs(60);
        assert_eq!(clock.now() - start, Duration::from_secs(62));
    }
}
