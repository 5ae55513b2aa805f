//! The one rule for calls into user code, for shards and snapshot segments alike.
//!
//! Every processor callback and the on-failure handler run raced against:
//!
//! - **lease loss** (and fencing): the call is dropped at once and the task stops without
//!   writing ([`Interrupted::Lost`]);
//! - **the shutdown timeout**: once a release (shutdown or handoff) was asked for, the
//!   task's callbacks get `with_shutdown_timeout` in all, counted from the first moment one
//!   of them saw the release; then the running call is dropped
//!   ([`Interrupted::ShutdownTimedOut`]) and the task flushes what succeeded and releases;
//! - **the batch timeout** (`process` only): the call is dropped and fails with reason
//!   `timed-out`.
//!
//! A panic is caught and is a failure with reason `panicked`. A failure has one text for
//! every callback: the callback's own error as it returned it, "`NAME` panicked", or
//! "`NAME` ran longer than the batch timeout (D)", in an [`Error::Processor`] naming the
//! shard (or segment). Notifications (`data_lost`, `decode_failed`, `records_filtered`,
//! `records_failed`) return nothing: a panic in one is logged and the task goes on.
//! `lease_lost` comes after the lease is gone: it gets at most the shutdown timeout.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use crate::error::{BoxError, Error};
use crate::failure::FailureReason;
use crate::runtime::ShardSignals;

/// Why a task's work stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Interrupted {
    /// Shutdown or handoff: finish, flush, release.
    Release,
    /// The lease is gone (or the worker fenced): stop without writing.
    Lost,
    /// Shutdown or handoff, and the shutdown timeout passed while a callback ran: the
    /// callback was dropped; flush what succeeded and release.
    ShutdownTimedOut,
}

/// How a callback ended when nothing stopped it.
#[derive(Debug)]
pub(crate) enum Called<T> {
    Returned(T),
    Panicked,
    /// Dropped after the batch timeout (given here).
    TimedOut(Duration),
}

/// A callback that did not return `Ok`: what its records go to the on-failure handler as
/// (if this was their last attempt), and the error.
#[derive(Debug)]
pub(crate) struct CallbackFailed {
    pub reason: FailureReason,
    pub error: Error,
}

/// Runs the callbacks of one task (one lease) under the rule above.
#[derive(Debug)]
pub(crate) struct Callbacks {
    signals: ShardSignals,
    shutdown_timeout: Duration,
    /// When the shutdown timeout ends: set by the first callback that sees the release.
    deadline: OnceLock<Instant>,
    /// The shard or segment, for errors and logs.
    shard_id: String,
}

impl Callbacks {
    pub(crate) fn new(signals: &ShardSignals, shutdown_timeout: Duration, shard_id: &str) -> Self {
        Self {
            signals: signals.clone(),
            shutdown_timeout,
            deadline: OnceLock::new(),
            shard_id: shard_id.to_owned(),
        }
    }

    pub(crate) fn signals(&self) -> &ShardSignals {
        &self.signals
    }

    /// Completes once a release was asked for and the shutdown timeout passed since.
    async fn shutdown_expired(&self) {
        self.signals.release.cancelled().await;
        let deadline = *self
            .deadline
            .get_or_init(|| Instant::now() + self.shutdown_timeout);
        tokio::time::sleep_until(deadline).await;
    }

