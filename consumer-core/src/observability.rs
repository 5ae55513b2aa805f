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
    //! `GET /metrics` and `GET /healthz` over HTTP/1.1, served by hyper. The exporter's own
    //! listener serves only metrics, so the two routes are ours; the HTTP is hyper's.

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::header::{CONTENT_TYPE, HeaderValue};
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::{TokioIo, TokioTimer};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use tokio::net::TcpListener;
    use tokio_util::task::AbortOnDropHandle;

    use super::Health;

    /// A client that has not sent its request head after this long is dropped.
    const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
    /// After a failed accept (e.g. out of file descriptors), wait this long before the next,
    /// rather than spin.
    const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

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
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::debug!(%error, "metrics endpoint: accept failed");
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                        continue;
                    }
                };
                let (handle, health) = (handle.clone(), health.clone());
                let service = hyper::service::service_fn(move |request| {
                    let response = answer(&request, &handle, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                // One request per connection, as scrapers and probes use it.
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
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

    /// The answer to one request.
    fn answer(
        request: &Request<Incoming>,
        handle: &PrometheusHandle,
        health: &Health,
    ) -> Response<Full<Bytes>> {
        let (status, content_type, body) = match (request.method(), request.uri().path()) {
            (&Method::GET, "/metrics") => {
                handle.run_upkeep();
                (StatusCode::OK, "text/plain; version=0.0.4", handle.render())
            }
            (&Method::GET, "/healthz") => match health.check() {
                Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
                Err(reason) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{reason}\n"),
                ),
            },
            (&Method::GET, _) => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "try /metrics or /healthz\n".into(),
            ),
            _ => (StatusCode::BAD_REQUEST, "text/plain", "GET only\n".into()),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
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
