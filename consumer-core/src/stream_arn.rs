//! Reading stream ARNs: `arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL`.
//!
//! The one place that knows the ARN's shape. Two questions are asked of it: which table
//! (by name) a stream belongs to, for labels, errors and operators; and whether two streams
//! belong to the same table, for a stream that replaced another after the table's stream
//! was disabled and enabled again. ARNs that do not have the shape (custom or simulated
//! streams) have no table: callers fall back to the ARN itself.

/// The table name inside a stream ARN (`arn:…:table/NAME/stream/LABEL`), if it has one.
pub fn table_of_stream(stream_arn: &str) -> Option<&str> {
    let (_, rest) = stream_arn.split_once(":table/")?;
    rest.split_once("/stream/").map(|(table, _)| table)
}

/// The `stream` label of a stream ARN in metrics and logs: the table name inside it,
/// else the ARN itself. Bounded: a table has one label whatever its streams.
pub fn stream_label(stream_arn: &str) -> &str {
    table_of_stream(stream_arn).unwrap_or(stream_arn)
}

/// The part of a stream ARN before `/stream/` (`arn:…:table/NAME`), which every stream the
/// table ever had shares; unlike [`table_of_stream`] it also works for ARNs whose prefix is
/// not AWS's (the simulated stream's).
fn table_part(stream_arn: &str) -> Option<&str> {
    stream_arn.split_once("/stream/").map(|(table, _)| table)
}

/// Whether two stream ARNs belong to the same table (a stream and the one that replaced
/// it after the table's stream was disabled and enabled again).
pub(crate) fn same_table(a: &str, b: &str) -> bool {
    a == b || table_part(a).is_some_and(|t| table_part(b) == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:dynamodb:eu-west-1:123:table/orders/stream/2026-01-01T00:00:00.000";

    #[test]
    fn the_table_and_the_label_come_from_the_arn() {
        assert_eq!(table_of_stream(ARN), Some("orders"));
        assert_eq!(stream_label(ARN), "orders");
        assert_eq!(table_of_stream("nonsense"), None);
        assert_eq!(table_of_stream("#coordination"), None);
        assert_eq!(table_of_stream("arn:aws:dynamodb:r:1:table/t"), None);
        assert_eq!(stream_label("arn:custom"), "arn:custom");
    }

    #[test]
    fn streams_of_one_table_are_the_same_table() {
        let replaced = "arn:aws:dynamodb:eu-west-1:123:table/orders/stream/2026-02-01T00:00:00.000";
        let other = "arn:aws:dynamodb:eu-west-1:123:table/orders2/stream/2026-01-01T00:00:00.000";
        assert!(same_table(ARN, replaced));
        assert!(!same_table(ARN, other));
        assert!(same_table("sim:table/t/stream/1", "sim:table/t/stream/2"));
        assert!(same_table("custom", "custom"));
        assert!(!same_table("custom", "other"));
    }
}
