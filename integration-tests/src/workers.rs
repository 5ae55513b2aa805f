//! Real `jsonl-worker` processes for the multi-process tests: spawn workers, collect the
//! JSON lines they print, stop them with SIGTERM or SIGKILL.
//!
//! # Finding the binary
//!
//! The caller passes the binary's path. The tests of the examples package, which owns
//! `jsonl-worker`, get it from Cargo, which builds the binary before them and hands its path
//! over as `env!("CARGO_BIN_EXE_jsonl-worker")`. Tests of another package (`ddbsc`) call
//! [`jsonl_worker_next_to`] with a binary of their own: Cargo builds only that package's
//! binaries for its tests.
//!
//! # Workers
//!
//! [`Worker::start`] spawns one process with `--endpoint $DYNAMODB_ENDPOINT`; a background
//! task reads its stdout line by line into [`Worker::lines`] (each line parsed and stamped
//! with the instant it was read); stderr (the logs, `RUST_LOG=info,dynamodb_streams_consumer=debug`
//! unless `RUST_LOG` is set) goes to a file whose tail is printed when a test panics. A
//! worker dropped while still running is killed with SIGKILL, so a failing test leaves no
//! processes behind.

// Test support: a panic is how a test fails (every panic says what went wrong).
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// One change as `jsonl-worker` prints it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Change {
    /// The worker id (`--worker-id`).
    pub worker: String,
    /// The table.
    pub table: String,
    /// The shard.
    pub shard: String,
    /// The sequence number (a decimal string).
    pub seq: String,
    /// `INSERT`, `MODIFY` or `REMOVE`.
    pub event: String,
    /// The item's key attributes.
    pub keys: Value,
    /// The old image, or `null`.
    pub old: Value,
    /// The new image, or `null`.
    pub new: Value,
    /// The pipeline that printed it (`--pipeline NAME`), if any.
    #[serde(default)]
    pub pipeline: Option<String>,
}

impl Change {
    /// The sequence number as a sortable key: numeric order (sequence numbers are decimal
    /// strings of varying length, never to be compared as plain strings).
    pub fn seq_key(&self) -> (usize, String) {
        seq_key(&self.seq)
    }
}

/// Numeric order of a decimal sequence number: (digits without leading zeros, digits).
pub fn seq_key(seq: &str) -> (usize, String) {
    let digits = seq.trim_start_matches('0');
    (digits.len(), digits.to_owned())
}

/// A line of output: the change, and when the test read it.
#[derive(Clone, Debug)]
pub struct Line {
    /// The parsed line.
    pub change: Change,
    /// When the reader task got it (the worker flushes after each batch).
    pub at: Instant,
}

#[derive(Default)]
struct Output {
    lines: Vec<Line>,
    /// Lines that did not parse (a line cut short by SIGKILL).
    unparsed: Vec<String>,
    closed: bool,
}

/// A running (or finished) `jsonl-worker` process.
pub struct Worker {
    id: String,
    child: Child,
    output: Arc<Mutex<Output>>,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

/// The options every worker of a test shares.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The `jsonl-worker` binary.
    pub bin: PathBuf,
    /// The application (lease table).
    pub app: String,
    /// The tables to consume.
    pub tables: Vec<String>,
    /// `--failover-time`, e.g. `"3s"`; `None` keeps the default (10 s).
    pub failover_time: Option<String>,
}

impl Worker {
    /// Starts `jsonl-worker --worker-id ID --app APP --table ... --endpoint $DYNAMODB_ENDPOINT`.
    ///
    /// # Panics
    ///
    /// When the binary cannot be started, or `DYNAMODB_ENDPOINT` is not set.
    pub fn start(id: &str, config: &WorkerConfig) -> Worker {
        Self::start_with(id, config, &[])
    }

    /// [`Worker::start`] with `flags` added at the end of the command line.
    ///
    /// # Panics
    ///
    /// As [`Worker::start`].
    pub fn start_with(id: &str, config: &WorkerConfig, flags: &[&str]) -> Worker {
        let mut args: Vec<String> = vec![
            "--worker-id".into(),
            id.into(),
            "--app".into(),
            config.app.clone(),
            "--endpoint".into(),
            crate::endpoint(),
        ];
        for table in &config.tables {
            args.extend(["--table".into(), table.clone()]);
        }
        if let Some(failover) = &config.failover_time {
            args.extend(["--failover-time".into(), failover.clone()]);
        }
        args.extend(flags.iter().map(|flag| (*flag).to_owned()));
        let log_name = format!("{}-{id}", config.app);
        Self::spawn(&config.bin, id, &log_name, &args)
    }

