//! The explorer: every setting with every fault, drawn from a seed (in the spirit of
//! FoundationDB's simulation and TigerBeetle's VOPR).
//!
//! One seed draws a scenario ([`scenario`]): the topology (1-6 workers that start, crash,
//! stop gracefully and join; 1-3 tables with 1-3 shards each, split and rotated; a stream
//! disabled and enabled again; records with repeated keys), the builder settings, the
//! processor's behaviour per record and attempt (succeed, slow, fail, panic, hang, partial
//! failures, checkpoints in the middle of `process`, manual checkpoints) and the faults;
//! also snapshot-then-stream (segments, Scan page size, items written well before it
//! begins and writes while the scan runs), exactly-once (every stream record stages a
//! write counted in an item table of the in-memory store, committed with the checkpoint)
//! and named pipelines (1-3, each with its own settings and handler, checked by an oracle
//! of its own; with a snapshot only once `build_pipelines` accepts the combination).
//! [`world`] runs the real `Consumer`s against the simulated stream and the in-memory
//! lease store in paused time; [`oracle`] checks the invariants at every step and at the
//! end. A failure prints the seed, the scenario, the broken invariant and the last events;
//! `EXPLORE_SEED=n cargo test -p dynamodb-streams-consumer --test explorer` replays it exactly.
//!
//! - `cargo test` (and `make test`) runs [`FIXED_SEEDS`] seeds, plus the regressions;
//! - `make explore SEEDS=n` runs `n` seeds (release build) and prints seeds per second.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod journal;
mod oracle;
mod processor;
mod regressions;
mod scenario;
mod world;

use std::sync::Once;
use std::time::{Duration, Instant};

use scenario::{Scenario, Space};

/// Seeds `cargo test` runs (15-60 s in a debug build, as busy as the machine is). Fewer
/// than before snapshots, staged writes and pipelines joined the drawn space (each seed
/// costs more), so `make test` takes about as long as it did.
const FIXED_SEEDS: u64 = 240;

/// Seeds past [`FIXED_SEEDS`] that broke an invariant once (`make explore`), fixed since:
/// `cargo test` runs them with the fixed seeds (a fraction of a second each). 8991 and
/// 27627 (a handoff while the stream's records from before a snapshot were skipped) pass
/// since the memory budget's fix changed their timing; the defect itself is fixed in
/// `start_time.rs`, its test `a_move_in_the_middle_of_skipping_keeps_the_start_time`.
/// 34224 broke the call budget with a worker alive about a second (see
/// `world::MIN_WORKER_SECONDS`).
const FOUND_SEEDS: &[u64] = &[1329, 1519, 1804, 1920, 3095, 8991, 27627, 34224];

/// How long one seed may take in real time before the run is declared stuck (a task that
/// spins keeps virtual time from advancing).
/// `EXPLORE_REAL_LIMIT` (seconds) changes it.
const REAL_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Drawn panics are expected: keep them out of the test output.
fn quiet_drawn_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let text = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or_default();
            if !text.contains(processor::DRAWN_PANIC) {
                default(info);
            }
        }));
    });
}

/// What running one seed in its own process showed.
#[derive(Debug)]
struct SeedRun {
    /// `Some` (hash, events, records, virtual seconds, calls) when every invariant held.
    outcome: Option<(u64, u64, u64, f64, u64)>,
    /// The broken invariant, when one broke.
    invariant: Option<String>,
    /// What the run printed (the failure report).
    output: String,
}

/// The space of `EXPLORE_SPACE` (`full`, a list of pending-defect flags, or today's by
/// default).
fn space_from_env() -> Space {
    let text = std::env::var("EXPLORE_SPACE").unwrap_or_default();
    Space::parse(&text).unwrap_or_else(|| panic!("EXPLORE_SPACE={text:?} names no space"))
}

/// Runs one seed of today's space (or `EXPLORE_SPACE`'s) in a child process.
fn explore_one(seed: u64) -> SeedRun {
    explore_one_in(seed, space_from_env())
}

/// Runs one seed in a child process (this test binary's `one_seed`): incarnation ids use
/// a process-wide counter, so a seed replays exactly only in a fresh process.
fn explore_one_in(seed: u64, space: Space) -> SeedRun {
    let exe = std::env::current_exe().expect("the test binary");
    let output = std::process::Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "one_seed",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EXPLORE_ONE", seed.to_string())
        .env("EXPLORE_SPACE", space.name())
        .output()
        .expect("the test binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |prefix: &str| {
        text.lines()
            .find_map(|line| line.split_once(prefix).map(|(_, rest)| rest))
            .map(str::to_owned)
    };
    let outcome = field("explorer-outcome ").and_then(|line| {
        let numbers: Vec<&str> = line.split_whitespace().collect();
        Some((
            u64::from_str_radix(numbers.first()?, 16).ok()?,
            numbers.get(1)?.parse().ok()?,
            numbers.get(2)?.parse().ok()?,
            numbers.get(3)?.parse().ok()?,
            numbers.get(4)?.parse().ok()?,
        ))
    });
    let invariant = match (&outcome, field("explorer: seed ")) {
        (Some(_), _) => None,
        (None, Some(line)) => Some(line),
        (None, None) => Some(format!(
            "the run ended without a result ({})",
            output.status
        )),
    };
    SeedRun {
        outcome,
        invariant,
        output: text,
    }
}

