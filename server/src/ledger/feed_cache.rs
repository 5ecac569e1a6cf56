//! The recent feed, read from the database once per process and served to
//! every stream from memory.
//!
//! Without it each open stream runs its own feed query every time the head
//! moves: ten all-users watchers are ten queries per commit, which cost the
//! writers a large share of the database (measured: `credit-bench
//! --scenario feed`). With it one query per head move fills the cache, and
//! streams filter it in memory.
//!
//! **Why a stream sees exactly what the database read would give.** The
//! cache holds *every* feed item (all users, transactions and alert
//! events) with a position in `(start, end]`, in position order: it is
//! filled only by unfiltered `feed_page` reads that start at `end` and
//! move `end` to their `scanned_to`, so no position in that range is
//! missing (`feed.rs` argues that a read up to a head it read sees every
//! position below it). A stream at cursor `after` with `start <= after`
//! therefore gets from the cache exactly the items a filtered database
//! read of `(after, end]` gives. A stream behind `start` (resuming from an
//! old cursor) reads the database itself until it catches up. Trimming the
//! oldest items only moves `start` forward.

use std::collections::VecDeque;

use super::error::LedgerError;
use super::feed::{Cursor, FeedFilter, FeedItem, FeedPage};
use super::handle::Ledger;

/// Items kept in memory (the newest).
const CAPACITY: usize = 16_384;
/// Items read per refill.
const REFILL: u64 = 1_000;

/// Feed items with positions in `(start, end]`, oldest first.
#[derive(Default)]
pub struct FeedCache {
    /// `None` until the first stream reads: it then starts at that
    /// stream's cursor.
    range: Option<(i64, i64)>,
    items: VecDeque<(Cursor, FeedItem)>,
}

impl FeedCache {
    fn push(&mut self, page: FeedPage) {
        let Some((start, end)) = self.range.as_mut() else {
            return;
        };
        self.items.extend(page.entries);
        *end = (*end).max(page.scanned_to.0);
        while self.items.len() > CAPACITY {
            if let Some((cursor, _)) = self.items.pop_front() {
                *start = cursor.0;
            }
        }
    }
}

fn wanted(filter: &FeedFilter, item: &FeedItem) -> bool {
    match item {
        FeedItem::Transaction(tx) => {
            filter.transactions
                && filter.user_id.as_ref().is_none_or(|u| *u == tx.user_id)
                && (filter.kinds.is_empty() || filter.kinds.contains(&tx.kind))
        }
        FeedItem::AlertEvent(event) => {
            filter.alert_events && filter.user_id.as_ref().is_none_or(|u| *u == event.user_id)
        }
    }
}

impl Ledger {
    /// What [`Ledger::feed_page`] gives, served from this process's cache
    /// of the recent feed when `after` is in it (module docs).
    pub async fn feed_read(
        &self,
        filter: &FeedFilter,
        after: Cursor,
        limit: u64,
    ) -> Result<FeedPage, LedgerError> {
        let known_head = *self.store.feed.head().borrow();
        let mut cache = self.store.feed.cache().lock().await;
        let (start, end) = *cache.range.get_or_insert((after.0, after.0));
        if after.0 < start {
            drop(cache);
            return self.feed_page(filter, after, limit).await;
        }
        // Caught up with the cache and the head moved past it: one read
        // for every stream.
        if after.0 >= end && known_head > end {
            let page = self
                .feed_page(&FeedFilter::everything(), Cursor(end), REFILL)
                .await?;
            cache.push(page);
        }
        let Some((start, end)) = cache.range else {
            return Err(LedgerError::Internal("feed cache without a range".into()));
        };
        if after.0 < start {
            drop(cache);
            return self.feed_page(filter, after, limit).await;
        }
        let first = cache.items.partition_point(|(cursor, _)| *cursor <= after);
        let mut entries = Vec::new();
        let mut last = None;
        for (cursor, item) in cache.items.range(first..) {
            if entries.len() as u64 == limit {
                break;
            }
            last = Some(*cursor);
            if wanted(filter, item) {
                entries.push((*cursor, item.clone()));
            }
        }
        let full = entries.len() as u64 == limit;
        let scanned_to = match (full, last) {
            (true, Some(cursor)) => cursor,
            _ => Cursor(end.max(after.0)),
        };
        Ok(FeedPage {
            entries,
            scanned_to,
            // More now: a full page, or a head the cache has not reached.
            more: full || end < known_head,
        })
    }
}
