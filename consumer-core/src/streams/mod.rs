//! Access to the DynamoDB Streams API, behind a trait.
//!
//! The consumer talks to streams only through [`StreamsApi`], so it can be driven by the
//! real service ([`SdkStreams`]) or by the simulated stream of the `testkit` feature. The
//! trait is deliberately thin: one method per API call, one page per call; retries and
//! backoff live in the callers that know what to do about them, and every DescribeStream
//! listing goes through the one pager, [`dynamodb_streams_leases::aws::describe_stream_pages`].

mod api;
mod sdk;
mod wrapper;

pub use api::{
    ApiError, ApiErrorKind, BoxError, RecordsPage, ShardInfo, StartPosition, StreamPage, StreamsApi,
};
pub use sdk::SdkStreams;
pub use wrapper::StreamsWrapper;
