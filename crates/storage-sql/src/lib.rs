//! Rhizome's SQL storage: one implementation of the storage traits that runs on SQLite (the
//! embedded default: WAL, one writer and a pool of readers) and on PostgreSQL (for scale-out).
//!
//! The SQL is written once, in the dialect both engines share (`$1` parameters, `ON CONFLICT`,
//! `RETURNING`, recursive CTEs, BIGINT/TEXT columns), through sqlx's `Any` driver. Schema
//! migrations are numbered files applied at start-up.

mod accounts;
mod checkpoint;
mod cluster;
pub mod copy;
mod e2ee;
mod federation;
mod jobs;
mod media;
mod migrations;
mod moderation;
mod recent;
mod rooms;
mod rooms_query;
mod scheduled;
mod sessions;
mod staged;
mod state;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
mod user_data;

use std::sync::Arc;

use rhizome_core::{Error, Result};
use rhizome_storage::{DataStore, ProcessHandler, StreamPos};
use sqlx::{
    AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
};
use tokio::sync::watch;

pub use cluster::MAX_PAYLOAD as MAX_MESSAGE_BYTES;

/// The database engine behind a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite, in a file under the data directory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The SQL store.
pub struct SqlStore {
    backend: Backend,
    /// Writes go through here: one connection on SQLite (its one writer).
    write: AnyPool,
    /// Reads go through here.
    read: AnyPool,
    /// PostgreSQL: the transactions that hold a room's lock while its next event is built
    /// (apart from `write`, so building, which reads and writes, never waits for them).
    locks: Option<AnyPool>,
    /// Stream positions taken and readable.
    stream: Arc<StreamPositions>,
    /// PostgreSQL: the other processes on the database.
    cluster: Option<cluster::Cluster>,
    /// SQLite: what changed lately, for answering "nothing new" without a query.
    recent: Arc<recent::Recent>,
    /// SQLite: the push actions staged, to be moved in bulk.
    staged: Arc<staged::StagedPushActions>,
    /// SQLite: the write-ahead log copied back in the background.
    checkpoints: Option<checkpoint::Checkpointer>,
}

