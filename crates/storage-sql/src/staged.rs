//! Push actions staged on SQLite: an event's rows are appended to
//! `event_push_actions_staged` and moved to `event_push_actions` in bulk once enough have
//! gathered (why: migration 11). Reads see both tables through the `push_actions` view.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rhizome_core::Result;
use sqlx::AnyPool;

use crate::db_error;

/// Staged rows gathered before they are moved, in one transaction (a room of 1,000 members
/// stages 1,000 rows an event).
pub(crate) const MOVE_AT: usize = 10_000;

/// How many rows are staged, and the moves of them.
#[derive(Debug, Default)]
pub(crate) struct StagedPushActions {
    rows: AtomicUsize,
    /// A move was asked for by [`StagedPushActions::add`] and has not started yet.
    move_asked: AtomicBool,
    /// Held by the move under way: one at a time.
    moving: tokio::sync::Mutex<()>,
}

impl StagedPushActions {
    pub(crate) fn new(rows: usize) -> Self {
        Self { rows: AtomicUsize::new(rows), ..Self::default() }
    }

    /// Counts an event's newly staged rows; true when the caller should move them all now
    /// (once: until that move starts, no other caller is told to).
    pub(crate) fn add(&self, rows: usize) -> bool {
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        total >= MOVE_AT && !self.move_asked.swap(true, Ordering::AcqRel)
    }

    /// The rows staged now (as counted).
    pub(crate) fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    /// Moves every staged row to `event_push_actions` in one write transaction (so no read
    /// sees a row twice or not at all), after any move under way; the number moved. A row
    /// already there (none should be) is dropped rather than left to stop every later move.
    pub(crate) async fn move_all(&self, write: &AnyPool) -> Result<u64> {
        let _one_at_a_time = self.moving.lock().await;
        self.move_asked.store(false, Ordering::Release);
        let mut transaction = write.begin().await.map_err(db_error)?;
        let moved = sqlx::query(
            "INSERT INTO event_push_actions (user_id, room_id, stream_pos, notify, highlight, \
             thread_id, actions) \
             SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions \
             FROM event_push_actions_staged WHERE true ORDER BY user_id, room_id, stream_pos \
             ON CONFLICT DO NOTHING",
        )
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?
        .rows_affected();
        let staged = sqlx::query("DELETE FROM event_push_actions_staged")
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?
            .rows_affected();
        transaction.commit().await.map_err(db_error)?;
        // Rows counted after their event committed may be moved before they are counted: the
        // count never goes below zero.
        let staged = usize::try_from(staged).unwrap_or(usize::MAX);
        let _ = self.rows.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |rows| {
            Some(rows.saturating_sub(staged))
        });
        Ok(moved)
    }
}