/// Runs the seed `EXPLORE_ONE` in this process, with a real-time watchdog; prints
/// `explorer-outcome <hash> <events> <records> <virtual s> <calls>` or the failure report.
#[test]
#[ignore = "one seed in its own process: the explorer's tests run it"]
fn one_seed() {
    let Some(seed) = std::env::var("EXPLORE_ONE")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    quiet_drawn_panics();
    if std::env::var_os("RUST_LOG").is_some() {
        // The workers' own logs, for a replay: RUST_LOG=dynamodb_streams_consumer=info EXPLORE_SEED=n.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let scenario = Scenario::draw_in(seed, space_from_env());
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let shown = scenario.to_string();
    let oracle = world::oracle_for(&scenario);
    let watched = oracle.clone();
    let limit = std::env::var("EXPLORE_REAL_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(REAL_TIME_LIMIT, Duration::from_secs);
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            println!(
                "explorer: seed {seed} broke invariant 6 bounds: it did not finish within {limit:?} of real time (a task spins, or virtual time cannot advance)\n{shown}\nlast events:\n{}",
                watched.tail()
            );
            std::process::exit(101);
        }
    });
    let result = world::run(&scenario, oracle);
    let _ = done.send(());
    let _ = watchdog.join();
    match result {
        Ok(o) => println!(
            "explorer-outcome {:016x} {} {} {:.1} {}",
            o.hash, o.events, o.records, o.virtual_secs, o.calls
        ),
        Err(failure) => {
            println!("{failure}");
            std::process::exit(101);
        }
    }
}

fn seed_from_env() -> Option<u64> {
    std::env::var("EXPLORE_SEED").ok()?.parse().ok()
}

/// The fixed seeds (or only `EXPLORE_SEED`, to replay one).
#[test]
fn fixed_seeds_keep_every_invariant() {
    let seeds: Vec<u64> = match seed_from_env() {
        Some(seed) => vec![seed],
        None => (0..FIXED_SEEDS)
            .chain(FOUND_SEEDS.iter().copied())
            .collect(),
    };
    for seed in seeds {
        let started = Instant::now();
        let run = explore_one(seed);
        match run.outcome {
            Some((hash, events, records, virtual_secs, calls)) => eprintln!(
                "seed {seed}: {records} records, {virtual_secs:.0} virtual s, {calls} calls, {events} events, hash {hash:016x} ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            None => panic!("{}", run.output),
        }
    }
}

/// Seeds [`a_seed_replays_exactly`] runs [`REPLAYS`] times each. 48578 (a frozen link
/// holding two checkpoint writes and a worker's releases, issue 15) gave one of six event
/// logs per run while the testkit woke held calls in the order of tokio's per-process RNG.
const REPLAYED_SEEDS: &[u64] = &[3, 11, 48578];

/// How many times [`a_seed_replays_exactly`] runs each seed (three: a seed with six
/// outcomes agrees with itself three times in a row about one run in twenty).
const REPLAYS: usize = 3;

/// Every run of one seed does exactly the same: the event logs hash the same, and the same
/// invariant breaks (if one does). `EXPLORE_SEED=n` checks only that seed.
#[test]
fn a_seed_replays_exactly() {
    let seeds = seed_from_env().map_or_else(|| REPLAYED_SEEDS.to_vec(), |seed| vec![seed]);
    for seed in seeds {
        let first = explore_one(seed);
        for _ in 1..REPLAYS {
            let again = explore_one(seed);
            assert_eq!(
                (first.outcome.map(|o| (o.0, o.1)), &first.invariant),
                (again.outcome.map(|o| (o.0, o.1)), &again.invariant),
                "seed {seed} ran differently twice:\n{}\n-----\n{}",
                first.output,
                again.output
            );
        }
    }
}

/// `make explore SEEDS=n [FROM=m]`: runs seeds `m..m+n`, prints every failure's seed and
/// invariant, and seeds per second.
#[test]
#[ignore = "many seeds: run with `make explore SEEDS=n` (release build)"]
fn explore() {
    let count: u64 = std::env::var("EXPLORE_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let from: u64 = std::env::var("EXPLORE_FROM")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in from..from + count {
        let run = explore_one(seed);
        if let Some(invariant) = run.invariant {
            eprintln!("{}", run.output);
            failures.push(invariant);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "explorer: {count} seeds from {from} in {secs:.1} s: {:.2} seeds per second, {} failed",
        count as f64 / secs,
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failing seeds:\n{}",
        failures.join("\n")
    );
}
