//! What `jsonl-worker --idle-backoff MIN,MAX` trades: write-to-delivery latency on a quiet
//! shard against GetRecords calls per idle shard-hour, at several settings, against
//! DynamoDB Local.
//!
//! ```text
//! make idle-latency
//! # or, with DynamoDB Local running and jsonl-worker built next to this program:
//! idle-latency --endpoint http://127.0.0.1:8000 [--setting default --setting 10ms,200ms ...]
//!              [--writes 30] [--gap 2s] [--idle 15s] [--worker-bin PATH]
//! ```
//!
//! Each setting gets its own table (one shard on DynamoDB Local), its own application and
//! one real `jsonl-worker` process, whose requests go through a loopback relay in this
//! program that counts its GetRecords calls (the `X-Amz-Target` of each request). The
//! settings run side by side, so they share the machine's conditions. Then:
//!
//! 1. a first item is written to every table and waited for (the worker is up and caught up);
//! 2. idle: after 3 s (the backoff has grown to MAX), GetRecords calls are counted over
//!    `--idle`, and scaled to an hour;
//! 3. latency: `--writes` times, after a pause drawn between 0.8 and 1.2 x `--gap` (long
//!    enough for the backoff to have grown to MAX again), one item is written to every
//!    table; the latency of a write is from just before its PutItem is sent until its line
//!    is read from the worker's stdout (the worker flushes after each batch).
//!
//! The table gives p50 and p99 (nearest rank: with 30 writes p99 is the slowest), the
//! slowest, and the idle cost in GetRecords per shard-hour and in $/month at $0.20 per
//! million DynamoDB Streams requests. A benchmark prints figures and asserts nothing about
//! them: the exit status is 0 unless something broke (a worker failed to start, a write
//! was not delivered within 60 s).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `X-Amz-Target` header value of a GetRecords request.
const GET_RECORDS: &[u8] = b"DynamoDBStreams_20120810.GetRecords";
/// How long a write may take to be printed before the run counts as broken.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// After a delivery, how long the backoff needs at most to grow to MAX before idle counting.
const RAMP: Duration = Duration::from_secs(3);
/// $ per DynamoDB Streams request (on demand: $0.20 per million).
const DOLLARS_PER_REQUEST: f64 = 0.20 / 1e6;
/// Hours in a billing month (as the cost table of the README counts them).
const HOURS_PER_MONTH: f64 = 730.0;

/// Write-to-delivery latency and idle GetRecords cost of jsonl-worker's --idle-backoff.
#[derive(Debug, Parser)]
#[command(name = "idle-latency")]
struct Args {
    /// DynamoDB endpoint (DynamoDB Local).
    #[arg(long, env = "DYNAMODB_ENDPOINT", value_name = "URL")]
    endpoint: String,
    /// A setting to measure: `default` (jsonl-worker without the flag), or MIN,MAX as given
    /// to --idle-backoff. Repeat for several.
    #[arg(long, value_name = "default|MIN,MAX", default_values = ["default", "50ms,500ms", "10ms,200ms"])]
    setting: Vec<String>,
    /// Writes per table in the latency phase.
    #[arg(long, default_value_t = 30)]
    writes: u64,
    /// The mean pause before each write (drawn between 0.8x and 1.2x).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, default_value = "2s")]
    gap: Duration,
    /// How long GetRecords calls are counted on the idle shards.
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration, default_value = "15s")]
    idle: Duration,
    /// The jsonl-worker binary. Default: the one next to this program.
    #[arg(long, value_name = "PATH")]
    worker_bin: Option<PathBuf>,
}

