//! A checkpointing consumer framework for DynamoDB Streams.

#![warn(missing_docs)]

mod change;
mod checkpointer;
mod config;
mod consumer;
mod error;
mod events;
mod lease_protocol;
pub mod poll_loop;
mod processor;
pub mod reader;
mod shard_consumer;
pub mod shard_sync;
pub mod streams;
#[cfg(feature = "testkit")]
pub mod testkit;
mod worker;

pub use change::{Change, ChangeBatch, ChangeKind};
pub use checkpointer::Checkpointer;
pub use config::{ConsumerConfig, InitialPosition, TrimmedDataPolicy};
pub use consumer::{Consumer, ConsumerBuilder};
pub use error::{BoxError, Error, Result};
pub use processor::{
    DataLoss, FnProcessor, ProcessorFactory, RecordProcessor, ShardContext, processor_fn,
};
