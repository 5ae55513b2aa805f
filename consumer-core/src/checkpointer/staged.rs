//! Exactly-once: DynamoDB writes staged per record during `process`, committed with the
//! checkpoint in as few transactions as the service's limits allow, record by record when
//! one is refused, and what a transaction whose answer was lost means for the next one.

use aws_sdk_dynamodb::types::TransactWriteItem;
use backon::BackoffBuilder;
use dynamodb_streams_leases::transaction::{self, StagedWrites};
use dynamodb_streams_leases::{Checkpoint, SequenceNumber};
use tokio::time::Instant;

use super::Checkpointer;
use crate::error::{Error, Result};
use crate::events::{Event, TransactionCommitted};
use crate::retry;

/// Staged writes that could not be committed: the records before `first_uncommitted` are
/// committed (or had no writes), the rest must be processed again.
#[derive(Debug)]
pub(crate) struct CommitFailed {
    pub first_uncommitted: SequenceNumber,
    pub error: Error,
}

impl CommitFailed {
    /// Whether the records' own writes are at fault (refused by their conditions, or too
    /// many for one transaction): only then is the failure the record's, counted against
    /// `max_retries` and handed to the on-failure handler. Any other failure (throttling
    /// past the store's retries, an outage) is the store's: the records were processed
    /// `Ok`, so they are delivered again later, never given up for it.
    pub fn is_the_records(&self) -> bool {
        matches!(
            self.error,
            Error::LeaseStore(
                dynamodb_streams_leases::Error::TransactionCanceled { .. }
                    | dynamodb_streams_leases::Error::TransactionTooLarge { .. }
            )
        )
    }
}

impl Checkpointer {
    /// Stages DynamoDB writes (to any table of the lease table's account and region) for
    /// the record `seq` of the batch being processed. They are committed together with the
    /// checkpoint, all or nothing, after `process` returns `Ok`: a crash, a lost lease or a
    /// failed batch leaves neither the writes nor the checkpoint, so each record's writes
    /// are applied exactly once. Call it in record order; several calls for one record
    /// add up.
    ///
    /// Refused (nothing staged) outside `process`, for a record outside the batch or
    /// before one already staged, with key parallelism, and when one record's writes cannot
    /// fit in one transaction with the checkpoint (more than 99, more than about 4 MB, or
    /// one item written twice): the error names the shard and sequence number.
    pub async fn stage(
        &mut self,
        seq: &SequenceNumber,
        writes: impl IntoIterator<Item = TransactWriteItem>,
    ) -> Result<()> {
        let refuse = |reason: String| Error::InvalidCheckpoint {
            shard_id: self.key.shard_id.clone(),
            requested: seq.clone(),
            reason: format!("cannot stage writes: {reason}"),
        };
        let Some(last) = self.in_flight.as_ref() else {
            return Err(refuse(
                "writes are staged during `process` only, of stream records (snapshot records have no sequence number to commit with)".into(),
            ));
        };
        if self.detached {
            return Err(refuse(
                "exactly-once commits need key parallelism 1 (one transaction per shard)".into(),
            ));
        }
        if seq > last {
            return Err(refuse(format!(
                "it is past the last record of the batch, {last}"
            )));
        }
        // The stored checkpoint may be past the last record done here: a transaction
        // whose answer was lost, found committed. Its records' writes are applied.
        if let Some(done) = self.last_done.as_ref().max(self.stored.sequence_number())
            && seq <= done
        {
            return Err(refuse(format!(
                "record {done} and those before it are done"
            )));
        }
        if let Some(staged) = self.staged.last()
            && seq < &staged.sequence_number
        {
            return Err(refuse(format!(
                "writes of the later record {} are staged already (stage in record order)",
                staged.sequence_number
            )));
        }
        let mut record = match self.staged.last() {
            Some(staged) if &staged.sequence_number == seq => self.staged.pop(),
            _ => None,
        }
        .unwrap_or_else(|| StagedWrites {
            sequence_number: seq.clone(),
            writes: Vec::new(),
        });
        let before = record.writes.len();
        record.writes.extend(writes);
        let checked = match self.learn_key_names(&record.writes[before..]).await {
            Ok(()) => transaction::check_record(&self.key, &record, &self.key_names),
            Err(error) => Err(error),
        };
        if let Err(error) = checked {
            record.writes.truncate(before);
            if !record.writes.is_empty() {
                self.staged.push(record);
            }
            return Err(error.into());
        }
        self.staged.push(record);
        Ok(())
    }

