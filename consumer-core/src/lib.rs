//! A checkpointing consumer framework for DynamoDB Streams.

#![warn(missing_docs)]

mod change;
mod checkpointer;
mod error;
mod events;
pub mod poll_loop;
mod processor;
pub mod streams;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use change::{Change, ChangeBatch, ChangeKind};
pub use checkpointer::Checkpointer;
pub use error::{BoxError, Error, Result};
pub use processor::{
    DataLoss, FnProcessor, ProcessorFactory, RecordProcessor, ShardContext, processor_fn,
};
