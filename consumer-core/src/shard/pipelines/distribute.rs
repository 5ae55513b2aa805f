//! One read handed to every pipeline of a shard: pages shared (held once, each pipeline
//! with its share of the budget), the rest copied; the run-ahead bound is each pipeline's
//! queue. Its own module: how a read fans out is apart from how the pipelines' sessions
//! start and end (`super`) and how their checkpoints are written (`super::checkpoints`).

use tokio::sync::mpsc;

use dynamodb_streams_leases::SequenceNumber;

use crate::error::Error;
use crate::shard::page::Fetched;

/// A pipeline's queue of pages, and the last record it had done when the read started
/// (records up to it are not handed to it again).
pub(super) struct Out {
    pub tx: mpsc::Sender<Fetched>,
    pub done_through: Option<SequenceNumber>,
}

/// Hands what the fetch task reads to every pipeline still running: pages shared, the
/// rest copied. Waits while a pipeline's queue is full (the run-ahead bound).
pub(super) async fn distribute(
    mut rx: mpsc::Receiver<Fetched>,
    mut outs: Vec<Out>,
    shard_id: String,
) {
    while let Some(fetched) = rx.recv().await {
        outs.retain(|out| !out.tx.is_closed());
        if outs.is_empty() {
            return;
        }
        let last = matches!(
            fetched,
            Fetched::ShardEnd | Fetched::Vanished(_) | Fetched::Failed(_)
        );
        let copies: Vec<Fetched> = match fetched {
            Fetched::Records(page) => {
                let done: Vec<Option<SequenceNumber>> =
                    outs.iter().map(|out| out.done_through.clone()).collect();
                page.share(&done)
                    .into_iter()
                    .map(Fetched::Records)
                    .collect()
            }
            Fetched::Idle => {
                for out in &outs {
                    let _ = out.tx.try_send(Fetched::Idle);
                }
                continue;
            }
            Fetched::ShardEnd => outs.iter().map(|_| Fetched::ShardEnd).collect(),
            Fetched::Trimmed(loss) => outs
                .iter()
                .map(|_| Fetched::Trimmed(loss.clone()))
                .collect(),
            Fetched::Vanished(loss) => outs
                .iter()
                .map(|_| Fetched::Vanished(loss.clone()))
                .collect(),
            Fetched::Failed(error) => {
                let problem = error.to_string();
                let mut first = Some(error);
                outs.iter()
                    .map(|_| {
                        Fetched::Failed(first.take().unwrap_or_else(|| Error::Internal {
                            shard_id: shard_id.clone(),
                            problem: problem.clone(),
                        }))
                    })
                    .collect()
            }
        };
        for (out, copy) in outs.iter_mut().zip(copies) {
            // A pipeline that stopped takes nothing more.
            let _ = out.tx.send(copy).await;
        }
        if last {
            return;
        }
    }
}
