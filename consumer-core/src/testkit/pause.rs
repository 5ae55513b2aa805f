//! [`PauseSwitch`] and [`PausableStreams`]: a worker stopped as a whole and resumed later,
//! like a process stopped by the OS or caught in a long pause.
//!
//! Tokio cannot stop some tasks of a runtime and not others, so a pause is modelled at the
//! worker's edges: its streams calls ([`PausableStreams`]), its lease-table calls (an
//! [`InstrumentedStore`](super::InstrumentedStore) link set to
//! [`Frozen`](super::Link::Frozen)) and its processors (which wait on the switch) hold
//! until it is resumed. Timers inside the worker still run meanwhile, so a paused worker
//! notices its silent heartbeats on time; what it cannot do is reach anything.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use futures::future::BoxFuture;

use super::gate::Gate;
use crate::streams::StreamsApi;

/// Whether a worker runs or is paused; clones share the switch. On resume, the calls it
/// held go on in the order they were stopped (a first-come, first-served gate), so a seed
/// replays exactly.
#[derive(Clone, Debug)]
pub struct PauseSwitch {
    paused: Arc<Gate<bool>>,
}

impl Default for PauseSwitch {
    fn default() -> Self {
        Self {
            paused: Arc::new(Gate::new(false)),
        }
    }
}

impl PauseSwitch {
    /// A running switch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds every call that waits on the switch from now on.
    pub fn pause(&self) {
        self.paused.set(true);
    }

    /// Lets held calls go on.
    pub fn resume(&self) {
        self.paused.set(false);
    }

    /// Whether the switch is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// Returns at once while running; waits for [`resume`](Self::resume) while paused.
    pub async fn running(&self) {
        self.paused.wait_until(|paused| !paused).await;
    }
}

/// A streams API whose calls wait while its [`PauseSwitch`] is paused, before and after
/// they reach `inner` (an answer that arrives during a pause is read after it).
pub struct PausableStreams<A> {
    inner: A,
    switch: PauseSwitch,
}

impl<A> PausableStreams<A> {
    /// `inner`, held by `switch`.
    pub fn new(inner: A, switch: PauseSwitch) -> Self {
        Self { inner, switch }
    }
}

impl<A> PausableStreams<A> {
    /// The API the calls reach.
    pub(crate) fn inner(&self) -> &A {
        &self.inner
    }

    /// The switch that holds the calls.
    pub(crate) fn switch(&self) -> &PauseSwitch {
        &self.switch
    }
}

impl<A: fmt::Debug> fmt::Debug for PausableStreams<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PausableStreams")
            .field("inner", &self.inner)
            .field("paused", &self.switch.is_paused())
            .finish()
    }
}

/// Every call is held while paused, before it reaches `inner` and after it answered.
#[async_trait]
impl<A: StreamsApi> crate::streams::StreamsWrapper for PausableStreams<A> {
    type Inner = A;

    fn wrapped(&self) -> &A {
        &self.inner
    }

    async fn around_call<T: Send>(&self, call: BoxFuture<'_, T>) -> T {
        self.switch.running().await;
        let answer = call.await;
        self.switch.running().await;
        answer
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// The calls a pause held go on in the order they stopped, every run alike (issue 15:
    /// a `watch` channel woke them in an order drawn from tokio's per-process RNG).
    #[tokio::test(start_paused = true)]
    async fn a_resumed_switch_lets_its_held_calls_go_in_the_order_they_came() {
        let switch = PauseSwitch::new();
        switch.pause();
        let went = Arc::new(Mutex::new(Vec::new()));
        let mut held = Vec::new();
        for i in 0..24 {
            let (switch, went) = (switch.clone(), went.clone());
            held.push(tokio::spawn(async move {
                switch.running().await;
                went.lock().unwrap().push(i);
            }));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(went.lock().unwrap().is_empty(), "paused: all held");
        switch.resume();
        for call in held {
            call.await.unwrap();
        }
        assert_eq!(*went.lock().unwrap(), (0..24).collect::<Vec<_>>());
        assert!(!switch.is_paused());
    }
}
