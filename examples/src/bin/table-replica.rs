//! Keeps a target table equal to a source table, exactly once: every source change is
//! applied to the target in the same DynamoDB transaction as the checkpoint that covers it.
//!
//! ```text
//! table-replica --source T --target T2 --app APP [--endpoint URL] [--worker-id ID]
//!               [--region R] [--failover-time 10s] [--plain-checkpoints]
//!               [--batch-size N] [--apply-delay DUR]
//! ```
//!
//! T2 must exist with the same key schema as T; T's stream must show new and old images
//! (`NEW_AND_OLD_IMAGES`). Each change of T becomes one `UpdateItem` of T2's item with the
//! same key: an insert or modify SETs the new image's attributes and REMOVEs those the old
//! image had and the new one has not, and REMOVEs `_deleted`; a remove leaves the tombstone
//! `{<keys>, "_deleted": true, "_changes": n}`. Every change also counts itself:
//! `_changes = if_not_exists(_changes, 0) + 1`, so `_changes` equals the number of stream
//! records of that key exactly when every change was applied once. (A source attribute
//! named `_changes` or `_deleted` is overwritten by these.)
//!
//! The updates are staged on the [`Checkpointer`] and committed with the checkpoint in
//! `TransactWriteItems`, conditional on this worker's lease: a crash, a SIGKILL or a zombie
//! commits all of a batch's updates and its checkpoint, or none. `--plain-checkpoints`
//! sends each update with `UpdateItem` instead and lets the framework checkpoint after the
//! batch (at-least-once): a crash between the two applies some changes twice, which
//! `_changes` shows. `--apply-delay` pauses before each change (tests use it to keep the
//! replica busy, so a kill lands inside a batch).
//!
//! Several replicas with the same `--app` share the shards. SIGTERM or SIGINT: graceful
//! shutdown (leases released), exit 0. Bad tables or an unreachable endpoint: one line on
//! stderr naming the problem, exit 2.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeyType, StreamViewType, TransactWriteItem, Update};
use aws_sdk_dynamodbstreams::types::AttributeValue as StreamValue;
use clap::Parser;
use dynamodb_streams_consumer::{
    BoxError, Change, ChangeBatch, ChangeKind, Checkpointer, Consumer, InitialPosition,
    RecordProcessor, ShardContext,
};
use dynamodb_streams_examples::{Signals, default_worker_id};
use dynamodb_streams_leases::aws;
use serde::de::IgnoredAny;

#[derive(Parser, Debug)]
#[command(about = "Keeps --target equal to --source, applying each change exactly once")]
struct Args {
    /// The source table (its stream must be NEW_AND_OLD_IMAGES).
    #[arg(long)]
    source: String,
    /// The target table: it must exist, with the same key schema as the source.
    #[arg(long)]
    target: String,
    /// The application: the lease table's name, shared by every replica of this pair.
    #[arg(long)]
    app: String,
    /// A DynamoDB endpoint such as DynamoDB Local (`http://127.0.0.1:8000`).
    #[arg(long)]
    endpoint: Option<String>,
    /// The AWS region (default: the configured one; us-east-1 with --endpoint).
    #[arg(long)]
    region: Option<String>,
    /// This worker's id (default: hostname-pid).
    #[arg(long)]
    worker_id: Option<String>,
    /// How long a silent worker keeps its leases.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    failover_time: Duration,
    /// Apply each change with its own UpdateItem and checkpoint after the batch
    /// (at-least-once): the comparison mode, which over-counts after crashes.
    #[arg(long)]
    plain_checkpoints: bool,
    /// The most changes per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Pause before each change (for tests: keeps batches in flight).
    #[arg(long, value_parser = humantime::parse_duration)]
    apply_delay: Option<Duration>,
}

/// The attribute counting the changes applied to an item.
const CHANGES: &str = "_changes";
/// The attribute marking a removed item.
const DELETED: &str = "_deleted";

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("info");
    dynamodb_streams_examples::exit_code("table-replica", run(args).await)
}

