//! Stream positions: taken by writers, published to readers in order.
//!
//! On SQLite (one process) a lock in memory hands out positions one write at a time, so they
//! become visible in order. On PostgreSQL several processes write at once: a writer takes its
//! position from a sequence and holds an advisory lock on it until its transaction ends; the
//! position readers may read up to (the "persisted up to" watermark) is the lowest position
//! still in flight minus one (`rhizome_stream_watermark()`, migration 8). A reader therefore
//! never skips a position a slower writer commits later. Commits are announced to the other
//! processes (`NOTIFY rhizome_stream`), which then read the watermark again. The announcement is
//! sent after the commit, by one task per process that sends only the latest position when
//! several commits came meanwhile: a `NOTIFY` inside a transaction takes a database-wide lock at
//! its commit and holds it through the WAL flush, which made every process's event commits wait
//! for one another.

use std::{
    sync::atomic::{AtomicI64, Ordering},
    time::{Duration, Instant},
};

use rhizome_core::Result;
use rhizome_storage::StreamPos;
use sqlx::{AnyConnection, AnyPool};
use tokio::sync::{Mutex, MutexGuard, watch};

use crate::{Backend, SqlStore, db_error, recent::Touch};

/// How long a writer waits, after its commit, for the positions before its own to be
/// committed (by other processes) before it answers anyway.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(10);

/// The stream's positions as this process sees them.
pub(crate) struct StreamPositions {
    /// SQLite: the last position taken, held across a write so positions commit in order.
    local: Mutex<StreamPos>,
    /// The greatest position below which everything is committed and visible.
    current: AtomicI64,
    /// Follows `current`.
    changed: watch::Sender<StreamPos>,
    /// One watermark read at a time.
    refreshing: Mutex<()>,
    /// PostgreSQL: the last position this process committed, for the announcing task.
    committed: watch::Sender<StreamPos>,
}

impl StreamPositions {
    pub(crate) fn new(start: StreamPos) -> Self {
        Self {
            local: Mutex::new(start),
            current: AtomicI64::new(start),
            changed: watch::channel(start).0,
            refreshing: Mutex::new(()),
            committed: watch::channel(start).0,
        }
    }

    /// The position readers may read up to.
    pub(crate) fn current(&self) -> StreamPos {
        self.current.load(Ordering::SeqCst)
    }

    /// Follows [`StreamPositions::current`].
    pub(crate) fn subscribe(&self) -> watch::Receiver<StreamPos> {
        self.changed.subscribe()
    }

    /// Moves the watermark forward (never back).
    pub(crate) fn advance(&self, pos: StreamPos) {
        let before = self.current.fetch_max(pos, Ordering::SeqCst);
        if pos > before {
            self.changed.send_if_modified(|current| {
                let moved = pos > *current;
                *current = (*current).max(pos);
                moved
            });
        }
    }

    /// Follows the positions this process committed (PostgreSQL), for announcing them.
    pub(crate) fn subscribe_committed(&self) -> watch::Receiver<StreamPos> {
        self.committed.subscribe()
    }

    /// Records a committed position for the announcing task (never moves back).
    fn committed(&self, pos: StreamPos) {
        self.committed.send_if_modified(|last| {
            let moved = pos > *last;
            *last = (*last).max(pos);
            moved
        });
    }

    /// PostgreSQL: reads the watermark from the database and moves forward to it.
    pub(crate) async fn refresh(&self, pool: &AnyPool) -> Result<StreamPos> {
        let _one = self.refreshing.lock().await;
        let watermark: i64 = sqlx::query_scalar("SELECT rhizome_stream_watermark()")
            .fetch_one(pool)
            .await
            .map_err(db_error)?;
        self.advance(watermark);
        Ok(self.current())
    }