    /// Runs `call` raced against lease loss, the shutdown timeout and `timeout`: whichever
    /// comes first drops the call's future. A panic is caught.
    pub(crate) async fn call<T>(
        &self,
        timeout: Option<Duration>,
        call: impl Future<Output = T>,
    ) -> Result<Called<T>, Interrupted> {
        let timed_out = async {
            match timeout {
                Some(limit) => {
                    tokio::time::sleep(limit).await;
                    limit
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = self.signals.lost.cancelled() => Err(Interrupted::Lost),
            _ = self.shutdown_expired() => Err(Interrupted::ShutdownTimedOut),
            returned = AssertUnwindSafe(call).catch_unwind() => Ok(match returned {
                Ok(value) => Called::Returned(value),
                Err(_) => Called::Panicked,
            }),
            limit = timed_out => Ok(Called::TimedOut(limit)),
        }
    }

    /// What a callback named `name` came to: nothing if it returned `Ok`, else the
    /// failure with its one text.
    pub(crate) fn failure(
        &self,
        name: &str,
        called: Called<Result<(), BoxError>>,
    ) -> Option<CallbackFailed> {
        let (reason, source): (_, BoxError) = match called {
            Called::Returned(Ok(())) => return None,
            Called::Returned(Err(source)) => (FailureReason::RetriesExhausted, source),
            Called::Panicked => (FailureReason::Panicked, format!("`{name}` panicked").into()),
            Called::TimedOut(limit) => (
                FailureReason::TimedOut,
                format!("`{name}` ran longer than the batch timeout ({limit:?})").into(),
            ),
        };
        Some(CallbackFailed {
            reason,
            error: self.failed(source),
        })
    }

    /// The error of a failed callback of this task.
    pub(crate) fn failed(&self, source: BoxError) -> Error {
        Error::Processor {
            shard_id: self.shard_id.clone(),
            source,
        }
    }

    /// A hook that returns a result (`initialize`, `shard_ended`, `shutdown_requested`,
    /// the on-failure handler), under the rule; its error, panic or timeout as an error.
    pub(crate) async fn hook(
        &self,
        name: &str,
        call: impl Future<Output = Result<(), BoxError>>,
    ) -> Result<Result<(), Error>, Interrupted> {
        let called = self.call(None, call).await?;
        Ok(match self.failure(name, called) {
            None => Ok(()),
            Some(failed) => Err(failed.error),
        })
    }

    /// A notification (`data_lost`, `decode_failed`, `records_filtered`, `records_failed`)
    /// under the rule: a panic is logged and the task goes on.
    pub(crate) async fn notify(
        &self,
        name: &str,
        call: impl Future<Output = ()>,
    ) -> Result<(), Interrupted> {
        if let Called::Panicked = self.call(None, call).await? {
            tracing::error!(shard_id = %self.shard_id, "`{name}` panicked; going on");
        }
        Ok(())
    }

    /// A last callback after the lease is gone (`lease_lost`), or of a task that already
    /// ended: at most the shutdown timeout from now, a panic caught; either is logged.
    pub(crate) async fn last_word(&self, name: &str, call: impl Future<Output = ()>) {
        let limit = self.shutdown_timeout;
        match tokio::time::timeout(limit, AssertUnwindSafe(call).catch_unwind()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!(shard_id = %self.shard_id, "`{name}` panicked"),
            Err(_) => {
                tracing::error!(shard_id = %self.shard_id, ?limit, "`{name}` did not return within the shutdown timeout; dropped")
            }
        }
    }

    /// Waits `pause` unless the lease is lost or a release is asked for first (a pause
    /// between attempts never holds up a shutdown or a handoff).
    pub(crate) async fn pause(&self, pause: Duration) -> Result<(), Interrupted> {
        self.until_stopped(tokio::time::sleep(pause)).await
    }

    /// Framework work (reading, gathering a batch) that a release or lease loss ends.
    pub(crate) async fn until_stopped<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        self.ended_by(true, work).await
    }

    /// Framework work that only lease loss ends (a write that must finish on release).
    pub(crate) async fn unless_lost<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        self.ended_by(false, work).await
    }

    async fn ended_by<T>(
        &self,
        release: bool,
        work: impl Future<Output = T>,
    ) -> Result<T, Interrupted> {
        tokio::select! {
            biased;
            _ = self.signals.lost.cancelled() => Err(Interrupted::Lost),
            _ = self.signals.release.cancelled(), if release => Err(Interrupted::Release),
            done = work => Ok(done),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn callbacks(timeout: Duration) -> (ShardSignals, Callbacks) {
        let signals = ShardSignals::default();
        let callbacks = Callbacks::new(&signals, timeout, "shard-1");
        (signals, callbacks)
    }

    #[tokio::test(start_paused = true)]
    async fn the_shutdown_timeout_is_one_deadline_for_every_callback_of_a_task() {
        let (signals, callbacks) = callbacks(Duration::from_secs(30));
        signals.release.cancel();
        let started = Instant::now();
        let first = callbacks
            .call(None, tokio::time::sleep(Duration::from_secs(20)))
            .await;
        assert!(matches!(first, Ok(Called::Returned(()))));
        // The second callback gets what is left of the 30 s, not 30 s of its own.
        let second = callbacks.call(None, std::future::pending::<()>()).await;
        assert_eq!(second.unwrap_err(), Interrupted::ShutdownTimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn lease_loss_drops_a_call_and_wins_over_everything_else() {
        let (signals, callbacks) = callbacks(Duration::ZERO);
        signals.release.cancel();
        signals.lost.cancel();
        let called = callbacks
            .call(Some(Duration::ZERO), std::future::ready(()))
            .await;
        assert_eq!(called.unwrap_err(), Interrupted::Lost);
    }

    #[tokio::test(start_paused = true)]
    async fn panics_and_timeouts_are_failures_with_one_text() {
        let (_signals, callbacks) = callbacks(Duration::from_secs(30));
        let panicked = callbacks
            .hook("initialize", async { panic!("boom") })
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            panicked.to_string(),
            "processor failed on shard shard-1: `initialize` panicked"
        );
        type Call = std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>>>>;
        let process = async |timeout, call: Call| {
            let called = callbacks.call(timeout, call).await.unwrap();
            let failed = callbacks.failure("process", called).unwrap();
            (failed.reason, failed.error.to_string())
        };
        let hangs = std::future::pending::<Result<(), BoxError>>();
        assert_eq!(
            process(Some(Duration::from_secs(2)), Box::pin(hangs)).await,
            (
                FailureReason::TimedOut,
                "processor failed on shard shard-1: `process` ran longer than the batch timeout (2s)"
                    .to_owned()
            )
        );
        let fails = async { Err::<(), BoxError>("sink down".into()) };
        assert_eq!(
            process(None, Box::pin(fails)).await,
            (
                FailureReason::RetriesExhausted,
                "processor failed on shard shard-1: sink down".to_owned()
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_early_on_release() {
        let (signals, callbacks) = callbacks(Duration::from_secs(30));
        signals.release.cancel();
        let started = Instant::now();
        assert_eq!(
            callbacks.pause(Duration::from_secs(60)).await,
            Err(Interrupted::Release)
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
