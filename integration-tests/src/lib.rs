//! Helpers for tests against a real DynamoDB (DynamoDB Local).
//!
//! The tests need `DYNAMODB_ENDPOINT`, which `scripts/dynamodb-local.sh run -- CMD` sets
//! after starting DynamoDB Local on a free loopback port (`make test` does this). A test
//! that needs DynamoDB fails without it: it never passes without having run.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

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
/// (DynamoDB Local runs with `-sharedDb`, so every client sees the same tables).
pub fn sdk_config_for(endpoint: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                "local", "local", None, None, "static",
            )),
        )
        .endpoint_url(endpoint)
        .build()
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

/// A DynamoDB Streams client for DynamoDB Local at [`endpoint()`].
///
/// # Panics
///
/// When `DYNAMODB_ENDPOINT` is not set.
pub async fn streams_client() -> aws_sdk_dynamodbstreams::Client {
    aws_sdk_dynamodbstreams::Client::new(&sdk_config().await)
}

/// A table name no other test (in this or a concurrent test process) uses:
/// `{prefix}-{pid}-{counter}-{millis}`, a valid DynamoDB table name when `prefix` is.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{millis}", std::process::id())
}

/// Creates a table with a string partition key `key`, on-demand, with a NEW_AND_OLD_IMAGES
/// stream when `stream` is true. Panics on failure (test helper).
pub async fn create_table(name: &str, key: &str, stream: bool) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let built = |what: &str| format!("building the {what} of table {name:?}");
    let mut request = dynamodb_client()
        .await
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap_or_else(|e| panic!("{}: {e}", built("attribute definition"))),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()
                .unwrap_or_else(|e| panic!("{}: {e}", built("key schema"))),
        );
    if stream {
        request = request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap_or_else(|e| panic!("{}: {e}", built("stream specification"))),
        );
    }
    if let Err(e) = request.send().await {
        panic!("creating table {name:?}: {e}");
    }
}
