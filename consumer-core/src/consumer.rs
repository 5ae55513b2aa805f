//! The public entry point: configure a consumer, then run it until shutdown.

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_leases::{DynamoDbLeaseStore, LeaseStore};
use tokio_util::task::AbortOnDropHandle;

use crate::announce::AnnouncingStore;
use crate::budget::ByteBudget;
use crate::config::{ConsumerConfig, TrimmedDataPolicy, capped};
use crate::error::{Error, Result};
use crate::leader::StreamSource;
use crate::observability::{Health, Telemetry};
use crate::processor::ProcessorFactory;
use crate::retry::{self, FirstAttempt};
use crate::runtime::{PipelineRunner, Runtime};
use crate::start_time::InitialPosition;
use crate::streams::{SdkStreams, StreamsApi};
use crate::worker::Worker;

/// Where a consumer finds a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Table(String),
    StreamArn(String),
}

/// A configured consumer; [`Consumer::run_until`] runs it.
pub struct Consumer<F> {
    application: String,
    sources: Vec<Source>,
    worker_id: String,
    config: ConsumerConfig,
    api: Arc<dyn StreamsApi>,
    store: Arc<dyn LeaseStore>,
    factory: F,
    /// The named pipelines (`with_pipeline`), each with its settings.
    pub(crate) pipelines: Vec<Arc<dyn PipelineRunner>>,
    /// Health and lag, reported by the worker and its shard consumers.
    telemetry: Arc<Telemetry>,
}

impl Consumer<()> {
    /// Starts configuring a consumer for `application`: the name of its lease table, shared
    /// by every worker of the application.
    pub fn builder(application: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            application: application.into(),
            sources: Vec::new(),
            worker_id: None,
            config: ConsumerConfig::default(),
            renew_interval: None,
            sdk_config: None,
            api: None,
            store: None,
            per_shard_metrics: false,
            filter_patterns: Vec::new(),
            pipelines: Vec::new(),
            unknown_pipeline_settings: Vec::new(),
        }
    }
}

impl<F: ProcessorFactory> Consumer<F> {
    /// The stream ARN (and table) of every source, looked up concurrently.
    async fn resolve_streams(&self) -> Result<Vec<StreamSource>> {
        let lookups = self.sources.iter().map(|source| async move {
            Ok(match source {
                Source::Table(table) => StreamSource {
                    stream_arn: retry::call(
                        retry::first_contact(),
                        retry::is_retryable_api,
                        || self.api.latest_stream_arn(table),
                    )
                    .await?,
                    table: Some(table.clone()),
                },
                Source::StreamArn(arn) => StreamSource {
                    stream_arn: arn.clone(),
                    table: None,
                },
            })
        });
        futures::future::try_join_all(lookups).await
    }

    /// This worker's health (heartbeat confirmed, not fenced), e.g. for a `/healthz`
    /// endpoint ([`crate::observability`]).
    pub fn health(&self) -> Health {
        self.telemetry.health.clone()
    }

    pub(crate) fn config(&self) -> &ConsumerConfig {
        &self.config
    }