    /// Starts `bin` with exactly `args`; stderr goes to a file named after `log_name`.
    ///
    /// # Panics
    ///
    /// When the binary cannot be started.
    pub fn spawn(bin: &Path, id: &str, log_name: &str, args: &[String]) -> Worker {
        let dir = std::env::temp_dir().join("multi-process-tests");
        std::fs::create_dir_all(&dir).expect("cannot create the log folder");
        let stderr_path = dir.join(format!("{log_name}.stderr"));
        let stderr = std::fs::File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", stderr_path.display()));
        let mut command = Command::new(bin);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info,dynamodb_streams_consumer=debug");
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let output = Arc::new(Mutex::new(Output::default()));
        let sink = output.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(text)) = lines.next_line().await {
                let at = Instant::now();
                let mut out = sink.lock().expect("output lock");
                match serde_json::from_str::<Change>(&text) {
                    Ok(change) => out.lines.push(Line { change, at }),
                    Err(_) => out.unparsed.push(text),
                }
            }
            sink.lock().expect("output lock").closed = true;
        });
        Worker {
            id: id.to_owned(),
            child,
            output,
            stderr_path,
            exit: None,
        }
    }

    /// The worker id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Every line read so far, in output order.
    pub fn lines(&self) -> Vec<Line> {
        self.output.lock().expect("output lock").lines.clone()
    }

    /// How many lines were read so far.
    pub fn line_count(&self) -> usize {
        self.output.lock().expect("output lock").lines.len()
    }

    /// Every change read so far, in output order.
    pub fn changes(&self) -> Vec<Change> {
        self.lines().into_iter().map(|l| l.change).collect()
    }

    /// Lines that did not parse as a change (only a line cut short by SIGKILL should).
    pub fn unparsed(&self) -> Vec<String> {
        self.output.lock().expect("output lock").unparsed.clone()
    }

    /// Where the worker's stderr (its logs) goes.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The worker's logs so far.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.stderr_path) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// Sends SIGTERM (graceful shutdown).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGKILL and waits until the process is gone and its output is read.
    ///
    /// # Panics
    ///
    /// When the process cannot be killed.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.wait_exit(Duration::from_secs(10)).await;
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the worker is still running");
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// Waits (at most `deadline`) until the process exits and its stdout is read to the end.
    ///
    /// # Panics
    ///
    /// When it does not exit in time.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "worker {} did not exit within {deadline:?}; log tail:\n{}",
                    self.id,
                    tail(&self.stderr(), 30)
                )
            })
            .expect("wait for the worker");
        self.exit = Some(status);
        let output = self.output.clone();
        wait_until(
            &format!("the end of worker {}'s output", self.id),
            Duration::from_secs(10),
            || output.lock().expect("output lock").closed,
        )
        .await;
        status
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // `kill_on_drop` sends SIGKILL to a process still running; show why a test failed.
        if std::thread::panicking() {
            eprintln!(
                "---- worker {} (stderr {}), last lines:\n{}",
                self.id,
                self.stderr_path.display(),
                tail(&self.stderr(), 40)
            );
        }
    }
}

/// The `jsonl-worker` of this build: the one next to `bin` (a binary of the same target
/// folder, e.g. `env!("CARGO_BIN_EXE_ddbsc")`), built with `cargo build` when missing.
///
/// # Panics
///
/// When `bin` has no folder, or the build fails.
pub fn jsonl_worker_next_to(bin: &Path) -> PathBuf {
    let worker = bin
        .parent()
        .expect("the binary's folder")
        .join("jsonl-worker");
    if !worker.exists() {
        let build = [
            "build",
            "-p",
            "dynamodb-streams-examples",
            "--bin",
            "jsonl-worker",
        ];
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(build)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo {} failed", build.join(" "));
    }
    assert!(worker.exists(), "{} missing", worker.display());
    worker
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `done` every 50 ms until it holds.
///
/// # Panics
///
/// When it does not hold within `deadline`, naming `what`.
pub async fn wait_until(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `bin` with `args` to its end (at most `deadline`): exit status, stdout, stderr and
/// how long it took.
///
/// # Panics
///
/// When it cannot be started or does not exit in time.
pub async fn run_to_exit(
    bin: &Path,
    args: &[String],
    deadline: Duration,
) -> (ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let output = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(deadline, output)
        .await
        .unwrap_or_else(|_| panic!("jsonl-worker {args:?} did not exit within {deadline:?}"))
        .expect("run jsonl-worker");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The shard leases of `app` (not the coordination ones): (stream ARN, owner's worker id,
/// i.e. the part of the owner before `#`; `None` when unowned).
///
/// # Panics
///
/// When the lease table cannot be read. A lease table that does not exist yet (no worker
/// got that far) has no leases.
pub async fn shard_owners(app: &str) -> Vec<(String, Option<String>)> {
    use dynamodb_streams_leases::LeaseStore;
    let config = crate::sdk_config().await;
    let described = aws_sdk_dynamodb::Client::new(&config)
        .describe_table()
        .table_name(app)
        .send()
        .await;
    if let Err(error) = described {
        if error
            .as_service_error()
            .is_some_and(|e| e.is_resource_not_found_exception())
        {
            return Vec::new();
        }
        panic!("DescribeTable {app}: {error:?}");
    }
    let store = dynamodb_streams_leases::DynamoDbLeaseStore::from_sdk_config(&config, app)
        .expect("a valid lease table name");
    let leases = store.list_leases().await.expect("list the leases");
    leases
        .into_iter()
        .filter(|lease| !lease.key.is_coordination())
        .map(|lease| {
            let owner = lease
                .owner
                .map(|o| o.split('#').next().unwrap_or_default().to_owned());
            (lease.key.stream, owner)
        })
        .collect()
}

/// How many shard leases of `app` each worker id owns (unowned ones count under `""`).
///
/// # Panics
///
/// When the lease table cannot be read.
pub async fn lease_counts(app: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (_, owner) in shard_owners(app).await {
        *counts.entry(owner.unwrap_or_default()).or_insert(0) += 1;
    }
    counts
}
