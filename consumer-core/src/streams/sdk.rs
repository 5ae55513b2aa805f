//! The streams API on the AWS SDK (being written).

/// [`super::StreamsApi`] on `aws-sdk-dynamodbstreams` and `aws-sdk-dynamodb`.
#[derive(Debug)]
pub struct SdkStreams {}
