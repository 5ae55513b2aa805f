//! Leases and checkpoints for DynamoDB Streams consumers.
//!
//! A lease gives one worker the right to process one shard; its checkpoint says how far
//! the shard has been processed. Leases and worker heartbeats live in a [`LeaseStore`]:
//! [`DynamoDbLeaseStore`] in production, [`InMemoryLeaseStore`] in simulations. Every
//! ownership-dependent write is conditional in the store, which is what keeps at most one
//! owner per lease and rejects checkpoints from workers that lost theirs.
//!
//! Every call to AWS in this workspace (the lease store's and dynamodb-streams-consumer's DynamoDB
//! Streams access) goes through [`aws`]: read it to see how clients, timeouts, retries,
//! error classes, paging and waiting are done.

#![warn(missing_docs)]
// docs.rs builds with `--cfg docsrs` on nightly: feature-gated items say which feature.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aws;
pub mod billing;
mod checkpoint;
mod dynamodb;
mod error;
mod item_tables;
mod lease;
mod membership;
mod memory;
mod parse;
pub mod pipeline;
mod sequence;
mod store;
pub mod transaction;
mod wrapper;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use checkpoint::Checkpoint;
pub use dynamodb::DynamoDbLeaseStore;
pub use error::{Error, Result};
pub use lease::{Lease, LeaseKey, Ownership};
pub use membership::{
    Coordination, LeaderRecord, MEMBERS_PER_SHARD, MEMBERSHIP_SHARDS, Membership, Notice,
    WorkerRecord, membership_shard,
};
pub use memory::InMemoryLeaseStore;
pub use pipeline::PipelineCheckpoints;
pub use sequence::SequenceNumber;
pub use store::LeaseStore;
pub use wrapper::StoreWrapper;
