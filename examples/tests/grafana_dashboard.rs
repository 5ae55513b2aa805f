//! The Grafana dashboard (`docs/grafana/ddb-stream-consumer.json`) queries only metrics the
//! exporter serves.
//!
//! Every PromQL expression of the dashboard (panels and template variables, with Grafana's
//! `$variables` replaced by sample values) must parse (`promql-parser`), and every metric
//! it names must appear on the `/metrics` page of real `jsonl-worker` processes against
//! DynamoDB Local. Counters appear on the page once their event happened, so the workers are
//! driven through each event the dashboard shows: records processed in batches, a record
//! that fails (one retry, then the on-failure file), DynamoDB Streams calls failing (the
//! first worker reaches DynamoDB Local through a TCP forwarder that the test cuts for a
//! moment: GetRecords fails with transport errors and is retried), and a second worker
//! joining (the first, which took both leases at start, hands one over and releases it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_integration_tests::workers::{Worker, lease_counts};
use dynamodb_streams_integration_tests::{
    create_table, dynamodb_client, endpoint, http, unique_name, wait_for,
};
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_jsonl-worker");
const DASHBOARD: &str = include_str!("../../docs/grafana/ddb-stream-consumer.json");
/// How long any one phase may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// Grafana's variables as a query sees them after substitution: sample values.
const VARIABLES: [(&str, &str); 6] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "1m"),
    ("${stream}", ".*"),
    ("$stream", ".*"),
    ("${worker}", ".*"),
    ("$worker", ".*"),
];

/// Every PromQL expression of the dashboard: panel targets, and the metric queries of its
/// template variables (`label_values(METRIC{...}, LABEL)` -> `METRIC{...}`), each with
/// where it is.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("every target has an expr");
            queries.push((format!("panel {:?}", panel["title"]), expr.to_owned()));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable["query"]["query"]
            .as_str()
            .expect("a variable query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|rest| rest.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| panic!("not label_values(METRIC, LABEL): {query}"));
        queries.push((format!("variable {:?}", variable["name"]), inner.to_owned()));
    }
    queries
}

/// Collects the metric names of every selector in an expression.
struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(matrix) => &matrix.vs,
            _ => return Ok(true),
        };
        let name = selector.name.clone().or_else(|| {
            selector
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__")
                .map(|m| m.value.clone())
        });
        match name {
            Some(name) => {
                self.0.insert(name);
                Ok(true)
            }
            None => Err(format!("a selector without a metric name: {selector}")),
        }
    }
}

/// The metric names the dashboard queries; panics naming a query that does not parse.
fn dashboard_metrics() -> BTreeSet<String> {
    let mut names = MetricNames(BTreeSet::new());
    for (place, query) in dashboard_queries() {
        let mut expr = query.clone();
        for (variable, value) in VARIABLES {
            expr = expr.replace(variable, value);
        }
        assert!(!expr.contains('$'), "{place}: unknown variable in {query}");
        let parsed =
            parser::parse(&expr).unwrap_or_else(|e| panic!("{place}: not PromQL ({e}): {expr}"));
        walk_expr(&mut names, &parsed).unwrap_or_else(|e| panic!("{place}: {e}"));
    }
    names.0
}

/// The metric names on a Prometheus text page.
fn served_metrics(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_parses_and_is_well_formed() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).unwrap();
    let names = dashboard_metrics();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(name.starts_with("ddb_stream_"), "not one of ours: {name}");
    }
    // Panels: unique ids, inside the 24-column grid, every query on the chosen data source.
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = &panel["title"];
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(x + w <= 24, "{title} leaves the grid");
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
            assert!(
                panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                "{title} says what it shows"
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            }
        }
    }
    assert_eq!(dashboard["uid"], "ddb-stream-consumer");
}

/// A TCP forwarder in front of DynamoDB Local that the test can cut: while cut, it closes
/// every open connection and every new one at once, so requests fail as transport errors.
struct Forwarder {
    addr: String,
    cut: watch::Sender<bool>,
}

