//! A bare HTTP/1.1 GET for the tests that scrape a worker's `/metrics` and `/healthz`
//! (`jsonl-worker --metrics-addr`): no client library, one request per connection.

// Test support: a panic is how a test fails (every panic says what went wrong).
#![allow(clippy::expect_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A loopback address with a port that was free a moment ago, for `--metrics-addr`.
///
/// # Panics
///
/// When no loopback port can be bound.
pub fn free_local_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port();
    format!("127.0.0.1:{port}")
}

/// `GET path` on `addr`: the status code and body; `Ok(None)` if nothing listens or the
/// answer is not HTTP; `Err` if the endpoint did not answer within `limit` (a stalled
/// server is a failure, not a hang).
pub async fn get(addr: &str, path: &str, limit: Duration) -> Result<Option<(u16, String)>, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let code = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, body.to_owned()))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| format!("GET {path} on {addr}: no answer within {limit:?}"))
}
