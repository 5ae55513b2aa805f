//! The lease table itself: its name rules, creation, the wait until it is usable, its key
//! schema check and TTL set-up, and the key schema of the tables transactions write to.

use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TableDescription, TableStatus, TimeToLiveSpecification, TimeToLiveStatus,
};

use super::errors::{SdkFailure, Target};
use super::item::attr;
use crate::aws::{self, ErrorClass, TableWaitError};
use crate::error::{Error, Result};

/// How long `ensure_table` waits for a new table to become ACTIVE.
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The lease table as seen through one client.
#[derive(Clone, Copy)]
pub(crate) struct LeaseTable<'a> {
    pub client: &'a Client,
    pub target: Target<'a>,
}

impl LeaseTable<'_> {
    fn name(&self) -> &str {
        self.target.table
    }

    /// Creates the table if it is missing and waits until it can be used; fails with
    /// `NotALeaseTable` if a table of that name has another key schema.
    pub async fn ensure(&self) -> Result<()> {
        match self.describe_table().await? {
            // The usual case, a worker start: one call. TTL was set up by the creator.
            Some(description) if is_active(&description) => {
                check_key_schema(self.name(), &description)
            }
            Some(description) => {
                check_key_schema(self.name(), &description)?;
                self.wait_until_active().await
            }
            None => {
                let created_here = match self.create_table().await? {
                    Created::Active(description) => {
                        check_key_schema(self.name(), &description)?;
                        true
                    }
                    Created::Creating => {
                        self.wait_until_active().await?;
                        true
                    }
                    Created::ByAnother => {
                        self.wait_until_active().await?;
                        false
                    }
                };
                self.enable_ttl(created_here).await;
                Ok(())
            }
        }
    }

    /// The table's description, or `None` if it does not exist.
    async fn describe_table(&self) -> Result<Option<TableDescription>> {
        match self
            .client
            .describe_table()
            .table_name(self.target.table)
            .send()
            .await
        {
            Ok(output) => Ok(output.table),
            Err(err) if aws::classify(&err) == ErrorClass::NotFound => Ok(None),
            Err(err) => Err(self.target.sdk_error("DescribeTable", None, err)),
        }
    }

    /// Creates the table; says whether the answer shows it usable already, and whether
    /// another worker was creating it first.
    async fn create_table(&self) -> Result<Created> {
        let build_error = |err| {
            self.target
                .build_error("CreateTable", ErrorClass::Other, err)
        };
        let request = self
            .client
            .create_table()
            .table_name(self.target.table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr::PK)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build_error)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(attr::PK)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build_error)?,
            )
            .billing_mode(BillingMode::PayPerRequest);
        match request.send().await {
            Ok(output) => {
                tracing::info!(table = %self.target.table, "created lease table");
                Ok(output
                    .table_description
                    .filter(is_active)
                    .map_or(Created::Creating, |d| Created::Active(Box::new(d))))
            }
            // Another worker is creating it at the same time: wait for it like for ours.
            Err(err) if err.code() == Some("ResourceInUseException") => Ok(Created::ByAnother),
            Err(err) => Err(self.target.sdk_error("CreateTable", None, err)),
        }
    }

    /// Waits (the SDK's waiter) until the table is usable, then checks it is a lease table.
    async fn wait_until_active(&self) -> Result<()> {
        let description = match aws::wait_until_table_active(
            self.client,
            self.target.table,
            TABLE_ACTIVE_TIMEOUT,
        )
        .await
        {
            Ok(description) => description,
            Err(TableWaitError::NotActive { table, waited }) => {
                return Err(Error::TableNotActive { table, waited });
            }
            Err(TableWaitError::Describe { source, .. }) => {
                return Err(self.target.sdk_error("DescribeTable", None, *source));
            }
            Err(err) => {
                return Err(self
                    .target
                    .build_error("DescribeTable", ErrorClass::Other, err));
            }
        };
        check_key_schema(self.target.table, &description)
    }

    /// Turns on TTL for `expires_at`, so items of dead workers go away by themselves.
    /// Best effort: failing here only leaves cleanup to the workers' cleanup pass.
    ///
    /// `created_here`: this store's CreateTable made the table, so it has no TTL yet and
    /// the DescribeTimeToLive round trip is skipped (a new application's start-up waits
    /// for this call). Otherwise another worker created it and may have set TTL already.
    async fn enable_ttl(&self, created_here: bool) {
        let enabled = !created_here
            && self
                .client
                .describe_time_to_live()
                .table_name(self.target.table)
                .send()
                .await
                .ok()
                .and_then(|output| output.time_to_live_description)
                .is_some_and(|ttl| {
                    ttl.attribute_name() == Some(attr::EXPIRES_AT)
                        && matches!(
                            ttl.time_to_live_status(),
                            Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
                        )
                });
        if enabled {
            return;
        }
        let spec = match TimeToLiveSpecification::builder()
            .attribute_name(attr::EXPIRES_AT)
            .enabled(true)
            .build()
        {
            Ok(spec) => spec,
            Err(err) => {
                tracing::debug!(table = %self.target.table, error = %err, "cannot build the TTL specification");
                return;
            }
        };
        if let Err(err) = self
            .client
            .update_time_to_live()
            .table_name(self.target.table)
            .time_to_live_specification(spec)
            .send()
            .await
        {
            tracing::debug!(
                table = %self.target.table,
                error = %SdkFailure::new(err),
                "could not enable TTL on {}; dead workers' items are left to the cleanup pass",
                attr::EXPIRES_AT
            );
        }
    }
}