    /// PostgreSQL: waits until every position up to `pos` is committed (ours is; earlier ones
    /// may belong to slower writers), reading the watermark again as other processes commit.
    async fn catch_up(&self, pool: &AnyPool, pos: StreamPos) -> Result<()> {
        let deadline = Instant::now() + CATCH_UP_LIMIT;
        let mut changed = self.subscribe();
        loop {
            if self.refresh(pool).await? >= pos {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(pos, current = self.current(), "stream positions lag behind");
                return Ok(());
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            let _ = tokio::time::timeout(wait, changed.changed()).await;
        }
    }
}

impl SqlStore {
    /// Starts a write transaction that takes the next stream position. The position becomes
    /// visible to readers only when [`StreamWrite::commit`] succeeds; dropping the write rolls
    /// everything back (on PostgreSQL the position is then skipped).
    pub(crate) async fn begin_stream_write(&self) -> Result<StreamWrite<'_>> {
        let transaction = self.write.begin().await.map_err(db_error)?;
        self.stream_write_in(transaction).await
    }

    /// Takes the next stream position inside a transaction already begun (one that holds a
    /// room's lock).
    pub(crate) async fn stream_write_in(
        &self,
        mut transaction: sqlx::Transaction<'static, sqlx::Any>,
    ) -> Result<StreamWrite<'_>> {
        match self.backend {
            Backend::Sqlite => {
                let guard = self.stream.local.lock().await;
                let pos = *guard + 1;
                Ok(StreamWrite {
                    guard: Some(guard),
                    transaction,
                    pos,
                    store: self,
                    touched: Vec::new(),
                    counter_written: false,
                })
            }
            Backend::Postgres => {
                let pos: i64 = sqlx::query_scalar("SELECT rhizome_take_stream_pos()")
                    .fetch_one(&mut *transaction)
                    .await
                    .map_err(db_error)?;
                Ok(StreamWrite {
                    guard: None,
                    transaction,
                    pos,
                    store: self,
                    touched: Vec::new(),
                    counter_written: false,
                })
            }
        }
    }
}

/// A write transaction holding the next stream position.
pub(crate) struct StreamWrite<'a> {
    /// SQLite: the allocator, held until the commit.
    guard: Option<MutexGuard<'a, StreamPos>>,
    transaction: sqlx::Transaction<'static, sqlx::Any>,
    pos: StreamPos,
    store: &'a SqlStore,
    /// What the write changes, recorded at its commit (see [`crate::recent`]).
    touched: Vec<Touch>,
    /// SQLite: the counter row already holds `pos` (written by one of the write's own
    /// statements), so the commit need not write it.
    counter_written: bool,
}

impl StreamWrite<'_> {
    /// The position this write takes.
    pub(crate) fn pos(&self) -> StreamPos {
        self.pos
    }

    /// Names something this write changes, for [`crate::recent`]. Every write to a table
    /// whose changes a sync asks about must name what it changes.
    pub(crate) fn touch(&mut self, touch: Touch) {
        self.touched.push(touch);
    }

    /// Says that one of the write's statements set the SQLite counter row to [`Self::pos`]
    /// (every stream write must leave it there by its commit).
    pub(crate) fn counter_written(&mut self) {
        self.counter_written = true;
    }

    /// The transaction's connection.
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.transaction
    }

    /// Commits and publishes the position. On PostgreSQL it returns once every earlier
    /// position is committed too, so what was written is readable from here on.
    pub(crate) async fn commit(mut self) -> Result<StreamPos> {
        let stream = &self.store.stream;
        match self.guard.take() {
            Some(mut guard) => {
                if !self.counter_written {
                    sqlx::query("UPDATE stream_counter SET pos = $1 WHERE id = 1")
                        .bind(self.pos)
                        .execute(&mut *self.transaction)
                        .await
                        .map_err(db_error)?;
                }
                self.transaction.commit().await.map_err(db_error)?;
                *guard = self.pos;
                // Known here before the position is readable.
                self.store.recent.record(self.pos, &self.touched);
                stream.advance(self.pos);
            }
            None => {
                self.transaction.commit().await.map_err(db_error)?;
                stream.committed(self.pos);
                stream.catch_up(&self.store.write, self.pos).await?;
            }
        }
        Ok(self.pos)
    }
}
