//! The leader's role as one worker sees it: the coordination item read on this worker's
//! clock, the claim when the leader is dead or none is named, and a leader's round.
//!
//! How often a worker reads the coordination item: all workers together about
//! [`COORDINATION_READS_PER_SECOND`] times a second, so each one every `workers / 300` s
//! (at least every scan interval), the count being the one the leader publishes there with
//! its heartbeat. Until the leader has counted the workers (a cold start: nobody leads yet,
//! or the first leader has not finished its first round; the item says 0), a worker cannot
//! know its share, so it reads as if 1,000 workers were counted (the size we design for:
//! every 3.3 s, so a cold start of 1,000 reads at the rate it will keep once counted), or
//! every `failover_time / 3` or every two scan intervals if that is shorter (once per
//! leader heartbeat, when the count is published; a short failover time or scan interval
//! keeps a quick first claim: a worker alone must start about as fast as its settings say),
//! and at least every scan interval. Every read is jittered (half to one and a half of its
//! interval), and a new incarnation's first read is drawn so that the reads of workers
//! started together are spread evenly from the first second on: the time a worker that had
//! always been reading would still wait for its next read (the equilibrium residual time of
//! the jittered interval), not a uniform point of one interval, whose reads pile up on the
//! early readers' second reads (at 1,000 workers started together the busiest second was
//! 312 read units against 150 on average).
//!
//! What it costs: a worker alone reads first after 0.54 of that interval on average (1.8 s
//! at the default settings, at most 5 s; it was 1 s on average, 2 s at most; 0.3 s, at most
//! 0.9 s, at a 300 ms scan interval, where it was 0.15 s and 0.3 s), and a scan interval
//! shorter than the default asks for that quicker start at the price of a busier cold start
//! of many workers (1,000 workers at a 1 s scan interval read 500 times a second, 250
//! units, until counted), and only a cold start's claim of the leader's role waits for that
//! read (leases wait for the leader's plan, which comes with its first round). A failover
//! does not: a worker wakes when the leader's counter would turn stale (`failover_time`
//! after it last saw it move) and reads then, whatever its interval. A new leader publishes
//! the count the item already held until its own first round has counted the workers, so a
//! takeover does not send the workers back to the cold-start rate.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use dynamodb_streams_leases::{LeaseStore, WorkerRecord};
use tokio::time::Instant;

use super::{State, Worker};
use crate::error::Result;
use crate::events::{Event, LeaseScanDiscarded};
use crate::leader::{Leader, LeaderEnv};
use crate::processor::ProcessorFactory;

/// How many coordination-item reads per second all workers together aim at: half a read
/// unit each, so the item stays at about 150 read units a second (a twentieth of what one
/// partition serves) however many workers poll it.
const COORDINATION_READS_PER_SECOND: f64 = 300.0;

/// Each read of the coordination item is scheduled this fraction of its interval earlier
/// or later, at random: workers that started in the same second (a cold start, a
/// deployment) drift apart within a few reads instead of all reading in the same second
/// for ever, which made the item's busiest second four times its average.
const COORDINATION_JITTER: f64 = 0.5;

/// While the worker count is not known yet, each worker reads the coordination item as if
/// this many workers were counted: the size we design for, so that a cold start of that
/// many reads it at the steady rate. Bounded whatever the failover time (up to "never").
const UNKNOWN_COUNT_ASSUMED: f64 = 1000.0;

/// ... but at least this many times per `failover_time`: about once per leader heartbeat
/// (`renew_interval` defaults to a third of `failover_time`), when the leader publishes
/// the count; a short failover time keeps a quick first claim.
const UNKNOWN_COUNT_READS_PER_FAILOVER: u32 = 3;

/// ... and at least once per this many scan intervals: the scan interval says how quickly
/// a worker must react, and a worker alone must claim the leader's role about that soon
/// (two applications started together must start about together; at the default 2 s the
/// 1,000-worker interval, 3.3 s, is the shorter).
const UNKNOWN_COUNT_SCAN_INTERVALS: u32 = 2;

/// The longest a worker that finds no leader waits before it claims the role: workers
/// starting together spread their claims over this, so that one wins and the others see it.
const CLAIM_SPREAD: Duration = Duration::from_millis(250);

impl<F: ProcessorFactory> Worker<F> {
    /// Reads the coordination item: judges the leader on this worker's clock, and claims
    /// the role if the leader is dead, or none is named (after a random delay).
    pub(super) async fn watch_leader(&self, state: &mut State) -> Result<()> {
        // Taken before the read: a failed read must not leave a due claim that wakes the
        // loop again at once.
        let claim_due = state.claim_at.take_if(|at| Instant::now() >= *at).is_some();
        // A failed read is retried a scan interval later (reads are woken off the tick).
        state.next_coordination = Instant::now() + self.shared.config.scan_interval;
        let coordination = self.shared.store.coordination().await?;
        let now = Instant::now();
        let me = state.incarnation.id.clone();
        state.next_coordination = now + self.jittered(self.read_interval(coordination.workers));
        match coordination.leader {
            Some(leader) if leader.worker_id == me => Ok(()),
            Some(leader) => {
                state.claim_at = None;
                state.leader_liveness.observe(
                    &[WorkerRecord {
                        worker_id: leader.worker_id.clone(),
                        heartbeat: leader.heartbeat,
                        updated_at: UNIX_EPOCH,
                        expires_at: UNIX_EPOCH,
                    }],
                    now,
                );
                if state.leader_liveness.is_alive(&leader.worker_id, now) {
                    return Ok(());
                }
                tracing::warn!(leader = %leader.worker_id, "the leader's heartbeat stopped for the failover time; claiming its role");
                self.claim(state, Some(leader.worker_id), coordination.workers)
                    .await
            }
            None if claim_due => self.claim(state, None, coordination.workers).await,
            None => match state.claim_at {
                Some(_) => Ok(()),
                None => {
                    let spread = (self.shared.config.scan_interval / 4).min(CLAIM_SPREAD);
                    let jitter = self.shared.api.random_u64() % (spread.as_millis() as u64).max(1);
                    state.claim_at = Some(now + Duration::from_millis(jitter));
                    Ok(())
                }
            },
        }
    }

