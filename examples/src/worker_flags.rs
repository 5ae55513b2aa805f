//! Flags that `jsonl-worker` and `lambda-bridge` share, with the same names and meanings:
//! where the stream and the lease table are, and how changes are delivered. One
//! definition, so the two programs cannot drift apart.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use clap::ValueEnum;
use dynamodb_streams_consumer::{
    BoxError, Consumer, ConsumerBuilder, FailedRecords, FailureHandler, InitialPosition,
};
use serde_json::{Value, json};

use crate::item_to_json;

/// How long the endpoint may take to answer the first request before the worker gives up.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);

/// Where shards nobody has processed yet start.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Position {
    /// The oldest record still in the stream.
    TrimHorizon,
    /// Only changes made after the worker starts.
    Latest,
}

/// The streams, the application and where AWS is.
#[derive(Debug, clap::Args)]
pub struct ConnectionFlags {
    /// A table whose stream to consume (repeat for several).
    #[arg(long = "table", value_name = "T", required = true)]
    pub tables: Vec<String>,
    /// The application: the name of the lease table shared by its workers.
    #[arg(long, value_name = "APP")]
    pub app: String,
    /// This worker's id. Default: hostname-pid.
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// DynamoDB endpoint, e.g. DynamoDB Local (dummy credentials are used then).
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// AWS region (default with --endpoint: us-east-1).
    #[arg(long, value_name = "R")]
    pub region: Option<String>,
    /// Where shards nobody has processed yet start.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    pub initial_position: Position,
    /// After how long without a heartbeat a worker counts as dead (e.g. 3s, 1m).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub failover_time: Duration,
}

impl ConnectionFlags {
    /// A builder for the application's tables, with these settings.
    pub fn builder(&self, sdk_config: &aws_config::SdkConfig, worker_id: &str) -> ConsumerBuilder {
        let mut builder = Consumer::builder(self.app.as_str())
            .with_sdk_config(sdk_config)
            .with_worker_id(worker_id)
            .with_initial_position(match self.initial_position {
                Position::TrimHorizon => InitialPosition::TrimHorizon,
                Position::Latest => InitialPosition::Latest,
            })
            .with_failover_time(self.failover_time);
        for table in &self.tables {
            builder = builder.with_table(table.as_str());
        }
        builder
    }
}

/// Lambda's event source mapping settings, as flags.
#[derive(Debug, clap::Args)]
pub struct DeliveryFlags {
    /// Failed deliveries of a change before it goes to the on-failure file. Default:
    /// unlimited. `NAME:N`: for pipeline NAME only (as every flag marked NAME:).
    #[arg(long, value_name = "[NAME:]N", value_parser = scoped(parse_number::<u32>))]
    pub max_retries: Vec<Scoped<u32>>,
    /// Split a failing batch in halves until the failing change is alone (`--bisect`, or
    /// `--bisect=NAME:true` for one pipeline).
    #[arg(long, value_name = "[NAME:]BOOL", num_args = 0..=1, default_missing_value = "true",
          value_parser = scoped(parse_bool))]
    pub bisect: Vec<Scoped<bool>>,
    /// Append one JSON line per change given up on: {"table","shard","seq","event","keys",
    /// "reason"} (and "pipeline" with --pipeline), reason one of retries-exhausted, too-old,
    /// undecodable, panicked, timed-out.
    #[arg(long, value_name = "[NAME:]FILE", value_parser = scoped(parse_path))]
    pub on_failure: Vec<Scoped<PathBuf>>,
    /// Changes older than this when fetched go to the on-failure file (needs --on-failure).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub max_record_age: Option<Duration>,
    /// The largest batch, 1-10000, across GetRecords pages. Default: 1000.
    #[arg(long, value_name = "[NAME:]N", value_parser = scoped(parse_number::<usize>))]
    pub batch_size: Vec<Scoped<usize>>,
    /// Wait up to this long to fill a batch. Default: 0s.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub batching_window: Option<Duration>,
    /// Process each shard with up to N concurrent calls, by item key (changes of one item
    /// stay in order; changes of different items may interleave).
    #[arg(long, value_name = "[NAME:]N", value_parser = scoped(parse_number::<usize>))]
    pub key_parallelism: Vec<Scoped<usize>>,
    /// A batch running longer fails (and goes through the failure policy).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub batch_timeout: Option<Duration>,
    /// How long a graceful shutdown waits for a batch in progress. Default: 30s.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Deliver only the records matching this Lambda event filtering pattern (JSON, or
    /// @FILE to read it from a file), applied to the record in Lambda's JSON shape; repeat
    /// for several, OR-ed. The others are checkpointed past.
    #[arg(long, value_name = "JSON|@FILE", value_parser = read_filter_pattern)]
    pub filter_pattern: Vec<String>,
    /// Pauses between polls of an idle shard, doubling from MIN to MAX after empty pages
    /// (e.g. 50ms,1s): lower for less latency, higher for fewer GetRecords. Default:
    /// 100ms,1s.
    #[arg(long, value_name = "MIN,MAX", value_parser = parse_idle_backoff)]
    pub idle_backoff: Option<(Duration, Duration)>,
}

