//! SQLite: the write-ahead log is copied back into the database file by a background task,
//! every few seconds, on a connection of its own, so that under a light load the log never
//! grows to SQLite's threshold (the writer's `wal_autocheckpoint`, 4,000 pages, set where the
//! store opens), past which the write that crosses it copies the pages back itself and its
//! request is the slow one of the hundred. A passive checkpoint never waits for the writer or
//! the readers. Under a heavy load the log still crosses the threshold between two rounds, and
//! the writer checkpoints as before. (Every second instead: more CPU per message, hot pages
//! being copied back more often, and the throughput workload's p99 send 1.6x slower with a
//! larger threshold, in the benchmark's interleaved runs.)

use std::sync::{Arc, Weak};
use std::time::Duration;

use rhizome_core::Result;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Executor};

use crate::db_error;

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_secs(5);

/// The background checkpoints of one store: they stop when it is dropped or closed.
pub(crate) struct Checkpointer {
    pool: AnyPool,
    _alive: Arc<()>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `url` (a SQLite URL).
    pub(crate) fn start(url: &str) -> Result<Self> {
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .test_before_acquire(false)
            .after_connect(|connection, _| {
                Box::pin(async move {
                    connection.execute("PRAGMA busy_timeout = 10000;").await?;
                    Ok(())
                })
            })
            .connect_lazy(url)
            .map_err(db_error)?;
        let alive = Arc::new(());
        let (task_pool, watch) = (pool.clone(), Arc::downgrade(&alive));
        tokio::spawn(run(task_pool, watch));
        Ok(Self { pool, _alive: alive })
    }

    /// Stops the checkpoints and closes their connection.
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

async fn run(pool: AnyPool, alive: Weak<()>) {
    let mut interval = tokio::time::interval(INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        if alive.strong_count() == 0 || pool.is_closed() {
            break;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                break;
            }
            tracing::warn!(%error, "could not copy the write-ahead log back to the database");
        }
    }
    pool.close().await;
}
