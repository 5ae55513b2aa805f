//! The heartbeat task of one worker incarnation, and self-fencing.
//!
//! Every `renew_interval` the task bumps the worker's counter in its membership item (and,
//! while the worker leads, the leader's counter in the coordination item). If no heartbeat
//! was confirmed for the fencing deadline, measured on the [`FencingClock`] from when the
//! last confirmed one was sent, it cancels the incarnation's fencing token: every shard
//! stops at once, before any other worker may judge this one dead. A heartbeat refused
//! because the entry is gone (`WorkerRemoved`: the leader judged this worker dead) or
//! because another worker now leads fences at once too.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use dynamodb_streams_leases::LeaseStore;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fencing_clock::FencingClock;
use crate::retry;

/// The longest a wait of the task lasts before the fencing clock is read again: after a
/// suspend of the machine, the deadline is noticed within this much of waking up.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// One incarnation's heartbeat task.
pub(crate) struct Heartbeat {
    pub store: Arc<dyn LeaseStore>,
    /// The incarnation id.
    pub id: String,
    /// How far each heartbeat pushes the entry's expiry (for operators).
    pub ttl: Duration,
    /// How often to heartbeat.
    pub renew: Duration,
    /// How long without a confirmed heartbeat before fencing.
    pub deadline: Duration,
    pub clock: FencingClock,
    /// When (fencing clock) the last confirmed heartbeat was sent.
    pub confirmed_at: Instant,
    /// Cancelled to fence the incarnation.
    pub fenced: CancellationToken,
    /// Cancelled to end the task (shutdown, or a new incarnation).
    pub stop: CancellationToken,
    /// While this worker leads: the live workers it counts (renewed with the leadership).
    pub leading: watch::Receiver<Option<u64>>,
}

impl Heartbeat {
    /// Heartbeats every `renew` until stopped or fenced.
    pub(crate) async fn run(mut self) {
        let mut next = Instant::now() + self.renew;
        let mut pauses = retry::heartbeat(self.renew).build();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = self.expired() => return self.fence("no heartbeat confirmed in time"),
                _ = tokio::time::sleep_until(next) => {}
            }
            let sent = self.clock.now();
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return,
                _ = self.expired() => return self.fence("no heartbeat confirmed in time"),
                beat = self.beat() => match beat {
                    Ok(true) => {
                        self.confirmed_at = sent;
                        next = Instant::now() + self.renew;
                        pauses = retry::heartbeat(self.renew).build();
                    }
                    Ok(false) => return self.fence("another worker leads now"),
                    Err(dynamodb_streams_leases::Error::WorkerRemoved { .. }) => {
                        return self.fence("the leader judged this worker dead and removed its entry");
                    }
                    Err(error) => {
                        // Retried soon, on the heartbeat's own budget, not a renew interval later.
                        let pause = pauses.next().unwrap_or(self.renew);
                        tracing::warn!(incarnation = %self.id, %error, ?pause, "heartbeat failed");
                        next = Instant::now() + pause;
                    }
                },
            }
        }
    }

    /// One heartbeat; while leading, with the leader's heartbeat. `Ok(false)`: this worker
    /// was leading and another one is named now.
    async fn beat(&self) -> dynamodb_streams_leases::Result<bool> {
        let leading = *self.leading.borrow();
        let member = self.store.heartbeat(&self.id, self.ttl);
        match leading {
            None => member.await.map(|_| true),
            Some(workers) => {
                let lead = self.store.renew_leadership(&self.id, workers);
                let (member, lead) = tokio::join!(member, lead);
                member?;
                // Deposed while leading (not after resigning, which clears `leading`).
                Ok(lead? || self.leading.borrow().is_none())
            }
        }
    }

    /// Returns once the fencing deadline passed without a confirmed heartbeat, reading the
    /// fencing clock at least every [`CLOCK_CHECK`].
    async fn expired(&self) {
        loop {
            let since = self
                .clock
                .now()
                .saturating_duration_since(self.confirmed_at);
            if since >= self.deadline {
                return;
            }
            tokio::time::sleep((self.deadline - since).min(CLOCK_CHECK)).await;
        }
    }

    fn fence(&self, why: &str) {
        tracing::error!(incarnation = %self.id, why, "fencing this worker");
        self.fenced.cancel();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use dynamodb_streams_leases::InMemoryLeaseStore;
    use std::sync::Mutex;

    fn heartbeat(store: Arc<dyn LeaseStore>, clock: FencingClock) -> Heartbeat {
        let (_, leading) = watch::channel(None);
        Heartbeat {
            store,
            id: "w#1".into(),
            ttl: Duration::from_secs(60),
            renew: Duration::from_secs(3),
            deadline: Duration::from_secs(8),
            confirmed_at: clock.now(),
            clock,
            fenced: CancellationToken::new(),
            stop: CancellationToken::new(),
            leading,
        }
    }

    /// A machine suspended for a minute: tokio's clock (monotonic) barely moved, the
    /// fencing clock did, and the worker fences within a second of waking up, before its
    /// next heartbeat could be confirmed.
    #[tokio::test(start_paused = true)]
    async fn a_suspend_longer_than_the_deadline_fences_at_once_on_waking() {
        let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
        store
            .heartbeat("w#1", Duration::from_secs(60))
            .await
            .unwrap();
        let suspended = Arc::new(Mutex::new(Duration::ZERO));
        let source = suspended.clone();
        let clock = FencingClock::with_suspend(move || *source.lock().unwrap());
        let task = heartbeat(store.clone(), clock);
        let fenced = task.fenced.clone();
        let running = tokio::spawn(task.run());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!fenced.is_cancelled(), "heartbeats confirmed: no fencing");
        *suspended.lock().unwrap() = Duration::from_secs(60);
        let woke = Instant::now();
        fenced.cancelled().await;
        assert!(
            woke.elapsed() <= CLOCK_CHECK,
            "fenced {:?} after waking",
            woke.elapsed()
        );
        running.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_removed_entry_fences_at_the_next_heartbeat() {
        let store: Arc<dyn LeaseStore> = Arc::new(InMemoryLeaseStore::new());
        let first = store
            .heartbeat("w#1", Duration::from_secs(60))
            .await
            .unwrap();
        let task = heartbeat(store.clone(), FencingClock::default());
        let fenced = task.fenced.clone();
        let running = tokio::spawn(task.run());
        assert!(store.remove_worker("w#1", first.heartbeat).await.unwrap());
        let removed = Instant::now();
        fenced.cancelled().await;
        assert!(
            removed.elapsed() <= Duration::from_secs(3),
            "{:?}",
            removed.elapsed()
        );
        running.await.unwrap();
    }
}
