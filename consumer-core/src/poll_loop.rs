//! The poll loop of one shard: iterators, GetRecords, backoff.
//!
//! [`ShardReader`] turns a shard into a sequence of pages and hides what DynamoDB Streams
//! makes callers deal with: iterators that expire after 15 minutes, throttling, empty pages
//! at the tip of an open shard, and the end of a closed shard. Both the lease-based
//! consumer and the lease-free [`crate::reader`] use it, so they behave the same.
//! Its pauses are the named policies [`retry::streams_read`] and [`retry::idle_poll`].

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use dynamodb_streams_leases::SequenceNumber;

use crate::error::Result;
use crate::events::{ApiRetried, Event};
use crate::retry::{self, ResettingBackoff};
use crate::streams::{ApiError, ApiErrorKind, RecordsPage, StartPosition, StreamsApi};

/// Failures of GetRecords or GetShardIterator closer together than this continue one
/// backoff; after it, the pauses start over.
const READ_RETRY_QUIET: Duration = retry::STREAMS_READ_MAX_DELAY;

/// How a shard is polled.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PollConfig {
    /// Records per GetRecords call (1-1000).
    pub batch_limit: u32,
    /// The first pause after an empty page; it doubles on each further empty page.
    pub idle_backoff_min: Duration,
    /// The longest pause between polls of an idle shard: bounds the delivery latency of a
    /// quiet shard and the cost of polling it.
    pub idle_backoff_max: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        Self {
            batch_limit: 1000,
            idle_backoff_min: Duration::from_millis(100),
            idle_backoff_max: Duration::from_secs(1),
        }
    }
}

/// What one poll found.
#[derive(Debug)]
pub(crate) enum Page {
    /// Records, in order; never empty.
    Records(Vec<Record>),
    /// Nothing new yet (an open shard at its tip).
    Empty,
    /// The shard is closed and every record has been returned.
    ShardEnd,
}

/// Reads one shard page by page.
///
/// `poll` is cancel-safe: state changes only after a call has completed, so dropping a
/// pending `poll` (on shutdown, say) loses nothing.
#[derive(Debug)]
pub(crate) struct ShardReader {
    api: Arc<dyn StreamsApi>,
    stream_arn: String,
    shard_id: String,
    /// Where to get an iterator when none has been read yet.
    start: StartPosition,
    /// The last record handed out: an expired iterator is replaced by one after it.
    last_read: Option<SequenceNumber>,
    iterator: Option<String>,
    /// The pause before the next poll: zero unless the last page was empty.
    idle_delay: Duration,
    /// The pauses of an idle shard; started over by a page with records.
    idle_backoff: ExponentialBackoff,
    /// The pauses between retries of a failed call.
    retry_backoff: ResettingBackoff<ExponentialBuilder>,
    ended: bool,
    config: PollConfig,
}

impl ShardReader {
    /// A reader of `shard_id` starting at `start`.
    pub(crate) fn new(
        api: Arc<dyn StreamsApi>,
        stream_arn: impl Into<String>,
        shard_id: impl Into<String>,
        start: StartPosition,
        config: PollConfig,
    ) -> Self {
        Self {
            api,
            stream_arn: stream_arn.into(),
            shard_id: shard_id.into(),
            start,
            last_read: None,
            iterator: None,
            idle_delay: Duration::ZERO,
            idle_backoff: idle_policy(&config).build(),
            retry_backoff: ResettingBackoff::new(retry::streams_read(), READ_RETRY_QUIET),
            ended: false,
            config,
        }
    }

    /// The shard being read.
    pub(crate) fn shard_id(&self) -> &str {
        &self.shard_id
    }

    /// The stream the shard belongs to.
    pub(crate) fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    /// Where reading would resume if the iterator were lost now.
    pub(crate) fn resume_position(&self) -> StartPosition {
        match &self.last_read {
            Some(seq) => StartPosition::AfterSequenceNumber(seq.clone()),
            None => self.start.clone(),
        }
    }

    /// Opens the iterator now (at the start position) instead of on the first poll: a
    /// `LATEST` start is fixed from here on.
    pub(crate) async fn open(&mut self) -> Result<()> {
        if self.iterator.is_none() && !self.ended {
            self.iterator = Some(self.acquire_iterator().await?);
        }
        Ok(())
    }

    /// Where a replacement iterator starts while nothing has been read yet (after an
    /// opened `LATEST` iterator expires, say); once a record was read, after it.
    pub(crate) fn replace_unread_start(&mut self, position: StartPosition) {
        self.start = position;
    }

    /// Starts over at `position`, forgetting what was read (after trimmed data, the caller
    /// decides where to go on).
    pub(crate) fn restart_at(&mut self, position: StartPosition) {
        self.start = position;
        self.last_read = None;
        self.iterator = None;
        self.idle_delay = Duration::ZERO;
        self.idle_backoff = idle_policy(&self.config).build();
    }