/// One setting's worker and what it did.
struct Measured {
    setting: String,
    table: String,
    worker: Child,
    /// GetRecords requests the worker sent so far.
    get_records: Arc<AtomicU64>,
    /// When the line of each write (`w`) was read.
    printed: Arc<Mutex<HashMap<u64, Instant>>>,
    /// When each write (`w`) was sent.
    sent: HashMap<u64, Instant>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("warn");
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("idle-latency: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("this program's path has no folder")?
            .join("jsonl-worker"),
    };
    if !worker_bin.is_file() {
        return Err(format!(
            "no jsonl-worker at {} (build it: cargo build -p dynamodb-streams-examples --bin \
             jsonl-worker, or pass --worker-bin)",
            worker_bin.display()
        )
        .into());
    }
    let upstream = args
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let sdk = dynamodb_streams_examples::sdk_config(Some(&args.endpoint), None).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let logs = std::env::temp_dir().join("idle-latency");
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "idle-latency: {} settings side by side; worker logs in {}",
        args.setting.len(),
        logs.display()
    );

    let mut runs = Vec::new();
    for (index, setting) in args.setting.iter().enumerate() {
        let table = dynamodb_streams_examples::unique_name(&format!("idle-latency-{index}"));
        dynamodb_streams_examples::create_table(&client, &table, "id", true).await?;
        let get_records = Arc::new(AtomicU64::new(0));
        let relay = counting_relay(upstream.clone(), get_records.clone()).await?;
        let mut command = Command::new(&worker_bin);
        command
            .args(["--table", &table, "--app", &format!("{table}-app")])
            .args(["--endpoint", &format!("http://{relay}")]);
        if setting != "default" {
            command.args(["--idle-backoff", setting]);
        }
        let stderr = std::fs::File::create(logs.join(format!("{table}.stderr")))?;
        let mut worker = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", worker_bin.display()))?;
        let stdout = worker
            .stdout
            .take()
            .ok_or("the worker's stdout is not piped")?;
        let printed = Arc::new(Mutex::new(HashMap::new()));
        tokio::spawn(read_lines(stdout, printed.clone()));
        runs.push(Measured {
            setting: setting.clone(),
            table,
            worker,
            get_records,
            printed,
            sent: HashMap::new(),
        });
    }

    // 1. Up and caught up.
    write_to_all(&client, &mut runs, 0).await?;
    wait_delivered(&mut runs, 0).await?;
    // 2. Idle.
    tokio::time::sleep(RAMP).await;
    let before: Vec<u64> = runs
        .iter()
        .map(|r| r.get_records.load(Ordering::Relaxed))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(args.idle).await;
    let idle_hours = started.elapsed().as_secs_f64() / 3600.0;
    let per_hour: Vec<f64> = runs
        .iter()
        .zip(before)
        .map(|(r, before)| (r.get_records.load(Ordering::Relaxed) - before) as f64 / idle_hours)
        .collect();
    // 3. Latency after quiet periods.
    let random = RandomState::new();
    for w in 1..=args.writes {
        let factor = 0.8 + 0.4 * (random.hash_one(w) % 1000) as f64 / 1000.0;
        tokio::time::sleep(args.gap.mul_f64(factor)).await;
        write_to_all(&client, &mut runs, w).await?;
    }
    wait_delivered(&mut runs, args.writes).await?;
    for run in &mut runs {
        let _ = run.worker.start_kill();
    }

    println!(
        "write-to-delivery latency after a quiet {:?} (n = {} writes per setting) and GetRecords on an idle shard ({:?} counted), DynamoDB Local",
        args.gap, args.writes, args.idle
    );
    println!();
    println!(
        "| `--idle-backoff` | p50 | p99 | slowest | GetRecords per idle shard-hour | $/month per idle shard |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (run, per_hour) in runs.iter().zip(per_hour) {
        let mut latencies: Vec<Duration> = (1..=args.writes)
            .filter_map(|w| {
                let printed = run.printed.lock().ok()?.get(&w).copied()?;
                Some(printed.saturating_duration_since(*run.sent.get(&w)?))
            })
            .collect();
        latencies.sort_unstable();
        let setting = if run.setting == "default" {
            "default (100ms,1s)".to_owned()
        } else {
            run.setting.clone()
        };
        println!(
            "| {setting} | {} | {} | {} | {:.0} | {:.2} |",
            millis(rank(&latencies, 0.50)),
            millis(rank(&latencies, 0.99)),
            millis(latencies.last().copied()),
            per_hour,
            per_hour * HOURS_PER_MONTH * DOLLARS_PER_REQUEST,
        );
    }
    Ok(())
}

/// The nearest-rank percentile `p` of sorted `values`.
fn rank(values: &[Duration], p: f64) -> Option<Duration> {
    let index = ((p * values.len() as f64).ceil() as usize).max(1) - 1;
    values.get(index).copied()
}

fn millis(value: Option<Duration>) -> String {
    value.map_or("-".into(), |d| format!("{} ms", d.as_millis()))
}

