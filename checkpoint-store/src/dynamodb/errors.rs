//! How the store's failures become [`Error`]s: SDK answers by their [`ErrorClass`], failed
//! conditions, and the reasons of a cancelled transaction. Every error names the table
//! (and the endpoint, when nothing answered).

use std::fmt;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::CancellationReason;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::aws::{self, ErrorClass};
use crate::error::Error;
use crate::lease::LeaseKey;

/// Where the store's requests go: what its errors name.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// The lease table (or, for a transaction's key schema, the table described).
    pub table: &'a str,
    /// Where the client sends requests.
    pub endpoint: &'a str,
}

impl Target<'_> {
    /// Maps an SDK error by its [`ErrorClass`]: transport failures become `Unreachable`,
    /// the rest `DynamoDb`. Both keep the SDK error, displayed with its whole context
    /// (code and message).
    pub fn sdk_error<E>(
        self,
        operation: &'static str,
        key: Option<&LeaseKey>,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let class = aws::classify(&err);
        let source = Box::new(SdkFailure::new(err));
        if class == ErrorClass::Transport {
            Error::Unreachable {
                endpoint: self.endpoint.to_owned(),
                operation,
                table: self.table.to_owned(),
                source,
            }
        } else {
            Error::DynamoDb {
                operation,
                table: self.table.to_owned(),
                key: key.cloned(),
                class,
                source,
            }
        }
    }

    /// A failure that is not an SDK answer (a request we could not build: a bug of ours).
    pub fn build_error(
        self,
        operation: &'static str,
        class: ErrorClass,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Error {
        Error::DynamoDb {
            operation,
            table: self.table.to_owned(),
            key: None,
            class,
            source: err.into(),
        }
    }

    /// A cancelled checkpoint transaction whose lease condition held: `Transient` when
    /// every refusal is one that may pass when sent again (a conflict, throttling),
    /// otherwise `TransactionCanceled` naming each refused write and its table.
    /// `codes` are the [`cancellation_codes`], `tables` the table of each write.
    pub fn transaction_refused<E>(
        self,
        operation: &'static str,
        key: &LeaseKey,
        codes: &[String],
        tables: &[String],
        err: SdkError<E>,
    ) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let refused: Vec<(usize, &String)> = codes
            .iter()
            .enumerate()
            .filter(|(_, code)| code.as_str() != "None")
            .collect();
        let retryable = |code: &str| {
            matches!(
                code,
                "TransactionConflict"
                    | "ThrottlingError"
                    | "ProvisionedThroughputExceeded"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
            )
        };
        if !refused.is_empty() && refused.iter().all(|(_, code)| retryable(code)) {
            // Another request touched the same items, or throttling: the same transaction
            // may go through when sent again.
            return Error::DynamoDb {
                operation,
                table: self.table.to_owned(),
                key: Some(key.clone()),
                class: ErrorClass::Transient,
                source: Box::new(SdkFailure::new(err)),
            };
        }
        let reasons = if refused.is_empty() {
            SdkFailure::new(err).to_string()
        } else {
            refused
                .iter()
                .map(|(i, code)| {
                    let table = tables.get(*i).map(String::as_str).unwrap_or("?");
                    format!("write {i} (table {table:?}): {code}")
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        Error::TransactionCanceled {
            table: self.table.to_owned(),
            key: key.clone(),
            reasons,
        }
    }
}

/// A conditional write whose condition did not hold.
pub(crate) struct ConditionFailed {
    /// Whether DynamoDB returned the item as it was (so the item exists).
    pub old_item_present: bool,
}

/// The reason code of each action of a cancelled transaction (`None` for those that were
/// fine), from the structured reasons or, when a DynamoDB sends none, from the message
/// (`Transaction cancelled, please refer cancellation reasons for specific reasons [A, B]`).
pub(crate) fn cancellation_codes(
    reasons: &[CancellationReason],
    message: Option<&str>,
) -> Vec<String> {
    if !reasons.is_empty() {
        return reasons
            .iter()
            .map(|reason| reason.code().unwrap_or("None").to_owned())
            .collect();
    }
    let listed = message.and_then(|m| {
        let start = m.rfind('[')?;
        let end = m[start..].find(']')? + start;
        Some(&m[start + 1..end])
    });
    listed
        .map(|list| list.split(',').map(|code| code.trim().to_owned()).collect())
        .unwrap_or_default()
}

/// An SDK error shown with its whole chain of causes (for a service error: its code and
/// message; for a transport failure: what failed) instead of the SDK's terse top line
/// ("service error"). The SDK error itself stays available as the source.
#[derive(Debug)]
pub(crate) struct SdkFailure {
    context: String,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl SdkFailure {
    pub fn new<E>(error: SdkError<E>) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut context = error.to_string();
        let mut cause = std::error::Error::source(&error);
        while let Some(err) = cause {
            context.push_str(": ");
            context.push_str(&err.to_string());
            cause = err.source();
        }
        Self {
            context,
            error: Box::new(error),
        }
    }
}

impl fmt::Display for SdkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)
    }
}

impl std::error::Error for SdkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.error.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancellation_codes_come_from_the_reasons_or_else_the_message() {
        let reasons = [
            CancellationReason::builder().code("None").build(),
            CancellationReason::builder()
                .code("ConditionalCheckFailed")
                .build(),
        ];
        assert_eq!(
            cancellation_codes(&reasons, None),
            ["None", "ConditionalCheckFailed"]
        );
        let message = "Transaction cancelled, please refer cancellation reasons for specific \
                       reasons [None, ConditionalCheckFailed]";
        assert_eq!(
            cancellation_codes(&[], Some(message)),
            ["None", "ConditionalCheckFailed"]
        );
        assert!(cancellation_codes(&[], Some("no list")).is_empty());
    }
}