    /// Asks the store for the key schema of tables that `Put`s write to and are not known
    /// yet (one DescribeTable per table for the life of the shard).
    async fn learn_key_names(
        &mut self,
        writes: &[TransactWriteItem],
    ) -> dynamodb_streams_leases::Result<()> {
        for table in transaction::put_tables(writes) {
            if !self.key_names.contains_key(&table) {
                let names = self.store.key_attribute_names(&table).await?;
                self.key_names.insert(table, names);
            }
        }
        Ok(())
    }

    /// Commits the writes staged for records before `failed_at` (all of them when `None`:
    /// the batch succeeded, and the last transaction checkpoints at `batch_last`), with the
    /// checkpoint, in as few transactions as the service's limits allow, one after the
    /// other; each checkpoints at the last record whose writes it holds. Transient errors
    /// are retried as the [`retry::lease_store`] policy says. The rest of what was staged
    /// is dropped.
    pub(crate) async fn commit_staged(
        &mut self,
        failed_at: Option<&SequenceNumber>,
        batch_last: &SequenceNumber,
    ) -> Result<(), CommitFailed> {
        let staged: Vec<StagedWrites> = std::mem::take(&mut self.staged)
            .into_iter()
            .filter(|record| failed_at.is_none_or(|at| &record.sequence_number < at))
            .filter(|record| !record.writes.is_empty())
            .collect();
        let Some(first) = staged.first().map(|r| r.sequence_number.clone()) else {
            return Ok(());
        };
        let fail = |first_uncommitted: SequenceNumber, error: Error| CommitFailed {
            first_uncommitted,
            error,
        };
        // The transaction is conditional on the stored checkpoint: no write may be in flight.
        // A plain checkpoint write given up on a transient error (its answer lost) may have
        // been applied: the stored position is read instead of failing the batch, whose
        // records would go to the on-failure handler (explorer seed 2712).
        if let Err(error) = self.settle().await {
            let transient = matches!(&error, Error::LeaseStore(e) if e.is_transient());
            if !(transient && self.reread_stored().await) {
                return Err(fail(first, error));
            }
        }
        let mut transactions = transaction::split(&self.key, staged, &self.key_names)
            .map_err(|error| fail(first.clone(), error.into()))?;
        if failed_at.is_none()
            && let Some(last) = transactions.last_mut()
        {
            last.checkpoint = batch_last.clone();
        }
        for mut tx in transactions {
            let mut adopted = false;
            let error = loop {
                let Some(start) = tx.records.first().map(|r| r.sequence_number.clone()) else {
                    break None;
                };
                let error = match self.commit_one(&tx.checkpoint, tx.writes()).await {
                    Ok(()) => break None,
                    Err(error) => error,
                };
                // The stored checkpoint moved on without us seeing it: an earlier write of
                // ours whose answer was lost did commit. The records it covers are done
                // (their writes committed with it): go on with the others, once.
                if let Error::LeaseStore(dynamodb_streams_leases::Error::CheckpointMoved {
                    found: Checkpoint::At(found),
                    ..
                }) = &error
                    && !adopted
                    && *found < tx.checkpoint
                {
                    tracing::warn!(shard_id = %self.key.shard_id, %found, "checkpoint moved under a transaction; going on from it");
                    adopted = true;
                    self.stored = Checkpoint::At(found.clone());
                    let found = found.clone();
                    tx.records.retain(|record| record.sequence_number > found);
                    continue;
                }
                break Some((start, error));
            };
            let Some((start, error)) = error else {
                continue;
            };
            let refused = matches!(
                error,
                Error::LeaseStore(dynamodb_streams_leases::Error::TransactionCanceled { .. })
            );
            if !refused || tx.records.len() == 1 {
                return Err(fail(start, error));
            }
            // A write was refused: record by record, so that the failure names the record
            // whose writes are refused and those before it are committed.
            tracing::warn!(shard_id = %self.key.shard_id, %error, records = tx.records.len(), "transaction refused; committing its records one by one");
            for record in tx.records {
                let seq = record.sequence_number.clone();
                if let Err(error) = self.commit_one(&seq, record.writes).await {
                    return Err(fail(seq, error));
                }
            }
        }
        Ok(())
    }

