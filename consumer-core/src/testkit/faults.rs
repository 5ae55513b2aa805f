//! Faults and call accounting: which simulated API calls fail, and how many were made.
//!
//! Real streams throttle and fail; a consumer is only trustworthy if it survives that.
//! Tests either queue exact failures ("the next 3 GetRecords fail with
//! `InternalServerError`") or set a throttle probability drawn from the simulation's
//! seeded RNG, so a failing run can be replayed.

use std::collections::VecDeque;
use std::fmt;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::streams::ApiErrorKind;

/// The simulated API operations, for fault injection and call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SimOperation {
    /// DescribeTable (`latest_stream_arn`).
    DescribeTable,
    /// DescribeStream (`describe_stream` and `child_shards`).
    DescribeStream,
    /// GetShardIterator (`shard_iterator`).
    GetShardIterator,
    /// GetRecords (`get_records`).
    GetRecords,
}

impl SimOperation {
    /// Every operation.
    pub const ALL: [Self; 4] = [
        Self::DescribeTable,
        Self::DescribeStream,
        Self::GetShardIterator,
        Self::GetRecords,
    ];

    /// The API operation's name, as in [`ApiError::operation`](crate::streams::ApiError).
    pub fn name(self) -> &'static str {
        match self {
            Self::DescribeTable => "DescribeTable",
            Self::DescribeStream => "DescribeStream",
            Self::GetShardIterator => "GetShardIterator",
            Self::GetRecords => "GetRecords",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::DescribeTable => 0,
            Self::DescribeStream => 1,
            Self::GetShardIterator => 2,
            Self::GetRecords => 3,
        }
    }
}

impl fmt::Display for SimOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per operation: queued failures, throttle probability, counters.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    injected: [VecDeque<(ApiErrorKind, usize)>; 4],
    throttle: [f64; 4],
    calls: [u64; 4],
    failures: [u64; 4],
}

impl Faults {
    /// Queues `times` failures of `kind` for `operation`, after those already queued.
    pub(crate) fn inject(&mut self, operation: SimOperation, kind: ApiErrorKind, times: usize) {
        if times > 0 {
            self.injected[operation.index()].push_back((kind, times));
        }
    }

    /// Sets the probability (clamped to 0..=1; NaN counts as 0) that a call is throttled.
    pub(crate) fn set_throttle_rate(&mut self, operation: SimOperation, probability: f64) {
        let probability = if probability.is_nan() {
            0.0
        } else {
            probability.clamp(0.0, 1.0)
        };
        self.throttle[operation.index()] = probability;
    }

    /// Drops every queued failure and throttle rate; counters stay.
    pub(crate) fn clear(&mut self) {
        self.injected = Default::default();
        self.throttle = [0.0; 4];
    }

    /// Counts a call and decides whether it fails. Queued failures come first; the RNG is
    /// drawn only when the throttle rate is positive, so turning throttling on for one
    /// operation does not change the random values seen by the others.
    pub(crate) fn on_call(
        &mut self,
        operation: SimOperation,
        rng: &mut SmallRng,
    ) -> Option<(ApiErrorKind, &'static str)> {
        let i = operation.index();
        self.calls[i] += 1;
        let queue = &mut self.injected[i];
        let verdict = if let Some((kind, left)) = queue.front_mut() {
            let kind = *kind;
            *left -= 1;
            if *left == 0 {
                queue.pop_front();
            }
            Some((kind, "injected fault"))
        } else if self.throttle[i] > 0.0 && rng.random_bool(self.throttle[i]) {
            Some((
                ApiErrorKind::Throttled,
                "simulated throttling: rate exceeded",
            ))
        } else {
            None
        };
        if verdict.is_some() {
            self.failures[i] += 1;
        }
        verdict
    }

    /// Calls made to `operation`, failed ones included.
    pub(crate) fn calls(&self, operation: SimOperation) -> u64 {
        self.calls[operation.index()]
    }

    /// Calls to `operation` that failed by injection or throttling.
    pub(crate) fn failures(&self, operation: SimOperation) -> u64 {
        self.failures[operation.index()]
    }
}
