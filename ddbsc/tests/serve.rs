//! `ddbsc serve` in a real browser (Debian's chromium, driven through chromedriver with
//! fantoccini) against real `jsonl-worker` processes and DynamoDB Local: the page shows
//! both workers alive with their leases; after one is SIGKILLed it shows that worker dead
//! and its leases moved to the survivor. The test reads what the page renders (the text of
//! its cells), so a page that shows a dead worker as alive fails it. It also checks that
//! `/api/status` is `ddbsc status --json`, and that the page and the server offer no write.
//!
//! Needs `DYNAMODB_ENDPOINT` (scripts/dynamodb-local.sh) and chromium with chromedriver
//! (`scripts/browser.sh install`; `make test` runs both). The `jsonl-worker` binary is
//! taken from this build's target folder, built there by `make test`'s workspace build (or
//! built here when missing). A screenshot of the page with the dead worker goes to
//! `target/ddbsc-serve.png`; with `DDBSC_SCREENSHOT=PATH` (`make screenshot`) also to PATH.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{
    Worker, WorkerConfig, jsonl_worker_next_to, lease_counts, run_to_exit, tail,
};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, http, unique_name, wait_for,
};
use fantoccini::{Client, ClientBuilder};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const DDBSC: &str = env!("CARGO_BIN_EXE_ddbsc");
/// How long any one phase may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// Tables (one shard each on DynamoDB Local): two leases per worker.
const TABLES: usize = 4;
/// The workers' failover time; heartbeats every third of it (2 s).
const FAILOVER: &str = "6s";
/// The page's liveness window: above the heartbeat interval plus a refresh, below the
/// failover time, so the page calls a killed worker dead before the survivor takes over.
const ALIVE_WITHIN: &str = "4s";

/// What the page shows, read from the rendered text of its cells.
#[derive(Debug, Deserialize)]
struct View {
    workers: Vec<WorkerRow>,
    shards: Vec<ShardRow>,
    summary: Vec<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct WorkerRow {
    id: String,
    state: String,
    leases: String,
}

#[derive(Debug, Deserialize)]
struct ShardRow {
    table: String,
    owner: String,
    lag: String,
}

/// Collects a [`View`] in the browser (`innerText`: what a person sees).
const READ_VIEW: &str = r##"
const text = (root, css) => { const n = root.querySelector(css); return n ? n.innerText.trim() : ""; };
const error = document.getElementById("error");
return {
  workers: [...document.querySelectorAll("#workers-body tr")].map((tr) => ({
    id: text(tr, ".id"), state: text(tr, ".state"), leases: text(tr, ".leases"),
  })),
  shards: [...document.querySelectorAll("#tables .table-block")].flatMap((block) =>
    [...block.querySelectorAll("tbody tr")].map((tr) => ({
      table: block.dataset.table, owner: text(tr, ".owner"), lag: text(tr, ".lag"),
    }))),
  summary: [...document.querySelectorAll("#summary li")].map((li) => li.innerText.trim()),
  error: error.hidden ? null : error.innerText,
};
"##;

impl View {
    fn worker(&self, prefix: &str) -> Option<&WorkerRow> {
        self.workers.iter().find(|w| w.id.starts_with(prefix))
    }

    /// Shard rows whose owner cell names `prefix`'s worker.
    fn owned_by(&self, prefix: &str) -> usize {
        self.shards
            .iter()
            .filter(|s| s.owner.starts_with(prefix))
            .count()
    }
}

/// A binary from `$VAR`, or `name` on PATH.
fn find_binary(var: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(var) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (set {var}, or run scripts/browser.sh install, which `make \
                 test` does): this test drives a real browser"
            )
        })
}

/// A process killed when dropped, its output in a file shown when the test fails.
struct Process {
    name: &'static str,
    /// Held for `kill_on_drop`.
    _child: Child,
    log: PathBuf,
}

