//! Loading an [`SdkConfig`] for a program (feature `sdk-config`).
//!
//! The libraries themselves never load credentials (see the module page); programs do, and
//! every program of this workspace (the example workers, `ddbsc`) does it here, so that
//! `--endpoint` and `--region` mean the same everywhere.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;

/// The region used with an explicit endpoint when none is given.
pub const LOCAL_REGION: &str = "us-east-1";

/// AWS configuration for a program's `--endpoint` and `--region` flags.
///
/// With `endpoint` (e.g. DynamoDB Local at `http://127.0.0.1:8000`): [`local_sdk_config`].
/// Without it: the usual AWS chain (`aws_config::load_defaults`: environment, profile,
/// instance role), with `region` overriding the configured one when given.
pub async fn sdk_config(endpoint: Option<&str>, region: Option<&str>) -> SdkConfig {
    match endpoint {
        Some(endpoint) => local_sdk_config(endpoint, region),
        None => {
            let mut loader = aws_config::defaults(BehaviorVersion::latest());
            if let Some(region) = region {
                loader = loader.region(Region::new(region.to_owned()));
            }
            loader.load().await
        }
    }
}

/// AWS configuration for an explicit endpoint such as DynamoDB Local: static dummy
/// credentials (`local`/`local`) and `region`, or [`LOCAL_REGION`] when none is given.
/// DynamoDB Local runs with `-sharedDb`, so every client sees the same tables whatever
/// its credentials.
pub fn local_sdk_config(endpoint: &str, region: Option<&str>) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.unwrap_or(LOCAL_REGION).to_owned()))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "local", "local", None, None, "static",
        )))
        .endpoint_url(endpoint)
        .build()
}
