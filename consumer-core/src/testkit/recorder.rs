//! [`Recording`]: a processor factory whose processors keep every change they are
//! delivered (and every data loss and decode failure they are told of), so a test can check
//! the delivery invariants over every record afterwards.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;

use crate::change::{Change, ChangeBatch, ChangeKind};
use crate::checkpointer::Checkpointer;
use crate::error::{BoxError, Error};
use crate::processor::{DataLoss, ProcessorFactory, RecordProcessor, ShardContext};

/// One delivered change, with the shard and worker it was delivered to.
#[derive(Clone, Debug)]
pub struct Delivered<T> {
    /// The processor's shard, worker and lease.
    pub shard: Arc<ShardContext>,
    /// The change.
    pub change: Change<T>,
}

/// Runs before a batch is recorded; an error fails the batch (it is not recorded). Gets the
/// shard, the batch and how many batches this processor was given before it.
pub type BatchHook<T> = Arc<
    dyn Fn(&ShardContext, &ChangeBatch<T>, u64) -> BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync,
>;

struct Log<T> {
    delivered: Vec<Delivered<T>>,
    losses: Vec<DataLoss>,
    decode_errors: Vec<String>,
}

/// What every processor of its [`factory`](Recording::factory) was delivered, in delivery
/// order. Clones share the recording.
pub struct Recording<T> {
    log: Arc<Mutex<Log<T>>>,
    hook: Option<BatchHook<T>>,
}

impl<T> Clone for Recording<T> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            hook: self.hook.clone(),
        }
    }
}

impl<T> Default for Recording<T> {
    fn default() -> Self {
        Self {
            log: Arc::new(Mutex::new(Log {
                delivered: Vec::new(),
                losses: Vec::new(),
                decode_errors: Vec::new(),
            })),
            hook: None,
        }
    }
}

impl<T> Recording<T> {
    /// How many changes were delivered so far (redeliveries included).
    pub fn len(&self) -> usize {
        self.log().delivered.len()
    }

    /// Whether nothing was delivered yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn log(&self) -> MutexGuard<'_, Log<T>> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T> fmt::Debug for Recording<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recording")
            .field("delivered", &self.len())
            .finish_non_exhaustive()
    }
}

impl<T: Clone + DeserializeOwned + Send + Sync + 'static> Recording<T> {
    /// An empty recording.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same recording, with `hook` run before each batch is recorded (to slow a
    /// processor down, check what it may do, or fail a batch).
    pub fn with_hook(
        mut self,
        hook: impl Fn(&ShardContext, &ChangeBatch<T>, u64) -> BoxFuture<'static, Result<(), BoxError>>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// A factory whose processors record into this recording.
    pub fn factory(&self) -> impl ProcessorFactory + use<T> {
        let recording = self.clone();
        move |shard: &ShardContext| Recorder {
            shard: Arc::new(shard.clone()),
            recording: recording.clone(),
            batches: 0,
        }
    }

    /// Every delivery so far, in order.
    pub fn delivered(&self) -> Vec<Delivered<T>> {
        self.log().delivered.clone()
    }

    /// The new (or, for removes, old) image of every delivery so far, in order.
    pub fn images(&self) -> Vec<T> {
        self.log()
            .delivered
            .iter()
            .filter_map(|d| d.change.new.as_ref().or(d.change.old.as_ref()).cloned())
            .collect()
    }

    /// Whether some stream change was delivered and every snapshot change came before
    /// every stream change (the order `with_snapshot` promises).
    pub fn snapshot_before_stream(&self) -> bool {
        let log = self.log();
        let is_snapshot = |d: &Delivered<T>| d.change.kind == ChangeKind::Snapshot;
        match log.delivered.iter().position(|d| !is_snapshot(d)) {
            Some(first_stream) => !log.delivered[first_stream..].iter().any(is_snapshot),
            None => false,
        }
    }

    /// Every data loss reported so far.
    pub fn losses(&self) -> Vec<DataLoss> {
        self.log().losses.clone()
    }

    /// Every decode failure reported so far, as text.
    pub fn decode_errors(&self) -> Vec<String> {
        self.log().decode_errors.clone()
    }
}

/// The processor of one shard, recording into a [`Recording`].
struct Recorder<T> {
    shard: Arc<ShardContext>,
    recording: Recording<T>,
    /// Batches given to `process` so far (recorded or not).
    batches: u64,
}

#[async_trait]
impl<T: Clone + DeserializeOwned + Send + Sync + 'static> RecordProcessor for Recorder<T> {
    type Item = T;

    async fn process(
        &mut self,
        batch: ChangeBatch<T>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        let before = self.batches;
        self.batches += 1;
        if let Some(hook) = &self.recording.hook {
            hook(&self.shard, &batch, before).await?;
        }
        let mut log = self.recording.log();
        log.delivered
            .extend(batch.changes.into_iter().map(|change| Delivered {
                shard: self.shard.clone(),
                change,
            }));
        Ok(())
    }

    async fn data_lost(&mut self, loss: &DataLoss) {
        self.recording.log().losses.push(loss.clone());
    }

    async fn decode_failed(&mut self, error: &Error) {
        self.recording.log().decode_errors.push(error.to_string());
    }
}
