//! When a batch being gathered stops waiting for more records: the batching window's rule,
//! once for a task's single processor ([`super::session`]'s `gather`) and for each key
//! partition ([`super::partitioned`]).
//!
//! Like Lambda's `MaximumBatchingWindowInSeconds`, which ends early once the batch is full
//! or its payload reaches 6 MB, a batch waits for more records only while waiting can
//! still grow it: it is smaller than the maximum batch size, its window (counted from when
//! its first record started waiting) has not ended, more records can come in, and the
//! worker's memory budget has room for the next page. The budget is the payload limit:
//! while a reservation waits for bytes ([`ByteBudget::is_short`]), the next page cannot be
//! fetched until bytes held are given back, and the records a batch holds give theirs back
//! only once delivered, so waiting out the window could not grow the batch (with a budget
//! that admits one page, one record per window: explorer seed 110687 did not drain). Pages
//! already fetched always join a batch, up to its size.

use std::time::Duration;

use tokio::time::Instant;

use crate::budget::ByteBudget;

/// The batching window of a task's batches, and the budget that can end it early.
pub(crate) struct BatchingWindow {
    window: Duration,
    budget: ByteBudget,
}

impl BatchingWindow {
    pub(crate) fn new(window: Duration, budget: ByteBudget) -> Self {
        Self { window, budget }
    }

    /// Whether a batch of `len` records (at most `max`), waiting since `since`, waits for
    /// more at `now`; `more_may_come` says whether its source can still bring records.
    pub(crate) fn waits(
        &self,
        len: usize,
        max: usize,
        since: Instant,
        now: Instant,
        more_may_come: bool,
    ) -> bool {
        len < max && more_may_come && now < self.ends(since) && !self.budget.is_short()
    }

    /// When the window of a batch waiting since `since` ends.
    pub(crate) fn ends(&self, since: Instant) -> Instant {
        since + self.window
    }

    /// Resolves when a batch waiting since `since` stops waiting: its window ends, or the
    /// budget has no room for the next page.
    pub(crate) async fn closes(&self, since: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(self.ends(since)) => {}
            () = self.budget.short() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_window_ends_once_the_budget_keeps_the_next_page_out() {
        let budget = ByteBudget::new(100);
        let window = BatchingWindow::new(WINDOW, budget.clone());
        let since = Instant::now();
        // The batch's page holds most of the budget; the next page's reservation waits.
        let _batch = budget.reserve(80).await;
        assert!(window.waits(1, 10, since, Instant::now(), true));
        let next_page = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(40).await }
        });
        window.closes(since).await;
        assert_eq!(
            Instant::now(),
            since,
            "closed at once, not after the window"
        );
        assert!(!window.waits(1, 10, since, Instant::now(), true));
        next_page.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_with_room_in_the_budget_is_waited_out_unless_the_batch_is_full() {
        let budget = ByteBudget::new(100);
        let window = BatchingWindow::new(WINDOW, budget.clone());
        let since = Instant::now();
        let _batch = budget.reserve(50).await;
        let _next_page = budget.reserve(40).await;
        assert!(window.waits(9, 10, since, since, true));
        assert!(!window.waits(10, 10, since, since, true), "full");
        assert!(
            !window.waits(9, 10, since, since, false),
            "nothing more can come"
        );
        window.closes(since).await;
        assert_eq!(Instant::now(), since + WINDOW);
        assert!(!window.waits(9, 10, since, Instant::now(), true));
    }
}
