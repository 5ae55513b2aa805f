//! A loopback HTTP proxy in front of DynamoDB Local that answers each shard iterator's first
//! GetRecords calls with empty pages.
//!
//! DynamoDB Streams returns empty pages while an iterator walks a part of the shard without
//! records ("it might take multiple calls to get to a portion of the shard that contains
//! stream records"); DynamoDB Local never does. Everything else, and each iterator's call
//! after its empty pages, goes to DynamoDB Local unchanged, so the records are real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The `X-Amz-Target` of GetRecords.
const GET_RECORDS: &str = "DynamoDBStreams_20120810.GetRecords";

/// The proxy; it stops when dropped.
pub struct EmptyPagesProxy {
    endpoint: String,
    accept: JoinHandle<()>,
}

impl EmptyPagesProxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port`);
    /// every shard iterator's first `empty_pages` GetRecords calls get an empty page that
    /// hands the same iterator back.
    pub async fn start(upstream: &str, empty_pages: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, seen) = (upstream.clone(), seen.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, empty_pages, &seen).await;
                });
            }
        });
        Self { endpoint, accept }
    }

    /// The `--endpoint` that goes through the proxy.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for EmptyPagesProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// One client connection: requests one after another (keep-alive) until the client
/// closes it.
async fn serve(
    client: TcpStream,
    upstream: &str,
    empty_pages: usize,
    seen: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    let mut client = BufReader::new(client);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if client.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let end = line == "\r\n";
            head.push_str(&line);
            if end {
                break;
            }
        }
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let length: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
        let mut body = vec![0; length];
        client.read_exact(&mut body).await?;

        if header("x-amz-target").as_deref() == Some(GET_RECORDS) {
            let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let iterator = request["ShardIterator"].as_str().unwrap().to_owned();
            let empty = {
                let mut seen = seen.lock().unwrap();
                let calls = seen.entry(iterator.clone()).or_default();
                *calls += 1;
                *calls <= empty_pages
            };
            if empty {
                let page = serde_json::json!({"Records": [], "NextShardIterator": iterator});
                let page = page.to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\n\
                     content-length: {}\r\nx-amzn-requestid: empty-page\r\n\r\n{page}",
                    page.len()
                );
                client.get_mut().write_all(answer.as_bytes()).await?;
                continue;
            }
        }

        // Forwarded on a connection of its own that the answer closes, so the answer can be
        // relayed byte for byte without understanding its framing.
        let mut forwarded: String = head
            .lines()
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded.push_str("connection: close\r\n\r\n");
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(forwarded.as_bytes()).await?;
        server.write_all(&body).await?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        // The answer is whole (the server closed after it): the client may send its next
        // request on this connection, or close it.
        client.get_mut().write_all(&answer).await?;
    }
}
