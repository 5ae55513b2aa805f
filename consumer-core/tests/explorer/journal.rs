//! The run's event log: every action, fault, callback and lease write, stamped with virtual
//! time. A failure prints its tail; a hash of the whole log shows that a seed replays
//! exactly.
//!
//! The hash takes the events of one virtual millisecond as a set (sorted before hashing):
//! the worker keeps its running shards in a `HashMap`, so the order in which it stops them
//! at one instant differs from process to process. What happens, and when, must not.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::time::Instant;

/// How many events a failure report prints.
const TAIL: usize = 60;

/// Events of one run, in order; clones share it (the oracles of several pipelines write
/// to one journal).
#[derive(Clone)]
pub struct Journal(Arc<Mutex<Events>>);

impl Journal {
    fn events(&self) -> MutexGuard<'_, Events> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An empty journal whose clock starts now.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Events::new())))
    }

    /// Restarts the clock (before any event).
    pub fn start_clock(&self) {
        self.events().start_clock();
    }

    /// Milliseconds of virtual time since the run began.
    pub fn millis(&self) -> u64 {
        self.events().millis()
    }

    /// Appends `event`, stamped with the virtual time.
    pub fn push(&self, event: impl AsRef<str>) {
        self.events().push(event);
    }

    /// The hash of every event so far: equal for two runs that did the same thing.
    pub fn hash(&self) -> u64 {
        self.events().hash()
    }

    /// How many events were logged.
    pub fn len(&self) -> u64 {
        self.events().len()
    }

    /// Every event, one a line, if `EXPLORE_LOG` was set.
    pub fn all(&self) -> Option<String> {
        self.events().all()
    }

    /// The last events, one a line.
    pub fn tail(&self) -> String {
        self.events().tail()
    }
}

/// The journal's content.
struct Events {
    start: Instant,
    tail: VecDeque<String>,
    /// FNV-1a over every event's text.
    hash: u64,
    events: u64,
    /// Every event, when `EXPLORE_LOG` is set (to compare two runs line by line).
    all: Option<Vec<String>>,
    /// The events of the current millisecond, not hashed yet.
    instant: (u64, Vec<String>),
}

impl Events {
    /// Restarts the clock (before any event).
    pub fn start_clock(&mut self) {
        self.start = Instant::now();
    }

    /// An empty journal whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            tail: VecDeque::with_capacity(TAIL),
            hash: 0xcbf2_9ce4_8422_2325,
            events: 0,
            all: std::env::var_os("EXPLORE_LOG").map(|_| Vec::new()),
            instant: (0, Vec::new()),
        }
    }

    /// Milliseconds of virtual time since the run began.
    pub fn millis(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Appends `event`, stamped with the virtual time.
    pub fn push(&mut self, event: impl AsRef<str>) {
        let mut line = String::new();
        let ms = self.millis();
        let _ = write!(line, "{:>4}.{:03} {}", ms / 1000, ms % 1000, event.as_ref());
        if self.instant.0 != ms {
            self.settle();
            self.instant.0 = ms;
        }
        self.instant.1.push(line.clone());
        self.events += 1;
        if let Some(all) = &mut self.all {
            all.push(line.clone());
        }
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// Hashes the events of the last millisecond, in sorted order.
    fn settle(&mut self) {
        let mut lines = std::mem::take(&mut self.instant.1);
        lines.sort();
        for line in lines {
            for byte in line.bytes() {
                self.hash ^= u64::from(byte);
                self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }

    /// The hash of every event so far: equal for two runs that did the same thing.
    pub fn hash(&mut self) -> u64 {
        self.settle();
        self.hash
    }

    /// How many events were logged.
    pub fn len(&self) -> u64 {
        self.events
    }

    /// Every event, one a line, if `EXPLORE_LOG` was set.
    pub fn all(&self) -> Option<String> {
        self.all.as_ref().map(|all| all.join("\n"))
    }

    /// The last events, one a line.
    pub fn tail(&self) -> String {
        self.tail.iter().fold(String::new(), |mut out, line| {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
            out
        })
    }
}
