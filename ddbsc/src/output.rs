//! Standard output that a reader going away ends quietly.
//!
//! `ddbsc status | head` closes the pipe after ten lines; the next write fails with a broken
//! pipe. That is the reader's choice, not an error: every later line is dropped, and the
//! command still finishes what it started (a `reset` whose reader left still moves every
//! lease it began to move) and exits 0. `tail` asks [`Output::is_closed`] and stops.

use std::fmt::Display;
use std::io::{ErrorKind, Stdout, Write};

use crate::Failure;

/// Lines to standard output, flushed one by one (a reader sees each as it is made).
pub struct Output {
    out: Stdout,
    closed: bool,
}

impl Output {
    /// The process's standard output.
    pub fn stdout() -> Self {
        Self {
            out: std::io::stdout(),
            closed: false,
        }
    }

    /// Writes `text` and a newline. After a broken pipe this does nothing; any other write
    /// error is a failure.
    pub fn line(&mut self, text: impl Display) -> Result<(), Failure> {
        if self.closed {
            return Ok(());
        }
        let mut out = self.out.lock();
        let written = writeln!(out, "{text}").and_then(|()| out.flush());
        match written {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(error) => Err(Failure(format!("cannot write to standard output: {error}"))),
        }
    }

    /// Whether the reader went away (nothing written from now on is read).
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