/// The key attribute names of `table` (partition key first), from DescribeTable.
pub(crate) async fn key_attribute_names(
    client: &Client,
    target: Target<'_>,
    table: &str,
) -> Result<Vec<String>> {
    let described = Target { table, ..target };
    let description = client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|err| described.sdk_error("DescribeTable (key schema)", None, err))?;
    let mut schema: Vec<&KeySchemaElement> = description
        .table()
        .map(|t| t.key_schema().iter().collect())
        .unwrap_or_default();
    // The partition key first, then the sort key.
    schema.sort_by_key(|element| *element.key_type() != KeyType::Hash);
    let names: Vec<String> = schema
        .iter()
        .map(|element| element.attribute_name().to_owned())
        .collect();
    if names.is_empty() {
        return Err(Error::CorruptItem {
            table: table.to_owned(),
            item: "(table description)".to_owned(),
            attribute: "KeySchema",
            problem: "DescribeTable returned no key schema".to_owned(),
        });
    }
    Ok(names)
}

/// DynamoDB's table naming rules: 3-255 characters of `a-z A-Z 0-9 _ . -`.
pub(crate) fn validate_table_name(name: &str) -> Result<()> {
    let reason = if name.len() < 3 {
        Some("it is shorter than 3 characters")
    } else if name.len() > 255 {
        Some("it is longer than 255 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidTableName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// What a CreateTable call of the lease table came to.
enum Created {
    /// Ours, and the answer already shows it usable.
    Active(Box<TableDescription>),
    /// Ours, still being created.
    Creating,
    /// Another worker's CreateTable came first: it sets the table up.
    ByAnother,
}

/// Whether the table accepts reads and writes.
fn is_active(description: &TableDescription) -> bool {
    matches!(
        description.table_status(),
        Some(TableStatus::Active | TableStatus::Updating)
    )
}

/// Fails with `NotALeaseTable` unless the key schema is exactly HASH `pk` of type S.
fn check_key_schema(table: &str, description: &TableDescription) -> Result<()> {
    let type_of = |name: &str| {
        description
            .attribute_definitions()
            .iter()
            .find(|definition| definition.attribute_name() == name)
            .map(|definition| definition.attribute_type().as_str().to_owned())
    };
    let keys: Vec<(String, String, Option<String>)> = description
        .key_schema()
        .iter()
        .map(|key| {
            (
                key.key_type().as_str().to_owned(),
                key.attribute_name().to_owned(),
                type_of(key.attribute_name()),
            )
        })
        .collect();
    let expected = [(
        KeyType::Hash.as_str().to_owned(),
        attr::PK.to_owned(),
        Some(ScalarAttributeType::S.as_str().to_owned()),
    )];
    if keys == expected {
        return Ok(());
    }
    let found: Vec<String> = keys
        .iter()
        .map(|(key_type, name, attribute_type)| {
            format!(
                "{key_type} {name:?} ({})",
                attribute_type.as_deref().unwrap_or("type unknown")
            )
        })
        .collect();
    Err(Error::NotALeaseTable {
        table: table.to_owned(),
        found: format!(
            "key schema is [{}], expected [HASH \"pk\" (S)]",
            found.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_follow_dynamodb_rules() {
        for good in ["abc", "my-app.leases_1", &"a".repeat(255)] {
            assert!(validate_table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "ab", "has space", "slash/", "ünï", &"a".repeat(256)] {
            let err = validate_table_name(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidTableName { .. }), "{bad}");
        }
    }
}