impl SqlStore {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    /// `sqlite://path` or `postgres://…`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::bug("database URL must start with sqlite: or postgres:"));
        };
        let (write, read) = match backend {
            Backend::Sqlite => {
                let url = sqlite_url(url);
                // An SQLite connection is a file handle: it cannot go stale the way a network
                // connection can, so it is not pinged before each use. (The ping would double
                // the round trips to the connection's thread, which dominate a sync's cost.)
                // The writer's page cache holds a big write whole (16 MiB at most: moving the
                // staged push actions dirties a page per user, which a 2 MiB cache spilled to
                // the WAL in mid-transaction), and a write copies the WAL back past 4,000 pages
                // rather than 1,000, so a page many writes dirty is copied back once for all;
                // a task of its own (`checkpoint`) copies it back between, so that a light load
                // never reaches that.
                let write = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .test_before_acquire(false)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection
                                .execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF; \
                                     PRAGMA cache_size = -16384; \
                                     PRAGMA wal_autocheckpoint = 4000;",
                                )
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(db_error)?;
                let read = AnyPoolOptions::new()
                    .max_connections(max_connections.max(1))
                    .test_before_acquire(false)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection
                                .execute("PRAGMA busy_timeout = 10000; PRAGMA query_only = ON;")
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await
                    .map_err(db_error)?;
                (write, read)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .connect(url)
                    .await
                    .map_err(db_error)?;
                (pool.clone(), pool)
            }
        };
        let locks = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                AnyPoolOptions::new()
                    .max_connections((max_connections / 2).max(2))
                    .connect_lazy(url)
                    .map_err(db_error)?,
            ),
        };
        let mut store = Self {
            backend,
            write,
            read,
            locks,
            stream: Arc::new(StreamPositions::new(0)),
            cluster: None,
            recent: Arc::new(recent::Recent::new(false, 0)),
            staged: Arc::default(),
            checkpoints: None,
        };
        migrations::apply(&store).await?;
        match backend {
            Backend::Sqlite => {
                let pos: i64 = sqlx::query_scalar("SELECT pos FROM stream_counter WHERE id = 1")
                    .fetch_one(&store.write)
                    .await
                    .map_err(db_error)?;
                store.stream = Arc::new(StreamPositions::new(pos));
                store.recent = Arc::new(recent::Recent::new(true, pos));
                let staged: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM event_push_actions_staged")
                        .fetch_one(&store.write)
                        .await
                        .map_err(db_error)?;
                store.staged = Arc::new(staged::StagedPushActions::new(
                    usize::try_from(staged).unwrap_or_default(),
                ));
                store.checkpoints = Some(checkpoint::Checkpointer::start(
                    sqlite_url(url),
                    store.stream.subscribe(),
                ));
            }
            Backend::Postgres => {
                store.stream.refresh(&store.write).await?;
                store.cluster = Some(
                    cluster::Cluster::start(url, store.write.clone(), store.stream.clone()).await?,
                );
            }
        }
        Ok(store)
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite: moves the push actions staged so far to their table now (persisting events
    /// does when enough have gathered); how many. PostgreSQL stages none.
    pub async fn move_staged_push_actions(&self) -> Result<u64> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        self.staged.move_all(&self.write).await
    }

    /// SQLite: how many push-action rows are staged now (as counted since the store opened).
    pub fn staged_push_action_rows(&self) -> usize {
        self.staged.rows()
    }

    /// Counts push actions an event staged, and moves them all in the background when enough
    /// have gathered.
    fn staged_push_actions(&self, rows: usize) {
        if self.backend != Backend::Sqlite || rows == 0 || !self.staged.add(rows) {
            return;
        }
        let (staged, write) = (self.staged.clone(), self.write.clone());
        tokio::spawn(async move {
            match staged.move_all(&write).await {
                Ok(moved) => tracing::debug!(moved, "moved the staged push actions"),
                // Closing at shutdown: the rows stay staged, read as before, moved next time.
                Err(_) if write.is_closed() => {}
                Err(error) => tracing::warn!(%error, "could not move the staged push actions"),
            }
        });
    }

    /// Writes a consistent, compacted copy of the whole SQLite database to `path`, which must
    /// not exist (SQLite's `VACUUM INTO`: a snapshot, safe while a server writes). PostgreSQL
    /// databases are backed up with PostgreSQL's own tools instead.
    pub async fn backup_into(&self, path: &std::path::Path) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(Error::bug("only SQLite databases are copied by Rhizome; use pg_dump"));
        }
        let path = path.to_str().ok_or_else(|| Error::bug("the backup path is not UTF-8"))?;
        sqlx::query("VACUUM INTO $1").bind(path).execute(&self.write).await.map_err(db_error)?;
        Ok(())
    }

    /// Sends what is left for the other processes, closes the pools, waiting for connections
    /// to finish, and stops listening to the other processes.
    pub async fn close(&self) {
        if let Some(cluster) = &self.cluster {
            cluster.flush().await;
            cluster.stop();
        }
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.close().await;
        }
        self.write.close().await;
        self.read.close().await;
        if let Some(locks) = &self.locks {
            locks.close().await;
        }
    }
}

impl DataStore for SqlStore {
    fn current_stream_pos(&self) -> StreamPos {
        self.stream.current()
    }

    fn subscribe_stream_pos(&self) -> watch::Receiver<StreamPos> {
        self.stream.subscribe()
    }

    fn shared_by_processes(&self) -> bool {
        self.cluster.is_some()
    }

    fn publish_to_processes(&self, message: String) {
        if let Some(cluster) = &self.cluster {
            cluster.publish(message);
        }
    }

    fn set_process_handler(&self, handler: ProcessHandler) {
        if let Some(cluster) = &self.cluster {
            cluster.set_handler(handler);
        }
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

use stream::StreamPositions;

/// Maps a database error to an internal error.
#[track_caller]
pub(crate) fn db_error(error: sqlx::Error) -> Error {
    Error::internal(error)
}

/// Whether a database error is a unique-key violation.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| matches!(error.kind(), sqlx::error::ErrorKind::UniqueViolation))
}

/// Whether a connection is to PostgreSQL (for the few statements whose SQL differs).
/// A SQLite URL that creates the database if it is missing (unless it says otherwise).
fn sqlite_url(url: &str) -> String {
    if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") }
}

pub(crate) fn is_postgres(connection: &sqlx::AnyConnection) -> bool {
    connection.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME
}

/// `$first, $first+1, …` for a dynamic `IN` list of `count` parameters.
pub(crate) fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|index| format!("${index}")).collect::<Vec<_>>().join(", ")
}

/// Parses a stored identifier, treating a malformed one as database corruption.
pub(crate) fn parse_id<T>(value: String) -> Result<T>
where
    T: TryFrom<String>,
    T::Error: std::fmt::Display,
{
    T::try_from(value)
        .map_err(|error| Error::bug(format!("malformed identifier in database: {error}")))
}

/// Stored booleans are BIGINT 0/1.
pub(crate) fn flag(value: bool) -> i64 {
    i64::from(value)
}
