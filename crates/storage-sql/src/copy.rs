//! Copying a SQLite database into a PostgreSQL one (`rhizome admin migrate-db`), so a
//! community that started on the embedded default can move to the engine several processes
//! share.
//!
//! Both schemas are first brought to this build's version; then each table is copied in one
//! PostgreSQL transaction (emptied, filled in batches, its identity sequence moved past the
//! copied IDs, and recorded in `rhizome_copied_tables`), so a copy that stops half-way is
//! simply run again: tables already recorded are skipped, a half-copied one is copied afresh.
//! At the end the stream position sequence continues after the copied positions, and the copy
//! is verified: every table's row count, and the latest events, byte for byte.

use rhizome_core::{Error, Result};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Row, SqliteConnection};

use crate::{SqlStore, db_error};

/// How many of the latest events are compared after the copy.
const EVENTS_CHECKED: i64 = 100;

/// The most rows one insert carries (PostgreSQL allows 65,535 parameters per statement).
const BATCH_ROWS: usize = 500;

/// Where a copy is: shown to the operator as it goes.
#[derive(Clone, Debug)]
pub struct CopyProgress {
    /// The table being copied.
    pub table: String,
    /// Its number (from 1) among `tables`.
    pub table_number: usize,
    /// How many tables there are.
    pub tables: usize,
    /// Rows of this table copied so far.
    pub rows_done: u64,
    /// Rows of this table.
    pub rows_total: u64,
}

/// What a finished copy did.
#[derive(Clone, Debug, Default)]
pub struct CopyReport {
    /// Tables copied by this run.
    pub tables_copied: usize,
    /// Tables an earlier run had copied already.
    pub tables_skipped: usize,
    /// Rows copied by this run.
    pub rows_copied: u64,
    /// Rows in the copied database, in all.
    pub rows_verified: u64,
    /// The latest events found identical in both.
    pub events_verified: usize,
}

/// One value of a row.
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

/// A PostgreSQL column: its name, whether it is a `bigint` (otherwise text), whether it is an
/// identity column.
struct Column {
    name: String,
    bigint: bool,
    identity: bool,
}

/// Copies the SQLite database at `source_url` into the PostgreSQL database at `target_url`,
/// which must be empty or hold a copy this function began. `progress` is called after every
/// batch. Nothing may write to either database meanwhile.
pub async fn copy_sqlite_to_postgres(
    source_url: &str,
    target_url: &str,
    mut progress: impl FnMut(&CopyProgress),
) -> Result<CopyReport> {
    if !source_url.starts_with("sqlite:") {
        return Err(Error::bug("the database to copy from must be SQLite"));
    }
    if !(target_url.starts_with("postgres:") || target_url.starts_with("postgresql:")) {
        return Err(Error::bug("the database to copy into must be PostgreSQL"));
    }
    // Both at this build's schema version.
    SqlStore::connect(source_url, 1).await?.close().await;
    SqlStore::connect(target_url, 2).await?.close().await;
    let mut source = SqliteConnection::connect(source_url).await.map_err(db_error)?;
    let mut target = PgConnection::connect(target_url).await.map_err(db_error)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS rhizome_copied_tables \
         (name TEXT PRIMARY KEY, row_count BIGINT NOT NULL)",
    )
    .execute(&mut target)
    .await
    .map_err(db_error)?;
    let done: Vec<String> = sqlx::query_scalar("SELECT name FROM rhizome_copied_tables")
        .fetch_all(&mut target)
        .await
        .map_err(db_error)?;
    let target_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut target)
        .await
        .map_err(db_error)?;
    if done.is_empty() && target_events > 0 {
        return Err(Error::bug("the PostgreSQL database is not empty: copy into a new one"));
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' \
         AND table_name NOT IN ('schema_migrations', 'rhizome_copied_tables') \
         ORDER BY table_name",
    )
    .fetch_all(&mut target)
    .await
    .map_err(db_error)?;
    let mut report = CopyReport::default();
    for (index, table) in tables.iter().enumerate() {
        if done.contains(table) {
            report.tables_skipped += 1;
            continue;
        }
        let mut at = CopyProgress {
            table: table.clone(),
            table_number: index + 1,
            tables: tables.len(),
            rows_done: 0,
            rows_total: count(&mut source, table).await?,
        };
        progress(&at);
        report.rows_copied += copy_table(&mut source, &mut target, &mut at, &mut progress).await?;
        report.tables_copied += 1;
    }
    continue_stream_positions(&mut target).await?;
    for table in &tables {
        let (copied, original) =
            (count_pg(&mut target, table).await?, count(&mut source, table).await?);
        if copied != original {
            return Err(Error::bug(format!(
                "table {table}: {original} rows in SQLite, {copied} in PostgreSQL"
            )));
        }
        report.rows_verified += copied;
    }
    report.events_verified = verify_latest_events(&mut source, &mut target).await?;
    source.close().await.map_err(db_error)?;
    target.close().await.map_err(db_error)?;
    Ok(report)
}

