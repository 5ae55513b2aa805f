//! `observability::serve_metrics` on a real socket: what `/metrics` and `/healthz` answer,
//! the answers to other paths and methods, and one request per connection (the server
//! closes after its answer, so a client reading to the end is not left waiting).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dynamodb_streams_consumer::observability::{Health, serve_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `request` as is and reads the answer to the end of the connection, which the
/// server announces it will close.
async fn exchange(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("the server closes the connection after its answer")
        .unwrap();
    let (head, _) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("\r\nconnection: close"),
        "{answer}"
    );
    answer
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n")
}

#[tokio::test]
async fn metrics_health_and_everything_else() {
    let endpoint = serve_metrics("127.0.0.1:0", "w1", Health::default())
        .await
        .unwrap();
    let addr = endpoint.local_addr();
    metrics::counter!("endpoint_test_total").increment(3);

    let page = exchange(addr, &get("/metrics")).await;
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
    assert!(
        page.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4\r\n"),
        "{page}"
    );
    assert!(
        page.contains("endpoint_test_total{worker=\"w1\"} 3"),
        "{page}"
    );

    // A worker that has not confirmed a heartbeat yet: 503 and the one-line reason.
    let health = exchange(addr, &get("/healthz")).await;
    assert!(
        health.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{health}"
    );
    assert!(
        health.ends_with("\r\n\r\nno heartbeat confirmed by the lease table yet\n"),
        "{health}"
    );

    let other = exchange(addr, &get("/")).await;
    assert!(other.starts_with("HTTP/1.1 404 Not Found\r\n"), "{other}");
    assert!(other.ends_with("try /metrics or /healthz\n"), "{other}");

    let post = "POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n";
    let refused = exchange(addr, post).await;
    assert!(
        refused.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{refused}"
    );
    assert!(refused.ends_with("GET only\n"), "{refused}");
}
