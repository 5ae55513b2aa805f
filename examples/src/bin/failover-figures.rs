//! Failover figures with real `jsonl-worker` processes against DynamoDB Local, with the
//! workers' default settings (failover time 10 s): how long a shard goes unprocessed when its
//! owner is killed (SIGKILL) or stopped gracefully (SIGTERM).
//!
//! ```text
//! make figures
//! # or, with DynamoDB Local running and both binaries built in release mode:
//! failover-figures --endpoint http://127.0.0.1:8000 [--runs 3] [--worker-bin PATH]
//! ```
//!
//! Each run uses a fresh application and two fresh tables, consumed by two workers (one
//! shard each once balanced). A writer puts one item into each table every 100 ms. When the
//! workers have settled (each printing one table, for 3 s), and after a random 0-4 s more (so
//! that K falls anywhere in the heartbeat and scan cycles), the owner of the first table is
//! killed or terminated at instant K. Figures, per run:
//!
//! - first line: from K until the survivor prints its first line for that shard (after a
//!   crash, possibly changes written before K that the victim had not checkpointed);
//! - takeover / gap: from K until the survivor prints the first change written after K,
//!   i.e. how long new changes wait;
//! - duplicates: changes of that shard printed by both workers.
//!
//! A benchmark prints figures and asserts nothing about them: the exit status is 0 unless
//! something broke (a worker failed to start, nobody took the shard over within 60 s).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::AttributeValue;
use clap::Parser;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long the workers must have been printing one table each before the owner is stopped.
const SETTLED_FOR: Duration = Duration::from_secs(3);
/// How long any phase (settling, takeover, exit) may take before the run counts as broken.
const PHASE_DEADLINE: Duration = Duration::from_secs(60);
/// The writer's pace: one item per table per tick.
const WRITE_EVERY: Duration = Duration::from_millis(100);

/// Failover figures with real jsonl-worker processes against DynamoDB Local.
#[derive(Debug, Parser)]
#[command(name = "failover-figures")]
struct Args {
    /// DynamoDB endpoint (DynamoDB Local).
    #[arg(long, env = "DYNAMODB_ENDPOINT", value_name = "URL")]
    endpoint: String,
    /// Runs per scenario.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The jsonl-worker binary. Default: the one next to this program (build both with
    /// `cargo build --release -p dynamodb-streams-examples --bin jsonl-worker --bin failover-figures`).
    #[arg(long, value_name = "PATH")]
    worker_bin: Option<PathBuf>,
    /// Passed to the workers as --failover-time; default: theirs (10 s).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    failover_time: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    Kill,
    Term,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Kill => "SIGKILL",
            Stop::Term => "SIGTERM",
        }
    }
}

/// One printed change: when it was read, from which worker, and which item.
#[derive(Clone, Debug)]
struct Printed {
    at: Instant,
    worker: usize,
    table: String,
    seq: String,
    tick: Option<u64>,
}

/// What one run measured.
#[derive(Debug)]
struct Figures {
    first_line: Duration,
    first_new: Duration,
    duplicates: usize,
    /// For SIGTERM: how long the victim took to exit, and its status.
    exit: Option<(Duration, String)>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    dynamodb_streams_examples::init_tracing("warn");
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("failover-figures: error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<bool, BoxError> {
    let worker_bin = match &args.worker_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or("this program's path has no folder")?
            .join("jsonl-worker"),
    };
    if !worker_bin.is_file() {
        return Err(format!(
            "no jsonl-worker at {} (build it: cargo build --release -p dynamodb-streams-examples --bin \
             jsonl-worker, or pass --worker-bin)",
            worker_bin.display()
        )
        .into());
    }
    let sdk = dynamodb_streams_examples::sdk_config(Some(&args.endpoint), None).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let setup = Setup {
        worker_bin,
        endpoint: args.endpoint.clone(),
        failover_time: args.failover_time,
        client,
    };