async fn count(source: &mut SqliteConnection, table: &str) -> Result<u64> {
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{table}\"")))
            .fetch_one(source)
            .await
            .map_err(db_error)?;
    Ok(u64::try_from(rows).unwrap_or_default())
}

async fn count_pg(target: &mut PgConnection, table: &str) -> Result<u64> {
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM \"{table}\"")))
            .fetch_one(target)
            .await
            .map_err(db_error)?;
    Ok(u64::try_from(rows).unwrap_or_default())
}

async fn columns(target: &mut PgConnection, table: &str) -> Result<Vec<Column>> {
    let rows = sqlx::query(
        "SELECT column_name::TEXT AS name, data_type::TEXT AS kind, is_identity::TEXT AS identity \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND is_generated = 'NEVER' \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(target)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(Column {
                name: row.try_get("name").map_err(db_error)?,
                bigint: row.try_get::<String, _>("kind").map_err(db_error)? == "bigint",
                identity: row.try_get::<String, _>("identity").map_err(db_error)? == "YES",
            })
        })
        .collect()
}

/// A table's primary key columns, in order, if the table has no rowid (SQLite's `WITHOUT
/// ROWID`); `None` for an ordinary table.
async fn key_without_rowid(
    source: &mut SqliteConnection,
    table: &str,
) -> Result<Option<Vec<String>>> {
    let without_rowid: i64 =
        sqlx::query_scalar("SELECT CAST(wr AS BIGINT) FROM pragma_table_list WHERE name = $1")
            .bind(table)
            .fetch_optional(&mut *source)
            .await
            .map_err(db_error)?
            .unwrap_or(0);
    if without_rowid == 0 {
        return Ok(None);
    }
    let key: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk")
            .bind(table)
            .fetch_all(&mut *source)
            .await
            .map_err(db_error)?;
    Ok(Some(key))
}

