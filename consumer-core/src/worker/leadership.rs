//! The leader's role as one worker sees it: the coordination item read on this worker's
//! clock, the claim when the leader is dead or none is named, and a leader's round.

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
        let every =
            Duration::from_secs_f64(coordination.workers as f64 / COORDINATION_READS_PER_SECOND);
        state.next_coordination = now + self.jittered(every.max(self.shared.config.scan_interval));
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
                self.claim(state, Some(leader.worker_id)).await
            }
            None if claim_due => self.claim(state, None).await,
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

    /// `interval` moved earlier or later by up to [`COORDINATION_JITTER`] of it, at random:
    /// the mean stays `interval`, so the item's average load does not change.
    fn jittered(&self, interval: Duration) -> Duration {
        let unit = (self.shared.api.random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        interval.mul_f64(1.0 - COORDINATION_JITTER + 2.0 * COORDINATION_JITTER * unit)
    }

    /// When a new incarnation first reads the coordination item: at a random instant
    /// within the first scan interval, so that workers starting together do not all read
    /// it in the same second. Leases do not wait for it (the leader assigns them through
    /// the inbox); only a claim of the leader's role, when none is named, comes later.
    pub(super) fn first_coordination(&self) -> Instant {
        let spread = self.shared.config.scan_interval.as_millis().max(1) as u64;
        Instant::now() + Duration::from_millis(self.shared.api.random_u64() % spread)
    }

    /// Names this worker the leader (conditional: none named, or `replacing`, judged dead).
    pub(super) async fn claim(&self, state: &mut State, replacing: Option<String>) -> Result<()> {
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
        state.incarnation.leading.send_replace(Some(1));
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
