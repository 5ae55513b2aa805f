//! Whether a worker is alive, as a one-shot tool can tell.
//!
//! Workers judge each other without comparing clocks: a worker is dead when its heartbeat
//! counter has not moved for `failover_time` on the observer's monotonic clock. A tool that
//! runs once cannot watch for that long by default, so it has two ways:
//!
//! - **Stored time** (default): alive when the heartbeat time the worker stored is within
//!   `--alive-within` (default 15 s: the default failover time, 10 s, plus 5 s for clock
//!   skew between the worker's host and this one) of this machine's clock, and its TTL has
//!   not passed. Quick; trusts clocks to agree within a few seconds.
//! - **Observed** (`--observe DURATION`): reads the table twice, DURATION apart, and calls
//!   alive exactly the workers whose counter moved (or that appeared) in between, as the
//!   workers themselves do. Use a DURATION of at least the workers' failover time.
//!
//! Either window shorter than the workers' renew interval (`--renew-interval`, default the
//! library's: a third of the default failover time) is refused before anything is read: a
//! live worker heartbeats only once per interval, so it would be called dead, and `reset`
//! would move its leases without `--force`.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use dynamodb_streams_leases::{Lease, LeaseStore, WorkerRecord};

use crate::Failure;

/// Which workers are alive.
#[derive(Debug)]
pub struct Liveness {
    alive: HashMap<String, bool>,
}

impl Liveness {
    /// Judged from the stored heartbeat times, at `now`.
    pub fn from_stored_times(workers: &[WorkerRecord], window: Duration, now: SystemTime) -> Self {
        let alive = workers
            .iter()
            .map(|w| {
                let age = now.duration_since(w.updated_at).unwrap_or(Duration::ZERO);
                (w.worker_id.clone(), age <= window && w.expires_at > now)
            })
            .collect();
        Self { alive }
    }

    /// Judged from two reads: alive when the counter moved between them (or the worker
    /// only appeared in the second).
    pub fn from_two_reads(before: &[WorkerRecord], after: &[WorkerRecord]) -> Self {
        let seen: HashMap<&str, u64> = before
            .iter()
            .map(|w| (w.worker_id.as_str(), w.heartbeat))
            .collect();
        let alive = after
            .iter()
            .map(|w| {
                let moved = seen
                    .get(w.worker_id.as_str())
                    .is_none_or(|&earlier| w.heartbeat != earlier);
                (w.worker_id.clone(), moved)
            })
            .collect();
        Self { alive }
    }

    /// Whether `worker` (a worker id as stored in lease owners) is alive; a worker without
    /// a record is not.
    pub fn is_alive(&self, worker: &str) -> bool {
        self.alive.get(worker).copied().unwrap_or(false)
    }
}

/// The workers' renew interval when they do not set one: a third of the default failover
/// time (10 s), as `dynamodb_streams_consumer::ConsumerBuilder` derives it.
const DEFAULT_RENEW_INTERVAL: &str = "3333ms";

/// How `status` and `reset` judge liveness.
#[derive(Clone, Debug, clap::Args)]
pub struct LivenessArgs {
    /// A worker is alive when its stored heartbeat time is this recent (by this machine's
    /// clock). At least the renew interval.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "15s")]
    pub alive_within: Duration,
    /// Read the lease table twice, DURATION apart, and call alive the workers whose
    /// heartbeat counter moved (no clocks compared; use at least the failover time, and
    /// never less than the renew interval).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub observe: Option<Duration>,
    /// How often the workers heartbeat (`with_renew_interval`; default a third of their
    /// failover time). `--observe` and `--alive-within` shorter than this are refused.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = DEFAULT_RENEW_INTERVAL)]
    pub renew_interval: Duration,
}

