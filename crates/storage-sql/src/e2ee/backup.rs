//! Server-side key backups in SQL: versions and the room keys in them.

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::e2ee::{BackupCounts, BackupKeyRecord, BackupVersionRecord};
use ruma::{RoomId, UserId, api::error::WrongRoomKeysVersionErrorData};
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, is_unique_violation, parse_id};

/// A version string as stored; `None` when it cannot be one of ours.
fn parse_version(version: &str) -> Option<i64> {
    version.parse::<i64>().ok().filter(|version| *version > 0)
}

fn version_from_row(row: &AnyRow) -> Result<BackupVersionRecord> {
    let version: i64 = row.try_get("version").map_err(db_error)?;
    let etag: i64 = row.try_get("etag").map_err(db_error)?;
    Ok(BackupVersionRecord {
        version: version.to_string(),
        algorithm: row.try_get("algorithm").map_err(db_error)?,
        etag: etag.to_string(),
        count: row.try_get("key_count").map_err(db_error)?,
    })
}

const VERSION_COLUMNS: &str = "v.version, v.algorithm, v.etag, \
     (SELECT CAST(COUNT(*) AS BIGINT) FROM e2ee_backup_keys k \
      WHERE k.user_id = v.user_id AND k.version = v.version) AS key_count";

pub(super) async fn create_backup_version(
    store: &SqlStore,
    user_id: &UserId,
    algorithm: &str,
) -> Result<String> {
    let mut attempts = 0;
    loop {
        let result = sqlx::query_scalar::<_, i64>(
            "INSERT INTO e2ee_backup_versions (user_id, version, algorithm, etag, deleted) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, 0, 0 FROM e2ee_backup_versions \
             WHERE user_id = $1 RETURNING version",
        )
        .bind(user_id.as_str())
        .bind(algorithm)
        .fetch_one(&store.write)
        .await;
        match result {
            Ok(version) => return Ok(version.to_string()),
            // A concurrent creation took the number: take the next one.
            Err(error) if is_unique_violation(&error) && attempts < 5 => attempts += 1,
            Err(error) => return Err(db_error(error)),
        }
    }
}

pub(super) async fn backup_version(
    store: &SqlStore,
    user_id: &UserId,
    version: Option<&str>,
) -> Result<Option<BackupVersionRecord>> {
    let row = match version {
        None => sqlx::query(AssertSqlSafe(format!(
            "SELECT {VERSION_COLUMNS} FROM e2ee_backup_versions v \
             WHERE v.user_id = $1 AND v.deleted = 0 ORDER BY v.version DESC LIMIT 1"
        )))
        .bind(user_id.as_str())
        .fetch_optional(&store.read)
        .await
        .map_err(db_error)?,
        Some(version) => {
            let Some(version) = parse_version(version) else { return Ok(None) };
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {VERSION_COLUMNS} FROM e2ee_backup_versions v \
                 WHERE v.user_id = $1 AND v.version = $2 AND v.deleted = 0"
            )))
            .bind(user_id.as_str())
            .bind(version)
            .fetch_optional(&store.read)
            .await
            .map_err(db_error)?
        }
    };
    row.as_ref().map(version_from_row).transpose()
}

pub(super) async fn update_backup_version(
    store: &SqlStore,
    user_id: &UserId,
    version: &str,
    algorithm: &str,
) -> Result<bool> {
    let Some(version) = parse_version(version) else { return Ok(false) };
    let result = sqlx::query(
        "UPDATE e2ee_backup_versions SET algorithm = $1 \
         WHERE user_id = $2 AND version = $3 AND deleted = 0",
    )
    .bind(algorithm)
    .bind(user_id.as_str())
    .bind(version)
    .execute(&store.write)
    .await
    .map_err(db_error)?;
    Ok(result.rows_affected() > 0)
}

pub(super) async fn delete_backup_version(
    store: &SqlStore,
    user_id: &UserId,
    version: &str,
) -> Result<bool> {
    let Some(version) = parse_version(version) else { return Ok(false) };
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let result = sqlx::query(
        "UPDATE e2ee_backup_versions SET deleted = 1 \
         WHERE user_id = $1 AND version = $2 AND deleted = 0",
    )
    .bind(user_id.as_str())
    .bind(version)
    .execute(&mut *transaction)
    .await
    .map_err(db_error)?;
    if result.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id.as_str())
        .bind(version)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    transaction.commit().await.map_err(db_error)?;
    Ok(true)
}

/// Checks that the version exists (not deleted); with `current`, also that it is the latest.
async fn check_version(
    connection: &mut AnyConnection,
    user_id: &UserId,
    version: &str,
    current: bool,
) -> Result<i64> {
    let unknown = || Error::not_found("Unknown backup version");
    let number = parse_version(version).ok_or_else(unknown)?;
    let latest: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM e2ee_backup_versions WHERE user_id = $1 AND deleted = 0",
    )
    .bind(user_id.as_str())
    .fetch_one(&mut *connection)
    .await
    .map_err(db_error)?;
    let exists: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM e2ee_backup_versions \
         WHERE user_id = $1 AND version = $2 AND deleted = 0",
    )
    .bind(user_id.as_str())
    .bind(number)
    .fetch_optional(&mut *connection)
    .await
    .map_err(db_error)?;
    if exists.is_none() {
        return Err(unknown());
    }
    if current && latest != Some(number) {
        let current_version = latest.map(|latest| latest.to_string()).unwrap_or_default();
        return Err(Error::matrix(
            MatrixErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                current_version,
            )),
            "That backup version is not the current one",
        ));
    }
    Ok(number)
}