    /// The mean time between this worker's reads of the coordination item when it says
    /// `workers` (0: not counted yet; see the module doc).
    fn read_interval(&self, workers: u64) -> Duration {
        let config = &self.shared.config;
        let share = |workers: f64| Duration::from_secs_f64(workers / COORDINATION_READS_PER_SECOND);
        let every = if workers == 0 {
            share(UNKNOWN_COUNT_ASSUMED)
                .min(config.failover_time / UNKNOWN_COUNT_READS_PER_FAILOVER)
                .min(config.scan_interval * UNKNOWN_COUNT_SCAN_INTERVALS)
        } else {
            share(workers as f64)
        };
        every.max(config.scan_interval)
    }

    /// `interval` moved earlier or later by up to [`COORDINATION_JITTER`] of it, at random:
    /// the mean stays `interval`, so the item's average load does not change.
    fn jittered(&self, interval: Duration) -> Duration {
        interval.mul_f64(1.0 - COORDINATION_JITTER + 2.0 * COORDINATION_JITTER * self.unit())
    }

    /// A random number in `[0, 1)`.
    fn unit(&self) -> f64 {
        (self.shared.api.random_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// When a new incarnation first reads the coordination item (the count is not known
    /// yet): after the time a worker that had always been reading at that interval would
    /// still wait, so that workers starting together read it at the steady rate from the
    /// first second on (module doc). That time is a uniform fraction of a size-biased
    /// interval: longer intervals are the likelier ones to be in progress at a given
    /// instant. Leases do not wait for it (the leader assigns them through the inbox);
    /// only a claim of the leader's role, when none is named, comes later.
    pub(super) fn first_coordination(&self) -> Instant {
        Instant::now() + self.residual(self.read_interval(0))
    }

    /// The equilibrium residual time of reads jittered around `interval`: with intervals
    /// uniform on `[a, b]`, a size-biased one (density proportional to its length) is
    /// `sqrt(a^2 + u (b^2 - a^2))`, and the time left of it a uniform fraction of that.
    fn residual(&self, interval: Duration) -> Duration {
        let (a, b) = (1.0 - COORDINATION_JITTER, 1.0 + COORDINATION_JITTER);
        let size_biased = (a * a + self.unit() * (b * b - a * a)).sqrt();
        interval.mul_f64(self.unit() * size_biased)
    }

    /// Names this worker the leader (conditional: none named, or `replacing`, judged dead).
    /// `workers` is the count the item holds: published again with the leader's heartbeat
    /// until this worker's first round counts them (0 stays "not counted yet").
    pub(super) async fn claim(
        &self,
        state: &mut State,
        replacing: Option<String>,
        workers: u64,
    ) -> Result<()> {
        let me = state.incarnation.id.clone();
        let store = self.announcer.inner();
        if !store.claim_leadership(&me, replacing.as_deref()).await? {
            // Another worker claimed first: read who at the next tick.
            state.next_coordination = Instant::now();
            return Ok(());
        }
        tracing::info!(incarnation = %me, replaced = ?replacing, "leading the application");
        state.leader = Some(Leader::new(
            self.shared.config.failover_time,
            replacing.as_deref(),
        ));
        state.incarnation.leading.send_replace(Some(workers));
        state.lead_now = true;
        Ok(())
    }

    /// A round of the leader; what it changed for this worker applies at once.
    pub(super) async fn lead(&self, state: &mut State) -> Result<()> {
        let me = state.incarnation.id.clone();
        let Some(leader) = state.leader.as_mut() else {
            return Ok(());
        };
        let announced: Arc<dyn LeaseStore> = self.shared.store.clone();
        let env = LeaderEnv {
            me: &me,
            store: self.announcer.inner(),
            announced: &announced,
            api: &self.shared.api,
            config: &self.shared.config,
            streams: &self.streams,
        };
        let started = Instant::now();
        let ticked = leader.tick(&env).await?;
        let live = leader.live_count;
        let again = leader.wants_rescan();
        let Some(for_me) = ticked else {
            state.leader = None;
            state.incarnation.leading.send_replace(None);
            return Ok(());
        };
        // Kept even if this worker was fenced meanwhile: the takes they tell of were made.
        for (to, keys) in for_me.undelivered {
            state.undelivered.keep(&to, keys);
        }
        if state.incarnation.fenced.is_cancelled() {
            LeaseScanDiscarded {
                took: started.elapsed(),
            }
            .emit();
            return Ok(());
        }
        state.incarnation.leading.send_replace(Some(live));
        state.lead_now = again;
        for lease in for_me.leases {
            self.reconcile(state, lease).await;
        }
        self.confirm_parents(state).await;
        self.start_ready(state, Instant::now());
        Ok(())
    }
}
