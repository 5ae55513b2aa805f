//! Shutdown on SIGINT / SIGTERM for programs: the first signal asks for a graceful
//! shutdown, a second one ends the process at once.
//!
//! ```no_run
//! # async fn run(consumer: dynamodb_streams_consumer::Consumer<impl dynamodb_streams_consumer::ProcessorFactory>) -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = dynamodb_streams_consumer::signals::graceful_then_immediate()?;
//! consumer.run_until(shutdown).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;

/// The exit status after a second signal (128 + SIGINT, as shells report an interrupt).
pub const FORCED_EXIT_STATUS: i32 = 130;

/// Starts listening for SIGINT and SIGTERM now (so a signal during start-up is not lost)
/// and returns a future that completes on the first one: pass it to
/// [`Consumer::run_until`](crate::Consumer::run_until). After that, a second signal exits
/// the process at once with status [`FORCED_EXIT_STATUS`], for when a graceful shutdown
/// (bounded by `with_shutdown_timeout`) takes too long for the operator.
pub fn graceful_then_immediate() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        let mut signals = (
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        );
        /// The name of the next signal of the two.
        async fn next((interrupt, terminate): &mut (Signal, Signal)) -> &'static str {
            tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            }
        }
        Ok(async move {
            let first = next(&mut signals).await;
            tracing::info!(
                signal = first,
                "shutting down gracefully (signal again to quit at once)"
            );
            tokio::spawn(async move {
                let second = next(&mut signals).await;
                tracing::error!(
                    signal = second,
                    "second signal: quitting without finishing the graceful shutdown"
                );
                std::process::exit(FORCED_EXIT_STATUS);
            });
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                std::process::exit(FORCED_EXIT_STATUS);
            });
        })
    }
}
