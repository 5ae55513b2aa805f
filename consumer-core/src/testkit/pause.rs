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

use async_trait::async_trait;
use tokio::sync::watch;

use crate::streams::{ApiError, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi};

/// Whether a worker runs or is paused; clones share the switch.
#[derive(Clone, Debug)]
pub struct PauseSwitch {
    paused: watch::Sender<bool>,
}

impl Default for PauseSwitch {
    fn default() -> Self {
        Self {
            paused: watch::Sender::new(false),
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
        self.paused.send_replace(true);
    }

    /// Lets held calls go on.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Whether the switch is paused now.
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Returns at once while running; waits for [`resume`](Self::resume) while paused.
    pub async fn running(&self) {
        let mut paused = self.paused.subscribe();
        // The sender lives in `self`, so waiting cannot fail with a closed channel.
        let _ = paused.wait_for(|paused| !paused).await;
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

#[async_trait]
impl<A: StreamsApi> StreamsApi for PausableStreams<A> {
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError> {
        self.switch.running().await;
        let answer = self.inner.latest_stream_arn(table).await;
        self.switch.running().await;
        answer
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        self.switch.running().await;
        let answer = self
            .inner
            .describe_stream(stream_arn, exclusive_start_shard_id)
            .await;
        self.switch.running().await;
        answer
    }

    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        self.switch.running().await;
        let answer = self.inner.child_shards(stream_arn, parent_shard_id).await;
        self.switch.running().await;
        answer
    }

    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        self.switch.running().await;
        let answer = self
            .inner
            .shard_iterator(stream_arn, shard_id, position)
            .await;
        self.switch.running().await;
        answer
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        self.switch.running().await;
        let answer = self.inner.get_records(iterator, limit).await;
        self.switch.running().await;
        answer
    }

    fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }

    fn random_u64(&self) -> u64 {
        self.inner.random_u64()
    }
}
