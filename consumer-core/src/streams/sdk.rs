//! [`StreamsApi`] on the AWS SDK: `aws-sdk-dynamodbstreams` for the stream calls and
//! `aws-sdk-dynamodb` for DescribeTable (the only way to find a table's stream).
//!
//! Clients (timeouts, no SDK retries), error classes and DescribeStream paging come from
//! [`dynamodb_streams_leases::aws`]. Each call here maps the SDK's answer onto the trait's types
//! and every SDK error onto an [`ApiErrorKind`] (its [`ErrorClass`](aws::ErrorClass), plus the two
//! stream-specific codes), keeping the SDK error as the `source`. Nothing here retries:
//! the callers' named retry policies do.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use aws_sdk_dynamodbstreams::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodbstreams::types::{Shard, ShardFilter, ShardFilterType, ShardIteratorType};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_types::SdkConfig;
use dynamodb_streams_leases::SequenceNumber;
use dynamodb_streams_leases::aws::{self, AwsClients};
use tracing::debug;

use super::api::{
    ApiError, ApiErrorKind, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi,
};

/// DescribeStream's page size (the service's maximum).
const DESCRIBE_STREAM_LIMIT: i32 = 100;
/// GetRecords' maximum `Limit`. Above it AWS answers LimitExceededException (which would
/// look like throttling to the caller) and DynamoDB Local a ValidationException.
const MAX_RECORDS_LIMIT: u32 = 1000;

/// [`super::StreamsApi`] on `aws-sdk-dynamodbstreams` and `aws-sdk-dynamodb`.
#[derive(Debug)]
pub struct SdkStreams {
    clients: AwsClients,
    /// Set once the service rejected `ShardFilter` (an emulator without it; DynamoDB
    /// Local 2026-05 supports it): child shards are then found by a full DescribeStream.
    shard_filter_unsupported: AtomicBool,
}

impl SdkStreams {
    /// Builds both clients from `config` with [`AwsClients::from_sdk_config`]: bounded
    /// timeouts (an unreachable endpoint fails within seconds instead of hanging) and no
    /// SDK retries (the consumer's retry policies are the only retry layer).
    pub fn from_sdk_config(config: &SdkConfig) -> Self {
        Self::from_clients(AwsClients::from_sdk_config(config))
    }

    /// Uses `clients` as they are configured.
    pub fn from_clients(clients: AwsClients) -> Self {
        Self {
            clients,
            shard_filter_unsupported: AtomicBool::new(false),
        }
    }