impl DeliveryFlags {
    /// These settings, applied to `builder` (values written `NAME:VALUE` are refused:
    /// they are for [`pipeline_settings`](Self::pipeline_settings)).
    pub fn apply(&self, builder: ConsumerBuilder) -> Result<ConsumerBuilder, String> {
        if let Some(name) = self.pipeline_names().first() {
            return Err(format!(
                "a delivery flag names pipeline {name:?} (NAME:VALUE), but there are no \
                 pipelines (--pipeline NAME)"
            ));
        }
        self.apply_common(builder)
    }

    /// The pipelines the `NAME:VALUE` forms name.
    pub fn pipeline_names(&self) -> Vec<&str> {
        let names = self
            .max_retries
            .iter()
            .filter_map(Scoped::name)
            .chain(self.bisect.iter().filter_map(Scoped::name))
            .chain(self.on_failure.iter().filter_map(Scoped::name))
            .chain(self.batch_size.iter().filter_map(Scoped::name))
            .chain(self.key_parallelism.iter().filter_map(Scoped::name));
        let mut names: Vec<&str> = names.collect();
        names.dedup();
        names
    }

    /// The settings of pipeline `name` where its flags differ (its `NAME:VALUE` forms; an
    /// `--on-failure FILE` for every pipeline becomes one handler per pipeline, so its
    /// lines name the pipeline), for `ConsumerBuilder::with_pipeline_settings`.
    pub fn pipeline_settings(
        &self,
        name: &str,
    ) -> Result<impl FnOnce(ConsumerBuilder) -> ConsumerBuilder + Send + Sync + 'static, String>
    {
        let retries = Scoped::own(&self.max_retries, name);
        let bisect = Scoped::own(&self.bisect, name);
        let batch_size = Scoped::own(&self.batch_size, name);
        let key_parallelism = Scoped::own(&self.key_parallelism, name);
        let handler = match Scoped::own(&self.on_failure, name)
            .or_else(|| Scoped::common(&self.on_failure))
        {
            Some(path) => Some(JsonLinesFile::open_for(&path, Some(name))?),
            None => None,
        };
        Ok(move |mut builder: ConsumerBuilder| {
            if let Some(retries) = retries {
                builder = builder.with_max_retries(retries);
            }
            if let Some(bisect) = bisect {
                builder = builder.with_bisect_on_error(bisect);
            }
            if let Some(handler) = handler {
                builder = builder.with_on_failure(handler);
            }
            if let Some(size) = batch_size {
                builder = builder.with_max_batch_size(size);
            }
            if let Some(n) = key_parallelism {
                builder = builder.with_key_parallelism(n);
            }
            builder
        })
    }

