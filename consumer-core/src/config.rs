//! Settings of a consumer, with the defaults users get.
//!
//! [`ConsumerConfig`] gathers every setting, resolved; each settings type lives where it is
//! read (the poll loop's, the delivery's, the snapshot's, the start position's in
//! `start_time`), so those modules never import this one and the tasks that read the whole
//! configuration (through `runtime`) sit above all of them. Read only by the fetch task,
//! [`TrimmedDataPolicy`] stays here.

use std::time::Duration;

use crate::delivery::DeliveryConfig;
use crate::poll_loop::PollConfig;
use crate::start_time::InitialPosition;

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

/// The longest a duration setting is taken to be: a longer one (`Duration::MAX` for "never")
/// counts as 100 years, so that `Instant + setting`, and sums and small multiples of
/// settings, cannot overflow anywhere in the consumer.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// `duration`, at most [`LONGEST_SETTING`].
pub(crate) fn capped(duration: Duration) -> Duration {
    duration.min(LONGEST_SETTING)
}

impl ConsumerConfig {
    /// Checks the settings; the error names the builder method that set the wrong one (and,
    /// for a combination, the other in its text).
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        let (poll, renew) = (&self.poll, self.renew_interval);
        first_wrong([
            (
                !(1..=1000).contains(&poll.batch_limit),
                "with_batch_limit",
                "must be between 1 and 1000 (the GetRecords limit)",
            ),
            (
                poll.idle_backoff_min > poll.idle_backoff_max,
                "with_idle_backoff",
                "min must not exceed max",
            ),
            (
                poll.idle_backoff_min.is_zero(),
                "with_idle_backoff",
                "min must be above zero: an idle shard would be polled in a busy loop",
            ),
            (
                self.processing_backoff_max.is_zero(),
                "with_retry_backoff_max",
                "must be above zero: a failing batch would be retried in a busy loop",
            ),
        ])?;
        self.delivery.validate()?;
        if let Some(snapshot) = &self.snapshot {
            snapshot.validate()?;
            self.snapshot_fits()
                .map_err(|text| ("with_snapshot", text))?;
        }
        first_wrong([
            (
                self.failover_time < Duration::from_secs(1),
                "with_failover_time",
                "must be at least 1 s",
            ),
            (
                renew.is_zero() || renew * 2 > self.failover_time,
                "with_renew_interval",
                "must be above zero and at most half the failover time, so a heartbeat can fail once without losing the leases",
            ),
        ])?;
        let stuck = dynamodb_streams_leases::aws::LIVENESS_ATTEMPT_TIMEOUT;
        if renew + stuck >= self.failover_time {
            return Err((
                "with_failover_time",
                format!(
                    "must exceed the renew interval ({renew:?}) plus the attempt timeout of a heartbeat ({stuck:?}): one stuck heartbeat would let other workers take this worker's leases"
                ),
            ));
        }
        first_wrong([
            (
                self.scan_interval.is_zero(),
                "with_scan_interval",
                "must be above zero",
            ),
            (
                self.max_buffered_bytes == 0,
                "with_max_buffered_bytes",
                "must be above zero: no page could ever be fetched",
            ),
            (
                self.shard_sync_interval.is_zero(),
                "with_shard_sync_interval",
                "must be above zero",
            ),
        ])
    }

    /// Caps every duration setting at [`LONGEST_SETTING`]: the one place user durations are
    /// bounded before any `Instant` arithmetic uses them.
    pub(crate) fn cap_durations(&mut self) {
        let delivery = &mut self.delivery;
        for duration in [
            &mut self.poll.idle_backoff_min,
            &mut self.poll.idle_backoff_max,
            &mut self.checkpoint_interval,
            &mut self.failover_time,
            &mut self.scan_interval,
            &mut self.shard_sync_interval,
            &mut self.processing_backoff_max,
            &mut self.creation_time_margin,
            &mut delivery.shutdown_timeout,
            &mut delivery.batching_window,
        ] {
            *duration = capped(*duration);
        }
        for duration in [&mut delivery.max_record_age, &mut delivery.batch_timeout]
            .into_iter()
            .flatten()
        {
            *duration = capped(*duration);
        }
        if let Some(snapshot) = &mut self.snapshot {
            snapshot.progress_interval = capped(snapshot.progress_interval);
        }
    }

    /// Settings that cannot apply to a snapshot (its records, or the stream that follows
    /// it); the text names the other setting, so none is silently ignored. Every other
    /// delivery setting applies to snapshot records as to stream records.
    fn snapshot_fits(&self) -> Result<(), String> {
        if self.delivery.max_record_age.is_some() {
            return Err("cannot be combined with `with_max_record_age`: a scanned item has no creation time, and the stream records that follow a long snapshot would go to the on-failure handler instead of the sink the snapshot fills".into());
        }
        if self.initial_position == InitialPosition::Latest {
            return Err("cannot be combined with `with_initial_position(Latest)`: after a snapshot the stream starts where the snapshot began (`TRIM_HORIZON`, skipping records created before it), so the snapshot's items and the stream's later changes together give the whole table".into());
        }
        if !self.auto_checkpoint {
            return Err("cannot be combined with `with_auto_checkpoint(false)`: a snapshot record has no sequence number to checkpoint at; the framework stores a segment's scan position once every record of a page is done".into());
        }
        Ok(())
    }
}

/// The first check that finds its setting wrong: `(wrong, builder method, why)`.
fn first_wrong<const N: usize>(
    checks: [(bool, &'static str, &str); N],
) -> Result<(), (&'static str, String)> {
    match checks.into_iter().find(|(wrong, ..)| *wrong) {
        Some((_, key, problem)) => Err((key, problem.to_owned())),
        None => Ok(()),
    }
}