async fn run(args: Args) -> Result<(), BoxError> {
    // Listen before anything else: a SIGTERM during start-up still shuts down gracefully.
    let signals = Signals::new()?;
    let sdk_config =
        dynamodb_streams_examples::sdk_config(args.endpoint.as_deref(), args.region.as_deref())
            .await;
    let client = aws_sdk_dynamodb::Client::new(&sdk_config);
    let endpoint = args
        .endpoint
        .clone()
        .unwrap_or_else(|| "the default AWS endpoint".to_owned());
    let keys = check_tables(&client, &endpoint, &args.source, &args.target).await?;
    tracing::info!(source = %args.source, target = %args.target, ?keys, plain = args.plain_checkpoints, "replicating");

    let mut builder = Consumer::builder(args.app.as_str())
        .with_sdk_config(&sdk_config)
        .with_worker_id(args.worker_id.clone().unwrap_or_else(default_worker_id))
        .with_table(args.source.as_str())
        .with_initial_position(InitialPosition::TrimHorizon)
        .with_failover_time(args.failover_time);
    if let Some(size) = args.batch_size {
        builder = builder.with_max_batch_size(size);
    }
    let (target, plain, delay) = (
        args.target.clone(),
        args.plain_checkpoints,
        args.apply_delay,
    );
    let consumer = builder.build(move |_: &ShardContext| Replica {
        client: client.clone(),
        endpoint: endpoint.clone(),
        target: target.clone(),
        keys: keys.clone(),
        plain,
        delay,
    })?;
    consumer.run_until(signals.first_then_force()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Checks that the source's stream shows new and old images and that the target has the
/// same key schema; returns the key attribute names.
async fn check_tables(
    client: &aws_sdk_dynamodb::Client,
    endpoint: &str,
    source: &str,
    target: &str,
) -> Result<Vec<String>, BoxError> {
    let describe = |table: &str| {
        let table = table.to_owned();
        async move {
            client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .map_err(|e| {
                    format!(
                        "cannot describe table {table:?}: {}",
                        aws::error_message(&e, endpoint)
                    )
                })?
                .table
                .ok_or_else(|| format!("DescribeTable {table:?} returned no table"))
        }
    };
    let (source_table, target_table) = (describe(source).await?, describe(target).await?);
    let view = source_table
        .stream_specification()
        .filter(|spec| spec.stream_enabled())
        .and_then(|spec| spec.stream_view_type());
    if view != Some(&StreamViewType::NewAndOldImages) {
        return Err(format!(
            "table {source:?} has stream view {}; table-replica needs NEW_AND_OLD_IMAGES (old images tell which attributes to remove)",
            view.map_or("none (no stream)", |v| v.as_str())
        )
        .into());
    }
    let schema = |table: &aws_sdk_dynamodb::types::TableDescription| {
        let mut keys: Vec<(bool, String)> = table
            .key_schema()
            .iter()
            .map(|k| {
                (
                    *k.key_type() != KeyType::Hash,
                    k.attribute_name().to_owned(),
                )
            })
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, name)| name).collect::<Vec<_>>()
    };
    let (source_keys, target_keys) = (schema(&source_table), schema(&target_table));
    if source_keys != target_keys {
        return Err(format!(
            "table {target:?} has key {target_keys:?}, table {source:?} has {source_keys:?}: they must be the same"
        )
        .into());
    }
    Ok(source_keys)
}

/// Applies one shard's changes to the target.
struct Replica {
    client: aws_sdk_dynamodb::Client,
    /// Named in error messages.
    endpoint: String,
    target: String,
    keys: Vec<String>,
    plain: bool,
    delay: Option<Duration>,
}

#[async_trait]
impl RecordProcessor for Replica {
    type Item = IgnoredAny;

    async fn process(
        &mut self,
        batch: ChangeBatch<IgnoredAny>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        for change in &batch.changes {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            let update = target_update(&self.target, &self.keys, change)?;
            if self.plain {
                self.client
                    .update_item()
                    .table_name(update.table_name())
                    .set_key(Some(update.key().clone()))
                    .update_expression(update.update_expression())
                    .set_expression_attribute_names(update.expression_attribute_names().cloned())
                    .set_expression_attribute_values(update.expression_attribute_values().cloned())
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "UpdateItem on {:?}: {}",
                            self.target,
                            aws::error_message(&e, &self.endpoint)
                        )
                    })?;
            } else {
                let write = TransactWriteItem::builder().update(update).build();
                checkpointer.stage(&change.sequence_number, [write]).await?;
            }
        }
        Ok(())
    }
}

