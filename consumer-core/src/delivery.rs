//! The delivery settings of a consumer (Lambda's event source mapping controls): how
//! batches are shaped, how long a callback may run, and what happens to records that fail.
//!
//! The shard consumer applies them; [`crate::ConsumerBuilder`] sets and checks them.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodbstreams::types::Record;

use crate::failure::FailureHandler;

/// A predicate on raw records: `true` delivers the record, `false` counts it and moves the
/// checkpoint past it.
pub(crate) type RecordFilter = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// The largest batch `with_max_batch_size` accepts (Lambda's limit for DynamoDB Streams).
pub(crate) const MAX_BATCH_SIZE: usize = 10_000;

/// The most concurrent calls per shard `with_key_parallelism` accepts (Lambda's
/// parallelization factor goes to 10; a self-hosted worker may go further).
pub(crate) const MAX_KEY_PARALLELISM: usize = 100;

/// The longest `with_batching_window` (Lambda's limit).
pub(crate) const MAX_BATCHING_WINDOW: Duration = Duration::from_secs(300);

/// How records are delivered, and what happens to those that fail.
#[derive(Clone)]
pub(crate) struct DeliveryConfig {
    /// Failed deliveries of a record before it goes to the handler; `None`: forever.
    pub max_retries: Option<u32>,
    /// Split a failing batch in halves until the failing record is alone.
    pub bisect_on_error: bool,
    /// Records older than this when fetched go to the handler, not the processor.
    pub max_record_age: Option<Duration>,
    /// A `process` call running longer fails with a timeout.
    pub batch_timeout: Option<Duration>,
    /// How long shutdown and fencing wait for processors before dropping them.
    pub shutdown_timeout: Duration,
    /// Records for which this is false are counted and skipped, not delivered.
    pub filter: Option<RecordFilter>,
    /// The largest batch, across GetRecords pages; `None`: the GetRecords limit.
    pub max_batch_size: Option<usize>,
    /// How long to wait for more records to fill a batch.
    pub batching_window: Duration,
    /// Where records go that the framework gives up on.
    pub on_failure: Option<Arc<dyn FailureHandler>>,
    /// Concurrent `process` calls per shard, records partitioned by a hash of their keys.
    pub key_parallelism: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_retries: None,
            bisect_on_error: false,
            max_record_age: None,
            batch_timeout: None,
            shutdown_timeout: Duration::from_secs(30),
            filter: None,
            max_batch_size: None,
            batching_window: Duration::ZERO,
            on_failure: None,
            key_parallelism: 1,
        }
    }
}

impl fmt::Debug for DeliveryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryConfig")
            .field("max_retries", &self.max_retries)
            .field("bisect_on_error", &self.bisect_on_error)
            .field("max_record_age", &self.max_record_age)
            .field("batch_timeout", &self.batch_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("filter", &self.filter.is_some())
            .field("max_batch_size", &self.max_batch_size)
            .field("batching_window", &self.batching_window)
            .field("on_failure", &self.on_failure.is_some())
            .field("key_parallelism", &self.key_parallelism)
            .finish()
    }
}

/// What the shard consumer does with a fetched record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// To the processor.
    Deliver,
    /// Not wanted by the filter: counted, checkpointed past.
    Filtered,
    /// Older than the maximum record age: to the failure handler.
    TooOld,
}

impl DeliveryConfig {
    /// Where `record`, fetched at `now`, goes.
    pub(crate) fn route(&self, record: &Record, now: SystemTime) -> Route {
        if let Some(max_age) = self.max_record_age {
            let created = record
                .dynamodb()
                .and_then(|d| d.approximate_creation_date_time())
                .and_then(|t| SystemTime::try_from(*t).ok());
            if created
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > max_age)
            {
                return Route::TooOld;
            }
        }
        match &self.filter {
            Some(keep) if !keep(record) => Route::Filtered,
            _ => Route::Deliver,
        }
    }

    /// Checks the settings; the error names the builder method.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self
            .max_batch_size
            .is_some_and(|n| !(1..=MAX_BATCH_SIZE).contains(&n))
        {
            return Err((
                "with_max_batch_size",
                format!("must be between 1 and {MAX_BATCH_SIZE}"),
            ));
        }
        if !(1..=MAX_KEY_PARALLELISM).contains(&self.key_parallelism) {
            return Err((
                "with_key_parallelism",
                format!("must be between 1 and {MAX_KEY_PARALLELISM}"),
            ));
        }
        if self.batching_window > MAX_BATCHING_WINDOW {
            return Err((
                "with_batching_window",
                format!("must be at most {} s", MAX_BATCHING_WINDOW.as_secs()),
            ));
        }
        if self.batch_timeout.is_some_and(|d| d.is_zero()) {
            return Err((
                "with_batch_timeout",
                "must be above zero (every batch would time out)".into(),
            ));
        }
        if self.max_record_age.is_some() && self.on_failure.is_none() {
            return Err((
                "with_max_record_age",
                "needs an on-failure handler (with_on_failure): records too old are given to it, never dropped silently".into(),
            ));
        }
        if self.max_record_age.is_some_and(|d| d.is_zero()) {
            return Err((
                "with_max_record_age",
                "must be above zero (every record would be too old)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_sdk_dynamodbstreams::types::{OperationType, StreamRecord};
    use aws_smithy_types::DateTime;

    fn record(created_secs: i64, kind: OperationType) -> Record {
        Record::builder()
            .event_name(kind)
            .dynamodb(
                StreamRecord::builder()
                    .sequence_number("100000000000000000001")
                    .approximate_creation_date_time(DateTime::from_secs(created_secs))
                    .build(),
            )
            .build()
    }

    #[test]
    fn routes_too_old_records_then_filtered_ones() {
        struct Handler;
        #[async_trait::async_trait]
        impl FailureHandler for Handler {
            async fn handle(&self, _: &crate::FailedRecords) -> Result<(), crate::BoxError> {
                Ok(())
            }
        }
        let config = DeliveryConfig {
            max_record_age: Some(Duration::from_secs(60)),
            filter: Some(Arc::new(|r: &Record| {
                r.event_name() != Some(&OperationType::Remove)
            })),
            on_failure: Some(Arc::new(Handler)),
            ..DeliveryConfig::default()
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            config.route(&record(900, OperationType::Insert), now),
            Route::TooOld
        );
        assert_eq!(
            config.route(&record(950, OperationType::Insert), now),
            Route::Deliver
        );
        assert_eq!(
            config.route(&record(950, OperationType::Remove), now),
            Route::Filtered
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn refuses_a_max_record_age_without_a_handler() {
        let config = DeliveryConfig {
            max_record_age: Some(Duration::from_secs(60)),
            ..DeliveryConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "with_max_record_age");
        let config = DeliveryConfig {
            max_batch_size: Some(10_001),
            ..DeliveryConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "with_max_batch_size");
    }
}