/// Bumps the etag when something changed, and reads the etag and key count.
async fn finish_change(
    connection: &mut AnyConnection,
    user_id: &UserId,
    version: i64,
    changed: bool,
) -> Result<BackupCounts> {
    if changed {
        sqlx::query(
            "UPDATE e2ee_backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2",
        )
        .bind(user_id.as_str())
        .bind(version)
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {VERSION_COLUMNS} FROM e2ee_backup_versions v \
         WHERE v.user_id = $1 AND v.version = $2"
    )))
    .bind(user_id.as_str())
    .bind(version)
    .fetch_one(&mut *connection)
    .await
    .map_err(db_error)?;
    let record = version_from_row(&row)?;
    Ok(BackupCounts { etag: record.etag, count: record.count })
}

pub(super) async fn put_backup_keys(
    store: &SqlStore,
    user_id: &UserId,
    version: &str,
    keys: &[BackupKeyRecord],
) -> Result<BackupCounts> {
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let number = check_version(&mut transaction, user_id, version, true).await?;
    let mut changed = false;
    for key in keys {
        // The spec's order of preference: verified, then the lower first message index, then
        // the lower forwarded count. A key no better than the stored one changes nothing.
        let result = sqlx::query(
            "INSERT INTO e2ee_backup_keys (user_id, version, room_id, session_id, \
             first_message_index, forwarded_count, is_verified, session_data) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
               first_message_index = excluded.first_message_index, \
               forwarded_count = excluded.forwarded_count, \
               is_verified = excluded.is_verified, session_data = excluded.session_data \
             WHERE excluded.is_verified > e2ee_backup_keys.is_verified \
                OR (excluded.is_verified = e2ee_backup_keys.is_verified \
                    AND (excluded.first_message_index < e2ee_backup_keys.first_message_index \
                         OR (excluded.first_message_index = e2ee_backup_keys.first_message_index \
                             AND excluded.forwarded_count < e2ee_backup_keys.forwarded_count)))",
        )
        .bind(user_id.as_str())
        .bind(number)
        .bind(key.room_id.as_str())
        .bind(&key.session_id)
        .bind(key.first_message_index)
        .bind(key.forwarded_count)
        .bind(flag(key.is_verified))
        .bind(&key.session_data)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        changed |= result.rows_affected() > 0;
    }
    let counts = finish_change(&mut transaction, user_id, number, changed).await?;
    transaction.commit().await.map_err(db_error)?;
    Ok(counts)
}

/// ` AND room_id = $3 [AND session_id = $4]` for the optional filters.
fn key_filter(room_id: Option<&RoomId>, session_id: Option<&str>) -> &'static str {
    match (room_id, session_id) {
        (Some(_), Some(_)) => " AND room_id = $3 AND session_id = $4",
        (Some(_), None) => " AND room_id = $3",
        // A session without its room matches nothing the API can ask for; treat as all.
        (None, _) => "",
    }
}

pub(super) async fn backup_keys(
    store: &SqlStore,
    user_id: &UserId,
    version: &str,
    room_id: Option<&RoomId>,
    session_id: Option<&str>,
) -> Result<Vec<BackupKeyRecord>> {
    let Some(number) = parse_version(version) else { return Ok(Vec::new()) };
    let sql = format!(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, \
         session_data FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2{} \
         ORDER BY room_id, session_id",
        key_filter(room_id, session_id)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id.as_str()).bind(number);
    if let Some(room_id) = room_id {
        query = query.bind(room_id.as_str());
        if let Some(session_id) = session_id {
            query = query.bind(session_id);
        }
    }
    let rows = query.fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(BackupKeyRecord {
                room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                session_id: row.try_get("session_id").map_err(db_error)?,
                first_message_index: row.try_get("first_message_index").map_err(db_error)?,
                forwarded_count: row.try_get("forwarded_count").map_err(db_error)?,
                is_verified: row.try_get::<i64, _>("is_verified").map_err(db_error)? != 0,
                session_data: row.try_get("session_data").map_err(db_error)?,
            })
        })
        .collect()
}

pub(super) async fn delete_backup_keys(
    store: &SqlStore,
    user_id: &UserId,
    version: &str,
    room_id: Option<&RoomId>,
    session_id: Option<&str>,
) -> Result<BackupCounts> {
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let number = check_version(&mut transaction, user_id, version, false).await?;
    let sql = format!(
        "DELETE FROM e2ee_backup_keys WHERE user_id = $1 AND version = $2{}",
        key_filter(room_id, session_id)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id.as_str()).bind(number);
    if let Some(room_id) = room_id {
        query = query.bind(room_id.as_str());
        if let Some(session_id) = session_id {
            query = query.bind(session_id);
        }
    }
    let deleted = query.execute(&mut *transaction).await.map_err(db_error)?.rows_affected();
    let counts = finish_change(&mut transaction, user_id, number, deleted > 0).await?;
    transaction.commit().await.map_err(db_error)?;
    Ok(counts)
}
