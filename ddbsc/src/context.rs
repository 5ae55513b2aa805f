//! What every command needs: the AWS clients, the lease store of an application, the stream
//! of a table, and how to print.

use std::fmt::Display;
use std::sync::{Arc, Mutex, PoisonError};

use dynamodb_streams_consumer::streams::{ApiError, SdkStreams, ShardInfo, StreamsApi};
use dynamodb_streams_leases::aws::{AwsClients, ErrorClass, classify, describe_stream_pages};
use dynamodb_streams_leases::{DynamoDbLeaseStore, LeaseStore};
use serde_json::Value;

pub use dynamodb_streams_consumer::observability::table_of_stream;

use crate::output::Output;
use crate::{Failure, Global};

/// The clients (built once, as the workers build theirs) and the output mode.
pub struct Context {
    clients: AwsClients,
    streams: Arc<SdkStreams>,
    /// `--json`.
    pub json: bool,
    output: Mutex<Output>,
}

impl Context {
    /// Clients for `--endpoint`/`--region`, or the default AWS chain.
    pub async fn new(global: &Global) -> Self {
        let config = dynamodb_streams_leases::aws::sdk_config(
            global.endpoint.as_deref(),
            global.region.as_deref(),
        )
        .await;
        let clients = AwsClients::from_sdk_config(&config);
        Self {
            streams: Arc::new(SdkStreams::from_clients(clients.clone())),
            clients,
            json: global.json,
            output: Mutex::new(Output::stdout()),
        }
    }

    /// The AWS clients (for tables that are not lease tables, such as KCL's).
    pub fn clients(&self) -> &AwsClients {
        &self.clients
    }

    /// The DynamoDB Streams API the workers use.
    pub fn streams(&self) -> Arc<dyn StreamsApi> {
        self.streams.clone()
    }

    /// The lease store of application `app`. An application whose lease table does not
    /// exist is an error naming it (no table is created: this tool only reads and moves).
    pub async fn lease_store(&self, app: &str) -> Result<DynamoDbLeaseStore, Failure> {
        let store = DynamoDbLeaseStore::from_clients(&self.clients, app)
            .map_err(|e| Failure(format!("application {app:?}: {e}")))?;
        let described = self
            .clients
            .dynamodb()
            .describe_table()
            .table_name(app)
            .send()
            .await;
        match described {
            // It exists, so this only checks it is a lease table (one DescribeTable; no
            // write): the same check a worker makes at start.
            Ok(_) => match store.ensure_table().await {
                Ok(()) => Ok(store),
                Err(error) => Err(Failure(format!("application {app:?}: {error}"))),
            },
            Err(error) if classify(&error) == ErrorClass::NotFound => Err(Failure(format!(
                "unknown application {app:?}: there is no lease table named {app:?} at {}",
                self.clients.endpoint()
            ))),
            Err(error) => Err(Failure(format!(
                "application {app:?}: DescribeTable on {} failed: {}",
                self.clients.endpoint(),
                error_chain(&error)
            ))),
        }
    }

    /// The ARN of `table`'s current stream; a missing table or a table without a stream is
    /// an error naming it.
    pub async fn stream_arn(&self, table: &str) -> Result<String, Failure> {
        Ok(self.streams.latest_stream_arn(table).await?)
    }

    /// Every shard of stream `arn`: a full paginated DescribeStream, through the one pager
    /// every DescribeStream listing goes through.
    pub async fn shards(&self, arn: &str) -> Result<Vec<ShardInfo>, Failure> {
        let api = self.streams();
        let shards = describe_stream_pages(arn, |start| {
            let api = api.clone();
            async move {
                let page = api.describe_stream(arn, start.as_deref()).await?;
                Ok::<_, ApiError>((page.shards, page.last_evaluated_shard_id))
            }
        })
        .await?;
        Ok(shards)
    }

    /// Prints `value` as one line of JSON.
    pub fn print_json(&self, value: &Value) -> Result<(), Failure> {
        self.line(value)
    }

    /// Prints `text` and a newline on standard output (nothing once its reader went away).
    pub fn line(&self, text: impl Display) -> Result<(), Failure> {
        self.output().line(text)
    }

    /// Whether standard output's reader went away (`ddbsc tail | head`).
    pub fn output_closed(&self) -> bool {
        self.output().is_closed()
    }

    fn output(&self) -> std::sync::MutexGuard<'_, Output> {
        // A panic while printing leaves nothing half-updated in `Output`.
        self.output.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An error and its sources on one line (SDK errors keep the useful part in the source).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
