//! Building the two SDK clients: bounded timeouts, no SDK retries.

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_types::SdkConfig;

/// Connection setup: a black-holed address fails after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One HTTP attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole operation (with retries disabled, one attempt plus the SDK's own work).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// One attempt of a liveness call: a heartbeat, or the read of the membership item other
/// workers' liveness is judged from. Much shorter than the 10 s of other calls: a heartbeat
/// stuck for 10 s would outlast a failover time of a few seconds and let other workers
/// take this worker's leases, while a retried one gets through. Small items, one round
/// trip: DynamoDB answers these in milliseconds. A failover time must leave room for one
/// stuck attempt (dynamodb-streams-consumer's `build` refuses one that does not).
pub const LIVENESS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

const DEFAULT_ENDPOINT: &str = "the default AWS endpoint";

/// The DynamoDB and DynamoDB Streams clients, built once with the same settings, and where
/// they send requests (for error messages that say which endpoint was unreachable).
#[derive(Clone, Debug)]
pub struct AwsClients {
    dynamodb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    endpoint: String,
}

impl AwsClients {
    /// Both clients from `config`, with bounded timeouts (3 s connect, 10 s per attempt,
    /// 30 s per operation) and the SDK's retries disabled: every retry is done by the
    /// caller's named retry policy, so there is exactly one retry layer.
    pub fn from_sdk_config(config: &SdkConfig) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(config)
            .timeout_config(timeouts.clone())
            .retry_config(RetryConfig::disabled())
            .build();
        let streams = aws_sdk_dynamodbstreams::config::Builder::from(config)
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled())
            .build();
        let endpoint = match (config.endpoint_url(), config.region()) {
            (Some(url), _) => url.to_owned(),
            (None, Some(region)) => format!("{DEFAULT_ENDPOINT} (region {region})"),
            (None, None) => DEFAULT_ENDPOINT.to_owned(),
        };
        Self::new(
            aws_sdk_dynamodb::Client::from_conf(dynamodb),
            aws_sdk_dynamodbstreams::Client::from_conf(streams),
            endpoint,
        )
    }

    /// Clients configured by the caller (e.g. mock clients in tests), used as they are;
    /// `endpoint` names where they send requests, for error messages.
    pub fn new(
        dynamodb: aws_sdk_dynamodb::Client,
        streams: aws_sdk_dynamodbstreams::Client,
        endpoint: impl Into<String>,
    ) -> Self {
        Self {
            dynamodb,
            streams,
            endpoint: endpoint.into(),
        }
    }

    /// The DynamoDB client: tables and items.
    pub fn dynamodb(&self) -> &aws_sdk_dynamodb::Client {
        &self.dynamodb
    }

    /// The DynamoDB Streams client: shards and records.
    pub fn streams(&self) -> &aws_sdk_dynamodbstreams::Client {
        &self.streams
    }

    /// Where requests go: the endpoint URL, or the default AWS endpoint and region.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The per-call settings of liveness calls ([`LIVENESS_ATTEMPT_TIMEOUT`] to connect, per
/// attempt and per operation), applied with the SDK's `customize().config_override(...)`
/// whatever client the store was given.
pub fn liveness_overrides() -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::new().timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(LIVENESS_ATTEMPT_TIMEOUT)
            .operation_attempt_timeout(LIVENESS_ATTEMPT_TIMEOUT)
            .operation_timeout(LIVENESS_ATTEMPT_TIMEOUT)
            .build(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clients_have_bounded_timeouts_and_no_sdk_retries() {
        let config = SdkConfig::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .endpoint_url("http://localhost:8000")
            .build();
        let clients = AwsClients::from_sdk_config(&config);
        assert_eq!(clients.endpoint(), "http://localhost:8000");
        let dynamodb = clients.dynamodb().config();
        let streams = clients.streams().config();
        for (retries, timeouts) in [
            (dynamodb.retry_config(), dynamodb.timeout_config()),
            (streams.retry_config(), streams.timeout_config()),
        ] {
            assert_eq!(retries.unwrap().max_attempts(), 1);
            let timeouts = timeouts.unwrap();
            assert_eq!(timeouts.connect_timeout(), Some(CONNECT_TIMEOUT));
            assert_eq!(timeouts.operation_attempt_timeout(), Some(ATTEMPT_TIMEOUT));
            assert_eq!(timeouts.operation_timeout(), Some(OPERATION_TIMEOUT));
        }
    }

    /// Against a server that accepts connections and never answers, a liveness call gives
    /// up after its own attempt timeout, not the client's 10 s.
    #[tokio::test]
    async fn a_stuck_liveness_call_gives_up_after_its_own_attempt_timeout() {
        use crate::{DynamoDbLeaseStore, LeaseStore};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "k", "s", None, None, "test",
            ))
            .endpoint_url(format!("http://{address}"))
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::disabled())
            .build();
        let store =
            DynamoDbLeaseStore::new(aws_sdk_dynamodb::Client::from_conf(config), "leases").unwrap();
        let started = std::time::Instant::now();
        let membership = store.membership().await;
        let heartbeat = store.heartbeat("w1", Duration::from_secs(60)).await;
        let took = started.elapsed();
        assert!(membership.is_err() && heartbeat.is_err());
        assert!(
            took < 3 * LIVENESS_ATTEMPT_TIMEOUT,
            "two stuck liveness calls took {took:?}"
        );
    }

    #[test]
    fn liveness_calls_have_a_short_attempt_timeout() {
        let overrides = liveness_overrides().build();
        let timeouts = overrides.timeout_config().unwrap();
        assert_eq!(
            timeouts.operation_attempt_timeout(),
            Some(LIVENESS_ATTEMPT_TIMEOUT)
        );
        assert_eq!(timeouts.operation_timeout(), Some(LIVENESS_ATTEMPT_TIMEOUT));
        assert_eq!(timeouts.connect_timeout(), Some(LIVENESS_ATTEMPT_TIMEOUT));
        assert!(LIVENESS_ATTEMPT_TIMEOUT * 3 < ATTEMPT_TIMEOUT);
    }
}
