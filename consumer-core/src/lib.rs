//! A checkpointing consumer framework for DynamoDB Streams.

#![warn(missing_docs)]

mod change;
mod error;
pub mod streams;

pub use change::{Change, ChangeBatch, ChangeKind};
pub use error::{BoxError, Error, Result};
