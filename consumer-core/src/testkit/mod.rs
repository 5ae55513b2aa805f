//! Test support: a simulated DynamoDB stream, for deterministic simulation tests.
//!
//! [`SimulatedStream`] implements [`StreamsApi`](crate::streams::StreamsApi) in memory. It
//! models what a consumer meets against the real service: tables whose writes become
//! INSERT / MODIFY / REMOVE records (images per stream view type, TTL deletions), shards
//! that split and rotate with parent links, 24 h trimming, 15 min iterator expiry,
//! DescribeStream pagination, throttling and injected faults. Everything random comes
//! from one seeded RNG and time is `tokio::time`, so a simulation run is reproducible.
//!
//! The in-memory lease store is re-exported so a simulation needs only this module, and
//! [`InstrumentedStore`] wraps any lease store to count its calls or cut it off, and
//! [`Recording`] keeps every change its processors are delivered. [`PauseSwitch`] holds a
//! whole worker's calls (a process stopped and resumed).

mod clock;
mod config;
mod error;
mod faults;
mod gate;
mod items;
mod iterators;
mod pause;
mod record;
mod recorder;
mod scan;
mod shard;
mod state;
mod store;
mod stream;

#[cfg(test)]
mod tests;

pub use config::{SimConfig, TableSpec};
pub use dynamodb_streams_leases::InMemoryLeaseStore;
pub use error::SimError;
pub use faults::SimOperation;
pub use items::{Item, string_key};
pub use pause::{PausableStreams, PauseSwitch};
pub use recorder::{BatchHook, Delivered, Recording};
pub use state::WrittenRecord;
pub use store::{Billed, InstrumentedStore, ItemUnits, Link, StoreObserver, StoreOp};
pub use stream::SimulatedStream;