impl Forwarder {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (cut, watch_cut) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watch_cut = watch_cut.clone();
                if *watch_cut.borrow() {
                    continue; // dropped: closed at once
                }
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch_cut.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Scrapes `addr` until `done` holds for the page; returns it.
async fn scrape_until(addr: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let answer = http::get(addr, "/metrics", Duration::from_secs(10)).await;
        if let Ok(Some((200, page))) = &answer
            && done(page)
        {
            return page.clone();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; the last answer: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn has(page: &str, name: &str) -> bool {
    served_metrics(page).contains(name)
}

async fn put(table: &str, id: &str, n: &str) {
    dynamodb_client()
        .await
        .put_item()
        .table_name(table)
        .item("id", AttributeValue::S(id.into()))
        .item("n", AttributeValue::S(n.into()))
        .send()
        .await
        .unwrap();
}

/// `jsonl-worker` with metrics on a free port, through `endpoint`: the worker and its
/// metrics address.
fn start_worker(id: &str, app: &str, tables: &[String], endpoint: &str) -> (Worker, String) {
    let metrics = http::free_local_addr();
    let failures = std::env::temp_dir().join(format!("{app}-{id}-failed.jsonl"));
    let mut args: Vec<String> = [
        "--worker-id",
        id,
        "--app",
        app,
        "--endpoint",
        endpoint,
        "--metrics-addr",
        &metrics,
        "--fail-when",
        "n=poison",
        "--max-retries",
        "1",
        "--on-failure",
        failures.to_str().unwrap(),
    ]
    .map(String::from)
    .into();
    for table in tables {
        args.extend(["--table".into(), table.clone()]);
    }
    let worker = Worker::spawn(WORKER_BIN.as_ref(), id, &format!("{app}-{id}"), &args);
    (worker, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_served_by_a_worker() {
    let wanted = dashboard_metrics();
    let app = unique_name("grafana");
    let tables = [unique_name("grafana-a"), unique_name("grafana-b")];
    let local = endpoint();
    let forwarder = Forwarder::start(local.trim_start_matches("http://").to_owned()).await;
    for table in &tables {
        create_table(table, "id", true).await;
        put(table, "ok", "1").await;
        put(table, "bad", "poison").await;
    }
    let (_w1, m1) = start_worker("w1", &app, &tables, &format!("http://{}", forwarder.addr));
    // Records after the poison one: processed in whole batches once it is given up.
    for table in &tables {
        put(table, "after", "2").await;
    }

    // Batches processed, a record failed once and then given up, checkpoints, lag gauges.
    scrape_until(
        &m1,
        "w1 processing and giving up the poison records",
        |page| {
            [
                "ddb_stream_records_processed_total",
                "ddb_stream_records_failed_total",
                "ddb_stream_processing_failures_total",
                "ddb_stream_last_checkpoint_timestamp_seconds",
                "ddb_stream_millis_behind_latest",
            ]
            .iter()
            .all(|name| has(page, name))
        },
    )
    .await;

    // DynamoDB Streams calls fail while the link is cut, and are retried.
    forwarder.set_cut(true);
    scrape_until(&m1, "w1 retrying DynamoDB Streams calls", |page| {
        has(page, "ddb_stream_api_retries_total")
    })
    .await;
    forwarder.set_cut(false);

    // A second worker joins: w1 hands one lease over (released), w2 takes it.
    let (_w2, m2) = start_worker("w2", &app, &tables, &local);
    let split = [("w1".to_owned(), 1), ("w2".to_owned(), 1)].into();
    wait_for("a lease handed to w2", DEADLINE, async || {
        lease_counts(&app).await == split
    })
    .await;
    let page1 = scrape_until(&m1, "w1 releasing a lease", |page| {
        has(page, "ddb_stream_leases_released_total")
    })
    .await;
    let page2 = scrape_until(&m2, "w2's metrics", |page| {
        has(page, "ddb_stream_leases_owned")
    })
    .await;

    let served: BTreeSet<String> = served_metrics(&page1)
        .union(&served_metrics(&page2))
        .cloned()
        .collect();
    let missing: Vec<&String> = wanted.difference(&served).collect();
    println!("the dashboard queries {} metrics: {wanted:?}", wanted.len());
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no worker serves: {missing:?}\nserved: {served:?}"
    );
}
