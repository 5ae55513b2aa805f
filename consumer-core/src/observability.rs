//! What operators watch: a worker's health (for `/healthz`), the stream label of its
//! metrics, and, with the `prometheus` feature, an HTTP endpoint serving `/metrics` and
//! `/healthz`.
//!
//! Metrics go through the `metrics` facade, so any recorder works; [`serve_metrics`] is a
//! small helper for the common case. Labels stay bounded: the stream (table name) and,
//! through the endpoint's global label, the worker; never shard ids unless
//! `ConsumerBuilder::with_per_shard_metrics` asks for them. See the README's "Operating it"
//! for the list of metrics.

use std::sync::{Arc, Mutex, PoisonError};

use crate::lag::LagTracker;

/// Whether a worker is healthy: it has confirmed a heartbeat with the lease table and is
/// not fenced. Clones share the state; get it with [`crate::Consumer::health`].
#[derive(Clone, Debug)]
pub struct Health {
    state: Arc<Mutex<HealthState>>,
}

/// Where a worker is in its life, as `/healthz` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HealthState {
    Starting,
    Ready,
    Fenced,
    Stopped,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Arc::new(Mutex::new(HealthState::Starting)),
        }
    }
}

impl Health {
    /// `Ok` while healthy; else the one-line reason (what `/healthz` answers with 503).
    pub fn check(&self) -> Result<(), String> {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            HealthState::Ready => Ok(()),
            HealthState::Starting => Err("no heartbeat confirmed by the lease table yet".into()),
            HealthState::Fenced => Err(
                "fenced: no heartbeat confirmed in time; every shard stopped until a new \
                 incarnation's heartbeat is confirmed"
                    .into(),
            ),
            HealthState::Stopped => Err("stopped (shut down)".into()),
        }
    }

    fn set(&self, state: HealthState) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    /// A heartbeat of the current incarnation was confirmed.
    pub(crate) fn heartbeat_confirmed(&self) {
        self.set(HealthState::Ready);
    }

    /// The worker fenced itself.
    pub(crate) fn fenced(&self) {
        self.set(HealthState::Fenced);
    }

    /// The worker is shutting down or stopped.
    pub(crate) fn stopped(&self) {
        self.set(HealthState::Stopped);
    }
}

/// What a worker and its shard consumers report to operators: health and lag.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    pub health: Health,
    pub lag: Arc<LagTracker>,
}

impl Telemetry {
    /// `per_shard` adds per-shard lag series.
    pub(crate) fn new(health: Health, per_shard: bool) -> Self {
        Self {
            health,
            lag: Arc::new(LagTracker::new(per_shard)),
        }
    }
}

pub use crate::stream_arn::{stream_label, table_of_stream};

#[cfg(feature = "prometheus")]
pub use endpoint::{MetricsEndpoint, serve_metrics};

#[cfg(feature = "prometheus")]
mod endpoint {
    //! A minimal HTTP/1.1 server: `GET /metrics` and `GET /healthz`, one request per
    //! connection. The exporter's own listener serves only metrics, and a full HTTP stack
    //! for two fixed answers would be most of the build.

    use std::net::SocketAddr;
    use std::time::Duration;

    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::task::AbortOnDropHandle;

    use super::Health;

    /// A request head longer than this is refused.
    const MAX_REQUEST: usize = 8 * 1024;
    /// A client that sends nothing for this long is dropped.
    const READ_TIMEOUT: Duration = Duration::from_secs(5);

    /// The running endpoint; dropping it stops serving.
    #[derive(Debug)]
    pub struct MetricsEndpoint {
        addr: SocketAddr,
        _server: AbortOnDropHandle<()>,
    }

    impl MetricsEndpoint {
        /// Where it listens (the real port when `:0` was asked for).
        pub fn local_addr(&self) -> SocketAddr {
            self.addr
        }
    }

    /// Installs a Prometheus recorder as this process's metrics recorder, with the global
    /// label `worker` = `worker_id` (one series per worker, bounded), and serves
    /// `/metrics` and `/healthz` (200 `ok`, or 503 with the reason of [`Health::check`])
    /// on `addr` (`HOST:PORT`).
    ///
    /// Fails when the address cannot be bound, or another recorder is installed already.
    pub async fn serve_metrics(
        addr: &str,
        worker_id: &str,
        health: Health,
    ) -> std::io::Result<MetricsEndpoint> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let local = listener.local_addr()?;
        let handle = PrometheusBuilder::new()
            .add_global_label("worker", worker_id)
            .install_recorder()
            .map_err(|e| std::io::Error::other(format!("cannot install the recorder: {e}")))?;
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handle, health) = (handle.clone(), health.clone());
                tokio::spawn(async move {
                    if let Err(error) = answer(stream, &handle, &health).await {
                        tracing::debug!(%error, "metrics request failed");
                    }
                });
            }
        });
        tracing::info!(addr = %local, "serving /metrics and /healthz");
        Ok(MetricsEndpoint {
            addr: local,
            _server: AbortOnDropHandle::new(server),
        })
    }

    async fn answer(
        mut stream: TcpStream,
        handle: &PrometheusHandle,
        health: &Health,
    ) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            if n == 0 || head.len() + n > MAX_REQUEST {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let line = String::from_utf8_lossy(&head);
        let mut parts = line.split_whitespace();
        let (status, content_type, body) = match (parts.next(), parts.next()) {
            (Some("GET"), Some("/metrics")) => {
                handle.run_upkeep();
                ("200 OK", "text/plain; version=0.0.4", handle.render())
            }
            (Some("GET"), Some("/healthz")) => match health.check() {
                Ok(()) => ("200 OK", "text/plain", "ok\n".to_owned()),
                Err(reason) => (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("{reason}\n"),
                ),
            },
            (Some("GET"), _) => (
                "404 Not Found",
                "text/plain",
                "try /metrics or /healthz\n".into(),
            ),
            _ => ("400 Bad Request", "text/plain", "GET only\n".into()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_worker() {
        let health = Health::default();
        assert!(health.check().unwrap_err().contains("no heartbeat"));
        health.heartbeat_confirmed();
        assert_eq!(health.check(), Ok(()));
        health.fenced();
        assert!(health.check().unwrap_err().starts_with("fenced"));
        health.heartbeat_confirmed();
        assert_eq!(health.check(), Ok(()));
        health.stopped();
        assert!(health.check().is_err());
    }
}
