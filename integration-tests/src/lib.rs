//! Helpers for tests against a real DynamoDB (DynamoDB Local).
//!
//! The tests need `DYNAMODB_ENDPOINT`, which `scripts/dynamodb-local.sh run -- CMD` sets
//! after starting DynamoDB Local on a free loopback port (`make test` does this). A test
//! that needs DynamoDB fails without it: it never passes without having run.

use aws_config::SdkConfig;

pub use dynamodb_streams_examples::unique_name;

pub mod http;
pub mod workers;

/// The environment variable holding the DynamoDB endpoint URL.
pub const ENDPOINT_VAR: &str = "DYNAMODB_ENDPOINT";

/// The DynamoDB endpoint from `DYNAMODB_ENDPOINT`.
///
/// # Panics
///
/// When the variable is not set, with a message saying how to run the tests.
pub fn endpoint() -> String {
    match std::env::var(ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.trim().is_empty() => endpoint,
        _ => panic!(
            "{ENDPOINT_VAR} is not set: this test needs DynamoDB Local. Run `make test`, or \
             `scripts/dynamodb-local.sh run -- cargo test ...` to start DynamoDB Local and \
             set {ENDPOINT_VAR} for the command."
        ),
    }
}

/// SDK configuration for `endpoint`: region us-east-1 and static dummy credentials
/// (the programs' [`dynamodb_streams_examples::local_sdk_config`]).
pub fn sdk_config_for(endpoint: &str) -> SdkConfig {
    dynamodb_streams_examples::local_sdk_config(endpoint, None)
}

/// SDK configuration for DynamoDB Local at [`endpoint()`].
///
/// # Panics
///
/// When `DYNAMODB_ENDPOINT` is not set.
pub async fn sdk_config() -> SdkConfig {
    sdk_config_for(&endpoint())
}

/// A DynamoDB client for DynamoDB Local at [`endpoint()`].
///
/// # Panics
///
/// When `DYNAMODB_ENDPOINT` is not set.
pub async fn dynamodb_client() -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config().await)
}

/// Puts the item `{name, count}` into `table` (a table keyed by `name`); `count` is any
/// attribute value, so tests can also write one that does not decode.
///
/// # Panics
///
/// When `DYNAMODB_ENDPOINT` is not set or the put fails.
pub async fn put_count(table: &str, name: &str, count: aws_sdk_dynamodb::types::AttributeValue) {
    dynamodb_client()
        .await
        .put_item()
        .table_name(table)
        .item(
            "name",
            aws_sdk_dynamodb::types::AttributeValue::S(name.into()),
        )
        .item("count", count)
        .send()
        .await
        .unwrap_or_else(|e| panic!("put into {table:?} failed: {e}"));
}

/// A DynamoDB Streams client for DynamoDB Local at [`endpoint()`].
///
/// # Panics
///
/// When `DYNAMODB_ENDPOINT` is not set.
pub async fn streams_client() -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config().await)
}

/// Creates a table with a string partition key `key`, on-demand, with a NEW_AND_OLD_IMAGES
/// stream when `stream` is true, and waits until it is ACTIVE ([`dynamodb_streams_examples::create_table`]).
/// Panics on failure (test helper).
pub async fn create_table(name: &str, key: &str, stream: bool) {
    if let Err(e) =
        dynamodb_streams_examples::create_table(&dynamodb_client().await, name, key, stream).await
    {
        panic!("creating table {name:?}: {e}");
    }
}

/// Turns on the stream of an existing table (one filled while it had none, for snapshot
/// tests) with `view`. Panics on failure (test helper).
pub async fn enable_stream(table: &str, view: aws_sdk_dynamodb::types::StreamViewType) {
    let spec = aws_sdk_dynamodb::types::StreamSpecification::builder()
        .stream_enabled(true)
        .stream_view_type(view)
        .build()
        .unwrap_or_else(|e| panic!("stream specification: {e}"));
    dynamodb_client()
        .await
        .update_table()
        .table_name(table)
        .stream_specification(spec)
        .send()
        .await
        .unwrap_or_else(|e| panic!("enabling the stream of {table:?} failed: {e}"));
}

/// Turns off the stream of `table` (enabling it again gives a new stream ARN). Panics on
/// failure (test helper).
pub async fn disable_stream(table: &str) {
    let spec = aws_sdk_dynamodb::types::StreamSpecification::builder()
        .stream_enabled(false)
        .build()
        .unwrap_or_else(|e| panic!("stream specification: {e}"));
    dynamodb_client()
        .await
        .update_table()
        .table_name(table)
        .stream_specification(spec)
        .send()
        .await
        .unwrap_or_else(|e| panic!("disabling the stream of {table:?} failed: {e}"));
}

/// The ARN of `table`'s current stream, if it has one. Panics if DescribeTable fails (test
/// helper).
pub async fn stream_arn(table: &str) -> Option<String> {
    dynamodb_client()
        .await
        .describe_table()
        .table_name(table)
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeTable {table:?} failed: {e}"))
        .table
        .and_then(|t| t.latest_stream_arn)
}

/// Runs a consumer in the background until the returned sender is used (a graceful stop);
/// aborting the handle instead is a crash.
pub fn spawn_consumer(
    consumer: dynamodb_streams_consumer::Consumer<impl dynamodb_streams_consumer::ProcessorFactory>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<dynamodb_streams_consumer::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

/// Polls `done` every 50 ms until it holds.
///
/// # Panics
///
/// After `limit`, naming `what` (test helper).
pub async fn wait_for(what: &str, limit: std::time::Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A consumer of `table` for application `app` with the settings that keep tests quick:
/// a checkpoint after every batch, idle polls every 20-200 ms, lease scans every 300 ms.
pub fn quick_consumer(
    app: &str,
    table: &str,
    config: &SdkConfig,
) -> dynamodb_streams_consumer::ConsumerBuilder {
    use std::time::Duration;
    dynamodb_streams_consumer::Consumer::builder(app)
        .with_table(table)
        .with_sdk_config(config)
        .with_checkpoint_interval(Duration::ZERO)
        .with_idle_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_scan_interval(Duration::from_millis(300))
}