    /// The worker's id (as given, or `hostname-pid`).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Runs until `shutdown` completes, then stops gracefully: every processor finishes its
    /// batch and gets `shutdown_requested`, checkpoints are flushed, leases are released and
    /// the worker item is deleted, so other workers take over on their next scan.
    ///
    /// Fails early, naming the table or stream, when a table does not exist or has no
    /// stream, or when DynamoDB cannot be reached at the start-up check. Once the lease
    /// table answered, an outage of any length is ridden out (see `retry.rs`): the worker
    /// fences itself, keeps trying, and comes back when the link does.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        // Independent round trips, done together: startup latency is what a restarted
        // worker's shards wait for.
        let ensure_table = retry::call(retry::first_contact(), retry::is_retryable_store, || {
            self.store.ensure_table()
        });
        let (streams, table) = tokio::join!(self.resolve_streams(), ensure_table);
        table?;
        let streams = streams?;
        tracing::debug!(application = %self.application, "resolved streams");
        // Every write of this worker's components goes through it: ownership changes are
        // announced to the leader (coalesced).
        let announcer = Arc::new(AnnouncingStore::new(self.store));
        let store: Arc<dyn LeaseStore> = announcer.clone();
        tokio::pin!(shutdown);
        if let Some(snapshot) = &self.config.snapshot {
            let pipelines: Vec<String> =
                self.pipelines.iter().map(|p| p.name().to_owned()).collect();
            for source in &streams {
                // Idempotent, so run again whole after a transient failure: the lease
                // table answered the start-up check, an outage now is waited out. The
                // first attempt is not raced against shutdown, so that a refusal (a
                // KEYS_ONLY stream) is reported even to a worker asked to stop at once.
                let prepared = retry::until_passed(
                    self.config.renew_interval,
                    retry::is_retryable,
                    FirstAttempt::Completed,
                    shutdown.as_mut(),
                    || {
                        crate::snapshot::prepare(
                            self.api.as_ref(),
                            &store,
                            snapshot,
                            &source.stream_arn,
                            source.table.as_deref(),
                            &pipelines,
                        )
                    },
                )
                .await?;
                if prepared.is_none() {
                    return Ok(());
                }
            }
        }
        let shared = Runtime {
            budget: ByteBudget::new(self.config.max_buffered_bytes),
            api: self.api,
            store,
            factory: self.factory,
            config: self.config,
            worker_id: self.worker_id,
            telemetry: self.telemetry.clone(),
            pipelines: self.pipelines,
            pipeline: None,
        };
        // Sets the lag gauges every second while the worker runs.
        let _lag_gauges =
            AbortOnDropHandle::new(tokio::spawn(self.telemetry.lag.clone().publish_forever()));
        Worker {
            shared: Arc::new(shared),
            streams,
            announcer,
        }
        .run(shutdown)
        .await
    }
}

/// Configures a [`Consumer`]. Every setting has a default except the streams to consume
/// and where AWS is ([`with_sdk_config`](Self::with_sdk_config)). The order of the calls
/// does not matter: defaults that follow other settings are derived in [`build`](Self::build).
#[must_use]
pub struct ConsumerBuilder {
    application: String,
    sources: Vec<Source>,
    worker_id: Option<String>,
    /// The settings given so far, on top of the defaults (`renew_interval` aside).
    config: ConsumerConfig,
    /// The heartbeat period, when given; else a third of the failover time.
    renew_interval: Option<Duration>,
    sdk_config: Option<aws_types::SdkConfig>,
    api: Option<Arc<dyn StreamsApi>>,
    store: Option<Arc<dyn LeaseStore>>,
    /// Lag gauges per shard too (`with_per_shard_metrics`).
    per_shard_metrics: bool,
    /// Lambda filter patterns (`with_filter_pattern`), parsed by `build`.
    filter_patterns: Vec<String>,
    /// The named pipelines (`with_pipeline`), made with the final settings by
    /// `build_pipelines`.
    pub(crate) pipelines: Vec<PendingPipeline>,
    /// Names `with_pipeline_settings` was given that no `with_pipeline` before it gave.
    pub(crate) unknown_pipeline_settings: Vec<String>,
}

/// A pipeline given to the builder (`with_pipeline`, in `pipeline.rs`), made into its
/// runner with the final settings by `build_pipelines`. Here, with the builder that holds
/// it, so the builder does not import the module that adds its pipeline methods.
pub(crate) struct PendingPipeline {
    pub(crate) name: String,
    pub(crate) make:
        Box<dyn FnOnce(String, ConsumerConfig) -> Arc<dyn PipelineRunner> + Send + Sync>,
    /// Its settings where they differ from the consumer's (`with_pipeline_settings`).
    pub(crate) settings: Option<PipelineSettings>,
}

/// A pipeline's own settings: a change of the consumer's builder.
pub(crate) type PipelineSettings =
    Box<dyn FnOnce(ConsumerBuilder) -> ConsumerBuilder + Send + Sync>;