    /// The DynamoDB client (the snapshot's Scan goes through it: `snapshot::scan`).
    pub(crate) fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        self.clients.dynamodb()
    }

    /// One DescribeStream page, optionally filtered.
    async fn describe_page(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
        filter: Option<ShardFilter>,
    ) -> Result<StreamPage, ApiError> {
        const OP: &str = "DescribeStream";
        let resource = || format!("stream {stream_arn}");
        let output = self
            .clients
            .streams()
            .describe_stream()
            .stream_arn(stream_arn)
            .limit(DESCRIBE_STREAM_LIMIT)
            .set_exclusive_start_shard_id(exclusive_start_shard_id.map(str::to_owned))
            .set_shard_filter(filter)
            .send()
            .await
            .map_err(|err| self.map_error(err, OP, resource()))?;
        let Some(description) = output.stream_description else {
            return Err(ApiError::new(
                ApiErrorKind::Other,
                OP,
                resource(),
                "the answer has no StreamDescription",
            ));
        };
        let shards = description
            .shards
            .unwrap_or_default()
            .into_iter()
            .map(|shard| shard_info(shard, stream_arn))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StreamPage {
            stream_arn: description
                .stream_arn
                .unwrap_or_else(|| stream_arn.to_owned()),
            table_name: description.table_name,
            status: description.stream_status,
            view_type: description.stream_view_type,
            shards,
            last_evaluated_shard_id: description.last_evaluated_shard_id,
        })
    }

    /// Every page of DescribeStream (with `filter` on each), through the one pager.
    async fn all_shards(
        &self,
        stream_arn: &str,
        filter: Option<&ShardFilter>,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        aws::describe_stream_pages(stream_arn, |start| async move {
            let page = self
                .describe_page(stream_arn, start.as_deref(), filter.cloned())
                .await?;
            Ok::<_, ApiError>((page.shards, page.last_evaluated_shard_id))
        })
        .await
    }

    /// Maps an SDK error of any operation: the kind from its [`ErrorClass`](aws::ErrorClass) (or one of the
    /// two stream-specific codes), the message from the service or the transport.
    pub(crate) fn map_error<E>(
        &self,
        err: SdkError<E, HttpResponse>,
        operation: &'static str,
        resource: String,
    ) -> ApiError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let endpoint = self.clients.endpoint();
        let kind = match err.code() {
            Some("ExpiredIteratorException") => ApiErrorKind::ExpiredIterator,
            Some("TrimmedDataAccessException") => ApiErrorKind::TrimmedDataAccess,
            _ => ApiErrorKind::from(aws::classify(&err)),
        };
        let message = aws::error_message(&err, endpoint);
        ApiError {
            kind,
            operation,
            resource,
            message,
            source: Some(Box::new(err)),
        }
    }
}
#[async_trait]
impl StreamsApi for SdkStreams {
    async fn latest_stream_arn(&self, table: &str) -> Result<String, ApiError> {
        const OP: &str = "DescribeTable";
        let resource = || format!("table {table:?}");
        let output = self
            .clients
            .dynamodb()
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|err| {
                let mut api_err = self.map_error(err, OP, resource());
                if api_err.kind == ApiErrorKind::ResourceNotFound {
                    api_err.message = format!(
                        "the table does not exist at {} ({})",
                        self.clients.endpoint(),
                        api_err.message
                    );
                }
                api_err
            })?;
        let Some(description) = output.table else {
            return Err(ApiError::new(
                ApiErrorKind::Other,
                OP,
                resource(),
                "the answer has no Table description",
            ));
        };
        // A disabled stream keeps its LatestStreamArn (readable for 24 h) but loses its
        // StreamSpecification (seen on DynamoDB Local), so the specification decides.
        let enabled = description
            .stream_specification
            .as_ref()
            .is_some_and(|spec| spec.stream_enabled);
        match description.latest_stream_arn {
            Some(arn) if enabled => Ok(arn),
            _ => Err(ApiError::new(
                ApiErrorKind::StreamNotEnabled,
                OP,
                resource(),
                format!(
                    "the table has no stream enabled; enable one with view type \
                     NEW_AND_OLD_IMAGES, e.g. `aws dynamodb update-table --table-name {table} \
                     --stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES`"
                ),
            )),
        }
    }

    async fn describe_stream(
        &self,
        stream_arn: &str,
        exclusive_start_shard_id: Option<&str>,
    ) -> Result<StreamPage, ApiError> {
        self.describe_page(stream_arn, exclusive_start_shard_id, None)
            .await
    }

    async fn child_shards(
        &self,
        stream_arn: &str,
        parent_shard_id: &str,
    ) -> Result<Vec<ShardInfo>, ApiError> {
        // Keep only the children even when the filter was applied: a service that ignores
        // an unknown parameter would otherwise hand us every shard of the stream.
        let is_child =
            |shard: &ShardInfo| shard.parent_shard_id.as_deref() == Some(parent_shard_id);
        let mut rejection = None;
        if !self.shard_filter_unsupported.load(Ordering::Relaxed) {
            let filter = ShardFilter::builder()
                .r#type(ShardFilterType::ChildShards)
                .shard_id(parent_shard_id)
                .build();
            match self.all_shards(stream_arn, Some(&filter)).await {
                Ok(mut shards) => {
                    shards.retain(is_child);
                    return Ok(shards);
                }
                Err(err) if err.kind == ApiErrorKind::InvalidRequest => rejection = Some(err),
                Err(err) => return Err(err),
            }
        }
        let mut shards = self.all_shards(stream_arn, None).await?;
        // Remembered only once the unfiltered call worked: had the ARN been invalid, the
        // filter was not the problem.
        if let Some(err) = rejection
            && !self.shard_filter_unsupported.swap(true, Ordering::Relaxed)
        {
            debug!(
                endpoint = %self.clients.endpoint(),
                error = %err,
                "DescribeStream rejected ShardFilter; finding child shards by full DescribeStream from now on"
            );
        }
        shards.retain(is_child);
        Ok(shards)
    }

    async fn shard_iterator(
        &self,
        stream_arn: &str,
        shard_id: &str,
        position: &StartPosition,
    ) -> Result<String, ApiError> {
        const OP: &str = "GetShardIterator";
        let resource = || format!("shard {shard_id} of stream {stream_arn}");
        let (iterator_type, sequence_number) = match position {
            StartPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            StartPosition::Latest => (ShardIteratorType::Latest, None),
            StartPosition::AtSequenceNumber(seq) => (
                ShardIteratorType::AtSequenceNumber,
                Some(seq.as_str().to_owned()),
            ),
            StartPosition::AfterSequenceNumber(seq) => (
                ShardIteratorType::AfterSequenceNumber,
                Some(seq.as_str().to_owned()),
            ),
        };
        let output = self
            .clients
            .streams()
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard_id)
            .shard_iterator_type(iterator_type)
            .set_sequence_number(sequence_number)
            .send()
            .await
            .map_err(|err| self.map_error(err, OP, resource()))?;
        output.shard_iterator.ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::Other,
                OP,
                resource(),
                format!("the answer has no ShardIterator for {position}"),
            )
        })
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        let limit = limit.clamp(1, MAX_RECORDS_LIMIT);
        let output = self
            .clients
            .streams()
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|err| self.map_error(err, "GetRecords", iterator_resource(iterator)))?;
        Ok(RecordsPage {
            records: output.records.unwrap_or_default(),
            next_iterator: output.next_shard_iterator,
        })
    }
}

