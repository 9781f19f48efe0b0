//! SQLite: the write-ahead log is copied back into the database file by a background task a
//! few seconds after something was written, so that under a light load the log never grows to
//! SQLite's threshold (the writer's `wal_autocheckpoint`, 4,000 pages, set where the store
//! opens), past which the write that crosses it copies the pages back itself and its request is
//! the slow one of the hundred. A passive checkpoint never waits for the writer or the readers;
//! it runs on a reading connection (`query_only` forbids changing the data, not copying the log
//! back), so it needs no connection or thread of its own. Under a heavy load the log still
//! crosses the threshold between two rounds, and the writer checkpoints as before. (Every
//! second instead: more CPU per message, hot pages being copied back more often, and the
//! throughput workload's p99 send 1.6x slower with a larger threshold, in the benchmark's
//! interleaved runs.) A server nobody writes to is left alone: the task waits for the stream
//! position to move, so writes that do not move it (a session's last use, a media record) are
//! copied back with the next write that does, or by the writer's threshold.

use std::time::Duration;

use rhizome_storage::StreamPos;
use sqlx::AnyPool;
use tokio::sync::{oneshot, watch};

/// How long after a write the log is copied back (and at most how often).
const INTERVAL: Duration = Duration::from_secs(5);

/// The background checkpoints of one store: they stop when it is dropped or its pools close.
pub(crate) struct Checkpointer {
    _stop: oneshot::Sender<()>,
}

impl Checkpointer {
    /// Starts checkpointing on `read` (a SQLite pool) after each move of `written`.
    pub(crate) fn start(read: AnyPool, written: watch::Receiver<StreamPos>) -> Self {
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(run(read, written, stopped));
        Self { _stop: stop }
    }
}

async fn run(
    pool: AnyPool,
    mut written: watch::Receiver<StreamPos>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            changed = written.changed() => if changed.is_err() { break },
            _ = &mut stopped => break,
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = &mut stopped => break,
        }
        // What is written from here on is left for the next round.
        written.borrow_and_update();
        if pool.is_closed() {
            break;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                break;
            }
            tracing::warn!(%error, "could not copy the write-ahead log back to the database");
        }
    }
}
