//! Stream records as DynamoDB Streams emits them, built with the SDK's own builders.
//!
//! The consumer decodes exactly these types from the real service, so the simulation
//! hands out SDK [`Record`]s with every field the service fills: event id, name, version
//! and source, region, keys, the images the view type allows, sequence number, size, view
//! type, creation time (rounded down to the second) and, for TTL deletions, the service
//! identity.

use aws_sdk_dynamodbstreams::types::{
    Identity, OperationType, Record, StreamRecord, StreamViewType,
};
use aws_smithy_types::DateTime;

use super::items::{Item, item_size};

/// The region simulated records and ARNs name.
pub(crate) const REGION: &str = "sim";

/// Everything one stream record is made of.
pub(crate) struct Change<'a> {
    pub(crate) event_id: String,
    pub(crate) keys: &'a Item,
    pub(crate) old: Option<&'a Item>,
    pub(crate) new: Option<&'a Item>,
    pub(crate) view_type: &'a StreamViewType,
    pub(crate) sequence_number: &'a str,
    pub(crate) wall_millis: i64,
    pub(crate) by_ttl: bool,
}

impl Change<'_> {
    /// INSERT, MODIFY or REMOVE, from which images exist.
    pub(crate) fn operation(&self) -> OperationType {
        match (self.old, self.new) {
            (None, _) => OperationType::Insert,
            (Some(_), Some(_)) => OperationType::Modify,
            (Some(_), None) => OperationType::Remove,
        }
    }

    /// The SDK record.
    pub(crate) fn build(&self) -> Record {
        let with_new = matches!(
            self.view_type,
            StreamViewType::NewImage | StreamViewType::NewAndOldImages
        );
        let with_old = matches!(
            self.view_type,
            StreamViewType::OldImage | StreamViewType::NewAndOldImages
        );
        let new = self.new.filter(|_| with_new);
        let old = self.old.filter(|_| with_old);
        let size = item_size(self.keys)
            + new.map_or(0, item_size)
            + old.map_or(0, item_size)
            + self.sequence_number.len();
        let stream_record = StreamRecord::builder()
            .approximate_creation_date_time(DateTime::from_secs(self.wall_millis.div_euclid(1000)))
            .set_keys(Some(self.keys.clone()))
            .set_new_image(new.cloned())
            .set_old_image(old.cloned())
            .sequence_number(self.sequence_number)
            .size_bytes(i64::try_from(size).unwrap_or(i64::MAX))
            .stream_view_type(self.view_type.clone())
            .build();
        let identity = self.by_ttl.then(|| {
            Identity::builder()
                .principal_id("dynamodb.amazonaws.com")
                .r#type("Service")
                .build()
        });
        Record::builder()
            .event_id(self.event_id.clone())
            .event_name(self.operation())
            .event_version("1.1")
            .event_source("aws:dynamodb")
            .aws_region(REGION)
            .dynamodb(stream_record)
            .set_user_identity(identity)
            .build()
    }
}
