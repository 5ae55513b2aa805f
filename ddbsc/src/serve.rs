//! `ddbsc serve`: a read-only page for operators, served with hyper.
//!
//! The page (`ddbsc/assets/`: HTML, JavaScript and CSS, embedded in the binary; no CDN, no
//! inline script) asks `/api/status` every `--refresh` and draws workers, shards, lag,
//! snapshots and pending handoffs from it. `/api/status` is exactly `ddbsc status --json`:
//! both come from [`crate::status::Report`], so there is one way to compute a status.
//!
//! Read-only by construction: the server answers `GET` and `HEAD` only (anything else is
//! 405), and no route writes to the lease table. Readings are shared: a reading younger
//! than `--refresh` is served again, and concurrent requests wait for one reading instead
//! of each starting their own, so ten open pages cost the lease table (and, with `--lag`,
//! the stream's GetRecords limit) what one does.
//!
//! An application whose lease table does not exist is refused at start (exit 1, naming
//! it), as `status` refuses it; a read that fails later (throttling, a network fault) is
//! shown on the page, which keeps the last good reading, marked stale.

use std::sync::Arc;
use std::time::Duration;

use dynamodb_streams_leases::DynamoDbLeaseStore;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::context::Context;
use crate::liveness::LivenessArgs;
use crate::status::Report;
use crate::{Failure, Outcome};

/// The page, its script and its style, embedded at build time.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// A reading that takes longer than this (plus `--observe`) is given up (the page says so
/// and retries).
const READ_LIMIT: Duration = Duration::from_secs(30);

/// A client that has not sent a request head within this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `ddbsc serve --app APP [--addr 127.0.0.1:8080] [--lag]`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The application (its lease table).
    #[arg(long, value_name = "APP")]
    app: String,
    /// Where to listen (HOST:PORT; port 0 picks a free one, printed at start).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:8080")]
    addr: String,
    /// Also read each active shard towards its tip on every refresh (records behind, age of
    /// the oldest unprocessed record), as `status --lag` does.
    #[arg(long)]
    lag: bool,
    /// How often the page refreshes; readings younger than this are shared.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "2s")]
    refresh: Duration,
    /// Liveness as `status` judges it. With `--observe`, every reading watches the
    /// heartbeat counters for that long, so the page refreshes that much slower.
    #[command(flatten)]
    liveness: LivenessArgs,
}

/// What every request shares.
struct Page {
    context: Context,
    store: DynamoDbLeaseStore,
    app: String,
    lag: bool,
    refresh: Duration,
    liveness: LivenessArgs,
    /// The last reading: when it was taken, and the JSON body or the error.
    latest: Mutex<Option<(Instant, Reading)>>,
}

/// A status as `/api/status` answers it.
#[derive(Clone)]
struct Reading {
    status: StatusCode,
    body: Bytes,
}

pub async fn run(context: Context, args: Args) -> Outcome {
    args.liveness.check()?;
    let store = context.lease_store(&args.app).await?;
    let listener = TcpListener::bind(&args.addr)
        .await
        .map_err(|e| Failure(format!("--addr {}: cannot listen: {e}", args.addr)))?;
    let local = listener.local_addr()?;
    let page = Arc::new(Page {
        context,
        store,
        app: args.app,
        lag: args.lag,
        refresh: args.refresh,
        liveness: args.liveness,
        latest: Mutex::new(None),
    });
    page.context.line(format_args!(
        "ddbsc serve: http://{local}/ (application {}, read-only; Ctrl-C stops)",
        page.app
    ))?;

    let stop = stop_signal();
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // A failed accept (e.g. out of file descriptors) ends that client, not the
                // server.
                Err(_) => continue,
            },
            () = &mut stop => return Ok(()),
        };
        let page = page.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let page = page.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&page, request).await) }
            });
            // A connection that breaks or times out only ends itself.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The answer to one request.
async fn answer(page: &Page, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "read-only: GET and HEAD only\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        "/api/settings" => {
            let body = json!({
                "app": page.app,
                "lag": page.lag,
                "refresh_ms": page.refresh.as_millis() as u64,
                "alive_within_ms": page.liveness.alive_within.as_millis() as u64,
                "observe_ms": page.liveness.observe.map(|d| d.as_millis() as u64),
                "version": env!("CARGO_PKG_VERSION"),
            });
            api(StatusCode::OK, Bytes::from(body.to_string()))
        }
        "/api/status" => {
            let reading = page.reading().await;
            api(reading.status, reading.body)
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: the page is at /, its data at /api/status\n",
        ),
    }
}

impl Page {
    /// The last reading if younger than `refresh`, else a new one (one at a time).
    async fn reading(&self) -> Reading {
        let mut latest = self.latest.lock().await;
        if let Some((at, reading)) = latest.as_ref()
            && at.elapsed() < self.refresh
        {
            return reading.clone();
        }
        let read = Report::read(
            &self.context,
            &self.store,
            &self.app,
            self.lag,
            &self.liveness,
        );
        let limit = READ_LIMIT + self.liveness.observe.unwrap_or_default();
        let reading = match tokio::time::timeout(limit, read).await {
            Ok(Ok(report)) => Reading {
                status: StatusCode::OK,
                body: Bytes::from(report.to_json().to_string()),
            },
            Ok(Err(Failure(message))) => unavailable(&self.app, message),
            Err(_) => unavailable(
                &self.app,
                format!(
                    "reading the lease table took more than {}",
                    humantime::format_duration(limit)
                ),
            ),
        };
        *latest = Some((Instant::now(), reading.clone()));
        reading
    }
}

/// A failed reading: 503 and `{"app", "error"}`.
fn unavailable(app: &str, message: String) -> Reading {
    Reading {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from(json!({ "app": app, "error": message }).to_string()),
    }
}

/// An embedded file. The page loads nothing from elsewhere, and the policy says so.
fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A JSON answer that is never cached (it is a reading of now).
fn api(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
