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

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use checkpoint_store::{Lease, LeaseStore, WorkerRecord};

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

/// How `status` and `reset` judge liveness.
#[derive(Clone, Debug, clap::Args)]
pub struct LivenessArgs {
    /// A worker is alive when its stored heartbeat time is this recent (by this machine's
    /// clock).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "15s")]
    pub alive_within: Duration,
    /// Read the lease table twice, DURATION apart, and call alive the workers whose
    /// heartbeat counter moved (no clocks compared; use at least the failover time).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub observe: Option<Duration>,
}

impl LivenessArgs {
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
