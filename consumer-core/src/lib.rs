#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: feature-gated items say which feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod announce;
mod attribute_de;
mod budget;
mod callback;
mod change;
mod checkpointer;
mod config;
mod consumer;
mod dead_letter;
mod delivery;
mod error;
mod events;
mod failure;
mod fencing_clock;
mod heartbeat;
pub mod json;
mod lag;
pub mod lambda;
mod leader;
mod lease_protocol;
pub mod observability;
mod pipeline;
mod poll_loop;
mod processor;
pub mod reader;
mod retry;
mod runtime;
mod shard;
mod shard_graph;
mod shard_sync;
pub mod signals;
pub mod snapshot;
mod start_time;
mod stream_arn;
pub mod streams;
#[cfg(feature = "testkit")]
pub mod testkit;
mod worker;

pub use change::{Change, ChangeBatch, ChangeKind};
pub use checkpointer::Checkpointer;
pub use config::TrimmedDataPolicy;
pub use consumer::{Consumer, ConsumerBuilder};
pub use dead_letter::DeadLetterTable;
pub use error::{BoxError, Error, Result};
pub use failure::{BatchFailure, FailedAt, FailedRecords, FailureHandler, FailureReason};
pub use pipeline::Pipelines;
pub use processor::{
    DataLoss, FnProcessor, ProcessorFactory, RecordProcessor, ShardContext, processor_fn,
};
pub use snapshot::SnapshotConfig;
pub use start_time::InitialPosition;