    /// Fetches the next page, pausing first if the previous page was empty. Throttling and
    /// service errors are retried with backoff; an expired iterator is replaced once per
    /// poll. Trimmed data, a missing shard and invalid requests are returned to the caller.
    pub(crate) async fn poll(&mut self) -> Result<Page> {
        if self.ended {
            return Ok(Page::ShardEnd);
        }
        self.pause().await;
        let mut renewed = false;
        loop {
            let iterator = match &self.iterator {
                Some(iterator) => iterator.clone(),
                None => {
                    let iterator = self.acquire_iterator().await?;
                    self.iterator = Some(iterator.clone());
                    iterator
                }
            };
            match self.get_records(&iterator).await {
                Ok(page) => return Ok(self.advance(page.records, page.next_iterator)),
                Err(e) if self.can_renew(e.kind) && !renewed => {
                    tracing::debug!(shard_id = %self.shard_id, error = %e, "getting a new shard iterator");
                    self.iterator = None;
                    renewed = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The pause an empty page asks for before the next poll (none after records), taken
    /// now: a caller that must do something right before the call (reserve memory for the
    /// page) pauses first. Cancel-safe: a dropped pause is taken again by the next poll.
    pub(crate) async fn pause(&mut self) {
        if !self.idle_delay.is_zero() {
            tokio::time::sleep(self.idle_delay).await;
            self.idle_delay = Duration::ZERO;
        }
    }

    /// An expired iterator is replaced. So is one refused as trimmed while nothing has been
    /// read from a TRIM_HORIZON start: nothing can have been lost before the oldest record
    /// (DynamoDB Local answers so for an iterator taken on a shard that was still empty).
    fn can_renew(&self, kind: ApiErrorKind) -> bool {
        kind == ApiErrorKind::ExpiredIterator
            || (kind == ApiErrorKind::TrimmedDataAccess
                && self.resume_position() == StartPosition::TrimHorizon)
    }

    fn advance(&mut self, records: Vec<Record>, next_iterator: Option<String>) -> Page {
        let last = records
            .last()
            .and_then(|r| r.dynamodb())
            .and_then(|d| d.sequence_number());
        if let Some(seq) = last.and_then(|text| SequenceNumber::parse(text).ok()) {
            self.last_read = Some(seq);
        }
        self.iterator = next_iterator;
        if self.iterator.is_none() {
            self.ended = true;
        }
        if records.is_empty() && self.ended {
            self.idle_delay = Duration::ZERO;
            Page::ShardEnd
        } else if records.is_empty() {
            self.idle_delay = self
                .idle_backoff
                .next()
                .map_or(self.config.idle_backoff_max, retry::whole_millis);
            Page::Empty
        } else {
            self.idle_delay = Duration::ZERO;
            self.idle_backoff = idle_policy(&self.config).build();
            Page::Records(records)
        }
    }

    async fn acquire_iterator(&mut self) -> Result<String, ApiError> {
        let position = self.resume_position();
        let (api, stream_arn, shard_id) = (self.api.clone(), &self.stream_arn, &self.shard_id);
        retry_read(&mut self.retry_backoff, shard_id, || {
            api.shard_iterator(stream_arn, shard_id, &position)
        })
        .await
    }

    async fn get_records(&mut self, iterator: &str) -> Result<RecordsPage, ApiError> {
        let limit = self.config.batch_limit.clamp(1, 1000);
        let api = self.api.clone();
        retry_read(&mut self.retry_backoff, &self.shard_id, || {
            api.get_records(iterator, limit)
        })
        .await
    }
}

fn idle_policy(config: &PollConfig) -> ExponentialBuilder {
    retry::idle_poll(config.idle_backoff_min, config.idle_backoff_max)
}

/// Calls `call` until it succeeds or fails with an error not worth retrying, pausing as
/// `backoff` says ([`retry::streams_read`]) and reporting each retry.
async fn retry_read<T, Fut>(
    backoff: &mut ResettingBackoff<ExponentialBuilder>,
    shard_id: &str,
    mut call: impl FnMut() -> Fut,
) -> Result<T, ApiError>
where
    Fut: Future<Output = Result<T, ApiError>>,
{
    loop {
        match call().await {
            Err(error) if retry::is_retryable_api(&error) => {
                let pause = backoff
                    .next_pause()
                    .unwrap_or(retry::STREAMS_READ_MAX_DELAY);
                ApiRetried {
                    shard_id,
                    error: &error,
                    pause,
                }
                .emit();
                tokio::time::sleep(pause).await;
            }
            result => return result,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::streams::{RecordsPage, ShardInfo, StreamPage};
    use aws_sdk_dynamodbstreams::types::StreamRecord;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// A scripted streams API: each GetRecords call takes the next scripted answer.
    #[derive(Debug, Default)]
    struct Script {
        iterators: Mutex<Vec<StartPosition>>,
        answers: Mutex<VecDeque<Result<RecordsPage, ApiErrorKind>>>,
    }

    fn record(seq: &str) -> Record {
        Record::builder()
            .dynamodb(StreamRecord::builder().sequence_number(seq).build())
            .build()
    }

    fn page(seqs: &[&str], next: Option<&str>) -> Result<RecordsPage, ApiErrorKind> {
        Ok(RecordsPage {
            records: seqs.iter().map(|s| record(s)).collect(),
            next_iterator: next.map(str::to_owned),
        })
    }

    #[async_trait::async_trait]
    impl StreamsApi for Script {
        async fn latest_stream_arn(&self, _: &str) -> Result<String, ApiError> {
            unimplemented!()
        }
        async fn describe_stream(&self, _: &str, _: Option<&str>) -> Result<StreamPage, ApiError> {
            unimplemented!()
        }
        async fn child_shards(&self, _: &str, _: &str) -> Result<Vec<ShardInfo>, ApiError> {
            unimplemented!()
        }
        async fn shard_iterator(
            &self,
            _: &str,
            _: &str,
            position: &StartPosition,
        ) -> Result<String, ApiError> {
            self.iterators.lock().unwrap().push(position.clone());
            Ok("it".into())
        }
        async fn get_records(&self, _: &str, _: u32) -> Result<RecordsPage, ApiError> {
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .expect("script ran out");
            answer.map_err(|kind| ApiError::new(kind, "GetRecords", "shard", "scripted"))
        }
    }

    fn reader(answers: Vec<Result<RecordsPage, ApiErrorKind>>) -> (Arc<Script>, ShardReader) {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            ..Script::default()
        });
        let reader = ShardReader::new(
            script.clone(),
            "arn",
            "shard-1",
            StartPosition::TrimHorizon,
            PollConfig::default(),
        );
        (script, reader)
    }

    fn seqs(page: Page) -> Vec<String> {
        match page {
            Page::Records(records) => records
                .iter()
                .map(|r| r.dynamodb().unwrap().sequence_number().unwrap().to_owned())
                .collect(),
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reads_to_shard_end() {
        let (_, mut reader) = reader(vec![page(&["1", "2"], Some("a")), page(&["3"], None)]);
        assert_eq!(seqs(reader.poll().await.unwrap()), ["1", "2"]);
        assert_eq!(seqs(reader.poll().await.unwrap()), ["3"]);
        assert!(matches!(reader.poll().await.unwrap(), Page::ShardEnd));
    }

    #[tokio::test(start_paused = true)]
    async fn empty_pages_back_off_up_to_the_maximum_and_reset_after_records() {
        let mut answers: Vec<_> = (0..8).map(|_| page(&[], Some("a"))).collect();
        answers.push(page(&["1"], Some("a")));
        answers.push(page(&[], Some("a")));
        answers.push(page(&[], Some("a")));
        let (_, mut reader) = reader(answers);
        let mut pauses = Vec::new();
        for _ in 0..11 {
            let before = tokio::time::Instant::now();
            reader.poll().await.unwrap();
            pauses.push(before.elapsed().as_millis());
        }
        assert_eq!(
            pauses,
            [0, 100, 200, 400, 800, 1000, 1000, 1000, 1000, 0, 100]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_iterator_resumes_after_the_last_record_read() {
        let (script, mut reader) = reader(vec![
            page(&["5"], Some("a")),
            Err(ApiErrorKind::ExpiredIterator),
            page(&["6"], Some("b")),
        ]);
        reader.poll().await.unwrap();
        assert_eq!(seqs(reader.poll().await.unwrap()), ["6"]);
        let positions = script.iterators.lock().unwrap().clone();
        assert_eq!(
            positions,
            [
                StartPosition::TrimHorizon,
                StartPosition::AfterSequenceNumber(SequenceNumber::parse("5").unwrap())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_with_backoff() {
        let (_, mut reader) = reader(vec![
            Err(ApiErrorKind::Throttled),
            Err(ApiErrorKind::Throttled),
            Err(ApiErrorKind::InternalServerError),
            page(&["1"], Some("a")),
        ]);
        let before = tokio::time::Instant::now();
        assert_eq!(seqs(reader.poll().await.unwrap()), ["1"]);
        assert!(before.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_at_trim_horizon_before_any_record_only_renews_the_iterator() {
        let (script, mut reader) = reader(vec![
            Err(ApiErrorKind::TrimmedDataAccess),
            page(&["1"], Some("a")),
        ]);
        assert_eq!(seqs(reader.poll().await.unwrap()), ["1"]);
        assert_eq!(script.iterators.lock().unwrap().len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn trimmed_data_is_returned_to_the_caller() {
        let (_, mut reader) = reader(vec![
            page(&["1"], Some("a")),
            Err(ApiErrorKind::TrimmedDataAccess),
        ]);
        reader.poll().await.unwrap();
        let err = reader.poll().await.unwrap_err();
        assert!(matches!(
            err,
            crate::Error::Api(ApiError {
                kind: ApiErrorKind::TrimmedDataAccess,
                ..
            })
        ));
    }
}
