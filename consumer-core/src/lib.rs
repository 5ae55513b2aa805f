//! A checkpointing consumer framework for DynamoDB Streams.

#![warn(missing_docs)]

pub mod streams;