impl ConsumerBuilder {
    /// Consumes the current stream of `table` (may be given several times).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.sources.push(Source::Table(table.into()));
        self
    }

    /// Consumes the stream with this ARN (may be given several times).
    pub fn with_stream_arn(mut self, stream_arn: impl Into<String>) -> Self {
        self.sources.push(Source::StreamArn(stream_arn.into()));
        self
    }

    /// The AWS configuration (region, credentials, endpoint) for DynamoDB and its streams.
    pub fn with_sdk_config(mut self, sdk_config: &aws_types::SdkConfig) -> Self {
        self.sdk_config = Some(sdk_config.clone());
        self
    }

    /// This worker's id; unique per process. Default: `hostname-pid`.
    pub fn with_worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = Some(worker_id.into());
        self
    }

    /// Where shards nobody has processed yet start. Default: trim horizon.
    pub fn with_initial_position(self, position: InitialPosition) -> Self {
        self.set(|c| c.initial_position = position)
    }

    /// Records per GetRecords call, 1-1000 (also the largest batch). Default: 1000.
    pub fn with_batch_limit(self, limit: u32) -> Self {
        self.set(|c| c.poll.batch_limit = limit)
    }

    /// The pauses between polls of an idle shard: first `min`, doubling up to `max`.
    /// Default: 100 ms to 1 s.
    pub fn with_idle_backoff(self, min: Duration, max: Duration) -> Self {
        self.set(|c| (c.poll.idle_backoff_min, c.poll.idle_backoff_max) = (min, max))
    }

    /// Checkpoint writes per shard are coalesced to one per interval. Default: 1 s; zero
    /// writes after every batch.
    pub fn with_checkpoint_interval(self, interval: Duration) -> Self {
        self.set(|c| c.checkpoint_interval = interval)
    }

    /// Whether the framework checkpoints after each successful batch. Default: yes.
    pub fn with_auto_checkpoint(self, enabled: bool) -> Self {
        self.set(|c| c.auto_checkpoint = enabled)
    }

    /// How much older than a start time (a `Since` checkpoint: a `Latest` lease that moved
    /// before reading, or the stream after a snapshot) a record's
    /// `ApproximateCreationDateTime` must be for the record to be skipped. The stream
    /// rounds that time down, so the margin must cover the rounding or records made just
    /// after the start would be skipped, and the skew between this worker's clock and
    /// DynamoDB's. Default: 5 s (AWS rounds to the second; 4 s for skew); DynamoDB Local
    /// rounds to the minute, so tests against it set more than 60 s.
    pub fn with_creation_time_margin(self, margin: Duration) -> Self {
        self.set(|c| c.creation_time_margin = margin)
    }

    /// Before the stream, delivers every item of each table as a [`ChangeKind::Snapshot`]
    /// change (new image only), read by a parallel Scan whose segments are leased like
    /// shards; then the stream from `TRIM_HORIZON`, skipping records created more than
    /// [`with_creation_time_margin`](Self::with_creation_time_margin) before the snapshot
    /// began. Each item's later changes come after its snapshot record, so a sink applying
    /// new images converges to the table (README: "Snapshot, then stream"). Only for a
    /// stream this application has not consumed yet; every worker of the application needs
    /// it. Start-up refuses a stream without new images (`KEYS_ONLY`, `OLD_IMAGE`); `build`
    /// refuses it together with `with_max_record_age`, `with_auto_checkpoint(false)` or
    /// `with_initial_position(Latest)`, which cannot apply to a snapshot.
    ///
    /// [`ChangeKind::Snapshot`]: crate::ChangeKind::Snapshot
    pub fn with_snapshot(self, snapshot: crate::SnapshotConfig) -> Self {
        self.set(|c| c.snapshot = Some(snapshot))
    }

    /// What to do about records trimmed before they were read. Default: report and go on.
    pub fn with_trimmed_data_policy(self, policy: TrimmedDataPolicy) -> Self {
        self.set(|c| c.trimmed_data_policy = policy)
    }

    /// After how long without a heartbeat a worker counts as dead. Default: 10 s. The renew
    /// interval follows (a third of it) unless [`with_renew_interval`](Self::with_renew_interval)
    /// is given, before or after this. `build` refuses a failover time that does not exceed
    /// the renew interval plus one heartbeat attempt's timeout
    /// ([`LIVENESS_ATTEMPT_TIMEOUT`](dynamodb_streams_leases::aws::LIVENESS_ATTEMPT_TIMEOUT), 1 s):
    /// one stuck heartbeat must not cost the worker its leases. With the derived renew interval
    /// that is anything above 1.5 s.
    pub fn with_failover_time(self, failover_time: Duration) -> Self {
        self.set(|c| c.failover_time = failover_time)
    }

    /// How often this worker heartbeats. Default: a third of the failover time.
    pub fn with_renew_interval(mut self, interval: Duration) -> Self {
        self.renew_interval = Some(interval);
        self
    }

    /// How often this worker scans the lease table. Default: 2 s.
    pub fn with_scan_interval(self, interval: Duration) -> Self {
        self.set(|c| c.scan_interval = interval)
    }

    /// How often the shard-sync holder lists every shard. Default: 60 s.
    pub fn with_shard_sync_interval(self, interval: Duration) -> Self {
        self.set(|c| c.shard_sync_interval = interval)
    }

    /// Pages fetched ahead of the processor, per shard. Default: 1.
    pub fn with_prefetch_pages(self, pages: usize) -> Self {
        self.set(|c| c.prefetch_pages = pages)
    }

    /// The memory a worker may hold in fetched pages not yet delivered, across all its
    /// shards: with hundreds of shards catching up at once, read-ahead would otherwise grow
    /// with the shard count. A shard pays for a page before asking for it and gets the bytes
    /// back once its batch was delivered; when the budget is spent, reading waits, and a
    /// batch being gathered stops waiting for more (its batching window ends: see
    /// [`with_batching_window`](Self::with_batching_window)). A page bigger than the whole
    /// budget still goes through, alone. Counted as the records' size in memory, an
    /// estimate. Default: 256 MB.
    pub fn with_max_buffered_bytes(self, bytes: u64) -> Self {
        self.set(|c| c.max_buffered_bytes = bytes)
    }

    /// The longest pause between deliveries of a batch whose processing fails (they start
    /// at 100 ms and double, jittered), and how long a shard consumer that stopped on an
    /// error waits before it restarts. Default: 30 s. Streams and lease-table calls have
    /// their own fixed retry policies.
    pub fn with_retry_backoff_max(self, max: Duration) -> Self {
        self.set(|c| c.processing_backoff_max = max)
    }

    /// Failed deliveries of a record before it goes to the on-failure handler (with
    /// reason `retries-exhausted`, `panicked` or `timed-out`, after its last failure).
    /// Default: unlimited (retried until it succeeds). Without a handler the shard holds at
    /// the record once they are used up.
    pub fn with_max_retries(self, retries: u32) -> Self {
        self.set(|c| c.delivery.max_retries = Some(retries))
    }

    /// Splits a failing batch in halves and retries each, so a poison record ends up alone
    /// and only it goes to the on-failure handler. Default: off.
    pub fn with_bisect_on_error(self, enabled: bool) -> Self {
        self.set(|c| c.delivery.bisect_on_error = enabled)
    }

    /// Records older than `age` when fetched go to the on-failure handler (reason
    /// `too-old`) instead of the processor. Needs [`with_on_failure`](Self::with_on_failure).
    /// Default: none.
    pub fn with_max_record_age(self, age: Duration) -> Self {
        self.set(|c| c.delivery.max_record_age = Some(age))
    }

    /// A `process` call that runs longer is dropped and fails with a timeout, which goes
    /// through the failure policy like an error. Default: none.
    pub fn with_batch_timeout(self, timeout: Duration) -> Self {
        self.set(|c| c.delivery.batch_timeout = Some(timeout))
    }

    /// How long graceful shutdown (and a handoff) waits for a processor's callback before
    /// dropping it, flushing what succeeded and releasing; also how long `lease_lost` may
    /// take. Default: 30 s. Every duration setting longer than 100 years (`Duration::MAX`
    /// for "never") counts as 100 years.
    pub fn with_shutdown_timeout(self, timeout: Duration) -> Self {
        self.set(|c| c.delivery.shutdown_timeout = timeout)
    }

    /// Delivers only the records for which `keep` is true, judged on the raw record
    /// (event name, keys, images) before decoding; the others are counted
    /// (`ddb_stream_records_filtered_total`) and checkpointed past. Default: every record.
    pub fn with_filter(
        self,
        keep: impl Fn(&aws_sdk_dynamodbstreams::types::Record) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.set(|c| c.delivery.filter = Some(Arc::new(keep)))
    }

    /// Delivers only the records that match `pattern`, in Lambda's event filtering syntax,
    /// applied to each record in Lambda's JSON shape (`eventName`, `dynamodb.Keys`,
    /// `dynamodb.NewImage.ATTR.S`, ...; see [`crate::lambda`]). Given several times, the
    /// patterns are OR-ed (Lambda's `FilterCriteria`, at most 10); with
    /// [`with_filter`](Self::with_filter) too, a record must pass both. Records it rejects
    /// are counted, told to `records_filtered` and checkpointed past, as with `with_filter`.
    /// `build` refuses an invalid pattern, naming the JSON path of what is wrong.
    pub fn with_filter_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.filter_patterns.push(pattern.into());
        self
    }

    /// The largest batch given to `process`, 1-10,000, gathered across GetRecords pages.
    /// Default: the GetRecords limit (`with_batch_limit`, 1000).
    pub fn with_max_batch_size(self, records: usize) -> Self {
        self.set(|c| c.delivery.max_batch_size = Some(records))
    }

    /// How long to wait for more records to fill a batch up to the maximum batch size (at
    /// most 5 minutes), counted from when the batch's first record was fetched. Default:
    /// zero (deliver what has been fetched at once).
    ///
    /// Like Lambda's `MaximumBatchingWindowInSeconds` (which ends once the batch is full or
    /// its payload reaches 6 MB), the window ends early once waiting cannot grow the batch:
    /// it holds the maximum batch size, or the memory budget
    /// ([`with_max_buffered_bytes`](Self::with_max_buffered_bytes), the payload limit here)
    /// has no room for the next page, whose bytes come back only once a batch is
    /// delivered. With key parallelism the rule holds per partition, whose window also ends
    /// once its shard takes no more pages in.
    pub fn with_batching_window(self, window: Duration) -> Self {
        self.set(|c| c.delivery.batching_window = window)
    }

    /// Processes the records of one shard with up to `n` concurrent `process` calls (1-100),
    /// partitioned by a hash of the item's keys, so each item's changes stay in order. Each
    /// partition has its own processor instance (the factory is called `n` times per
    /// shard); the framework checkpoints once every partition finished the records
    /// gathered together, and the processors' own `Checkpointer` calls are not written.
    /// Default: 1.
    pub fn with_key_parallelism(self, n: usize) -> Self {
        self.set(|c| c.delivery.key_parallelism = n)
    }

    /// Where records go that the framework gives up on (see [`FailureReason`]); the
    /// checkpoint moves past them only after `handler` returned `Ok`. Default: none (the
    /// shard holds at such records).
    ///
    /// [`FailureReason`]: crate::FailureReason
    pub fn with_on_failure(self, handler: impl crate::FailureHandler) -> Self {
        self.set(|c| c.delivery.on_failure = Some(Arc::new(handler)))
    }

    /// Uses this streams API instead of the AWS SDK (the simulated stream in tests).
    pub fn with_streams_api(mut self, api: Arc<dyn StreamsApi>) -> Self {
        self.api = Some(api);
        self
    }

    /// Also reports the lag gauges per shard (`ddb_stream_shard_millis_behind_latest`,
    /// `ddb_stream_shard_records_behind`), labelled with shard ids. Off by default: shards
    /// roll over every few hours, so per-shard series grow without end.
    pub fn with_per_shard_metrics(mut self, enabled: bool) -> Self {
        self.per_shard_metrics = enabled;
        self
    }

    /// Uses this lease store instead of the DynamoDB table named after the application.
    pub fn with_lease_store(mut self, store: Arc<dyn LeaseStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Checks the settings and makes the consumer; `factory` makes a processor per shard
    /// (a closure `|shard: &ShardContext| MyProcessor::new()` works, as does
    /// [`processor_fn`](crate::processor_fn)).
    pub fn build<F: ProcessorFactory>(mut self, factory: F) -> Result<Consumer<F>> {
        if !self.pipelines.is_empty() {
            return Err(Error::Config {
                key: "with_pipeline",
                problem: "a consumer of named pipelines is built with `build_pipelines()`, \
                          which takes no factory of its own"
                    .into(),
            });
        }
        self.config.cap_durations();
        self.config.renew_interval = self
            .renew_interval
            .map_or(self.config.failover_time / 3, capped);
        self.validate()?;
        self.apply_filter_patterns()?;
        let api = match (self.api, &self.sdk_config) {
            (Some(api), _) => api,
            (None, Some(sdk)) => Arc::new(SdkStreams::from_sdk_config(sdk)),
            (None, None) => return Err(missing_sdk_config()),
        };
        if let Some(snapshot) = &mut self.config.snapshot
            && snapshot.scanner.is_none()
        {
            let Some(sdk) = &self.sdk_config else {
                return Err(Error::Config {
                    key: "with_snapshot",
                    problem: "a snapshot scans the table with the DynamoDB API: give `with_sdk_config` too".into(),
                });
            };
            snapshot.scanner = Some(Arc::new(SdkStreams::from_sdk_config(sdk)));
        }
        let store = match (self.store, &self.sdk_config) {
            (Some(store), _) => store,
            (None, Some(sdk)) => {
                Arc::new(DynamoDbLeaseStore::from_sdk_config(sdk, &self.application)?)
            }
            (None, None) => return Err(missing_sdk_config()),
        };
        Ok(Consumer {
            worker_id: self.worker_id.unwrap_or_else(default_worker_id),
            application: self.application,
            sources: self.sources,
            config: self.config,
            api,
            store,
            factory,
            pipelines: Vec::new(),
            telemetry: Arc::new(Telemetry::new(Health::default(), self.per_shard_metrics)),
        })
    }

    /// Makes the filter patterns part of the consumer's filter (AND-ed with `with_filter`'s):
    /// one filter path for both.
    fn apply_filter_patterns(&mut self) -> Result<()> {
        if self.filter_patterns.is_empty() {
            return Ok(());
        }
        let criteria =
            crate::lambda::FilterCriteria::parse(&self.filter_patterns).map_err(|e| {
                Error::Config {
                    key: "with_filter_pattern",
                    problem: e.to_string(),
                }
            })?;
        let other = self.config.delivery.filter.take();
        self.config.delivery.filter = Some(Arc::new(move |record| {
            criteria.matches_record(record) && other.as_ref().is_none_or(|keep| keep(record))
        }));
        Ok(())
    }

    /// The settings of a pipeline: `base` (the consumer's, checked) changed by `settings`,
    /// checked as the consumer's are.
    pub(crate) fn pipeline_config(
        base: &ConsumerConfig,
        settings: impl FnOnce(ConsumerBuilder) -> ConsumerBuilder,
    ) -> Result<ConsumerConfig> {
        let mut builder = Consumer::builder("pipeline").with_table("pipeline");
        builder.config = base.clone();
        let mut builder = settings(builder);
        builder.config.cap_durations();
        builder.config.renew_interval = base.renew_interval;
        builder.validate()?;
        builder.apply_filter_patterns()?;
        Ok(builder.config)
    }

    /// Changes one setting.
    fn set(mut self, change: impl FnOnce(&mut ConsumerConfig)) -> Self {
        change(&mut self.config);
        self
    }

    fn validate(&self) -> Result<()> {
        let config = &self.config;
        let problem = |key: &'static str, problem: &str| {
            Err(Error::Config {
                key,
                problem: problem.to_owned(),
            })
        };
        if self.sources.is_empty() {
            return problem("with_table", "no table or stream to consume was given");
        }
        if self
            .sources
            .iter()
            .any(|(Source::Table(name) | Source::StreamArn(name))| name.is_empty())
        {
            return problem("with_table", "a table name or stream ARN is empty");
        }
        if let Err((key, text)) = config.validate() {
            return problem(key, &text);
        }
        if self
            .worker_id
            .as_deref()
            .is_some_and(|id| id.is_empty() || id.contains('#'))
        {
            return problem(
                "with_worker_id",
                "must be non-empty and must not contain '#'",
            );
        }
        Ok(())
    }
}