impl Process {
    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

fn log_file(name: &str) -> (PathBuf, std::fs::File) {
    let dir = std::env::temp_dir().join("ddbsc-serve-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

/// Starts `ddbsc serve` on a free port; returns it and the page's address (HOST:PORT), read
/// from the line it prints at start.
async fn start_serve(app: &str) -> (Process, String) {
    let (log, stderr) = log_file(&format!("{app}-serve"));
    let mut child = Command::new(DDBSC)
        .args(["serve", "--app", app, "--addr", "127.0.0.1:0", "--lag"])
        .args(["--refresh", "500ms", "--alive-within", ALIVE_WITHIN])
        .args(["--endpoint", &endpoint()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("start ddbsc serve");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("ddbsc serve prints its address")
        .unwrap()
        .unwrap_or_default();
    let addr = first
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .to_owned();
    (
        Process {
            name: "ddbsc serve",
            _child: child,
            log,
        },
        addr,
    )
}

/// Starts chromedriver on a free port and waits until it answers; returns it and its URL.
async fn start_chromedriver() -> (Process, String) {
    let driver = find_binary("CHROMEDRIVER", "chromedriver");
    let addr = http::free_local_addr();
    let port = addr.rsplit(':').next().unwrap().to_owned();
    let (log, file) = log_file(&unique_name("chromedriver"));
    let child = Command::new(&driver)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver.display()));
    let process = Process {
        name: "chromedriver",
        _child: child,
        log,
    };
    let start = Instant::now();
    loop {
        if let Some((200, _)) = request("GET", &addr, "/status").await {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "chromedriver did not answer:\n{}",
            process.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (process, format!("http://{addr}"))
}

/// A headless chromium session: as root it needs --no-sandbox; the network is closed, so
/// everything that calls home is off; a new empty profile.
async fn open_browser(webdriver: &str, profile: &Path) -> Client {
    let chromium = find_binary("CHROMIUM", "chromium");
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1100",
        &format!("--user-data-dir={}", profile.display()),
    ];
    let capabilities = json!({
        "goog:chromeOptions": { "binary": chromium, "args": args },
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(webdriver)
        .await
        .expect("a chromium session through chromedriver")
}

async fn read_view(browser: &Client) -> View {
    let value = browser.execute(READ_VIEW, vec![]).await.unwrap();
    serde_json::from_value(value).unwrap()
}

/// Reads the page until `done` holds for what it shows; returns that view.
async fn view_until(browser: &Client, what: &str, done: impl Fn(&View) -> bool) -> View {
    let start = Instant::now();
    loop {
        let view = read_view(browser).await;
        if done(&view) {
            return view;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for the page to show {what}; it shows: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `METHOD path` with an empty body: the status code and body, or `None` when
/// nothing listens or the answer is not HTTP.
async fn request(method: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.ok()?;
        let code = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((code, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} on {addr}: no answer within {DEADLINE:?}"))
}

/// The shape of a JSON value: its object keys, recursively (arrays by their first element).
fn shape(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), shape(value)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.first().map(shape).into_iter().collect()),
        _ => Value::Null,
    }
}

/// (shard, owner) of every lease in a status.
fn owners(status: &Value) -> BTreeSet<(String, String)> {
    status["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["shard"].to_string(), l["owner"].to_string()))
        .collect()
}

async fn put(table: &str, id: &str) {
    dynamodb_client()
        .await
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.into()))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_killed_worker_dead_and_its_leases_moved() {
    let app = unique_name("serve");
    let mut tables = Vec::new();
    for i in 0..TABLES {
        let table = unique_name(&format!("serve-t{i}"));
        create_table(&table, "id", true).await;
        put(&table, "first").await;
        tables.push(table);
    }
    let config = WorkerConfig {
        bin: jsonl_worker_next_to(Path::new(DDBSC)),
        app: app.clone(),
        tables: tables.clone(),
        failover_time: Some(FAILOVER.into()),
    };
    let mut w1 = Worker::start("w1", &config);
    let w2 = Worker::start("w2", &config);
    let split = [("w1".to_owned(), 2), ("w2".to_owned(), 2)].into();
    wait_for("two leases per worker", DEADLINE, async || {
        lease_counts(&app).await == split
    })
    .await;

    let (_serve, addr) = start_serve(&app).await;
    let (_driver, webdriver) = start_chromedriver().await;
    let profile = std::env::temp_dir().join(unique_name("chromium-profile"));
    std::fs::create_dir_all(&profile).unwrap();
    let browser = open_browser(&webdriver, &profile).await;
    browser.goto(&format!("http://{addr}/")).await.unwrap();

    // Both alive, two leases each, every shard owned by a live worker.
    let both = view_until(&browser, "two live workers with two leases each", |v| {
        v.workers.len() == 2
            && ["w1#", "w2#"].iter().all(|w| {
                v.worker(w)
                    .is_some_and(|row| row.state == "alive" && row.leases == "2")
            })
            && v.shards.len() == TABLES
            && v.owned_by("w1#") == 2
            && v.owned_by("w2#") == 2
    })
    .await;
    assert_eq!(both.error, None);
    let shown_tables: BTreeSet<&str> = both.shards.iter().map(|s| s.table.as_str()).collect();
    assert_eq!(shown_tables, tables.iter().map(String::as_str).collect());
    assert!(
        both.shards.iter().all(|s| !s.owner.contains("dead")),
        "{both:#?}"
    );
    assert!(
        both.summary.iter().any(|s| s == "2 workers alive"),
        "{both:#?}"
    );

    // /api/status is `ddbsc status --json` (same fields, same owners); read-only.
    let (code, body) = request("GET", &addr, "/api/status")
        .await
        .expect("/api/status answers");
    assert_eq!(code, 200, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    let args: Vec<String> = [
        "status",
        "--app",
        &app,
        "--lag",
        "--json",
        "--endpoint",
        &endpoint(),
    ]
    .map(String::from)
    .into();
    let (status, out, err, _) = run_to_exit(DDBSC.as_ref(), &args, DEADLINE).await;
    assert!(status.success(), "{err}");
    let printed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shape(&served), shape(&printed));
    assert_eq!(owners(&served), owners(&printed));
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for path in ["/", "/api/status"] {
            let answer = request(method, &addr, path).await.map(|(code, _)| code);
            assert_eq!(answer, Some(405), "{method} {path}");
        }
    }
    let controls = browser
        .find_all(fantoccini::Locator::Css(
            "form, button, input, select, textarea",
        ))
        .await
        .unwrap();
    assert!(controls.is_empty(), "the page offers no action");

    // SIGKILL w1 and write to every table: the page calls w1 dead (its shards lag until
    // w2 takes them), then shows its leases with w2.
    w1.kill().await;
    for table in &tables {
        for n in 0..3 {
            put(table, &format!("after-kill-{n}")).await;
        }
    }
    let dead = view_until(&browser, "w1 dead", |v| {
        v.worker("w1#").is_some_and(|row| row.state == "dead")
    })
    .await;
    let screenshot = browser.screenshot().await.unwrap();
    save_screenshot(&screenshot);
    println!("page with w1 dead: {dead:#?}");

    // The leader removes a worker dead for the failover time from membership, so w1's row
    // may be gone by then; while it shows, it is dead and holds nothing.
    let moved = view_until(
        &browser,
        "w1 dead with no lease (or removed), w2 alive with every lease, caught up",
        |v| {
            v.worker("w1#")
                .is_none_or(|row| row.state == "dead" && row.leases == "0")
                && v.worker("w2#")
                    .is_some_and(|row| row.state == "alive" && row.leases == TABLES.to_string())
                && v.owned_by("w2#") == TABLES
                && v.shards.iter().all(|s| s.lag.starts_with("0 behind"))
        },
    )
    .await;
    assert!(
        moved.shards.iter().all(|s| !s.owner.contains("dead")),
        "{moved:#?}"
    );
    assert!(
        moved.summary.iter().any(|s| s == "1 worker alive"),
        "{moved:#?}"
    );
    // The page agrees with the lease table.
    assert_eq!(lease_counts(&app).await, [("w2".to_owned(), TABLES)].into());

    browser.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&profile);
    drop(w2);
}

/// Saves the page's picture to `target/ddbsc-serve.png`, and to `$DDBSC_SCREENSHOT` when set.
fn save_screenshot(png: &[u8]) {
    let target = Path::new(DDBSC)
        .ancestors()
        .find(|dir| dir.ends_with("target"))
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    std::fs::write(target.join("ddbsc-serve.png"), png).unwrap();
    if let Some(path) = std::env::var_os("DDBSC_SCREENSHOT") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}
