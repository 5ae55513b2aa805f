//! [`Gate`]: a value that held calls wait on, woken first come, first served.
//!
//! Why not `tokio::sync::watch` (or `Notify::notify_waiters`): a watch channel spreads its
//! waiters over eight `Notify`s, each waiter's picked by tokio's thread-local RNG, which is
//! seeded afresh in every process. The calls a frozen link or a paused worker held, released
//! at one instant, then ran in a different order from run to run, and with them whatever
//! raced between them (two checkpoint writes of one shard, a checkpoint against a release):
//! explorer seed 48578 gave one of six event logs per run. A gate wakes its waiters in the
//! order they first arrived, so the same seed does the same thing every run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

/// A value of `T` that calls wait on until it lets them through; waiters are woken in the
/// order they first waited (a waiter woken by a change that still holds it keeps its place).
pub(crate) struct Gate<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    value: T,
    /// The next waiter's place in line.
    next_ticket: u64,
    /// The waiters, by place in line: each wakes when its sender is used or dropped.
    held: BTreeMap<u64, oneshot::Sender<()>>,
}

impl<T: Copy> Gate<T> {
    /// A gate set to `value`, with no one waiting.
    pub(crate) fn new(value: T) -> Self {
        Self {
            state: Mutex::new(State {
                value,
                next_ticket: 0,
                held: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value now.
    pub(crate) fn get(&self) -> T {
        self.state().value
    }

    /// Sets the value and wakes every waiter, in line order, to look at it again.
    pub(crate) fn set(&self, value: T) {
        let held = {
            let mut state = self.state();
            state.value = value;
            std::mem::take(&mut state.held)
        };
        // Each send schedules its waiter's task; the runtime runs them in that order.
        for (_, waiter) in held {
            let _ = waiter.send(());
        }
    }

    /// Returns the value as soon as `open` accepts it: at once if it does now, otherwise
    /// after a [`set`](Self::set) to a value it accepts, in line with the other waiters.
    pub(crate) async fn wait_until(&self, open: impl Fn(&T) -> bool) -> T {
        let mut ticket = None;
        loop {
            let woken = {
                let mut state = self.state();
                if open(&state.value) {
                    return state.value;
                }
                // Waiters dropped while held (a call cut by a timeout) leave their line.
                state.held.retain(|_, waiter| !waiter.is_closed());
                let place = *ticket.get_or_insert_with(|| {
                    state.next_ticket += 1;
                    state.next_ticket
                });
                let (wake, woken) = oneshot::channel();
                state.held.insert(place, wake);
                woken
            };
            // The sender lives in `self` until it wakes this waiter: either way, look again.
            let _ = woken.await;
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Gate<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Gate")
            .field("value", &state.value)
            .field("held", &state.held.len())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Waiters pass in the order they arrived, whatever the runtime's RNG; one that a
    /// change left closed keeps its place for the next opening.
    #[tokio::test(start_paused = true)]
    async fn waiters_pass_in_the_order_they_arrived() {
        let gate = Arc::new(Gate::new(false));
        let passed = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..32 {
            let (gate, passed) = (gate.clone(), passed.clone());
            tasks.push(tokio::spawn(async move {
                gate.wait_until(|open| *open).await;
                passed.lock().unwrap().push(i);
            }));
            // Each arrives before the next.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gate.set(false);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(passed.lock().unwrap().is_empty(), "closed: nobody passes");
        gate.set(true);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*passed.lock().unwrap(), (0..32).collect::<Vec<_>>());
    }

    /// A waiter dropped while held leaves the line; the others still pass in order.
    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_while_held_leaves_the_line() {
        let gate = Gate::new(0_u8);
        let cut = tokio::time::timeout(Duration::from_secs(1), gate.wait_until(|v| *v > 0)).await;
        assert!(cut.is_err());
        let held = gate.wait_until(|v| *v > 0);
        tokio::pin!(held);
        assert!(futures::poll!(held.as_mut()).is_pending());
        assert_eq!(gate.state().held.len(), 1, "the dropped waiter is gone");
        gate.set(2);
        assert_eq!(held.await, 2);
        assert_eq!(gate.get(), 2);
    }
}
