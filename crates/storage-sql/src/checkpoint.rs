//! SQLite: the write-ahead log is copied back into the database file by a background task a
//! few seconds after something was written, so that under a light load the log never grows to
//! SQLite's threshold (the writer's `wal_autocheckpoint`, 4,000 pages, set where the store
//! opens), past which the write that crosses it copies the pages back itself and its request is
//! the slow one of the hundred. A passive checkpoint never waits for the writer or the readers.
//! It runs on a connection of its own, so that a request never waits for one to be opened
//! because a checkpoint holds a reader; the connection (and the thread sqlx gives it) is closed
//! once nothing has been written for a while, and a server nobody writes to is left alone: the
//! task waits for the stream position to move. Writes that do not move it (a session's last
//! use, a media record) are copied back with the next write that does, or by the writer's
//! threshold. Under a heavy load the log still crosses the threshold between two rounds, and
//! the writer checkpoints as before. (Every second instead: more CPU per message, hot pages
//! being copied back more often, and the throughput workload's p99 send 1.6x slower with a
//! larger threshold, in the benchmark's interleaved runs.)

use std::time::Duration;

use rhizome_storage::StreamPos;
use sqlx::{AnyConnection, Connection, Executor};
use tokio::sync::{oneshot, watch};

/// How long after a write the log is copied back (and at most how often).
const INTERVAL: Duration = Duration::from_secs(5);

/// How long the checkpoints' connection is kept with nothing written.
const KEEP: Duration = Duration::from_secs(60);

/// The background checkpoints of one store: they stop when it is dropped or closed.
pub(crate) struct Checkpointer {
    stop: std::sync::Mutex<Option<oneshot::Sender<()>>>,
    stopped: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `url` (a SQLite URL) after each move of `written`.
    pub(crate) fn start(url: String, written: watch::Receiver<StreamPos>) -> Self {
        let (stop, stopping) = oneshot::channel();
        let task = tokio::spawn(run(url, written, stopping));
        Self {
            stop: std::sync::Mutex::new(Some(stop)),
            stopped: tokio::sync::Mutex::new(Some(task)),
        }
    }

    /// Stops the checkpoints and closes their connection.
    pub(crate) async fn close(&self) {
        drop(self.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        if let Some(task) = self.stopped.lock().await.take() {
            let _ = task.await;
        }
    }
}

async fn run(
    url: String,
    mut written: watch::Receiver<StreamPos>,
    mut stopping: oneshot::Receiver<()>,
) {
    let mut connection: Option<AnyConnection> = None;
    loop {
        // Wait for a write; with the connection open, only so long before closing it.
        let kept = connection.is_some();
        let wait = async {
            match kept {
                true => tokio::time::timeout(KEEP, written.changed()).await.ok(),
                false => Some(written.changed().await),
            }
        };
        let changed = tokio::select! {
            changed = wait => changed,
            _ = &mut stopping => break,
        };
        match changed {
            Some(Ok(())) => {}
            Some(Err(_)) => break,
            None => {
                if let Some(open) = connection.take() {
                    let _ = open.close().await;
                }
                continue;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(INTERVAL) => {}
            _ = &mut stopping => break,
        }
        // What is written from here on is left for the next round.
        written.borrow_and_update();
        if connection.is_none() {
            connection = match open(&url).await {
                Ok(open) => Some(open),
                Err(error) => {
                    tracing::warn!(%error, "could not open a connection to copy the write-ahead log back");
                    continue;
                }
            };
        }
        if let Some(open) = connection.as_mut()
            && let Err(error) = open.execute("PRAGMA wal_checkpoint(PASSIVE)").await
        {
            tracing::warn!(%error, "could not copy the write-ahead log back to the database");
            connection = None;
        }
    }
    if let Some(open) = connection {
        let _ = open.close().await;
    }
}

async fn open(url: &str) -> sqlx::Result<AnyConnection> {
    let mut connection = AnyConnection::connect(url).await?;
    connection.execute("PRAGMA busy_timeout = 10000;").await?;
    Ok(connection)
}
