//! `ddbsc shards`: the shard graph of a table's stream, from a full paginated DescribeStream.

use comfy_table::Table;
use dynamodb_streams_consumer::streams::ShardInfo;
use serde_json::{Value, json};

use crate::Outcome;
use crate::context::Context;

/// `ddbsc shards --table T`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The table whose stream to describe.
    #[arg(long, value_name = "T")]
    table: String,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    let arn = context.stream_arn(&args.table).await?;
    let shards = context.shards(&arn).await?;
    let state = |s: &ShardInfo| if s.is_closed() { "closed" } else { "open" };
    let seq = |s: Option<&dynamodb_streams_leases::SequenceNumber>| s.map(|s| s.to_string());

    if context.json {
        let list: Vec<Value> = shards
            .iter()
            .map(|s| {
                json!({
                    "shard": s.shard_id,
                    "parent": s.parent_shard_id,
                    "state": state(s),
                    "starting_sequence_number": seq(s.starting_sequence_number.as_ref()),
                    "ending_sequence_number": seq(s.ending_sequence_number.as_ref()),
                })
            })
            .collect();
        context.print_json(&json!({"table": args.table, "stream": arn, "shards": list}))?;
        return Ok(());
    }
    context.line(format_args!("stream {arn}"))?;
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header([
            "SHARD",
            "PARENT",
            "STATE",
            "FIRST SEQUENCE",
            "LAST SEQUENCE",
        ]);
    for s in &shards {
        let dash = || "-".to_owned();
        table.add_row([
            s.shard_id.clone(),
            s.parent_shard_id.clone().unwrap_or_else(dash),
            state(s).to_owned(),
            seq(s.starting_sequence_number.as_ref()).unwrap_or_else(dash),
            seq(s.ending_sequence_number.as_ref()).unwrap_or_else(dash),
        ]);
    }
    context.line(&table)?;
    Ok(())
}
