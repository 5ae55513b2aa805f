//! Named pipelines against DynamoDB Local (issue 19): three pipelines over one table, one
//! failing on a poison record (retries, then the on-failure handler), one slow; the other
//! two deliver every record while the slow one is still behind; the shard is read as often
//! as by a single consumer (GetRecords counted); a crash and a restart keep each pipeline's
//! position.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use dynamodb_streams_consumer::streams::{ApiError, RecordsPage, SdkStreams, StreamsApi};
use dynamodb_streams_consumer::{
    BatchFailure, BoxError, ChangeBatch, Checkpointer, FailedRecords, FailureHandler,
    ProcessorFactory, RecordProcessor, ShardContext,
};
use dynamodb_streams_integration_tests::{
    create_table, put_count as put, quick_consumer, sdk_config, spawn_consumer, unique_name,
    wait_for,
};
use dynamodb_streams_leases::{DynamoDbLeaseStore, Lease, LeaseStore};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
struct Counter {
    name: String,
}

/// Counts GetRecords calls.
#[derive(Debug)]
struct Counting {
    inner: SdkStreams,
    get_records: Arc<AtomicU64>,
}

#[async_trait]
impl dynamodb_streams_consumer::streams::StreamsWrapper for Counting {
    type Inner = SdkStreams;

    fn wrapped(&self) -> &SdkStreams {
        &self.inner
    }

    async fn get_records(&self, iterator: &str, limit: u32) -> Result<RecordsPage, ApiError> {
        self.get_records.fetch_add(1, Ordering::SeqCst);
        self.inner.get_records(iterator, limit).await
    }
}

/// The item names one pipeline was given, in order, and those its handler took.
#[derive(Clone, Default)]
struct Log {
    delivered: Arc<Mutex<Vec<String>>>,
    failed: Arc<Mutex<Vec<String>>>,
}

impl Log {
    fn names(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }
    fn has_all(&self, names: &[String]) -> bool {
        let delivered = self.names();
        names.iter().all(|n| delivered.contains(n))
    }
}

struct Tester {
    log: Log,
    fails_on_poison: bool,
    delay: Duration,
}

#[async_trait]
impl RecordProcessor for Tester {
    type Item = Counter;

    async fn process(
        &mut self,
        batch: ChangeBatch<Counter>,
        _: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        tokio::time::sleep(self.delay).await;
        for change in &batch.changes {
            let name = change
                .new
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_default();
            if self.fails_on_poison && name == "poison" {
                let seq = change.sequence_number.clone();
                return Err(BatchFailure::at(seq, "poison").into());
            }
            self.log.delivered.lock().unwrap().push(name);
        }
        Ok(())
    }
}

fn tester(log: &Log, fails_on_poison: bool, delay: Duration) -> impl ProcessorFactory + use<> {
    let log = log.clone();
    move |_: &ShardContext| Tester {
        log: log.clone(),
        fails_on_poison,
        delay,
    }
}

struct Collect(Log);

#[async_trait]
impl FailureHandler for Collect {
    async fn handle(&self, failed: &FailedRecords) -> Result<(), BoxError> {
        let mut taken = self.0.failed.lock().unwrap();
        for record in &failed.records {
            let image = record.dynamodb().and_then(|d| d.new_image.as_ref());
            if let Some(aws_sdk_dynamodbstreams::types::AttributeValue::S(name)) =
                image.and_then(|i| i.get("name"))
            {
                taken.push(name.clone());
            }
        }
        Ok(())
    }
}

async fn put_items(table: &str, names: &[String]) {
    for (i, name) in names.iter().enumerate() {
        put(table, name, AttributeValue::N(i.to_string())).await;
    }
}

