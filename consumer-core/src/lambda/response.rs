//! Lambda's partial batch response: `{"batchItemFailures": [{"itemIdentifier": "SEQ"}]}`.
//!
//! Lambda's rules for stream sources, kept: an answer without failures (no object, no
//! `batchItemFailures`, `null` or `[]`) is a success; otherwise processing starts again at
//! the lowest sequence number named, and the records before it count as done; an
//! identifier that is missing, empty, not a string or not a record of the batch fails the
//! whole batch.

use dynamodb_streams_leases::SequenceNumber;
use serde_json::Value;

/// An answer that fails the whole batch: what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("partial batch response: {0}")]
pub struct ResponseError(pub String);

/// The failures a handler reported, by sequence number, as it wrote them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartialBatchResponse {
    /// The `itemIdentifier`s, in the answer's order.
    pub item_identifiers: Vec<String>,
}

impl PartialBatchResponse {
    /// Reads a handler's answer. Anything that is not an object with `batchItemFailures`
    /// reports no failure, as with Lambda.
    pub fn from_answer(answer: &Value) -> Result<Self, ResponseError> {
        let failures = match answer.get("batchItemFailures") {
            None | Some(Value::Null) => return Ok(Self::default()),
            Some(Value::Array(failures)) => failures,
            Some(other) => {
                return Err(ResponseError(format!(
                    "\"batchItemFailures\" is not a list: {other}"
                )));
            }
        };
        let item_identifiers = failures
            .iter()
            .enumerate()
            .map(|(i, failure)| match failure.get("itemIdentifier") {
                Some(Value::String(id)) if !id.is_empty() => Ok(id.clone()),
                _ => Err(ResponseError(format!(
                    "batchItemFailures[{i}] has no itemIdentifier (a non-empty sequence number string)"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { item_identifiers })
    }

    /// Where processing starts again: the lowest sequence number named, which must be one
    /// of `batch`'s; `None` when nothing failed.
    pub fn first_failure(
        &self,
        batch: &[SequenceNumber],
    ) -> Result<Option<SequenceNumber>, ResponseError> {
        let mut first: Option<&SequenceNumber> = None;
        for id in &self.item_identifiers {
            let Some(seq) = batch.iter().find(|seq| seq.as_str() == id) else {
                return Err(ResponseError(format!(
                    "itemIdentifier {id:?} is not the sequence number of a record of the batch"
                )));
            };
            if first.is_none_or(|f| seq < f) {
                first = Some(seq);
            }
        }
        Ok(first.cloned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn seqs(texts: &[&str]) -> Vec<SequenceNumber> {
        texts
            .iter()
            .map(|t| SequenceNumber::parse(*t).unwrap())
            .collect()
    }

    #[test]
    fn no_failures_is_success_in_every_form_lambda_accepts() {
        let batch = seqs(&["000000000000000000001"]);
        for answer in [
            json!(null),
            json!({}),
            json!("done"),
            json!({"batchItemFailures": null}),
            json!({"batchItemFailures": []}),
        ] {
            let response = PartialBatchResponse::from_answer(&answer).unwrap();
            assert_eq!(response.first_failure(&batch).unwrap(), None, "{answer}");
        }
    }

    #[test]
    fn processing_starts_again_at_the_lowest_sequence_number_named() {
        let batch = seqs(&[
            "000000000000000000009",
            "000000000000000000010",
            "000000000000000000011",
        ]);
        let answer = json!({"batchItemFailures": [
            {"itemIdentifier": "000000000000000000011"},
            {"itemIdentifier": "000000000000000000010"},
        ]});
        let response = PartialBatchResponse::from_answer(&answer).unwrap();
        assert_eq!(
            response.first_failure(&batch).unwrap(),
            Some(batch[1].clone()),
            "numeric order, not the answer's (and 10 > 9 though \"10\" < \"9\" as text)"
        );
    }

    #[test]
    fn a_bad_identifier_fails_the_whole_batch() {
        let batch = seqs(&["000000000000000000001"]);
        for answer in [
            json!({"batchItemFailures": [{"itemIdentifier": ""}]}),
            json!({"batchItemFailures": [{"itemIdentifier": null}]}),
            json!({"batchItemFailures": [{"id": "000000000000000000001"}]}),
            json!({"batchItemFailures": "000000000000000000001"}),
        ] {
            assert!(
                PartialBatchResponse::from_answer(&answer).is_err(),
                "{answer}"
            );
        }
        let unknown = json!({"batchItemFailures": [{"itemIdentifier": "000000000000000000002"}]});
        let error = PartialBatchResponse::from_answer(&unknown)
            .unwrap()
            .first_failure(&batch)
            .unwrap_err();
        assert!(
            error.to_string().contains("000000000000000000002"),
            "{error}"
        );
    }
}
