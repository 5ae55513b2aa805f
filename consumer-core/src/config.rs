//! Settings of a consumer, with the defaults users get.

use std::time::Duration;

use crate::delivery::DeliveryConfig;
use crate::poll_loop::PollConfig;

/// Where a consumer starts on shards nobody has processed yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InitialPosition {
    /// From the oldest record still in the stream (up to 24 hours back).
    #[default]
    TrimHorizon,
    /// Only changes made after the consumer starts; shards already closed are marked done.
    Latest,
}

/// What to do when records were trimmed (older than 24 hours) before they were read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrimmedDataPolicy {
    /// Report the gap (error log, metric, [`RecordProcessor::data_lost`]) and go on from
    /// the oldest record still there.
    ///
    /// [`RecordProcessor::data_lost`]: crate::RecordProcessor::data_lost
    #[default]
    ContinueFromTrimHorizon,
    /// Stop processing the shard with [`Error::DataTrimmed`](crate::Error::DataTrimmed),
    /// reported the same way; an operator decides.
    Stop,
}

/// Everything that tunes a consumer, resolved: [`crate::ConsumerBuilder::build`] makes it
/// from the settings given and the defaults.
#[derive(Clone, Debug)]
pub(crate) struct ConsumerConfig {
    /// Where new root shards start.
    pub initial_position: InitialPosition,
    /// How shards are polled.
    pub poll: PollConfig,
    /// Pages fetched ahead while the processor works on the current one.
    pub prefetch_pages: usize,
    /// Bytes of fetched pages not yet delivered, across every shard of a worker.
    pub max_buffered_bytes: u64,
    /// Checkpoint after each successful batch (else the processor checkpoints itself).
    pub auto_checkpoint: bool,
    /// Checkpoint writes of a shard are coalesced to at most one per interval.
    pub checkpoint_interval: Duration,
    /// What to do about trimmed records.
    pub trimmed_data_policy: TrimmedDataPolicy,
    /// A worker whose heartbeat has not moved for this long is dead; its leases are taken.
    pub failover_time: Duration,
    /// How often a worker heartbeats.
    pub renew_interval: Duration,
    /// How often a worker scans the lease table to take leases and start shards.
    pub scan_interval: Duration,
    /// How often the holder of the shard-sync lease lists every shard of every stream.
    pub shard_sync_interval: Duration,
    /// The longest pause between deliveries of a failing batch, and how long a failed
    /// shard consumer waits before it restarts ([`crate::retry::processing`]).
    pub processing_backoff_max: Duration,
    /// Batch shaping, timeouts and the failure policy.
    pub delivery: DeliveryConfig,
    /// How much older than a `Since` start time a record must look to be skipped: covers
    /// the rounding of `ApproximateCreationDateTime` (`start_time`).
    pub creation_time_margin: Duration,
    /// Deliver every item of the table first (`with_snapshot`).
    pub snapshot: Option<crate::snapshot::SnapshotConfig>,
}

impl Default for ConsumerConfig {
    /// The defaults; `renew_interval` follows `failover_time` (a third of it).
    fn default() -> Self {
        let failover_time = Duration::from_secs(10);
        Self {
            initial_position: InitialPosition::default(),
            poll: PollConfig::default(),
            prefetch_pages: 1,
            max_buffered_bytes: 256 * 1024 * 1024,
            auto_checkpoint: true,
            checkpoint_interval: Duration::from_secs(1),
            trimmed_data_policy: TrimmedDataPolicy::default(),
            failover_time,
            renew_interval: failover_time / 3,
            scan_interval: Duration::from_secs(2),
            shard_sync_interval: Duration::from_secs(60),
            processing_backoff_max: Duration::from_secs(30),
            delivery: DeliveryConfig::default(),
            creation_time_margin: crate::start_time::DEFAULT_CREATION_TIME_MARGIN,
            snapshot: None,
        }
    }
}