async fn the_lease(app: &str) -> Lease {
    let store = DynamoDbLeaseStore::from_sdk_config(&sdk_config().await, app).unwrap();
    store
        .list_leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| !l.key.is_coordination())
        .expect("a shard lease")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pipelines_one_read_a_poison_and_a_slow_one_and_positions_kept_across_a_crash() {
    let (table, app, single_app) = (
        unique_name("orders"),
        unique_name("app"),
        unique_name("single"),
    );
    create_table(&table, "name", true).await;
    let config = sdk_config().await;
    let mut first: Vec<String> = (0..20).map(|i| format!("item-{i:02}")).collect();
    first.push("poison".into());
    first.extend((20..40).map(|i| format!("item-{i:02}")));
    put_items(&table, &first).await;

    let counted = |reads: &Arc<AtomicU64>| {
        Arc::new(Counting {
            inner: SdkStreams::from_sdk_config(&config),
            get_records: reads.clone(),
        })
    };
    let (pipeline_reads, single_reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (search, audit, slow, single) = (
        Log::default(),
        Log::default(),
        Log::default(),
        Log::default(),
    );
    let pipelines = quick_consumer(&app, &table, &config)
        .with_streams_api(counted(&pipeline_reads))
        .with_batch_limit(5)
        .with_max_retries(2)
        .with_on_failure(Collect(audit.clone()))
        .with_pipeline("search", tester(&search, false, Duration::ZERO))
        .with_pipeline("audit", tester(&audit, true, Duration::ZERO))
        .with_pipeline("slow", tester(&slow, false, Duration::from_millis(400)))
        .build_pipelines()
        .unwrap();
    let one = quick_consumer(&single_app, &table, &config)
        .with_streams_api(counted(&single_reads))
        .with_batch_limit(5)
        .build(tester(&single, false, Duration::ZERO))
        .unwrap();
    let (stop_pipelines, pipelines_task) = spawn_consumer(pipelines);
    let (stop_single, single_task) = spawn_consumer(one);

    let without_poison: Vec<String> = first.iter().filter(|n| *n != "poison").cloned().collect();
    wait_for("search and audit", Duration::from_secs(60), async || {
        search.has_all(&first) && audit.has_all(&without_poison)
    })
    .await;
    assert!(
        !slow.has_all(&first),
        "the slow pipeline is still behind while the others are done"
    );
    assert_eq!(search.names(), first, "every record once, in order");
    assert_eq!(audit.names(), without_poison);
    assert_eq!(*audit.failed.lock().unwrap(), vec!["poison".to_owned()]);
    wait_for("the slow pipeline", Duration::from_secs(60), async || {
        slow.has_all(&first) && single.has_all(&first)
    })
    .await;
    assert_eq!(slow.names(), first);
    stop_pipelines.send(()).unwrap();
    stop_single.send(()).unwrap();
    pipelines_task.await.unwrap().unwrap();
    single_task.await.unwrap().unwrap();
    let (shared, alone) = (
        pipeline_reads.load(Ordering::SeqCst),
        single_reads.load(Ordering::SeqCst),
    );
    println!("GetRecords: three pipelines {shared}, one consumer {alone}");
    // Both polled the same shard for the same time; idle polls back off alike. A read per
    // pipeline would be three times one consumer's.
    assert!(
        shared <= alone + alone / 4 + 2,
        "three pipelines made {shared} GetRecords calls, one consumer {alone}"
    );
    let lease = the_lease(&app).await;
    let last = &lease.pipelines["search"];
    for name in ["audit", "slow"] {
        assert_eq!(
            &lease.pipelines[name], last,
            "{name} checkpointed the last record"
        );
    }
    assert_eq!(&lease.checkpoint, last);

    // Crash: "slow" is behind when the worker dies; after a restart each pipeline goes on
    // from its own checkpoint.
    let second: Vec<String> = (0..12).map(|i| format!("more-{i:02}")).collect();
    let (search2, audit2, slow2) = (Log::default(), Log::default(), Log::default());
    let crashing = quick_consumer(&app, &table, &config)
        .with_batch_limit(3)
        .with_failover_time(Duration::from_secs(3))
        .with_pipeline("search", tester(&search2, false, Duration::ZERO))
        .with_pipeline("audit", tester(&audit2, false, Duration::ZERO))
        .with_pipeline("slow", tester(&slow2, false, Duration::from_secs(2)))
        .build_pipelines()
        .unwrap();
    let (_never, crashed) = spawn_consumer(crashing);
    put_items(&table, &second).await;
    wait_for(
        "search and audit, second part",
        Duration::from_secs(60),
        async || search2.has_all(&second) && audit2.has_all(&second),
    )
    .await;
    crashed.abort();
    let _ = crashed.await;
    let slow_before = slow2.names();
    assert!(
        slow_before.len() < second.len(),
        "slow was behind at the crash"
    );

    let (search3, audit3, slow3) = (Log::default(), Log::default(), Log::default());
    let restarted = quick_consumer(&app, &table, &config)
        .with_failover_time(Duration::from_secs(3))
        .with_pipeline("search", tester(&search3, false, Duration::ZERO))
        .with_pipeline("audit", tester(&audit3, false, Duration::ZERO))
        .with_pipeline("slow", tester(&slow3, false, Duration::ZERO))
        .build_pipelines()
        .unwrap();
    let (stop, task) = spawn_consumer(restarted);
    let rest: Vec<String> = second[slow_before.len()..].to_vec();
    wait_for(
        "slow after the restart",
        Duration::from_secs(60),
        async || slow3.has_all(&rest),
    )
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    // Nothing from before the crash's batches comes again; a pipeline that was done gets at
    // most its last unflushed batch again.
    for (name, log) in [("search", &search3), ("audit", &audit3), ("slow", &slow3)] {
        for item in log.names() {
            assert!(
                item.starts_with("more-"),
                "{name} got {item} again after the restart"
            );
        }
    }
    assert!(search3.names().len() <= 3, "search: {:?}", search3.names());
    assert!(
        slow3.names().len() <= rest.len() + 3,
        "slow resumed at its own checkpoint: {:?} (had {:?})",
        slow3.names(),
        slow_before
    );
    let lease = the_lease(&app).await;
    assert_eq!(lease.pipelines["search"], lease.pipelines["slow"]);
}