    /// The values for every pipeline.
    pub fn apply_common(&self, mut builder: ConsumerBuilder) -> Result<ConsumerBuilder, String> {
        if let Some(retries) = Scoped::common(&self.max_retries) {
            builder = builder.with_max_retries(retries);
        }
        builder = builder.with_bisect_on_error(Scoped::common(&self.bisect).unwrap_or(false));
        if let Some(path) = Scoped::common(&self.on_failure) {
            builder = builder.with_on_failure(JsonLinesFile::open(&path)?);
        }
        if let Some(age) = self.max_record_age {
            builder = builder.with_max_record_age(age);
        }
        if let Some(size) = Scoped::common(&self.batch_size) {
            builder = builder.with_max_batch_size(size);
        }
        if let Some(window) = self.batching_window {
            builder = builder.with_batching_window(window);
        }
        if let Some(n) = Scoped::common(&self.key_parallelism) {
            builder = builder.with_key_parallelism(n);
        }
        if let Some(timeout) = self.batch_timeout {
            builder = builder.with_batch_timeout(timeout);
        }
        if let Some(timeout) = self.shutdown_timeout {
            builder = builder.with_shutdown_timeout(timeout);
        }
        for pattern in &self.filter_pattern {
            builder = builder.with_filter_pattern(pattern.as_str());
        }
        if let Some((min, max)) = self.idle_backoff {
            builder = builder.with_idle_backoff(min, max);
        }
        Ok(builder)
    }
}

/// A flag's value for every pipeline, or for one when written `NAME:VALUE`
/// (`jsonl-worker --pipeline NAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scoped<T> {
    /// The pipeline it is for; `None`: every pipeline.
    pub pipeline: Option<String>,
    /// The value.
    pub value: T,
}

impl<T: Clone> Scoped<T> {
    fn name(&self) -> Option<&str> {
        self.pipeline.as_deref()
    }

    /// The last value given for every pipeline.
    pub fn common(values: &[Self]) -> Option<T> {
        values
            .iter()
            .rev()
            .find(|v| v.pipeline.is_none())
            .map(|v| v.value.clone())
    }

    /// The last value given for pipeline `name` alone.
    pub fn own(values: &[Self], name: &str) -> Option<T> {
        values
            .iter()
            .rev()
            .find(|v| v.pipeline.as_deref() == Some(name))
            .map(|v| v.value.clone())
    }
}

/// Whether `name` can name a pipeline (as `ConsumerBuilder::with_pipeline` accepts them).
fn is_pipeline_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A parser of `[NAME:]VALUE`: `NAME:` is taken as a pipeline's name when it is one and
/// the rest parses; otherwise the whole text is the value (so a path with a colon stays a
/// path).
pub fn scoped<T: 'static>(
    parse: fn(&str) -> Result<T, String>,
) -> impl Fn(&str) -> Result<Scoped<T>, String> + Clone + Send + Sync + 'static {
    move |text: &str| {
        if let Some((name, value)) = text.split_once(':')
            && is_pipeline_name(name)
            && let Ok(value) = parse(value)
        {
            return Ok(Scoped {
                pipeline: Some(name.to_owned()),
                value,
            });
        }
        Ok(Scoped {
            pipeline: None,
            value: parse(text)?,
        })
    }
}

/// A number, for [`scoped`].
pub fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| format!("{text:?} is not a valid number: {e}"))
}

/// `true` or `false`, for [`scoped`].
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?}: expected true or false")),
    }
}

/// A duration (`200ms`, `2s`), for [`scoped`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?}: {e}"))
}

/// A path, for [`scoped`].
pub fn parse_path(text: &str) -> Result<PathBuf, String> {
    if text.is_empty() {
        return Err("an empty path".into());
    }
    Ok(PathBuf::from(text))
}

/// `--filter-pattern JSON|@FILE`: the pattern itself, or the content of FILE. Whether it is
/// a valid pattern is checked by the consumer's `build`, which names the JSON path of what
/// is wrong.
pub fn read_filter_pattern(text: &str) -> Result<String, String> {
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the filter pattern file {path:?}: {e}")),
        None => Ok(text.to_owned()),
    }
}

