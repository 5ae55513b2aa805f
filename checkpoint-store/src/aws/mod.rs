//! How this project calls AWS: the one module both crates go through.
//!
//! `dynamodb-streams-leases` is the lowest crate, so the DynamoDB lease store and dynamodb-streams-consumer's
//! DynamoDB Streams access both build their clients, classify errors, page and wait here.
//! A newcomer reads this page to know every rule we follow when talking to AWS:
//!
//! - **Clients** ([`AwsClients`]): both SDK clients (`aws-sdk-dynamodb` for tables and
//!   items, `aws-sdk-dynamodbstreams` for shards and records) are built together from an
//!   [`aws_types::SdkConfig`]. Libraries never load credentials: only programs do, with
//!   `aws-config`, and hand the resulting `SdkConfig` in.
//! - **Timeouts**: 3 s to connect, 10 s per attempt, 30 s per operation, so that an
//!   unreachable endpoint fails within seconds instead of hanging a worker; liveness calls
//!   (heartbeats, the membership read) 1 s per attempt ([`LIVENESS_ATTEMPT_TIMEOUT`],
//!   [`liveness_overrides`]), so one stuck attempt cannot outlast a failover time.
//! - **One retry layer, ours**: the clients are built with the SDK's retries disabled
//!   (`RetryConfig::disabled()`). Every retry happens in dynamodb-streams-consumer's named retry
//!   policies (`consumer-core/src/retry.rs`), which know what the call is for (a poll loop
//!   backs off differently from a heartbeat). Two layers stacked would multiply attempts
//!   and hide throttling from the layer that must slow down.
//! - **Error classes** ([`ErrorClass`], [`classify`]): one classification of every SDK
//!   error from the SDK's own error metadata (the error code), the `SdkError` variant
//!   (dispatch failures and timeouts are transport errors) and the HTTP status (an
//!   unmodeled 5xx is transient). Callers decide retries with
//!   [`ErrorClass::is_retryable`] and map classes onto their own error kinds.
//! - **Paging**: Scan goes through the SDK's paginator ([`scan_all`], in parallel segments
//!   for large tables: [`parallel_scan_all`]); BatchGetItem through [`batch_get_all`]
//!   (requests of 100 keys, unprocessed keys asked again); DescribeStream
//!   through [`describe_stream_pages`], which follows `LastEvaluatedShardId` and fails with
//!   [`CursorStalled`] when the cursor does not advance (never a partial list, never a
//!   loop).
//! - **Waiting**: table status through the SDK's waiter ([`wait_until_table_active`]).
//! - **Programs** (feature `sdk-config`): `sdk_config` loads the configuration for a
//!   program's `--endpoint`/`--region` flags, the default chain or a local endpoint.

mod clients;
#[cfg(feature = "sdk-config")]
mod config;
mod errors;
mod paging;
mod tables;

pub use clients::{AwsClients, LIVENESS_ATTEMPT_TIMEOUT, liveness_overrides};
#[cfg(feature = "sdk-config")]
pub use config::{LOCAL_REGION, local_sdk_config, sdk_config};
pub use errors::{ErrorClass, classify, error_message};
pub use paging::{
    BATCH_GET_KEYS, BatchGot, CursorStalled, batch_get_all, describe_stream_pages,
    parallel_scan_all, scan_all,
};
pub use tables::{TableWaitError, wait_until_table_active};
