//! `ddbsc tail`: a table's changes as they come, parents before children, without a lease
//! table: the lease-free reader (`dynamodb_streams_consumer::reader::stream_changes`) as a command.

use dynamodb_streams_consumer::InitialPosition;
use dynamodb_streams_consumer::reader::{PollConfig, stream_changes};
use futures::StreamExt;
use serde::de::IgnoredAny;

use crate::Outcome;
use crate::context::Context;

/// The `worker` field of `--json` lines (the `jsonl-worker` shape).
const WORKER: &str = "ddbsc-tail";

/// Where reading starts.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum From {
    /// The oldest record the stream still holds (up to 24 hours back), then new ones.
    TrimHorizon,
    /// Only changes made from now on.
    Latest,
}

/// `ddbsc tail --table T [--from trim-horizon|latest] [--max-changes N]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The table whose stream to print.
    #[arg(long, value_name = "T")]
    table: String,
    /// Where to start.
    #[arg(long, value_enum, default_value = "trim-horizon")]
    from: From,
    /// Stop after this many changes (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "N")]
    max_changes: Option<usize>,
}

pub async fn run(context: &Context, args: Args) -> Outcome {
    // The first SIGINT or SIGTERM ends the tail; a second one during the exit quits at once.
    let stop = dynamodb_streams_consumer::signals::graceful_then_immediate()?;
    tokio::pin!(stop);
    let arn = context.stream_arn(&args.table).await?;
    let position = match args.from {
        From::TrimHorizon => InitialPosition::TrimHorizon,
        From::Latest => InitialPosition::Latest,
    };
    let changes =
        stream_changes::<IgnoredAny>(context.streams(), arn, position, PollConfig::default());
    let mut changes = changes.take(args.max_changes.unwrap_or(usize::MAX));
    loop {
        let change = tokio::select! {
            change = changes.next() => change,
            () = &mut stop => return Ok(()),
        };
        let Some(change) = change else {
            return Ok(());
        };
        let change = change?;
        let line = dynamodb_streams_consumer::json::change_to_json(
            WORKER,
            Some(&args.table),
            Some(change.shard_id()),
            &change,
        );
        let text = if context.json {
            line.to_string()
        } else {
            format!(
                "{} {} old={} new={}  seq={}",
                line["event"].as_str().unwrap_or_default(),
                line["keys"],
                line["old"],
                line["new"],
                change.sequence_number
            )
        };
        context.line(text)?;
        // `ddbsc tail | head`: the reader has what it wanted.
        if context.output_closed() {
            return Ok(());
        }
    }
}
