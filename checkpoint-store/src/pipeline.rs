//! Pipelines: several consumers of one application that share each shard's read, each with
//! its own checkpoint in the shard's lease item.
//!
//! A lease item keeps its `checkpoint` attribute, which every version of the consumer and
//! `ddbsc` read: with pipelines it is the shard's **read position**, the slowest pipeline's
//! checkpoint ([`slowest`]), and `SHARD_END` only once every pipeline finished the shard
//! (so the parents-before-children gate is unchanged). Each named pipeline has an attribute
//! of its own, `pl|{name}`, holding its checkpoint as text; the owner writes it with the
//! read position in one update, under the same owner-and-epoch condition as any checkpoint
//! ([`PipelineCheckpoints`]). An application without named pipelines writes no such
//! attribute: its items are exactly those of a consumer that knows nothing of pipelines.

use crate::checkpoint::Checkpoint;

/// One checkpoint write of a lease with named pipelines: some pipelines' checkpoints and
/// the read position they leave the shard at, stored together (the read position is where
/// a worker that knows nothing of pipelines, or the next owner, starts reading).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineCheckpoints {
    /// The lease's `checkpoint`: the slowest pipeline's checkpoint ([`slowest`]);
    /// `ShardEnd` once every pipeline finished the shard.
    pub read_position: Checkpoint,
    /// The pipelines whose checkpoint this write stores (the others keep theirs).
    pub pipelines: Vec<(String, Checkpoint)>,
    /// When given, also stored as the pipelines the owner runs
    /// ([`Lease::owner_pipelines`](crate::Lease::owner_pipelines)).
    pub running: Option<Vec<String>>,
}

/// How far a checkpoint is along its shard, for [`slowest`]: the start positions first
/// (`TrimHorizon` before `Since`, older times first, before `Latest`), then sequence
/// numbers, then `ShardEnd`. A snapshot segment's `Scan` position counts as a start.
fn progress(checkpoint: &Checkpoint) -> (u8, Option<&Checkpoint>) {
    match checkpoint {
        Checkpoint::TrimHorizon | Checkpoint::Scan(_) => (0, None),
        Checkpoint::Since(_) => (1, Some(checkpoint)),
        Checkpoint::Latest => (2, None),
        Checkpoint::At(_) => (3, Some(checkpoint)),
        Checkpoint::ShardEnd => (4, None),
    }
}

/// The checkpoint of the pipeline that is furthest behind: where a shard's read must
/// resume so that every pipeline gets what it has not done. `None` when there are none.
///
/// A `Since` position reads from the oldest record (skipping by creation time), so it is
/// behind every sequence number. `Latest` is only ever the slowest when every pipeline is at
/// a start position; the consumer turns a `Latest` pipeline's position into a time or a
/// sequence number before it reads.
pub fn slowest<'a>(checkpoints: impl IntoIterator<Item = &'a Checkpoint>) -> Option<Checkpoint> {
    checkpoints
        .into_iter()
        .min_by(|a, b| {
            let (rank_a, at_a) = progress(a);
            let (rank_b, at_b) = progress(b);
            rank_a.cmp(&rank_b).then_with(|| match (at_a, at_b) {
                (Some(Checkpoint::Since(x)), Some(Checkpoint::Since(y))) => x.cmp(y),
                (Some(Checkpoint::At(x)), Some(Checkpoint::At(y))) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            })
        })
        .cloned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::SequenceNumber;

    fn at(n: u64) -> Checkpoint {
        Checkpoint::At(SequenceNumber::parse(format!("{n:021}")).unwrap())
    }

    #[test]
    fn the_slowest_pipeline_sets_the_read_position() {
        let since = |s| Checkpoint::since(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(slowest([] as [&Checkpoint; 0]), None);
        assert_eq!(slowest(&[at(9), at(10), at(100)]), Some(at(9)));
        // Numerically, not as text.
        assert_eq!(slowest(&[at(100), at(99)]), Some(at(99)));
        assert_eq!(
            slowest(&[Checkpoint::ShardEnd, at(5)]),
            Some(at(5)),
            "a pipeline that finished waits for the others"
        );
        assert_eq!(
            slowest(&[Checkpoint::ShardEnd, Checkpoint::ShardEnd]),
            Some(Checkpoint::ShardEnd)
        );
        assert_eq!(
            slowest(&[at(5), Checkpoint::TrimHorizon]),
            Some(Checkpoint::TrimHorizon)
        );
        assert_eq!(slowest(&[at(5), since(7), since(3)]), Some(since(3)));
        assert_eq!(
            slowest(&[since(3), Checkpoint::TrimHorizon]),
            Some(Checkpoint::TrimHorizon)
        );
        assert_eq!(
            slowest(&[Checkpoint::Latest, Checkpoint::Latest]),
            Some(Checkpoint::Latest)
        );
    }
}
