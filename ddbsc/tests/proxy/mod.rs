//! A loopback HTTP proxy in front of DynamoDB Local, for what DynamoDB Local never does by
//! itself: it can answer each shard iterator's first GetRecords calls with empty pages, run
//! a hook before a request goes on (another writer getting in first), and it records every
//! request it saw.
//!
//! DynamoDB Streams returns empty pages while an iterator walks a part of the shard without
//! records ("it might take multiple calls to get to a portion of the shard that contains
//! stream records"). Everything else, and each iterator's call after its empty pages, goes to
//! DynamoDB Local unchanged, so the records and the conditional writes are real.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The `X-Amz-Target` of GetRecords.
const GET_RECORDS: &str = "DynamoDBStreams_20120810.GetRecords";

/// A request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Request {
    /// The `X-Amz-Target` header, e.g. `DynamoDB_20120810.UpdateItem`.
    pub target: String,
    /// The JSON body.
    pub body: Value,
}

impl Request {
    /// Whether this is `operation` (e.g. `UpdateItem`) of DynamoDB or DynamoDB Streams.
    pub fn is(&self, operation: &str) -> bool {
        self.target.rsplit('.').next() == Some(operation)
    }

    /// The partition key (`pk`) of the item this request names, if any.
    pub fn item_key(&self) -> Option<&str> {
        self.body["Key"]["pk"]["S"].as_str()
    }
}

/// Runs before a request is forwarded; the request waits for the future it returns.
pub type Hook = Arc<dyn Fn(&Request) -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// What the proxy does besides forwarding.
#[derive(Clone, Default)]
pub struct Faults {
    empty_pages: usize,
    before_forward: Option<Hook>,
}

impl Faults {
    /// Every shard iterator's first `n` GetRecords calls get an empty page that hands the
    /// same iterator back.
    pub fn with_empty_pages(mut self, n: usize) -> Self {
        self.empty_pages = n;
        self
    }

    /// `hook` runs before each request is forwarded.
    pub fn with_hook(
        mut self,
        hook: impl Fn(&Request) -> Option<BoxFuture<'static, ()>> + Send + Sync + 'static,
    ) -> Self {
        self.before_forward = Some(Arc::new(hook));
        self
    }
}

/// The proxy; it stops when dropped.
pub struct Proxy {
    endpoint: String,
    accept: JoinHandle<()>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str, faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State {
            upstream: upstream.trim_start_matches("http://").to_owned(),
            faults,
            iterators: Mutex::default(),
            requests: Arc::default(),
        });
        let requests = state.requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve(client, &state).await;
                });
            }
        });
        Self {
            endpoint,
            accept,
            requests,
        }
    }

    /// The `--endpoint` that goes through the proxy.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct State {
    upstream: String,
    faults: Faults,
    /// GetRecords calls per shard iterator.
    iterators: Mutex<HashMap<String, usize>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

/// One client connection: requests one after another (keep-alive) until the client
/// closes it.
async fn serve(client: TcpStream, state: &State) -> std::io::Result<()> {
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
        let request = Request {
            target: header("x-amz-target").unwrap_or_default(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        state.requests.lock().unwrap().push(request.clone());

        if request.target == GET_RECORDS {
            let iterator = request.body["ShardIterator"].as_str().unwrap().to_owned();
            let empty = {
                let mut iterators = state.iterators.lock().unwrap();
                let calls = iterators.entry(iterator.clone()).or_default();
                *calls += 1;
                *calls <= state.faults.empty_pages
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
        let waiting = state
            .faults
            .before_forward
            .as_ref()
            .and_then(|h| h(&request));
        if let Some(waiting) = waiting {
            waiting.await;
        }

        // Forwarded on a connection of its own that the answer closes, so the answer can be
        // relayed byte for byte without understanding its framing.
        let mut forwarded: String = head
            .lines()
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        forwarded.push_str("connection: close\r\n\r\n");
        let mut server = TcpStream::connect(&state.upstream).await?;
        server.write_all(forwarded.as_bytes()).await?;
        server.write_all(&body).await?;
        let mut answer = Vec::new();
        server.read_to_end(&mut answer).await?;
        // The answer is whole (the server closed after it): the client may send its next
        // request on this connection, or close it.
        client.get_mut().write_all(&answer).await?;
    }
}
