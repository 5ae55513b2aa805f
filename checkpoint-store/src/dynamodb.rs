//! The lease store in a DynamoDB table (being written).

/// A [`crate::LeaseStore`] in a DynamoDB table.
#[derive(Debug)]
pub struct DynamoDbLeaseStore {}
