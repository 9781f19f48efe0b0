//! Rhizome's SQL storage: one implementation of the storage traits that runs on SQLite (the
//! embedded default: WAL, one writer and a pool of readers) and on PostgreSQL (for scale-out).
//!
//! The SQL is written once, in the dialect both engines share (`$1` parameters, `ON CONFLICT`,
//! `RETURNING`, recursive CTEs, BIGINT/TEXT columns), through sqlx's `Any` driver. Schema
//! migrations are numbered files applied at start-up.

mod accounts;
mod e2ee;
mod federation;
mod media;
mod migrations;
mod moderation;
mod rooms;
mod rooms_query;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod user_data;

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

use rhizome_core::{Error, Result};
use rhizome_storage::{DataStore, StreamPos};
use sqlx::{
    AnyConnection, AnyPool, Executor,
    any::{AnyPoolOptions, install_default_drivers},
};
use tokio::sync::Mutex;

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
    /// The stream position allocator: held across a write transaction that takes a position,
    /// so positions become visible in order.
    stream_lock: Mutex<StreamPos>,
    /// The greatest committed stream position.
    current_pos: Arc<AtomicI64>,
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
                let url =
                    if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
                // An SQLite connection is a file handle: it cannot go stale the way a network
                // connection can, so it is not pinged before each use. (The ping would double
                // the round trips to the connection's thread, which dominate a sync's cost.)
                let write = AnyPoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .test_before_acquire(false)
                    .after_connect(|connection, _| {
                        Box::pin(async move {
                            connection
                                .execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF;",
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
        let store = Self {
            backend,
            write,
            read,
            stream_lock: Mutex::new(0),
            current_pos: Arc::new(AtomicI64::new(0)),
        };
        migrations::apply(&store).await?;
        let pos: i64 = sqlx::query_scalar("SELECT pos FROM stream_counter WHERE id = 1")
            .fetch_one(&store.write)
            .await
            .map_err(db_error)?;
        *store.stream_lock.lock().await = pos;
        store.current_pos.store(pos, Ordering::SeqCst);
        Ok(store)
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
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

    /// Closes the pools, waiting for connections to finish.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Starts a write transaction that takes the next stream position. The position becomes
    /// visible to readers only when [`StreamWrite::commit`] succeeds; dropping the write rolls
    /// everything back and frees the position.
    async fn begin_stream_write(&self) -> Result<StreamWrite<'_>> {
        let guard = self.stream_lock.lock().await;
        let pos = *guard + 1;
        let transaction = self.write.begin().await.map_err(db_error)?;
        Ok(StreamWrite { guard, transaction, pos, current_pos: &self.current_pos })
    }
}

/// A write transaction holding the next stream position.
pub(crate) struct StreamWrite<'a> {
    guard: tokio::sync::MutexGuard<'a, StreamPos>,
    transaction: sqlx::Transaction<'static, sqlx::Any>,
    pos: StreamPos,
    current_pos: &'a AtomicI64,
}

impl StreamWrite<'_> {
    /// The position this write takes.
    pub(crate) fn pos(&self) -> StreamPos {
        self.pos
    }

    /// The transaction's connection.
    pub(crate) fn connection(&mut self) -> &mut AnyConnection {
        &mut self.transaction
    }

    /// Records the position, commits, and publishes the position.
    pub(crate) async fn commit(mut self) -> Result<StreamPos> {
        sqlx::query("UPDATE stream_counter SET pos = $1 WHERE id = 1")
            .bind(self.pos)
            .execute(&mut *self.transaction)
            .await
            .map_err(db_error)?;
        self.transaction.commit().await.map_err(db_error)?;
        *self.guard = self.pos;
        self.current_pos.store(self.pos, Ordering::SeqCst);
        Ok(self.pos)
    }
}

impl DataStore for SqlStore {
    fn current_stream_pos(&self) -> StreamPos {
        self.current_pos.load(Ordering::SeqCst)
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

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