/// Copies one table in one transaction; the rows copied.
async fn copy_table(
    source: &mut SqliteConnection,
    target: &mut PgConnection,
    at: &mut CopyProgress,
    progress: &mut impl FnMut(&CopyProgress),
) -> Result<u64> {
    let table = at.table.clone();
    let columns = columns(target, &table).await?;
    let names: Vec<String> = columns.iter().map(|column| format!("\"{}\"", column.name)).collect();
    let names = names.join(", ");
    let mut transaction = target.begin().await.map_err(db_error)?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM \"{table}\"")))
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    let batch = (60_000 / columns.len().max(1)).clamp(1, BATCH_ROWS);
    // Pages follow the rowid, or a table without one its primary key.
    let key = key_without_rowid(source, &table).await?;
    let mut after_rowid = i64::MIN;
    let mut after_key: Option<Vec<Value>> = None;
    loop {
        let rows = match &key {
            None => {
                let select = format!(
                    "SELECT rowid AS rhizome_rowid, {names} FROM \"{table}\" \
                     WHERE rowid > $1 ORDER BY rowid LIMIT {batch}"
                );
                sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(after_rowid)
                    .fetch_all(&mut *source)
                    .await
                    .map_err(db_error)?
            }
            Some(key) => {
                let order: Vec<String> = key.iter().map(|name| format!("\"{name}\"")).collect();
                let order = order.join(", ");
                let after = match &after_key {
                    None => String::new(),
                    Some(_) => {
                        let marks: Vec<String> = (1..=key.len()).map(|n| format!("${n}")).collect();
                        format!("WHERE ({order}) > ({})", marks.join(", "))
                    }
                };
                let select = format!(
                    "SELECT {names} FROM \"{table}\" {after} ORDER BY {order} LIMIT {batch}"
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(select));
                for value in after_key.iter().flatten() {
                    query = match value {
                        Value::Int(value) => query.bind(*value),
                        Value::Text(value) => query.bind(value.clone()),
                    };
                }
                query.fetch_all(&mut *source).await.map_err(db_error)?
            }
        };
        let Some(last) = rows.last() else { break };
        match &key {
            None => after_rowid = last.try_get("rhizome_rowid").map_err(db_error)?,
            Some(key) => {
                let mut values = Vec::with_capacity(key.len());
                for name in key {
                    let bigint = columns.iter().any(|column| column.name == *name && column.bigint);
                    values.push(if bigint {
                        Value::Int(last.try_get(name.as_str()).map_err(db_error)?)
                    } else {
                        Value::Text(last.try_get(name.as_str()).map_err(db_error)?)
                    });
                }
                after_key = Some(values);
            }
        }
        let mut values = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut record = Vec::with_capacity(columns.len());
            for column in &columns {
                let name = column.name.as_str();
                record.push(if column.bigint {
                    Value::Int(row.try_get(name).map_err(db_error)?)
                } else {
                    Value::Text(row.try_get(name).map_err(db_error)?)
                });
            }
            values.push(record);
        }
        let mut insert: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("INSERT INTO \"{table}\" ({names}) "));
        insert.push_values(values, |mut builder, record| {
            for value in record {
                match value {
                    Value::Int(value) => builder.push_bind(value),
                    Value::Text(value) => builder.push_bind(value),
                };
            }
        });
        insert.build().execute(&mut *transaction).await.map_err(db_error)?;
        at.rows_done += rows.len() as u64;
        progress(at);
    }
    for column in columns.iter().filter(|column| column.identity) {
        let name = &column.name;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT setval(pg_get_serial_sequence('\"{table}\"', '{name}'), \
             GREATEST((SELECT max(\"{name}\") FROM \"{table}\"), 1))"
        )))
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    }
    sqlx::query("INSERT INTO rhizome_copied_tables (name, row_count) VALUES ($1, $2)")
        .bind(&table)
        .bind(i64::try_from(at.rows_done).unwrap_or(i64::MAX))
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    transaction.commit().await.map_err(db_error)?;
    Ok(at.rows_done)
}

/// Moves the stream position sequence past every copied position.
async fn continue_stream_positions(target: &mut PgConnection) -> Result<()> {
    sqlx::query(
        "SELECT setval('rhizome_stream_seq', GREATEST(\
         (SELECT pos FROM stream_counter WHERE id = 1), \
         (SELECT COALESCE(max(stream_pos), 0) FROM events)) + 1, false)",
    )
    .execute(target)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Compares the latest events of both; how many.
async fn verify_latest_events(
    source: &mut SqliteConnection,
    target: &mut PgConnection,
) -> Result<usize> {
    let query = "SELECT stream_pos, event_id, json FROM events ORDER BY stream_pos DESC LIMIT $1";
    let read = |rows: Vec<(i64, String, String)>| rows;
    let original: Vec<(i64, String, String)> =
        read(sqlx::query_as(query).bind(EVENTS_CHECKED).fetch_all(source).await.map_err(db_error)?);
    let copied: Vec<(i64, String, String)> =
        read(sqlx::query_as(query).bind(EVENTS_CHECKED).fetch_all(target).await.map_err(db_error)?);
    if original != copied {
        return Err(Error::bug("the latest events differ between SQLite and PostgreSQL"));
    }
    Ok(copied.len())
}