/// The update that applies `change` to the target's item with the same key.
fn target_update<T>(target: &str, keys: &[String], change: &Change<T>) -> Result<Update, BoxError> {
    let record = change.raw().dynamodb();
    let no_image = HashMap::new();
    let image = |image: Option<&HashMap<String, StreamValue>>| image.unwrap_or(&no_image).clone();
    let old = image(record.and_then(|r| r.old_image.as_ref()));
    let new = image(record.and_then(|r| r.new_image.as_ref()));
    let mut names: HashMap<String, String> = HashMap::new();
    let mut values: HashMap<String, AttributeValue> = HashMap::new();
    let mut set = vec!["#c = if_not_exists(#c, :zero) + :one".to_owned()];
    let mut remove = Vec::new();
    names.insert("#c".into(), CHANGES.into());
    values.insert(":zero".into(), AttributeValue::N("0".into()));
    values.insert(":one".into(), AttributeValue::N("1".into()));
    let is_key = |name: &str| keys.iter().any(|k| k == name);
    let attribute = |name: &str, names: &mut HashMap<String, String>| {
        let placeholder = format!("#a{}", names.len());
        names.insert(placeholder.clone(), name.to_owned());
        placeholder
    };
    if change.kind == ChangeKind::Remove {
        names.insert("#d".into(), DELETED.into());
        values.insert(":true".into(), AttributeValue::Bool(true));
        set.push("#d = :true".into());
        for name in old
            .keys()
            .filter(|n| !is_key(n) && *n != CHANGES && *n != DELETED)
        {
            remove.push(attribute(name, &mut names));
        }
    } else {
        names.insert("#d".into(), DELETED.into());
        remove.push("#d".into());
        let mut new_names: Vec<&String> = new.keys().collect();
        new_names.sort();
        for name in new_names {
            if is_key(name) || name == CHANGES || name == DELETED {
                continue;
            }
            let placeholder = attribute(name, &mut names);
            let value = format!(":v{}", values.len());
            values.insert(value.clone(), to_dynamodb(&new[name])?);
            set.push(format!("{placeholder} = {value}"));
        }
        for name in old.keys() {
            if !new.contains_key(name) && !is_key(name) && name != CHANGES && name != DELETED {
                remove.push(attribute(name, &mut names));
            }
        }
    }
    let mut expression = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    let key: HashMap<String, AttributeValue> = change
        .keys()
        .iter()
        .map(|(name, value)| Ok((name.clone(), to_dynamodb(value)?)))
        .collect::<Result<_, BoxError>>()?;
    Ok(Update::builder()
        .table_name(target)
        .set_key(Some(key))
        .update_expression(expression)
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()?)
}

/// A DynamoDB Streams attribute value as a DynamoDB one (the two SDKs have their own types).
/// A type newer than this SDK is an error: the shard holds rather than copying it wrong.
fn to_dynamodb(value: &StreamValue) -> Result<AttributeValue, BoxError> {
    Ok(match value {
        StreamValue::S(s) => AttributeValue::S(s.clone()),
        StreamValue::N(n) => AttributeValue::N(n.clone()),
        StreamValue::B(b) => AttributeValue::B(b.clone()),
        StreamValue::Bool(b) => AttributeValue::Bool(*b),
        StreamValue::Null(n) => AttributeValue::Null(*n),
        StreamValue::Ss(items) => AttributeValue::Ss(items.clone()),
        StreamValue::Ns(items) => AttributeValue::Ns(items.clone()),
        StreamValue::Bs(items) => AttributeValue::Bs(items.clone()),
        StreamValue::L(items) => {
            AttributeValue::L(items.iter().map(to_dynamodb).collect::<Result<_, _>>()?)
        }
        StreamValue::M(map) => AttributeValue::M(
            map.iter()
                .map(|(name, value)| Ok((name.clone(), to_dynamodb(value)?)))
                .collect::<Result<_, BoxError>>()?,
        ),
        other => {
            return Err(
                format!("attribute value of a type this SDK does not know: {other:?}").into(),
            );
        }
    })
}
