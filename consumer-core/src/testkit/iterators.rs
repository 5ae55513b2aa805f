//! Shard iterators: opaque strings naming a position in a shard, valid for a while.
//!
//! A token encodes its stream, shard, position, issue time and a random nonce, and the
//! simulation keeps the tokens it issued. Reuse within the lifetime is allowed, as in
//! DynamoDB. Expired tokens are pruned from the map; because the issue time is in the
//! token itself, a pruned token is still recognised as expired rather than unknown.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::SimClock;

/// Where an issued iterator points.
#[derive(Clone, Debug)]
pub(crate) struct IteratorState {
    pub(crate) stream_arn: String,
    pub(crate) shard_id: String,
    pub(crate) position: usize,
    pub(crate) issued_at: Instant,
}

/// Why an iterator token cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum IteratorError {
    /// Older than the iterator lifetime.
    Expired,
    /// Never issued by this simulation.
    Unknown,
}

/// The issued iterators.
#[derive(Debug, Default)]
pub(crate) struct Iterators {
    issued: HashMap<String, IteratorState>,
    prune_at: usize,
}

const MIN_PRUNE_AT: usize = 1024;

impl Iterators {
    /// Issues a token for `state`; prunes expired tokens now and then.
    pub(crate) fn issue(
        &mut self,
        state: IteratorState,
        nonce: u64,
        clock: &SimClock,
        lifetime: Duration,
    ) -> String {
        let now = state.issued_at;
        let token = format!(
            "{}|{}|{}|{}|{nonce:016x}",
            state.stream_arn,
            state.shard_id,
            state.position,
            clock.elapsed_millis(state.issued_at),
        );
        self.issued.insert(token.clone(), state);
        if self.issued.len() > self.prune_at.max(MIN_PRUNE_AT) {
            self.issued
                .retain(|_, s| now.saturating_duration_since(s.issued_at) <= lifetime);
            self.prune_at = self.issued.len() * 2;
        }
        token
    }

    /// The state behind a token, if it is known and not expired.
    pub(crate) fn resolve(
        &self,
        token: &str,
        now: Instant,
        clock: &SimClock,
        lifetime: Duration,
    ) -> Result<IteratorState, IteratorError> {
        let expired = |issued_at: Instant| now.saturating_duration_since(issued_at) > lifetime;
        match self.issued.get(token) {
            Some(state) if expired(state.issued_at) => Err(IteratorError::Expired),
            Some(state) => Ok(state.clone()),
            None => {
                let issued_millis = token
                    .rsplit('|')
                    .nth(1)
                    .and_then(|millis| millis.parse::<u64>().ok());
                match issued_millis {
                    Some(millis) if expired(clock.instant_at(millis)) => {
                        Err(IteratorError::Expired)
                    }
                    _ => Err(IteratorError::Unknown),
                }
            }
        }
    }
}