    let mut results: Vec<(Stop, usize, Result<Figures, BoxError>)> = Vec::new();
    for stop in [Stop::Kill, Stop::Term] {
        for run in 1..=args.runs {
            eprintln!("{} run {run}/{}...", stop.name(), args.runs);
            let figures = setup.measure(stop, run).await;
            match &figures {
                Ok(f) => eprintln!("  {f:?}"),
                Err(e) => eprintln!("  broken: {e}"),
            }
            results.push((stop, run, figures));
        }
    }

    let failover = args.failover_time.unwrap_or(Duration::from_secs(10));
    let command: Vec<String> = std::env::args().collect();
    println!();
    println!("Command: `{}`", command.join(" "));
    let settings = match args.failover_time {
        None => "default settings (failover time 10 s, scan every 2 s)".to_owned(),
        Some(f) => format!(
            "default settings except --failover-time {}",
            humantime::format_duration(f)
        ),
    };
    println!(
        "Workers: {}, 2 processes, 2 tables (one shard each), {settings}; writer: one item \
         per table every {} ms; the stop comes 0-4 s (random) after the workers settled. Times are \
         from the signal to the survivor's output.",
        setup.worker_bin.display(),
        WRITE_EVERY.as_millis()
    );
    println!();
    println!(
        "| owner stopped by | run | survivor's first line for the shard | first change written after the stop | duplicates | victim exit | target |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut ok = true;
    for stop in [Stop::Kill, Stop::Term] {
        let target = match stop {
            Stop::Kill => format!(
                "takeover <= {:.0} s",
                (failover + Duration::from_secs(2)).as_secs_f64()
            ),
            Stop::Term => "gap < 3 s, 0 duplicates".to_owned(),
        };
        let mut max: Option<(Duration, Duration, usize)> = None;
        for (_, run, figures) in results.iter().filter(|(s, _, _)| *s == stop) {
            match figures {
                Ok(f) => {
                    let exit = f
                        .exit
                        .as_ref()
                        .map_or("killed".to_owned(), |(took, status)| {
                            format!("{status} after {}", secs(*took))
                        });
                    println!(
                        "| {} | {run} | {} | {} | {} | {exit} | {target} |",
                        stop.name(),
                        secs(f.first_line),
                        secs(f.first_new),
                        f.duplicates
                    );
                    let (a, b, c) = max.unwrap_or_default();
                    max = Some((a.max(f.first_line), b.max(f.first_new), c.max(f.duplicates)));
                }
                Err(error) => {
                    ok = false;
                    println!(
                        "| {} | {run} | broken: {error} | | | | {target} |",
                        stop.name()
                    );
                }
            }
        }
        if let Some((first_line, first_new, duplicates)) = max {
            println!(
                "| {} | **max** | {} | **{}** | {duplicates} | | {target} |",
                stop.name(),
                secs(first_line),
                secs(first_new)
            );
        }
    }
    Ok(ok)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

struct Setup {
    worker_bin: PathBuf,
    endpoint: String,
    failover_time: Option<Duration>,
    client: aws_sdk_dynamodb::Client,
}

/// A worker process and what it printed.
struct WorkerProcess {
    id: String,
    child: Child,
}

impl Setup {
    async fn measure(&self, stop: Stop, run: usize) -> Result<Figures, BoxError> {
        let name = |what: &str| {
            dynamodb_streams_examples::unique_name(&format!("figures-{what}-run{run}"))
        };
        let tables = [name("a"), name("b")];
        for table in &tables {
            self.create_table(table).await?;
        }
        let app = name("app");
        eprintln!(
            "  application {app}; worker logs in {}",
            std::env::temp_dir().join("failover-figures").display()
        );
        let printed: Arc<Mutex<Vec<Printed>>> = Arc::default();
        let mut workers = Vec::new();
        for (index, id) in ["w1", "w2"].into_iter().enumerate() {
            workers.push(self.start_worker(id, index, &app, &tables, &printed)?);
        }
        let writer = Writer::start(self.client.clone(), tables.to_vec());
        let result = self
            .stop_and_watch(stop, &tables, &mut workers, &printed, &writer)
            .await;
        writer.stop().await;
        for worker in &mut workers {
            if matches!(worker.child.try_wait(), Ok(None)) {
                signal(&worker.child, "TERM")?;
                if tokio::time::timeout(Duration::from_secs(30), worker.child.wait())
                    .await
                    .is_err()
                {
                    eprintln!(
                        "  {} did not stop within 30 s of SIGTERM; killing it",
                        worker.id
                    );
                    let _ = worker.child.kill().await;
                }
            }
        }
        result
    }

    async fn stop_and_watch(
        &self,
        stop: Stop,
        tables: &[String; 2],
        workers: &mut [WorkerProcess],
        printed: &Arc<Mutex<Vec<Printed>>>,
        writer: &Writer,
    ) -> Result<Figures, BoxError> {
        // Settled: each table's latest line is recent and the two come from different workers,
        // continuously for SETTLED_FOR.
        let started = Instant::now();
        let mut settled_since: Option<Instant> = None;
        let victim = loop {
            for worker in workers.iter_mut() {
                if let Some(status) = worker.child.try_wait()? {
                    return Err(format!("{} exited during start-up: {status}", worker.id).into());
                }
            }
            let now = Instant::now();
            let latest = |table: &str| {
                lock(printed)
                    .iter()
                    .filter(|p| p.table == table)
                    .max_by_key(|p| p.at)
                    .map(|p| (p.worker, p.at))
            };
            let owners = match (latest(&tables[0]), latest(&tables[1])) {
                (Some((a, at_a)), Some((b, at_b)))
                    if a != b
                        && now.duration_since(at_a) < Duration::from_secs(1)
                        && now.duration_since(at_b) < Duration::from_secs(1) =>
                {
                    Some(a)
                }
                _ => None,
            };
            match (owners, settled_since) {
                (Some(owner), Some(since)) if now.duration_since(since) >= SETTLED_FOR => {
                    break owner;
                }
                (Some(_), None) => settled_since = Some(now),
                (None, _) => settled_since = None,
                _ => {}
            }
            if started.elapsed() > PHASE_DEADLINE {
                return Err("the workers never settled on one table each".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // Stop at a random moment, so that the stop falls anywhere in the heartbeat (3.3 s) and
        // scan (2 s) cycles rather than at the phase at which settling happens to be noticed.
        let jitter = Duration::from_millis(RandomState::new().hash_one(Instant::now()) % 4000);
        tokio::time::sleep(jitter).await;
        let owner_now = lock(printed)
            .iter()
            .filter(|p| p.table == tables[0])
            .max_by_key(|p| p.at)
            .map(|p| p.worker);
        if owner_now != Some(victim) {
            return Err("the first table changed hands while the workers looked settled".into());
        }
        let survivor = 1 - victim;
        let table = &tables[0];

        let stopped_at = Instant::now();
        eprintln!(
            "  {} {} (owner of {table}) at {}",
            stop.name(),
            workers[victim].id,
            humantime::format_rfc3339_millis(SystemTime::now())
        );
        let exit = match stop {
            Stop::Kill => {
                workers[victim].child.start_kill()?;
                workers[victim].child.wait().await?;
                None
            }
            Stop::Term => {
                signal(&workers[victim].child, "TERM")?;
                let status = tokio::time::timeout(PHASE_DEADLINE, workers[victim].child.wait())
                    .await
                    .map_err(|_| "the terminated worker did not exit within 60 s")??;
                Some((stopped_at.elapsed(), status.to_string()))
            }
        };

        let first_new = loop {
            let written_after = |p: &Printed| {
                p.tick
                    .and_then(|tick| writer.written_at(table, tick))
                    .is_some_and(|at| at > stopped_at)
            };
            let found = lock(printed)
                .iter()
                .filter(|p| p.worker == survivor && &p.table == table && written_after(p))
                .map(|p| p.at)
                .min();
            if let Some(at) = found {
                break at.duration_since(stopped_at);
            }
            if stopped_at.elapsed() > PHASE_DEADLINE {
                return Err(format!(
                    "the survivor printed nothing written after the {} within 60 s",
                    stop.name()
                )
                .into());
            }
            if let Some(status) = workers[survivor].child.try_wait()? {
                return Err(format!("the survivor exited: {status}").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let lines = lock(printed).clone();
        let first_line = lines
            .iter()
            .filter(|p| p.worker == survivor && &p.table == table && p.at > stopped_at)
            .map(|p| p.at.duration_since(stopped_at))
            .min()
            .unwrap_or(first_new);
        let mut seen: HashSet<&str> = HashSet::new();
        let duplicates = lines
            .iter()
            .filter(|p| &p.table == table && !seen.insert(p.seq.as_str()))
            .count();
        Ok(Figures {
            first_line,
            first_new,
            duplicates,
            exit,
        })
    }

    fn start_worker(
        &self,
        id: &str,
        index: usize,
        app: &str,
        tables: &[String; 2],
        printed: &Arc<Mutex<Vec<Printed>>>,
    ) -> Result<WorkerProcess, BoxError> {
        let log_dir = std::env::temp_dir().join("failover-figures");
        std::fs::create_dir_all(&log_dir)?;
        let log = std::fs::File::create(log_dir.join(format!("{app}-{id}.stderr")))?;
        let mut command = Command::new(&self.worker_bin);
        command
            .args([
                "--worker-id",
                id,
                "--app",
                app,
                "--endpoint",
                &self.endpoint,
            ])
            .args(["--table", &tables[0], "--table", &tables[1]]);
        if let Some(failover) = self.failover_time {
            command
                .arg("--failover-time")
                .arg(humantime::format_duration(failover).to_string());
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.worker_bin.display()))?;
        let stdout = child.stdout.take().ok_or("stdout not piped")?;
        let sink = printed.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let at = Instant::now();
                let Ok(change) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let text = |field: &str| change[field].as_str().unwrap_or_default().to_owned();
                lock(&sink).push(Printed {
                    at,
                    worker: index,
                    table: text("table"),
                    seq: text("seq"),
                    tick: change["new"]["tick"].as_u64(),
                });
            }
        });
        Ok(WorkerProcess {
            id: id.to_owned(),
            child,
        })
    }

    async fn create_table(&self, name: &str) -> Result<(), BoxError> {
        dynamodb_streams_examples::create_table(&self.client, name, "id", true).await?;
        Ok(())
    }
}

/// Puts `{"id": "t<tick>", "tick": tick}` into every table every [`WRITE_EVERY`], and
/// remembers when each put was issued.
struct Writer {
    written: Arc<Mutex<HashMap<(String, u64), Instant>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(client: aws_sdk_dynamodb::Client, tables: Vec<String>) -> Writer {
        let written: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (written.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick_timer = tokio::time::interval(WRITE_EVERY);
            tick_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut tick: u64 = 0;
            while !stopped.load(Ordering::SeqCst) {
                tick_timer.tick().await;
                tick += 1;
                for table in &tables {
                    lock(&log).insert((table.clone(), tick), Instant::now());
                    let put = client
                        .put_item()
                        .table_name(table)
                        .item("id", AttributeValue::S(format!("t{tick}")))
                        .item("tick", AttributeValue::N(tick.to_string()))
                        .send()
                        .await;
                    if let Err(error) = put {
                        eprintln!("  writer: PutItem {table} failed: {error:?}");
                    }
                }
            }
        });
        Writer {
            written,
            stop,
            task,
        }
    }

    fn written_at(&self, table: &str, tick: u64) -> Option<Instant> {
        lock(&self.written).get(&(table.to_owned(), tick)).copied()
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
    }
}

fn signal(child: &Child, name: &str) -> Result<(), BoxError> {
    let pid = child.id().ok_or("the process already exited")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{name} {pid}: {status}").into());
    }
    Ok(())
}

/// Locks a mutex, going on with the data if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
