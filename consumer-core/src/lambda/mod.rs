//! Coming from AWS Lambda: the same event shape, the same filters, the same answers.
//!
//! - [`event`]: a stream record (and a batch) in the JSON shape Lambda gives a function.
//! - [`FilterPattern`] / [`FilterCriteria`]: Lambda's event filtering patterns, matched
//!   against that shape; [`ConsumerBuilder::with_filter_pattern`] applies them as the
//!   consumer's filter.
//! - [`PartialBatchResponse`]: a handler's `{"batchItemFailures": [...]}` answer, read into
//!   the position a [`BatchFailure`] names.
//!
//! [`ConsumerBuilder::with_filter_pattern`]: crate::ConsumerBuilder::with_filter_pattern
//! [`BatchFailure`]: crate::BatchFailure

pub mod event;
mod pattern;
mod response;
#[cfg(test)]
mod tests;

pub use pattern::{FilterPattern, MAX_PATTERN_CHARS, PatternError};
pub use response::{PartialBatchResponse, ResponseError};

use aws_sdk_dynamodbstreams::types::Record;
use serde_json::Value;

/// The most patterns one consumer takes (Lambda's quota, raised to its maximum: 5 by
/// default, 10 on request).
pub const MAX_FILTER_PATTERNS: usize = 10;

/// Several patterns, OR-ed: a record is kept when any of them matches (Lambda's
/// `FilterCriteria`).
#[derive(Clone, Debug, PartialEq)]
pub struct FilterCriteria {
    patterns: Vec<FilterPattern>,
}

impl FilterCriteria {
    /// Parses every pattern; the error names the pattern (1-based) and the JSON path of
    /// what is wrong in it. At least one and at most [`MAX_FILTER_PATTERNS`].
    pub fn parse<I>(patterns: I) -> Result<Self, PatternError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let texts: Vec<I::Item> = patterns.into_iter().collect();
        if texts.is_empty() || texts.len() > MAX_FILTER_PATTERNS {
            return Err(PatternError {
                path: "$".into(),
                problem: format!(
                    "{} patterns given; Lambda takes 1 to {MAX_FILTER_PATTERNS}",
                    texts.len()
                ),
            });
        }
        let patterns = texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                FilterPattern::parse(text.as_ref()).map_err(|e| PatternError {
                    path: e.path,
                    problem: if texts.len() > 1 {
                        format!("{} (pattern {} of {})", e.problem, i + 1, texts.len())
                    } else {
                        e.problem
                    },
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// Whether any pattern matches `event` (a record in Lambda's JSON shape).
    pub fn matches(&self, event: &Value) -> bool {
        self.patterns.iter().any(|p| p.matches(event))
    }

    /// Whether any pattern matches `record`, shown as Lambda shows it. The filter sees no
    /// `eventSourceARN` (the same for every record of a stream, so Lambda users never
    /// filter on it).
    pub fn matches_record(&self, record: &Record) -> bool {
        self.matches(&event::record_to_json(record, None))
    }
}