/// Maps one shard of a DescribeStream answer; a bad sequence number is an error naming
/// the shard, never a panic.
fn shard_info(shard: Shard, stream_arn: &str) -> Result<ShardInfo, ApiError> {
    let invalid = |message: String| {
        ApiError::new(
            ApiErrorKind::Other,
            "DescribeStream",
            format!("stream {stream_arn}"),
            message,
        )
    };
    let Some(shard_id) = shard.shard_id else {
        return Err(invalid("the answer has a shard without ShardId".to_owned()));
    };
    let range = shard.sequence_number_range;
    let parse = |text: Option<String>, which: &str| {
        text.map(SequenceNumber::parse).transpose().map_err(|err| {
            let mut api_err = invalid(format!(
                "shard {shard_id} has an invalid {which} sequence number: {err}"
            ));
            api_err.source = Some(Box::new(err));
            api_err
        })
    };
    let (starting, ending) = match range {
        Some(range) => (range.starting_sequence_number, range.ending_sequence_number),
        None => (None, None),
    };
    let starting_sequence_number = parse(starting, "starting")?;
    let ending_sequence_number = parse(ending, "ending")?;
    Ok(ShardInfo {
        shard_id,
        parent_shard_id: shard.parent_shard_id,
        starting_sequence_number,
        ending_sequence_number,
    })
}

/// Names an iterator without printing it: iterators are long and opaque. Real ones start
/// with the stream ARN and a `|`, which is the useful part.
fn iterator_resource(iterator: &str) -> String {
    match iterator.split_once('|') {
        Some((stream_arn, _)) if stream_arn.starts_with("arn:") => {
            format!("shard iterator of stream {stream_arn}")
        }
        _ => {
            let prefix: String = iterator.chars().take(16).collect();
            format!("shard iterator {prefix}...")
        }
    }
}