/// Writes item `w` to every run's table, noting when each PutItem was sent.
async fn write_to_all(
    client: &aws_sdk_dynamodb::Client,
    runs: &mut [Measured],
    w: u64,
) -> Result<(), BoxError> {
    for run in runs {
        run.sent.insert(w, Instant::now());
        client
            .put_item()
            .table_name(&run.table)
            .item("id", AttributeValue::S(format!("item-{w}")))
            .item("w", AttributeValue::N(w.to_string()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "PutItem into {}: {}",
                    run.table,
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            })?;
    }
    Ok(())
}

/// Waits until every run printed write `w` (each worker prints a shard's writes in order).
async fn wait_delivered(runs: &mut [Measured], w: u64) -> Result<(), BoxError> {
    let deadline = Instant::now() + DELIVERY_DEADLINE;
    for run in runs {
        loop {
            if run
                .printed
                .lock()
                .map_err(|_| "lock poisoned")?
                .contains_key(&w)
            {
                break;
            }
            if let Ok(Some(status)) = run.worker.try_wait() {
                return Err(format!(
                    "the worker of {} ({}) exited: {status}; see its log",
                    run.table, run.setting
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "write {w} to {} ({}) not printed within {DELIVERY_DEADLINE:?}",
                    run.table, run.setting
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

/// Notes when each printed change (its new image's `w`) was read.
async fn read_lines(
    stdout: tokio::process::ChildStdout,
    printed: Arc<Mutex<HashMap<u64, Instant>>>,
) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        let at = Instant::now();
        let w = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|line| line["new"]["w"].as_u64());
        if let (Some(w), Ok(mut printed)) = (w, printed.lock()) {
            printed.entry(w).or_insert(at);
        }
    }
}

/// A loopback relay to `upstream` (HOST:PORT) that counts the GetRecords requests sent
/// through it; returns its address.
async fn counting_relay(
    upstream: String,
    count: Arc<AtomicU64>,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (upstream, count) = (upstream.clone(), count.clone());
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    relay(client, server, count).await;
                }
            });
        }
    });
    Ok(addr)
}

/// Copies both ways until either side closes, counting GetRecords targets on the way up
/// (a target split across reads is found in the carried-over tail).
async fn relay(client: TcpStream, server: TcpStream, count: Arc<AtomicU64>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut targets = Occurrences::new(GET_RECORDS);
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            count.fetch_add(targets.feed(&buf[..n]), Ordering::Relaxed);
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Counts the occurrences of a byte string in a stream read in pieces, including one split
/// across two pieces.
struct Occurrences {
    needle: &'static [u8],
    /// The end of the stream so far that may hold the start of an occurrence.
    tail: Vec<u8>,
}

impl Occurrences {
    fn new(needle: &'static [u8]) -> Self {
        Self {
            needle,
            tail: Vec::new(),
        }
    }

    /// The occurrences that end in `piece`.
    fn feed(&mut self, piece: &[u8]) -> u64 {
        self.tail.extend_from_slice(piece);
        let (mut found, mut searched) = (0, 0);
        while let Some(at) = self.tail[searched..]
            .windows(self.needle.len())
            .position(|w| w == self.needle)
        {
            found += 1;
            searched += at + self.needle.len();
        }
        let keep_from = searched.max(self.tail.len().saturating_sub(self.needle.len() - 1));
        self.tail.drain(..keep_from);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_counted_once_whole_or_split_across_reads() {
        let request = |n: u32| {
            format!(
                "POST / HTTP/1.1\r\nx-amz-target: DynamoDBStreams_20120810.GetRecords\r\n\r\n{{\"n\":{n}}}"
            )
        };
        let stream: Vec<u8> = (0..5).flat_map(|n| request(n).into_bytes()).collect();
        for piece in [1, 7, 34, 35, 36, 100, stream.len()] {
            let mut counter = Occurrences::new(GET_RECORDS);
            let found: u64 = stream.chunks(piece).map(|c| counter.feed(c)).sum();
            assert_eq!(found, 5, "pieces of {piece} bytes");
        }
        let mut other = Occurrences::new(GET_RECORDS);
        assert_eq!(
            other.feed(b"x-amz-target: DynamoDBStreams_20120810.GetShardIterator"),
            0
        );
    }

    #[test]
    fn nearest_rank_percentiles() {
        let ms: Vec<Duration> = (1..=30).map(Duration::from_millis).collect();
        assert_eq!(rank(&ms, 0.50), Some(Duration::from_millis(15)));
        assert_eq!(rank(&ms, 0.99), Some(Duration::from_millis(30)));
        assert_eq!(rank(&[], 0.99), None);
    }
}