/// The on-failure handler of `--on-failure`: appends one JSON line per record.
pub struct JsonLinesFile {
    file: tokio::sync::Mutex<std::fs::File>,
    /// The pipeline whose failures it takes (its lines say so).
    pipeline: Option<String>,
}

impl JsonLinesFile {
    /// Opens `path` for appending (created if absent).
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        Self::open_for(path, None)
    }

    /// Opens `path` for appending (created if absent), for the failures of `pipeline`.
    pub fn open_for(path: &std::path::Path, pipeline: Option<&str>) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open --on-failure file {}: {e}", path.display()))?;
        Ok(Self {
            file: tokio::sync::Mutex::new(file),
            pipeline: pipeline.map(str::to_owned),
        })
    }
}

#[async_trait]
impl FailureHandler for JsonLinesFile {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        let mut text = Vec::new();
        for record in &failed.records {
            let stream_record = record.dynamodb();
            let keys = stream_record.and_then(|r| r.keys.as_ref());
            let mut line = json!({
                "table": failed.table,
                "shard": failed.shard_id,
                "seq": stream_record.and_then(|r| r.sequence_number()),
                "event": record.event_name().map(|e| e.as_str()),
                "keys": keys.map_or(Value::Null, item_to_json),
                "reason": failed.reason.as_str(),
            });
            if let (Some(pipeline), Some(fields)) = (&self.pipeline, line.as_object_mut()) {
                fields.insert("pipeline".into(), json!(pipeline));
            }
            serde_json::to_writer(&mut text, &line)?;
            text.push(b'\n');
        }
        let mut file = self.file.lock().await;
        file.write_all(&text)?;
        file.flush()?;
        Ok(())
    }
}

/// Waits until the endpoint answers a DescribeTable of the first table, whatever the answer,
/// at most [`STARTUP_DEADLINE`]: an endpoint that accepts connections but never answers
/// would otherwise only fail after the consumer's operation timeout (30 s). What the answer
/// says (no such table, no stream) is reported by the consumer, which asks again.
pub async fn endpoint_answers(
    sdk_config: &aws_config::SdkConfig,
    tables: &[String],
    endpoint: &str,
) -> Result<(), String> {
    let Some(table) = tables.first() else {
        return Ok(());
    };
    // One attempt: a refused connection fails at once and the consumer reports it.
    let config = aws_sdk_dynamodb::config::Builder::from(sdk_config)
        .retry_config(aws_sdk_dynamodb::config::retry::RetryConfig::disabled())
        .build();
    let probe = aws_sdk_dynamodb::Client::from_conf(config)
        .describe_table()
        .table_name(table)
        .send();
    match tokio::time::timeout(STARTUP_DEADLINE, probe).await {
        Ok(_) => Ok(()),
        Err(_) => Err(format!(
            "no answer from {endpoint} within {}s (DescribeTable on table {table:?}): is \
             DynamoDB running there?",
            STARTUP_DEADLINE.as_secs()
        )),
    }
}

/// `--idle-backoff MIN,MAX` (e.g. `50ms,1s`): the pauses between polls of an idle shard,
/// `ConsumerBuilder::with_idle_backoff`. Whether the pair is usable (not zero, MIN <= MAX)
/// is checked by the consumer's `build`, which names the setting.
pub fn parse_idle_backoff(text: &str) -> Result<(Duration, Duration), String> {
    let (min, max) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?}: expected MIN,MAX (e.g. 50ms,1s)"))?;
    let duration = |part: &str| {
        humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?} in {text:?}: {e}"))
    };
    Ok((duration(min)?, duration(max)?))
}

#[cfg(test)]
mod idle_backoff_tests {
    use super::*;

    #[test]
    fn idle_backoff_is_a_pair_of_durations() {
        assert_eq!(
            parse_idle_backoff("50ms, 2s"),
            Ok((Duration::from_millis(50), Duration::from_secs(2)))
        );
        assert!(parse_idle_backoff("1s").unwrap_err().contains("MIN,MAX"));
        assert!(
            parse_idle_backoff("1s,soon")
                .unwrap_err()
                .contains("\"soon\"")
        );
    }
}
