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
    /// unlimited.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Split a failing batch in halves until the failing change is alone.
    #[arg(long)]
    pub bisect: bool,
    /// Append one JSON line per change given up on: {"table","shard","seq","event","keys",
    /// "reason"}, reason one of retries-exhausted, too-old, undecodable, panicked, timed-out.
    #[arg(long, value_name = "FILE")]
    pub on_failure: Option<PathBuf>,
    /// Changes older than this when fetched go to the on-failure file (needs --on-failure).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub max_record_age: Option<Duration>,
    /// The largest batch, 1-10000, across GetRecords pages. Default: 1000.
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Wait up to this long to fill a batch. Default: 0s.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    pub batching_window: Option<Duration>,
    /// Process each shard with up to N concurrent calls, by item key (changes of one item
    /// stay in order; changes of different items may interleave).
    #[arg(long, value_name = "N")]
    pub key_parallelism: Option<usize>,
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
    /// These settings, applied to `builder`.
    pub fn apply(&self, mut builder: ConsumerBuilder) -> Result<ConsumerBuilder, String> {
        if let Some(retries) = self.max_retries {
            builder = builder.with_max_retries(retries);
        }
        builder = builder.with_bisect_on_error(self.bisect);
        if let Some(path) = &self.on_failure {
            builder = builder.with_on_failure(JsonLinesFile::open(path)?);
        }
        if let Some(age) = self.max_record_age {
            builder = builder.with_max_record_age(age);
        }
        if let Some(size) = self.batch_size {
            builder = builder.with_max_batch_size(size);
        }
        if let Some(window) = self.batching_window {
            builder = builder.with_batching_window(window);
        }
        if let Some(n) = self.key_parallelism {
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
}

impl JsonLinesFile {
    /// Opens `path` for appending (created if absent).
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open --on-failure file {}: {e}", path.display()))?;
        Ok(Self {
            file: tokio::sync::Mutex::new(file),
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
            let line = json!({
                "table": failed.table,
                "shard": failed.shard_id,
                "seq": stream_record.and_then(|r| r.sequence_number()),
                "event": record.event_name().map(|e| e.as_str()),
                "keys": keys.map_or(Value::Null, item_to_json),
                "reason": failed.reason.as_str(),
            });
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
