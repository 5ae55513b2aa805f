//! The user's side: a processor per shard, and the factory that makes them.

use std::future::Future;
use std::marker::PhantomData;

use async_trait::async_trait;
use dynamodb_streams_leases::Checkpoint;
use serde::de::DeserializeOwned;

use crate::change::ChangeBatch;
use crate::checkpointer::Checkpointer;
use crate::error::BoxError;

/// The shard a processor is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardContext {
    /// The table whose stream this is, when the consumer was given a table name.
    pub table: Option<String>,
    /// The stream.
    pub stream_arn: String,
    /// The shard.
    pub shard_id: String,
    /// The shards that were finished before this one started.
    pub parent_shard_ids: Vec<String>,
    /// The worker processing it.
    pub worker_id: String,
    /// The lease owner: this worker's current incarnation (`worker_id#suffix`).
    pub lease_owner: String,
    /// The lease's epoch while this processor runs. It grows with every change of owner,
    /// so it works as a fencing token for side effects: a downstream store that keeps the
    /// highest epoch it saw per shard can refuse writes from a worker that lost the shard.
    pub lease_epoch: u64,
    /// The checkpoint processing resumes from.
    pub resumed_from: Checkpoint,
}

/// Records that were trimmed from the stream (older than 24 hours) before this application
/// processed them. Reported, never skipped silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataLoss {
    /// The stream.
    pub stream_arn: String,
    /// The shard.
    pub shard_id: String,
    /// Where we tried to read from (e.g. `AFTER_SEQUENCE_NUMBER 000…42`).
    pub wanted: String,
    /// Where reading went on (`TRIM_HORIZON`: the oldest record still there).
    pub resumed_at: String,
}

/// Processes the changes of one shard, in order.
///
/// The delivery contract is at-least-once: a batch is delivered again (to this processor or,
/// after a crash or a lease move, to another) until `process` returns `Ok` and a checkpoint
/// covers it. With automatic checkpointing (the default) the framework checkpoints after
/// every successful `process`; a processor may also checkpoint itself, part-way through a
/// batch, with the [`Checkpointer`]. Records of one shard are delivered in order, and a shard
/// starts only after its parents ended, so the changes of one item arrive in order.
#[async_trait]
pub trait RecordProcessor: Send + 'static {
    /// The type item images are decoded into (with `serde_dynamo`).
    type Item: DeserializeOwned + Send + Sync + 'static;

    /// Called once before the first batch.
    async fn initialize(&mut self, _shard: &ShardContext) -> Result<(), BoxError> {
        Ok(())
    }

    /// Handles one batch. An error makes the framework deliver the batch again after a pause,
    /// as the failure policy says (`with_max_retries`, `with_bisect_on_error`, the
    /// on-failure handler); without a handler it never skips it. Return a
    /// [`BatchFailure`](crate::BatchFailure) to say that every record before one succeeded
    /// (a partial batch response). The call may be dropped at an `.await` when the lease
    /// is lost, the batch timeout or the shutdown timeout passes: keep side effects
    /// idempotent, as with any at-least-once delivery.
    async fn process(
        &mut self,
        batch: ChangeBatch<Self::Item>,
        checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError>;

    /// The shard has been read to its end and every batch processed. The framework writes
    /// `SHARD_END` afterwards (no need to checkpoint here) and starts the children.
    async fn shard_ended(&mut self, _checkpointer: &mut Checkpointer) -> Result<(), BoxError> {
        Ok(())
    }

    /// The worker is shutting down (or handing the shard to another worker): flush what you
    /// buffer. The framework flushes checkpoints and releases the lease afterwards.
    async fn shutdown_requested(
        &mut self,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// Another worker owns the shard now: checkpoints would be rejected. Drop buffered work.
    async fn lease_lost(&mut self) {}

    /// Records of this shard were trimmed before they were processed; reading went on at the
    /// oldest record still there (the default [`TrimmedDataPolicy`](crate::TrimmedDataPolicy)).
    async fn data_lost(&mut self, _loss: &DataLoss) {}

    /// A record's image does not decode into [`Self::Item`]. The records before it were
    /// delivered; the shard is held at this record (never skipped) until a worker whose
    /// item type fits it takes over. Called again each time the framework retries.
    async fn decode_failed(&mut self, _error: &crate::Error) {}

    /// Records of this shard leave the normal path (see
    /// [`FailureReason`](crate::FailureReason)) and go to the on-failure handler; the
    /// checkpoint moves past them once it accepted them. For the processor's own
    /// bookkeeping: the framework already logged and counted them.
    async fn records_failed(&mut self, _failed: &crate::FailedRecords) {}

    /// Records of this shard the filter ([`with_filter`](crate::ConsumerBuilder::with_filter))
    /// left out, in stream order: never delivered, checkpointed past once this returned (and
    /// the records around them were processed). For the processor's own bookkeeping (count,
    /// sample, audit what is dropped): the framework already counted them
    /// (`ddb_stream_records_filtered_total`) and logged them at debug level.
    async fn records_filtered(
        &mut self,
        _records: &[std::sync::Arc<aws_sdk_dynamodbstreams::types::Record>],
    ) {
    }
}

/// Makes a processor for each shard this worker starts.
pub trait ProcessorFactory: Send + Sync + 'static {
    /// The processor type.
    type Processor: RecordProcessor;

    /// A new processor for `shard`.
    fn create(&self, shard: &ShardContext) -> Self::Processor;
}

impl<F, P> ProcessorFactory for F
where
    F: Fn(&ShardContext) -> P + Send + Sync + 'static,
    P: RecordProcessor,
{
    type Processor = P;

    fn create(&self, shard: &ShardContext) -> P {
        self(shard)
    }
}

/// A processor made of an async closure over batches, for the simple cases: see
/// [`processor_fn`].
pub struct FnProcessor<T, F> {
    f: F,
    _item: PhantomData<fn() -> T>,
}

/// Wraps an async closure `|batch| async { ... }` as a [`ProcessorFactory`]; every shard
/// gets a clone of it, and the framework checkpoints after each `Ok`.
pub fn processor_fn<T, F, Fut>(f: F) -> impl ProcessorFactory<Processor = FnProcessor<T, F>>
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnMut(ChangeBatch<T>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    move |_: &ShardContext| FnProcessor {
        f: f.clone(),
        _item: PhantomData,
    }
}

#[async_trait]
impl<T, F, Fut> RecordProcessor for FnProcessor<T, F>
where
    T: DeserializeOwned + Send + Sync + 'static,
    F: FnMut(ChangeBatch<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    type Item = T;

    async fn process(
        &mut self,
        batch: ChangeBatch<T>,
        _checkpointer: &mut Checkpointer,
    ) -> Result<(), BoxError> {
        (self.f)(batch).await
    }
}