    /// Commits one transaction (retried on transient errors) and takes its checkpoint as
    /// stored.
    async fn commit_one(
        &mut self,
        checkpoint: &SequenceNumber,
        writes: Vec<TransactWriteItem>,
    ) -> Result<()> {
        let count = writes.len();
        let checkpoint = Checkpoint::At(checkpoint.clone());
        if let Err(error) = self.send_transaction(&checkpoint, writes).await {
            // Given up on a transient error: it may have committed all the same (its
            // answer lost). One consistent read tells; a committed batch is not a failure
            // (its records would go to the on-failure handler, explorer seed 2712).
            let transient = matches!(&error, Error::LeaseStore(e) if e.is_transient());
            if !(transient && self.committed_after_all(&checkpoint).await) {
                self.unsure_of_stored |= transient;
                return Err(error);
            }
        }
        TransactionCommitted {
            stream_arn: &self.key.stream,
            shard_id: &self.key.shard_id,
            checkpoint: &checkpoint.encode(),
            writes: count,
            pipeline: self.pipeline.as_deref(),
        }
        .emit();
        self.stored = checkpoint;
        self.last_write = Some(Instant::now());
        if self.pending.as_ref() <= self.stored.sequence_number() {
            self.pending = None;
        }
        Ok(())
    }

    /// This pipeline's (or the lease's) stored position, read consistently, if the lease
    /// is still ours; `None` when it is not or the read failed.
    async fn read_stored(&self) -> Option<Checkpoint> {
        let lease = self.store.get_lease(&self.key).await.ok()??;
        if lease.ownership().as_ref() != Some(&self.ownership) {
            return None;
        }
        // A pipeline's position is its own attribute of the lease.
        match &self.pipeline {
            Some(name) => lease.pipelines.get(name).cloned(),
            None => Some(lease.checkpoint),
        }
    }

    /// After a checkpoint write whose outcome is unknown: takes the stored position as
    /// read (what the next transaction is conditional on). Whether it could.
    async fn reread_stored(&mut self) -> bool {
        let Some(stored) = self.read_stored().await else {
            return false;
        };
        tracing::warn!(shard_id = %self.key.shard_id, %stored, "a checkpoint write's answer was lost; going on from the stored position");
        self.stored = stored;
        if self.pending.as_ref() <= self.stored.sequence_number() {
            self.pending = None;
        }
        true
    }

    /// Whether the lease, read consistently, is still ours and checkpointed at or past
    /// `checkpoint`: a transaction whose answer was lost did commit. A failed read says no.
    async fn committed_after_all(&self, checkpoint: &Checkpoint) -> bool {
        let committed = matches!(
            (self.read_stored().await, checkpoint),
            (Some(Checkpoint::At(found)), Checkpoint::At(wanted)) if found >= *wanted
        );
        if committed {
            tracing::warn!(shard_id = %self.key.shard_id, %checkpoint, "a transaction whose answer was lost had committed");
        }
        committed
    }

    /// One transaction, retried on transient errors (a retry of one that did commit is
    /// recognised by the store).
    async fn send_transaction(
        &mut self,
        checkpoint: &Checkpoint,
        writes: Vec<TransactWriteItem>,
    ) -> Result<()> {
        let mut pauses = retry::lease_store().build();
        loop {
            let result = self
                .store
                .checkpoint_with_writes(
                    &self.key,
                    &self.ownership,
                    &self.stored,
                    checkpoint,
                    writes.clone(),
                )
                .await;
            match result {
                Ok(()) => return Ok(()),
                Err(error) if retry::is_retryable_store(&error) => {
                    retry::pause_or_give_up(&mut pauses, error).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}
