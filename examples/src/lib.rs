//! Helpers shared by the example programs: logging, signal handling, worker ids, unique
//! names and table creation. The AWS configuration of `--endpoint`/`--region` and the
//! plain-JSON view of changes live in the libraries (`ddbsc` uses them too, and depends on
//! no example code); they are re-exported here so the programs keep one import path.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::TableDescription;
use dynamodb_streams_leases::aws::wait_until_table_active;

pub mod worker_flags;

pub use dynamodb_streams_consumer::json::{attribute_to_json, change_to_json, item_to_json};
pub use dynamodb_streams_leases::aws::{LOCAL_REGION, local_sdk_config, sdk_config};

/// A table or application name no other run (of this or a concurrent process) uses:
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

/// Logs to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=dynamodb_streams_consumer=debug`), or by
/// `default_filter` when `RUST_LOG` is unset or invalid.
pub fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// SIGINT (Ctrl-C) and SIGTERM, registered at once so that a signal arriving during start-up
/// is not lost (nor kills the process before it could shut down gracefully).
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM.
    pub fn new() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            // Without a handler the process would just die; with one, Ctrl-C is enough.
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }

    /// Waits for a signal, then arms a second one to end the process at once (exit 130), for
    /// when a graceful shutdown takes too long for the operator's taste.
    pub async fn first_then_force(mut self) {
        let name = self.recv().await;
        tracing::info!(
            signal = name,
            "shutting down gracefully (signal again to quit at once)"
        );
        tokio::spawn(async move {
            let name = self.recv().await;
            eprintln!("{name} again: quitting without finishing the graceful shutdown");
            std::process::exit(130);
        });
    }
}

/// How a long-running example program ends: exit 0, or one line `PROGRAM: error: ...` on
/// stderr and exit 2 (a missing table, an unreachable endpoint): what operators, scripts
/// and the multi-process tests look for.
pub fn exit_code(
    program: &str,
    result: Result<(), impl std::fmt::Display>,
) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: error: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// `hostname-pid`, the default worker id (`#` is reserved by the lease table).
pub fn default_worker_id() -> String {
    let host = sysinfo::System::host_name()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "worker".to_owned());
    format!("{}-{}", host.replace('#', "-"), std::process::id())
}

/// How long a new table may take to become ACTIVE.
pub const TABLE_DEADLINE: Duration = Duration::from_secs(60);

/// The CreateTable request every example needs: a string partition key `key`, on-demand
/// billing and, when `stream` is true, a `NEW_AND_OLD_IMAGES` stream. Callers send it and
/// handle the answer their own way.
pub fn create_table_request(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    stream: bool,
) -> Result<
    aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
    aws_sdk_dynamodb::error::BuildError,
> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        StreamSpecification, StreamViewType,
    };
    let request = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(key)
                .attribute_type(ScalarAttributeType::S)
                .build()?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(key)
                .key_type(KeyType::Hash)
                .build()?,
        );
    Ok(if stream {
        request.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()?,
        )
    } else {
        request
    })
}

/// Creates `table` ([`create_table_request`]; a table that already exists is fine) and
/// waits until it is ACTIVE, at most [`TABLE_DEADLINE`], with the SDK's waiter. Returns its
/// description (`latest_stream_arn` names the stream).
pub async fn create_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    stream: bool,
) -> Result<TableDescription, Box<dyn std::error::Error + Send + Sync>> {
    let created = create_table_request(client, table, key, stream)?
        .send()
        .await;
    match created {
        Ok(_) => {}
        // Created meanwhile by someone else: fine.
        Err(error)
            if error
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) => {}
        Err(error) => {
            return Err(format!(
                "CreateTable {table:?} failed: {}",
                DisplayErrorContext(error)
            )
            .into());
        }
    }
    Ok(wait_until_table_active(client, table, TABLE_DEADLINE).await?)
}
