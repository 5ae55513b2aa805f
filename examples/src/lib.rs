//! Helpers shared by the example programs: AWS configuration for a local endpoint, logging,
//! signal handling, worker ids, unique names, table creation and a plain-JSON view of
//! DynamoDB items.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::TableDescription;
use aws_sdk_dynamodbstreams::types::AttributeValue;
use checkpoint_store::aws::wait_until_table_active;
use serde_json::{Map, Number, Value};

pub mod worker_flags;

/// The region used with an explicit endpoint when none is given.
pub const LOCAL_REGION: &str = "us-east-1";

/// AWS configuration for the examples.
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

/// Logs to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=consumer_core=debug`), or by
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

/// One change as a `jsonl-worker` line (also `ddbsc tail --json`): `worker`, `table`,
/// `shard`, `seq`, `event`, `keys`, `old`, `new`, with images from the raw record as plain
/// JSON ([`item_to_json`]; `null` when the record has no such image). One function, so the
/// worker's and the tool's lines cannot drift apart. `table` and `shard` are `null` when
/// unknown (the lease-free reader does not say which shard a change came from).
pub fn change_to_json<T>(
    worker: &str,
    table: Option<&str>,
    shard: Option<&str>,
    change: &consumer_core::Change<T>,
) -> Value {
    let record = change.raw().dynamodb();
    let image =
        |image: Option<&HashMap<String, AttributeValue>>| image.map_or(Value::Null, item_to_json);
    serde_json::json!({
        "worker": worker,
        "table": table,
        "shard": shard,
        // A snapshot change has no stream record, so no sequence number.
        "seq": match change.kind {
            consumer_core::ChangeKind::Snapshot => "",
            _ => change.sequence_number.as_str(),
        },
        "event": change.kind.as_str(),
        "keys": item_to_json(change.keys()),
        "old": image(record.and_then(|r| r.old_image.as_ref())),
        "new": image(record.and_then(|r| r.new_image.as_ref())),
    })
}

/// A DynamoDB item (or key) as plain JSON: see [`attribute_to_json`].
pub fn item_to_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(name, value)| (name.clone(), attribute_to_json(value)))
            .collect::<Map<String, Value>>(),
    )
}

/// One DynamoDB attribute value as plain JSON.
///
/// - `S` is a string; `BOOL` a boolean; `NULL` is `null`; `L` an array; `M` an object.
/// - `N` is a JSON number: an integer when it parses as `i64`, else an `f64` (numbers with
///   more than about 15 significant digits lose precision); a number even `f64` cannot hold
///   stays a string.
/// - `B` is a base64 string (standard alphabet, padded), as in DynamoDB's own JSON.
/// - `SS`, `NS` and `BS` are arrays of the above.
/// - A type this SDK version does not know is `null`.
pub fn attribute_to_json(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number_to_json(n),
        AttributeValue::B(b) => Value::String(aws_smithy_types::base64::encode(b.as_ref())),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Ss(items) => items.iter().cloned().map(Value::String).collect(),
        AttributeValue::Ns(items) => items.iter().map(|n| number_to_json(n)).collect(),
        AttributeValue::Bs(items) => items
            .iter()
            .map(|b| Value::String(aws_smithy_types::base64::encode(b.as_ref())))
            .collect(),
        AttributeValue::L(items) => items.iter().map(attribute_to_json).collect(),
        AttributeValue::M(map) => item_to_json(map),
        _ => Value::Null,
    }
}

fn number_to_json(n: &str) -> Value {
    if let Ok(i) = n.parse::<i64>() {
        return Value::Number(i.into());
    }
    n.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or_else(|| Value::String(n.to_owned()), Value::Number)
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::Blob;
    use serde_json::json;

    #[test]
    fn every_attribute_type_becomes_plain_json() {
        let item = HashMap::from([
            ("s".to_owned(), AttributeValue::S("text".into())),
            ("int".to_owned(), AttributeValue::N("-42".into())),
            ("float".to_owned(), AttributeValue::N("1.5".into())),
            ("big".to_owned(), AttributeValue::N("1e30".into())),
            ("b".to_owned(), AttributeValue::B(Blob::new(b"hi".to_vec()))),
            ("t".to_owned(), AttributeValue::Bool(true)),
            ("nil".to_owned(), AttributeValue::Null(true)),
            (
                "ss".to_owned(),
                AttributeValue::Ss(vec!["a".into(), "b".into()]),
            ),
            (
                "ns".to_owned(),
                AttributeValue::Ns(vec!["1".into(), "2.25".into()]),
            ),
            (
                "bs".to_owned(),
                AttributeValue::Bs(vec![Blob::new(vec![0u8, 255])]),
            ),
            (
                "l".to_owned(),
                AttributeValue::L(vec![AttributeValue::N("7".into())]),
            ),
            (
                "m".to_owned(),
                AttributeValue::M(HashMap::from([(
                    "k".to_owned(),
                    AttributeValue::S("v".into()),
                )])),
            ),
        ]);
        assert_eq!(
            item_to_json(&item),
            json!({
                "s": "text", "int": -42, "float": 1.5, "big": 1e30, "b": "aGk=", "t": true,
                "nil": null, "ss": ["a", "b"], "ns": [1, 2.25], "bs": ["AP8="], "l": [7],
                "m": {"k": "v"}
            })
        );
    }

    #[test]
    fn integers_stay_integers() {
        assert_eq!(
            number_to_json("9007199254740993").to_string(),
            "9007199254740993"
        );
        assert_eq!(number_to_json("0").to_string(), "0");
    }
}