/// The service's code and message, e.g. `ExpiredIteratorException: Iterator expired`.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::{Duration, Instant};

    use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
    use aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput;
    use aws_sdk_dynamodb::types::{StreamSpecification, TableDescription};
    use aws_sdk_dynamodbstreams::Client as StreamsClient;
    use aws_sdk_dynamodbstreams::config::retry::RetryConfig;
    use aws_sdk_dynamodbstreams::config::{
        BehaviorVersion, Credentials, Region, SharedCredentialsProvider,
    };
    use aws_sdk_dynamodbstreams::error::ConnectorError;
    use aws_sdk_dynamodbstreams::operation::describe_stream::{
        DescribeStreamError, DescribeStreamOutput,
    };
    use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError;
    use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsOutput;
    use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorOutput;
    use aws_sdk_dynamodbstreams::types::error as stream_errors;
    use aws_sdk_dynamodbstreams::types::{
        OperationType, Record, SequenceNumberRange, StreamDescription, StreamRecord, StreamStatus,
        StreamViewType,
    };
    use aws_smithy_mocks::{
        MockResponseInterceptor, Rule, RuleMode, create_mock_http_client, mock,
    };
    use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;

    const ARN: &str =
        "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000";
    const ENDPOINT: &str = "http://mock.invalid:8000";

    /// Test settings shared by every client: fixed region and credentials, no retries (so
    /// that error tests are instant).
    fn test_config() -> aws_types::sdk_config::Builder {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::for_tests()))
            .retry_config(RetryConfig::disabled())
    }

    fn interceptor(rules: &[&Rule]) -> MockResponseInterceptor {
        rules.iter().fold(
            MockResponseInterceptor::new().rule_mode(RuleMode::Sequential),
            |interceptor, rule| interceptor.with_rule(rule),
        )
    }

    /// An [`SdkStreams`] whose clients answer from the rules (`mock_client!` needs the SDKs'
    /// `test-util` feature; an interceptor on a mock HTTP client needs nothing more).
    fn mocked(streams_rules: &[&Rule], dynamodb_rules: &[&Rule]) -> SdkStreams {
        let config = test_config().http_client(create_mock_http_client()).build();
        let streams = aws_sdk_dynamodbstreams::config::Builder::from(&config)
            .interceptor(interceptor(streams_rules))
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&config)
            .interceptor(interceptor(dynamodb_rules))
            .build();
        SdkStreams::from_clients(AwsClients::new(
            aws_sdk_dynamodb::Client::from_conf(dynamodb),
            StreamsClient::from_conf(streams),
            ENDPOINT,
        ))
    }

    fn with_streams(rules: &[&Rule]) -> SdkStreams {
        mocked(rules, &[])
    }

    fn with_dynamodb(rules: &[&Rule]) -> SdkStreams {
        mocked(&[], rules)
    }

    /// The error metadata the SDK attaches to every error it reads from an answer; modeled
    /// errors built by hand need it too, since errors are classified by their code.
    fn code(code: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).build()
    }

    /// An AWS JSON error answer, as the service sends it.
    fn json_error(status: u16, error_type: &str, message: &str) -> HttpResponse {
        let body = format!(
            r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{error_type}","message":"{message}"}}"#
        );
        let mut response =
            HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::from(body));
        response
            .headers_mut()
            .insert("content-type", "application/x-amz-json-1.0");
        response
    }

    fn seq(text: &str) -> SequenceNumber {
        SequenceNumber::parse(text).unwrap()
    }

    fn shard(id: &str, parent: Option<&str>, start: &str, end: Option<&str>) -> Shard {
        let range = SequenceNumberRange::builder()
            .starting_sequence_number(start)
            .set_ending_sequence_number(end.map(str::to_owned))
            .build();
        Shard::builder()
            .shard_id(id)
            .set_parent_shard_id(parent.map(str::to_owned))
            .sequence_number_range(range)
            .build()
    }

    fn page(shards: Vec<Shard>, last: Option<&str>) -> DescribeStreamOutput {
        DescribeStreamOutput::builder()
            .stream_description(
                StreamDescription::builder()
                    .stream_arn(ARN)
                    .table_name("orders")
                    .stream_status(StreamStatus::Enabled)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .set_shards(Some(shards))
                    .set_last_evaluated_shard_id(last.map(str::to_owned))
                    .build(),
            )
            .build()
    }

    fn ids(shards: &[ShardInfo]) -> Vec<&str> {
        shards.iter().map(|s| s.shard_id.as_str()).collect()
    }

    // ----- error mapping, per operation -----

    /// A modeled error of the operation error type `$op`, built as the SDK builds it from
    /// an answer (with its code).
    macro_rules! modeled {
        ($op:ident :: $variant:ident) => {
            || {
                $op::$variant(
                    stream_errors::$variant::builder()
                        .meta(code(stringify!($variant)))
                        .build(),
                )
            }
        };
    }

    #[tokio::test]
    async fn get_records_modeled_errors_map_to_kinds() {
        use aws_sdk_dynamodbstreams::operation::get_records::GetRecordsError as E;
        let cases: [(fn() -> E, ApiErrorKind); 5] = [
            (
                modeled!(E::ExpiredIteratorException),
                ApiErrorKind::ExpiredIterator,
            ),
            (
                modeled!(E::TrimmedDataAccessException),
                ApiErrorKind::TrimmedDataAccess,
            ),
            (modeled!(E::LimitExceededException), ApiErrorKind::Throttled),
            (
                modeled!(E::ResourceNotFoundException),
                ApiErrorKind::ResourceNotFound,
            ),
            (
                modeled!(E::InternalServerError),
                ApiErrorKind::InternalServerError,
            ),
        ];
        for (error, kind) in cases {
            let rule = mock!(StreamsClient::get_records).then_error(error);
            let err = with_streams(&[&rule])
                .get_records(
                    &format!("{ARN}|1|AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                    100,
                )
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{err}");
            assert_eq!(err.operation, "GetRecords");
            assert_eq!(err.resource, format!("shard iterator of stream {ARN}"));
            assert!(err.source.is_some());
        }
    }

    #[tokio::test]
    async fn get_shard_iterator_modeled_errors_map_to_kinds() {
        use aws_sdk_dynamodbstreams::operation::get_shard_iterator::GetShardIteratorError as E;
        let cases: [(fn() -> E, ApiErrorKind); 3] = [
            (
                modeled!(E::TrimmedDataAccessException),
                ApiErrorKind::TrimmedDataAccess,
            ),
            (
                modeled!(E::ResourceNotFoundException),
                ApiErrorKind::ResourceNotFound,
            ),
            (
                modeled!(E::InternalServerError),
                ApiErrorKind::InternalServerError,
            ),
        ];
        for (error, kind) in cases {
            let rule = mock!(StreamsClient::get_shard_iterator).then_error(error);
            let err = with_streams(&[&rule])
                .shard_iterator(ARN, "shardId-1", &StartPosition::TrimHorizon)
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{err}");
            assert_eq!(err.resource, format!("shard shardId-1 of stream {ARN}"));
        }
    }

    #[tokio::test]
    async fn describe_stream_modeled_errors_map_to_kinds() {
        use aws_sdk_dynamodbstreams::operation::describe_stream::DescribeStreamError as E;
        let cases: [(fn() -> E, ApiErrorKind); 2] = [
            (
                modeled!(E::ResourceNotFoundException),
                ApiErrorKind::ResourceNotFound,
            ),
            (
                modeled!(E::InternalServerError),
                ApiErrorKind::InternalServerError,
            ),
        ];
        for (error, kind) in cases {
            let rule = mock!(StreamsClient::describe_stream).then_error(error);
            let err = with_streams(&[&rule])
                .describe_stream(ARN, None)
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{err}");
            assert_eq!(err.resource, format!("stream {ARN}"));
        }
    }

    #[tokio::test]
    async fn unmodeled_error_codes_and_server_failures_map_by_code_and_status() {
        let cases = [
            (
                json_error(400, "ThrottlingException", "Rate exceeded"),
                ApiErrorKind::Throttled,
            ),
            (
                json_error(400, "ProvisionedThroughputExceededException", "slow down"),
                ApiErrorKind::Throttled,
            ),
            (
                json_error(400, "RequestLimitExceeded", "slow down"),
                ApiErrorKind::Throttled,
            ),
            (
                json_error(400, "ValidationException", "bad limit"),
                ApiErrorKind::InvalidRequest,
            ),
            (
                json_error(400, "ExpiredIteratorException", "Iterator expired"),
                ApiErrorKind::ExpiredIterator,
            ),
            (
                json_error(400, "AccessDeniedException", "no"),
                ApiErrorKind::Other,
            ),
            (
                json_error(500, "InternalServerError", "oops"),
                ApiErrorKind::InternalServerError,
            ),
            (
                HttpResponse::new(StatusCode::try_from(503).unwrap(), SdkBody::from("")),
                ApiErrorKind::InternalServerError,
            ),
        ];
        for (response, kind) in cases {
            let response = std::sync::Mutex::new(Some(response));
            let rule = mock!(StreamsClient::get_records)
                .then_http_response(move || response.lock().unwrap().take().unwrap());
            let err = with_streams(&[&rule])
                .get_records("opaque-iterator-text", 10)
                .await
                .unwrap_err();
            assert_eq!(err.kind, kind, "{err}");
            assert_eq!(err.resource, "shard iterator opaque-iterator-...");
        }
    }

    #[tokio::test]
    async fn service_code_and_message_are_kept() {
        let rule = mock!(StreamsClient::get_records)
            .then_http_response(|| json_error(400, "ExpiredIteratorException", "Iterator expired"));
        let err = with_streams(&[&rule])
            .get_records("it", 10)
            .await
            .unwrap_err();
        assert_eq!(err.message, "ExpiredIteratorException: Iterator expired");
        let source = err.source.as_ref().unwrap().to_string();
        assert!(source.contains("service error"), "{source}");
    }

    #[test]
    fn dispatch_failures_and_timeouts_are_transport_errors_naming_the_endpoint() {
        let streams = with_streams(&[]);
        let refused: SdkError<GetRecordsError> =
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into()));
        let err = streams.map_error(refused, "GetRecords", "r".into());
        assert_eq!(err.kind, ApiErrorKind::Transport);
        assert!(
            err.message.contains(ENDPOINT) && err.message.contains("connection refused"),
            "{err}"
        );

        let timeout: SdkError<GetRecordsError> = SdkError::timeout_error("operation timed out");
        let err = streams.map_error(timeout, "GetRecords", "r".into());
        assert_eq!(err.kind, ApiErrorKind::Transport);
        assert!(err.message.contains(ENDPOINT), "{err}");
    }

    /// The real thing: a dead endpoint with the production clients (timeouts, no SDK
    /// retries) fails as Transport, naming the endpoint, well within the 15 s a worker has to report it.
    #[tokio::test]
    async fn dead_endpoint_fails_fast_as_transport() {
        let config = test_config().endpoint_url("http://127.0.0.1:1").build();
        let streams = SdkStreams::from_sdk_config(&config);
        let started = Instant::now();
        let err = streams.latest_stream_arn("orders").await.unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Transport, "{err}");
        assert!(err.message.contains("http://127.0.0.1:1"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );

        let err = streams.describe_stream(ARN, None).await.unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Transport, "{err}");
    }

    // ----- DescribeTable -----

    #[tokio::test]
    async fn missing_table_is_resource_not_found_naming_the_table() {
        let rule = mock!(aws_sdk_dynamodb::Client::describe_table).then_error(|| {
            DescribeTableError::ResourceNotFoundException(
                aws_sdk_dynamodb::types::error::ResourceNotFoundException::builder()
                    .meta(code("ResourceNotFoundException"))
                    .message("Cannot do operations on a non-existent table")
                    .build(),
            )
        });
        let err = with_dynamodb(&[&rule])
            .latest_stream_arn("orders")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::ResourceNotFound);
        assert_eq!(err.operation, "DescribeTable");
        assert_eq!(err.resource, r#"table "orders""#);
        assert!(
            err.message.contains("does not exist") && err.message.contains(ENDPOINT),
            "{err}"
        );
    }

    #[tokio::test]
    async fn describe_table_internal_error_maps() {
        let rule = mock!(aws_sdk_dynamodb::Client::describe_table).then_error(|| {
            DescribeTableError::InternalServerError(
                aws_sdk_dynamodb::types::error::InternalServerError::builder()
                    .meta(code("InternalServerError"))
                    .build(),
            )
        });
        let err = with_dynamodb(&[&rule])
            .latest_stream_arn("orders")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::InternalServerError);
    }

    fn table(arn: Option<&str>, enabled: Option<bool>) -> DescribeTableOutput {
        let spec = enabled.map(|enabled| {
            StreamSpecification::builder()
                .stream_enabled(enabled)
                .build()
                .unwrap()
        });
        DescribeTableOutput::builder()
            .table(
                TableDescription::builder()
                    .table_name("orders")
                    .set_latest_stream_arn(arn.map(str::to_owned))
                    .set_stream_specification(spec)
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn table_without_stream_is_stream_not_enabled() {
        // No stream ever; disabled (DynamoDB Local drops the specification); disabled.
        for (arn, enabled) in [(None, None), (Some(ARN), None), (Some(ARN), Some(false))] {
            let rule = mock!(aws_sdk_dynamodb::Client::describe_table)
                .then_output(move || table(arn, enabled));
            let err = with_dynamodb(&[&rule])
                .latest_stream_arn("orders")
                .await
                .unwrap_err();
            assert_eq!(err.kind, ApiErrorKind::StreamNotEnabled);
            assert_eq!(err.resource, r#"table "orders""#);
            assert!(err.message.contains("NEW_AND_OLD_IMAGES"), "{err}");
        }
    }

    #[tokio::test]
    async fn table_with_stream_gives_its_latest_arn() {
        let rule = mock!(aws_sdk_dynamodb::Client::describe_table)
            .match_requests(|req| req.table_name() == Some("orders"))
            .then_output(|| table(Some(ARN), Some(true)));
        let arn = with_dynamodb(&[&rule])
            .latest_stream_arn("orders")
            .await
            .unwrap();
        assert_eq!(arn, ARN);
    }

    // ----- DescribeStream -----

    #[tokio::test]
    async fn describe_stream_maps_one_page() {
        let rule = mock!(StreamsClient::describe_stream)
            .match_requests(|req| {
                req.stream_arn() == Some(ARN)
                    && req.limit() == Some(100)
                    && req.exclusive_start_shard_id() == Some("shardId-0")
                    && req.shard_filter().is_none()
            })
            .then_output(|| {
                page(
                    vec![
                        shard(
                            "shardId-1",
                            None,
                            "100000000000000000001",
                            Some("100000000000000000009"),
                        ),
                        shard(
                            "shardId-2",
                            Some("shardId-1"),
                            "200000000000000000001",
                            None,
                        ),
                    ],
                    Some("shardId-2"),
                )
            });
        let page = with_streams(&[&rule])
            .describe_stream(ARN, Some("shardId-0"))
            .await
            .unwrap();
        assert_eq!(page.stream_arn, ARN);
        assert_eq!(page.table_name.as_deref(), Some("orders"));
        assert_eq!(page.status, Some(StreamStatus::Enabled));
        assert_eq!(page.view_type, Some(StreamViewType::NewAndOldImages));
        assert_eq!(page.last_evaluated_shard_id.as_deref(), Some("shardId-2"));
        assert_eq!(
            page.shards,
            vec![
                ShardInfo {
                    shard_id: "shardId-1".into(),
                    parent_shard_id: None,
                    starting_sequence_number: Some(seq("100000000000000000001")),
                    ending_sequence_number: Some(seq("100000000000000000009")),
                },
                ShardInfo {
                    shard_id: "shardId-2".into(),
                    parent_shard_id: Some("shardId-1".into()),
                    starting_sequence_number: Some(seq("200000000000000000001")),
                    ending_sequence_number: None,
                },
            ]
        );
        assert!(page.shards[0].is_closed());
        assert!(!page.shards[1].is_closed());
    }

    #[tokio::test]
    async fn unparseable_sequence_number_is_an_error_naming_the_shard() {
        let rule = mock!(StreamsClient::describe_stream)
            .then_output(|| page(vec![shard("shardId-bad", None, "12x", None)], None));
        let err = with_streams(&[&rule])
            .describe_stream(ARN, None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Other);
        assert!(
            err.message.contains("shardId-bad") && err.message.contains("starting"),
            "{err}"
        );
        assert!(err.source.is_some());
    }

    // ----- child shards -----

    fn child_filter_for(
        req: &aws_sdk_dynamodbstreams::operation::describe_stream::DescribeStreamInput,
        parent: &str,
    ) -> bool {
        req.shard_filter().is_some_and(|filter| {
            filter.r#type() == Some(&ShardFilterType::ChildShards)
                && filter.shard_id() == Some(parent)
        })
    }

    #[tokio::test]
    async fn child_shards_follow_pages_with_the_filter() {
        let first = mock!(StreamsClient::describe_stream)
            .match_requests(|req| {
                child_filter_for(req, "p") && req.exclusive_start_shard_id().is_none()
            })
            .then_output(|| {
                page(
                    vec![
                        shard("c1", Some("p"), "300", None),
                        shard("c2", Some("p"), "301", None),
                    ],
                    Some("c2"),
                )
            });
        let second = mock!(StreamsClient::describe_stream)
            .match_requests(|req| {
                child_filter_for(req, "p") && req.exclusive_start_shard_id() == Some("c2")
            })
            .then_output(|| page(vec![shard("c3", Some("p"), "302", None)], None));
        let streams = with_streams(&[&first, &second]);
        let children = streams.child_shards(ARN, "p").await.unwrap();
        assert_eq!(ids(&children), ["c1", "c2", "c3"]);
        assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
        assert!(!streams.shard_filter_unsupported.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn rejected_filter_falls_back_to_a_full_scan_and_stays_there() {
        let rejected = mock!(StreamsClient::describe_stream)
            .match_requests(|req| child_filter_for(req, "p"))
            .then_http_response(|| {
                json_error(400, "ValidationException", "Unknown parameter ShardFilter")
            });
        let full_page = |start: Option<&'static str>,
                         shards: fn() -> Vec<Shard>,
                         last: Option<&'static str>| {
            mock!(StreamsClient::describe_stream)
                .match_requests(move |req| {
                    req.shard_filter().is_none() && req.exclusive_start_shard_id() == start
                })
                .then_output(move || page(shards(), last))
        };
        let shards_1 = || {
            vec![
                shard("p", None, "100", Some("199")),
                shard("c1", Some("p"), "300", None),
                shard("other", Some("q"), "400", None),
            ]
        };
        let shards_2 = || vec![shard("c2", Some("p"), "301", None)];
        let rules = [
            rejected,
            full_page(None, shards_1, Some("other")),
            full_page(Some("other"), shards_2, None),
            // The second call goes straight to the full scan: a filtered request here would
            // not match (Sequential mode) and fail the test.
            full_page(None, shards_1, Some("other")),
            full_page(Some("other"), shards_2, None),
        ];
        let streams = with_streams(&rules.iter().collect::<Vec<_>>());
        assert_eq!(
            ids(&streams.child_shards(ARN, "p").await.unwrap()),
            ["c1", "c2"]
        );
        assert!(streams.shard_filter_unsupported.load(Ordering::Relaxed));
        assert_eq!(
            ids(&streams.child_shards(ARN, "p").await.unwrap()),
            ["c1", "c2"]
        );
        assert!(rules.iter().all(|rule| rule.num_calls() == 1));
    }

    #[tokio::test]
    async fn a_rejection_of_the_unfiltered_call_too_is_not_blamed_on_the_filter() {
        let rejected = || {
            mock!(StreamsClient::describe_stream)
                .then_http_response(|| json_error(400, "ValidationException", "Invalid StreamArn"))
        };
        let (filtered, unfiltered) = (rejected(), rejected());
        let streams = with_streams(&[&filtered, &unfiltered]);
        let err = streams.child_shards("not-an-arn", "p").await.unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::InvalidRequest);
        assert_eq!((filtered.num_calls(), unfiltered.num_calls()), (1, 1));
        assert!(!streams.shard_filter_unsupported.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn ignored_filter_still_yields_only_children() {
        let rule = mock!(StreamsClient::describe_stream).then_output(|| {
            page(
                vec![
                    shard("p", None, "100", Some("199")),
                    shard("c1", Some("p"), "300", None),
                ],
                None,
            )
        });
        let children = with_streams(&[&rule]).child_shards(ARN, "p").await.unwrap();
        assert_eq!(ids(&children), ["c1"]);
    }

    #[tokio::test]
    async fn other_child_shard_errors_do_not_fall_back() {
        let rule = mock!(StreamsClient::describe_stream).then_error(|| {
            DescribeStreamError::ResourceNotFoundException(
                stream_errors::ResourceNotFoundException::builder()
                    .meta(code("ResourceNotFoundException"))
                    .build(),
            )
        });
        let streams = with_streams(&[&rule]);
        let err = streams.child_shards(ARN, "p").await.unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::ResourceNotFound);
        assert!(!streams.shard_filter_unsupported.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn a_cursor_that_does_not_advance_is_an_error_not_a_loop() {
        let first = mock!(StreamsClient::describe_stream).then_output(|| page(vec![], Some("s1")));
        let again = mock!(StreamsClient::describe_stream).then_output(|| page(vec![], Some("s1")));
        let err = with_streams(&[&first, &again])
            .child_shards(ARN, "p")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Other);
        assert!(err.message.contains("did not advance"), "{err}");
    }

    // ----- GetShardIterator -----

    #[tokio::test]
    async fn shard_iterator_sends_each_position() {
        let cases = [
            (
                StartPosition::TrimHorizon,
                ShardIteratorType::TrimHorizon,
                None,
            ),
            (StartPosition::Latest, ShardIteratorType::Latest, None),
            (
                StartPosition::AtSequenceNumber(seq("000123")),
                ShardIteratorType::AtSequenceNumber,
                Some("000123"),
            ),
            (
                StartPosition::AfterSequenceNumber(seq("456")),
                ShardIteratorType::AfterSequenceNumber,
                Some("456"),
            ),
        ];
        for (position, iterator_type, sequence_number) in cases {
            let rule = mock!(StreamsClient::get_shard_iterator)
                .match_requests(move |req| {
                    req.stream_arn() == Some(ARN)
                        && req.shard_id() == Some("shardId-1")
                        && req.shard_iterator_type() == Some(&iterator_type)
                        && req.sequence_number() == sequence_number
                })
                .then_output(|| {
                    GetShardIteratorOutput::builder()
                        .shard_iterator("iter-1")
                        .build()
                });
            let iterator = with_streams(&[&rule])
                .shard_iterator(ARN, "shardId-1", &position)
                .await
                .unwrap();
            assert_eq!(iterator, "iter-1", "{position}");
        }
    }

    #[tokio::test]
    async fn missing_iterator_is_an_error() {
        let rule = mock!(StreamsClient::get_shard_iterator)
            .then_output(|| GetShardIteratorOutput::builder().build());
        let err = with_streams(&[&rule])
            .shard_iterator(ARN, "shardId-1", &StartPosition::Latest)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ApiErrorKind::Other);
        assert!(err.message.contains("LATEST"), "{err}");
    }

    // ----- GetRecords -----

    fn record(id: &str, sequence_number: &str) -> Record {
        Record::builder()
            .event_id(id)
            .event_name(OperationType::Insert)
            .event_source("aws:dynamodb")
            .dynamodb(
                StreamRecord::builder()
                    .sequence_number(sequence_number)
                    .size_bytes(42)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build(),
            )
            .build()
    }

    #[tokio::test]
    async fn records_pass_through_untouched() {
        let rule = mock!(StreamsClient::get_records)
            .match_requests(|req| {
                req.shard_iterator() == Some("iter-1") && req.limit() == Some(500)
            })
            .then_output(|| {
                GetRecordsOutput::builder()
                    .records(record("e1", "100"))
                    .records(record("e2", "101"))
                    .next_shard_iterator("iter-2")
                    .build()
            });
        let page = with_streams(&[&rule])
            .get_records("iter-1", 500)
            .await
            .unwrap();
        assert_eq!(page.records, vec![record("e1", "100"), record("e2", "101")]);
        assert_eq!(page.next_iterator.as_deref(), Some("iter-2"));
    }

    #[tokio::test]
    async fn end_of_closed_shard_has_no_next_iterator_and_limit_is_clamped() {
        let rule = mock!(StreamsClient::get_records)
            .match_requests(|req| req.limit() == Some(1000))
            .then_output(|| GetRecordsOutput::builder().build());
        let page = with_streams(&[&rule])
            .get_records("iter-1", 5000)
            .await
            .unwrap();
        assert!(page.records.is_empty());
        assert_eq!(page.next_iterator, None);
    }

    #[test]
    fn iterators_are_never_printed_whole() {
        let long = format!("{ARN}|1|{}", "A".repeat(300));
        assert_eq!(
            iterator_resource(&long),
            format!("shard iterator of stream {ARN}")
        );
        let opaque = "B".repeat(300);
        assert_eq!(
            iterator_resource(&opaque),
            format!("shard iterator {}...", "B".repeat(16))
        );
        assert_eq!(iterator_resource("é|x"), "shard iterator é|x...");
    }
}