fn missing_sdk_config() -> Error {
    Error::Config {
        key: "with_sdk_config",
        problem: "no AWS configuration: pass `aws_config::load_defaults(BehaviorVersion::latest()).await`".into(),
    }
}

fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    format!("{}-{}", host.replace('#', "-"), std::process::id())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testkit::{InMemoryLeaseStore, SimulatedStream};

    fn config(builder: ConsumerBuilder) -> ConsumerConfig {
        let consumer = builder
            .with_table("t")
            .with_streams_api(Arc::new(SimulatedStream::with_seed(1)))
            .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
            .build(crate::processor_fn(|_: crate::ChangeBatch<()>| async {
                Ok(())
            }))
            .unwrap();
        consumer.config
    }

    #[test]
    fn builder_calls_do_not_depend_on_order() {
        let (failover, renew) = (Duration::from_secs(30), Duration::from_secs(2));
        let before = config(
            Consumer::builder("app")
                .with_renew_interval(renew)
                .with_failover_time(failover),
        );
        let after = config(
            Consumer::builder("app")
                .with_failover_time(failover)
                .with_renew_interval(renew),
        );
        assert_eq!(before.renew_interval, renew);
        assert_eq!(after.renew_interval, renew);
        assert_eq!(before.failover_time, failover);
    }

    #[test]
    fn a_failover_time_one_stuck_heartbeat_could_exceed_is_refused_naming_the_setting() {
        let build = |failover: Duration, renew: Option<Duration>| {
            let builder = Consumer::builder("app")
                .with_table("t")
                .with_streams_api(Arc::new(SimulatedStream::with_seed(1)))
                .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
                .with_failover_time(failover);
            let builder = match renew {
                Some(renew) => builder.with_renew_interval(renew),
                None => builder,
            };
            builder
                .build(crate::processor_fn(|_: crate::ChangeBatch<()>| async {
                    Ok(())
                }))
                .err()
                .map(|e| e.to_string())
        };
        // The multi-process tests' 3 s (renewed every second) stays legal.
        assert_eq!(build(Duration::from_secs(3), None), None);
        let refused = build(Duration::from_millis(1500), None).expect("refused");
        assert!(refused.contains("with_failover_time"), "{refused}");
        assert!(refused.contains("attempt timeout"), "{refused}");
        let refused = build(Duration::from_secs(2), Some(Duration::from_secs(1))).expect("refused");
        assert!(refused.contains("with_failover_time"), "{refused}");
    }

    /// `Duration::MAX` ("never") in every duration setting that accepts it: the consumer
    /// delivers and shuts down instead of panicking on `Instant + timeout`.
    #[tokio::test(start_paused = true)]
    async fn duration_max_settings_mean_never_and_do_not_overflow() {
        struct Accept;
        #[async_trait::async_trait]
        impl crate::FailureHandler for Accept {
            async fn handle(&self, _: &crate::FailedRecords) -> Result<(), crate::BoxError> {
                Ok(())
            }
        }
        let sim = SimulatedStream::with_seed(1);
        sim.add_table("t");
        sim.put("t", crate::testkit::string_key("pk", "a")).unwrap();
        let recording = crate::testkit::Recording::<serde_json::Value>::new();
        let consumer = Consumer::builder("app")
            .with_table("t")
            .with_streams_api(Arc::new(sim.clone()))
            .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
            .with_worker_id("w")
            .with_shutdown_timeout(Duration::MAX)
            .with_batch_timeout(Duration::MAX)
            .with_failover_time(Duration::MAX)
            .with_checkpoint_interval(Duration::MAX)
            .with_retry_backoff_max(Duration::MAX)
            .with_shard_sync_interval(Duration::MAX)
            .with_max_record_age(Duration::MAX)
            .with_on_failure(Accept)
            .build(recording.factory())
            .unwrap();
        let watched = recording.clone();
        let run = consumer.run_until(async move {
            while watched.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .expect("delivered and stopped")
            .unwrap();
        assert_eq!(recording.len(), 1);
    }

    #[test]
    fn settings_that_cannot_apply_to_snapshot_records_are_refused_naming_both() {
        struct Accept;
        #[async_trait::async_trait]
        impl crate::FailureHandler for Accept {
            async fn handle(&self, _: &crate::FailedRecords) -> Result<(), crate::BoxError> {
                Ok(())
            }
        }
        let refused = |builder: ConsumerBuilder| {
            builder
                .with_table("t")
                .with_streams_api(Arc::new(SimulatedStream::with_seed(1)))
                .with_lease_store(Arc::new(InMemoryLeaseStore::new()))
                .with_snapshot(crate::SnapshotConfig::new())
                .build(crate::processor_fn(|_: crate::ChangeBatch<()>| async {
                    Ok(())
                }))
                .err()
                .map(|e| e.to_string())
        };
        let aged = Consumer::builder("app")
            .with_max_record_age(Duration::from_secs(60))
            .with_on_failure(Accept);
        let text = refused(aged).expect("refused");
        assert!(
            text.contains("with_snapshot") && text.contains("with_max_record_age"),
            "{text}"
        );
        let latest = Consumer::builder("app").with_initial_position(InitialPosition::Latest);
        let text = refused(latest).expect("refused");
        assert!(
            text.contains("with_snapshot") && text.contains("with_initial_position(Latest)"),
            "{text}"
        );
        let manual = Consumer::builder("app").with_auto_checkpoint(false);
        let text = refused(manual).expect("refused");
        assert!(
            text.contains("with_snapshot") && text.contains("with_auto_checkpoint"),
            "{text}"
        );
        // Batch shaping, key parallelism, partial failures and the rest apply (what is left
        // to refuse is the missing table reader: the test gives no AWS configuration).
        let shaped = Consumer::builder("app")
            .with_initial_position(InitialPosition::TrimHorizon)
            .with_max_batch_size(7)
            .with_batching_window(Duration::from_secs(1))
            .with_key_parallelism(4)
            .with_batch_timeout(Duration::from_secs(5))
            .with_max_retries(2)
            .with_bisect_on_error(true)
            .with_on_failure(Accept)
            .with_filter(|_| true);
        let text = refused(shaped).unwrap_or_default();
        assert!(
            text.is_empty() || text.contains("with_sdk_config"),
            "{text}"
        );
    }

    #[test]
    fn the_renew_interval_follows_the_failover_time_unless_given() {
        let derived = config(Consumer::builder("app").with_failover_time(Duration::from_secs(30)));
        assert_eq!(derived.renew_interval, Duration::from_secs(10));
        assert_eq!(
            config(Consumer::builder("app")).renew_interval,
            Duration::from_secs(10) / 3
        );
    }
}