impl LivenessArgs {
    /// Refuses windows in which a live worker need not heartbeat at all, naming the flag.
    pub fn check(&self) -> Result<(), Failure> {
        let format = |d: Duration| humantime::format_duration(d).to_string();
        if self.renew_interval.is_zero() {
            return Err(Failure(
                "--renew-interval 0s: workers heartbeat at an interval above zero".into(),
            ));
        }
        // Zero is never meaningful, even where --observe makes the window unused.
        if self.alive_within.is_zero() {
            return Err(Failure(
                "--alive-within 0s would call every worker dead: give at least the workers' \
                 renew interval"
                    .into(),
            ));
        }
        let (flag, window) = match self.observe {
            Some(observe) => ("--observe", observe),
            None => ("--alive-within", self.alive_within),
        };
        if window < self.renew_interval {
            return Err(Failure(format!(
                "{flag} {} is shorter than the workers' renew interval ({}; --renew-interval): \
                 a live worker may not heartbeat within it and would be called dead",
                format(window),
                format(self.renew_interval)
            )));
        }
        Ok(())
    }

    /// The leases and workers of `store` (the last read), and who is alive.
    pub async fn read(
        &self,
        store: &dyn LeaseStore,
    ) -> Result<(Vec<Lease>, Vec<WorkerRecord>, Liveness), Failure> {
        let (leases, workers) = store.snapshot().await?;
        let Some(observe) = self.observe else {
            let live = Liveness::from_stored_times(&workers, self.alive_within, SystemTime::now());
            return Ok((leases, workers, live));
        };
        // The wait is the measurement itself (how far the counters move), not a guess at
        // when something else is done.
        tokio::time::sleep(observe).await;
        let (leases, after) = store.snapshot().await?;
        let live = Liveness::from_two_reads(&workers, &after);
        Ok((leases, after, live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, heartbeat: u64, updated_at: SystemTime) -> WorkerRecord {
        WorkerRecord {
            worker_id: id.to_owned(),
            heartbeat,
            updated_at,
            expires_at: updated_at + Duration::from_secs(60),
        }
    }

    #[test]
    fn stored_times_within_the_window_are_alive() {
        let now = SystemTime::now();
        let workers = [
            record("fresh", 1, now - Duration::from_secs(2)),
            record("stale", 1, now - Duration::from_secs(20)),
            record("ahead", 1, now + Duration::from_secs(1)),
        ];
        let live = Liveness::from_stored_times(&workers, Duration::from_secs(15), now);
        assert!(live.is_alive("fresh"));
        assert!(!live.is_alive("stale"));
        assert!(live.is_alive("ahead"), "a clock slightly ahead is not dead");
        assert!(!live.is_alive("unknown"));
    }

    #[test]
    fn windows_shorter_than_the_renew_interval_are_refused_naming_the_flag() {
        let args = |alive_within: u64, observe: Option<u64>, renew_interval: u64| LivenessArgs {
            alive_within: Duration::from_millis(alive_within),
            observe: observe.map(Duration::from_millis),
            renew_interval: Duration::from_millis(renew_interval),
        };
        let refused = |a: LivenessArgs| match a.check() {
            Err(Failure(message)) => message,
            Ok(()) => panic!("accepted: {a:?}"),
        };
        assert!(args(15_000, None, 3_333).check().is_ok());
        assert!(args(15_000, Some(3_333), 3_333).check().is_ok());
        assert!(refused(args(0, None, 3_333)).contains("--alive-within 0s"));
        assert!(refused(args(0, Some(10_000), 3_333)).contains("--alive-within 0s"));
        assert!(refused(args(2_000, None, 3_333)).contains("--alive-within 2s"));
        let short = refused(args(15_000, Some(2_000), 3_333));
        assert!(
            short.contains("--observe 2s") && short.contains("3s 333ms"),
            "{short}"
        );
        assert!(refused(args(15_000, Some(0), 3_333)).contains("--observe 0s"));
        assert!(refused(args(15_000, None, 0)).contains("--renew-interval"));
        // Workers that heartbeat every second may be observed for two.
        assert!(args(15_000, Some(2_000), 1_000).check().is_ok());
    }

    #[test]
    fn two_reads_call_alive_the_counters_that_moved() {
        let t = SystemTime::now();
        let before = [record("moving", 4, t), record("stuck", 9, t)];
        let after = [
            record("moving", 5, t),
            record("stuck", 9, t),
            record("new", 1, t),
        ];
        let live = Liveness::from_two_reads(&before, &after);
        assert!(live.is_alive("moving"));
        assert!(!live.is_alive("stuck"));
        assert!(live.is_alive("new"));
    }
}
