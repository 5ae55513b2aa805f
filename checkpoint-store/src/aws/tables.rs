//! Waiting for a table through the SDK's waiter.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::operation::describe_table::DescribeTableError;
use aws_sdk_dynamodb::types::TableDescription;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::waiters::error::WaiterError;

/// Why a table did not become ACTIVE.
#[derive(Debug, thiserror::Error)]
pub enum TableWaitError {
    /// Still not ACTIVE (or not there yet) when the wait ran out.
    #[error("table {table:?} did not become ACTIVE within {waited:?}")]
    NotActive {
        /// The table.
        table: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A DescribeTable call failed with an error the waiter does not wait through.
    #[error("DescribeTable of table {table:?} failed while waiting for it: {source}")]
    Describe {
        /// The table.
        table: String,
        /// The SDK error; classify it with [`super::classify`].
        #[source]
        source: Box<SdkError<DescribeTableError, HttpResponse>>,
    },
    /// The waiter could not run or ended in an unexpected state.
    #[error("waiting for table {table:?} failed: {source}")]
    Waiter {
        /// The table.
        table: String,
        /// What the waiter reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Waits until `table` is ACTIVE, with the SDK's `table_exists` waiter (which also waits
/// through a table that does not exist yet), for at most `max_wait`. Returns the
/// description of the final poll. The waiter's first poll is immediate; later ones follow
/// its model's delays (20 s and up), so only a creator of a new table ever waits long.
pub async fn wait_until_table_active(
    client: &Client,
    table: &str,
    max_wait: Duration,
) -> Result<TableDescription, TableWaitError> {
    let waiter_error = |source: Box<dyn std::error::Error + Send + Sync>| TableWaitError::Waiter {
        table: table.to_owned(),
        source,
    };
    match client
        .wait_until_table_exists()
        .table_name(table)
        .wait(max_wait)
        .await
    {
        Ok(final_poll) => match final_poll.into_result() {
            Ok(output) => output
                .table
                .ok_or_else(|| waiter_error("the answer has no Table description".into())),
            Err(source) => Err(TableWaitError::Describe {
                table: table.to_owned(),
                source: Box::new(source),
            }),
        },
        Err(WaiterError::ExceededMaxWait(exceeded)) => Err(TableWaitError::NotActive {
            table: table.to_owned(),
            waited: exceeded.elapsed(),
        }),
        Err(WaiterError::OperationFailed(failed)) => Err(TableWaitError::Describe {
            table: table.to_owned(),
            source: Box::new(failed.into_error()),
        }),
        Err(other) => Err(waiter_error(Box::new(other))),
    }
}
