//! `ddbsc`: the operator's command for DynamoDB Streams consumers.
//!
//! ```text
//! ddbsc status --app APP [--lag] [--alive-within 15s | --observe 10s] [--renew-interval D] [--json]
//! ddbsc reset  --app APP --table T [--shard S] --to trim-horizon|latest|SEQ [--force] [--include-finished]
//! ddbsc tail   --table T [--from trim-horizon|latest] [--max-changes N] [--json]
//! ddbsc shards --table T [--json]
//! ddbsc import-kcl --kcl-table KCL_LEASES --app APP --table T [--dry-run] [--force] [--observe 10s]
//! ddbsc serve  --app APP [--addr 127.0.0.1:8080] [--lag] [--refresh 2s] [--alive-within 15s | --observe 10s]
//! ddbsc pipelines --app APP [--json]
//! ddbsc drop-pipeline --app APP --name N [--force] [--json]
//! ```
//!
//! Global flags (before or after the subcommand): `--endpoint URL` (e.g. DynamoDB Local,
//! with dummy credentials), `--region R`, `--json`. Without `--endpoint`, credentials and
//! region come from the default AWS chain, as for the AWS CLI.
//!
//! Exit codes: 0 done; 1 not found, refused or failed (one line on stderr naming what);
//! 2 usage. Everything is read and written through the library the workers use
//! (`DynamoDbLeaseStore`, `dynamodb_streams_consumer::reader`, `SdkStreams`), so there is one item
//! format and one set of conditional writes.

mod context;
mod import_kcl;
mod liveness;
mod output;
mod pipelines;
mod reset;
mod serve;
mod shards;
mod status;
mod tail;

use std::io::Write;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Parser, Subcommand};

/// Exit code for "not found", "refused" and other failures of a well-formed command.
const EXIT_FAILURE: u8 = 1;

/// A command that could not be carried out: the one line printed on stderr.
#[derive(Debug)]
pub struct Failure(pub String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// See, move and read what DynamoDB Streams consumers do.
#[derive(Debug, Parser)]
#[command(name = "ddbsc", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Flags every subcommand accepts, before or after its name.
#[derive(Clone, Debug, ClapArgs)]
pub struct Global {
    /// DynamoDB endpoint, e.g. DynamoDB Local (dummy credentials are used then).
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// AWS region (default with --endpoint: us-east-1; else the AWS chain's).
    #[arg(long, global = true, value_name = "R")]
    pub region: Option<String>,
    /// Machine-readable output: one JSON object (status, shards, reset) or one JSON line per
    /// change (tail).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Who owns which lease, how far each shard got, which workers are alive.
    Status(status::Args),
    /// Move checkpoints (refused while a live worker owns the lease, unless --force).
    Reset(reset::Args),
    /// Print a table's changes as they come, parents before children (no lease table).
    Tail(tail::Args),
    /// The stream's shard graph: id, parent, open or closed, sequence range.
    Shards(shards::Args),
    /// Take over from a KCL application at the positions it checkpointed.
    ImportKcl(import_kcl::Args),
    /// A read-only page for operators: workers, shards, lag, snapshots, handoffs.
    Serve(serve::Args),
    /// The application's named pipelines: leases with a checkpoint, finished, holding the
    /// read back, live workers running each.
    Pipelines(pipelines::ListArgs),
    /// Remove a pipeline's checkpoints (refused while a live worker runs it, unless
    /// --force).
    DropPipeline(pipelines::DropArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let context = context::Context::new(&cli.global).await;
    let outcome = match cli.command {
        Command::Status(args) => status::run(&context, args).await,
        Command::Reset(args) => reset::run(&context, args).await,
        Command::Tail(args) => tail::run(&context, args).await,
        Command::Shards(args) => shards::run(&context, args).await,
        Command::ImportKcl(args) => import_kcl::run(&context, args).await,
        Command::Serve(args) => serve::run(context, args).await,
        Command::Pipelines(args) => pipelines::list(&context, args).await,
        Command::DropPipeline(args) => pipelines::drop(&context, args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            // One line, whatever the error's source chain looked like (and no panic when
            // stderr is closed too).
            let _ = writeln!(
                std::io::stderr(),
                "ddbsc: error: {}",
                message.replace('\n', " ")
            );
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
