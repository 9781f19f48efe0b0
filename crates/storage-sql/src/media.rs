//! Media metadata in SQL: media items (pending or uploaded), thumbnails, per-user usage for
//! quotas and cached URL previews.
//!
//! Quotas are enforced by one conditional `UPDATE` of the user's usage row inside the
//! transaction that stores the item, so concurrent uploads cannot together pass a quota (the
//! row lock serialises them on PostgreSQL; SQLite has one writer).

use async_trait::async_trait;
use rhizome_core::{Error, Result};
use rhizome_storage::media::{
    DeletedMedia, MediaContent, MediaInsert, MediaRecord, MediaStore, PendingCompletion,
    ThumbnailKey, ThumbnailRecord,
};
use ruma::{ServerName, UserId};
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, is_unique_violation, parse_id};

const MEDIA_COLUMNS: &str = "origin, media_id, uploader, content_type, filename, size, sha256, \
                             created_ts, uploaded_ts, last_access_ts, expires_ts, quota_counted";
const THUMBNAIL_COLUMNS: &str =
    "origin, media_id, width, height, method, animated, content_type, sha256, size, created_ts";

fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::bug("size out of range for the database"))
}

fn to_u64(value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::bug("negative size in the database"))
}

fn to_u32(value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::bug("thumbnail dimension out of range in database"))
}

fn media_from_row(row: &AnyRow) -> Result<MediaRecord> {
    let sha256: Option<String> = row.try_get("sha256").map_err(db_error)?;
    let content = match sha256 {
        Some(sha256) => Some(MediaContent {
            content_type: row.try_get("content_type").map_err(db_error)?,
            filename: row.try_get("filename").map_err(db_error)?,
            size: to_u64(row.try_get::<Option<i64>, _>("size").map_err(db_error)?.unwrap_or(0))?,
            sha256,
            uploaded_ts: row
                .try_get::<Option<i64>, _>("uploaded_ts")
                .map_err(db_error)?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(MediaRecord {
        origin: parse_id(row.try_get::<String, _>("origin").map_err(db_error)?)?,
        media_id: row.try_get("media_id").map_err(db_error)?,
        uploader: parse_id(row.try_get::<String, _>("uploader").map_err(db_error)?)?,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
        last_access_ts: row.try_get("last_access_ts").map_err(db_error)?,
        content,
        expires_ts: row.try_get("expires_ts").map_err(db_error)?,
        counts_toward_quota: row.try_get::<i64, _>("quota_counted").map_err(db_error)? != 0,
    })
}

fn thumbnail_from_row(row: &AnyRow) -> Result<ThumbnailRecord> {
    Ok(ThumbnailRecord {
        origin: parse_id(row.try_get::<String, _>("origin").map_err(db_error)?)?,
        media_id: row.try_get("media_id").map_err(db_error)?,
        width: to_u32(row.try_get("width").map_err(db_error)?)?,
        height: to_u32(row.try_get("height").map_err(db_error)?)?,
        method: row.try_get("method").map_err(db_error)?,
        animated: row.try_get::<i64, _>("animated").map_err(db_error)? != 0,
        content_type: row.try_get("content_type").map_err(db_error)?,
        sha256: row.try_get("sha256").map_err(db_error)?,
        size: to_u64(row.try_get("size").map_err(db_error)?)?,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
    })
}

/// Adds `size` to the user's usage unless that passes `quota`; returns whether it did.
async fn charge_usage(
    connection: &mut AnyConnection,
    user_id: &UserId,
    size: u64,
    quota: Option<u64>,
) -> Result<bool> {
    sqlx::query(
        "INSERT INTO media_usage (user_id, bytes) VALUES ($1, 0) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(user_id.as_str())
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    let quota = match quota {
        Some(quota) => to_i64(quota)?,
        None => -1,
    };
    let charged = sqlx::query(
        "UPDATE media_usage SET bytes = bytes + $2 \
         WHERE user_id = $1 AND ($3 < 0 OR bytes + $2 <= $3)",
    )
    .bind(user_id.as_str())
    .bind(to_i64(size)?)
    .bind(quota)
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    Ok(charged.rows_affected() == 1)
}

/// Whether a media item or thumbnail has content with this hash.
async fn is_referenced(connection: &mut AnyConnection, sha256: &str) -> Result<bool> {
    let found: Option<String> = sqlx::query_scalar(
        "SELECT sha256 FROM media WHERE sha256 = $1 \
         UNION ALL SELECT sha256 FROM media_thumbnails WHERE sha256 = $1 LIMIT 1",
    )
    .bind(sha256)
    .fetch_optional(&mut *connection)
    .await
    .map_err(db_error)?;
    Ok(found.is_some())
}

#[async_trait]
impl MediaStore for SqlStore {
    async fn insert_media(&self, record: &MediaRecord, quota: Option<u64>) -> Result<MediaInsert> {
        let content = record
            .content
            .as_ref()
            .ok_or_else(|| Error::bug("insert_media needs uploaded content"))?;
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO media ({MEDIA_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)"
        )))
        .bind(record.origin.as_str())
        .bind(record.media_id.as_str())
        .bind(record.uploader.as_str())
        .bind(content.content_type.as_deref())
        .bind(content.filename.as_deref())
        .bind(to_i64(content.size)?)
        .bind(content.sha256.as_str())
        .bind(record.created_ts)
        .bind(content.uploaded_ts)
        .bind(record.last_access_ts)
        .bind(flag(record.counts_toward_quota))
        .execute(&mut *transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => return Ok(MediaInsert::Exists),
            Err(error) => return Err(db_error(error)),
        }
        if record.counts_toward_quota
            && !charge_usage(&mut transaction, &record.uploader, content.size, quota).await?
        {
            return Ok(MediaInsert::QuotaExceeded);
        }
        transaction.commit().await.map_err(db_error)?;
        Ok(MediaInsert::Stored)
    }

    async fn create_pending_media(
        &self,
        record: &MediaRecord,
        max_pending: u64,
        now: i64,
    ) -> Result<bool> {
        if record.content.is_some() || record.expires_ts.is_none() {
            return Err(Error::bug("a pending media item has no content and an expiry"));
        }
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM media \
             WHERE uploader = $1 AND sha256 IS NULL AND expires_ts > $2",
        )
        .bind(record.uploader.as_str())
        .bind(now)
        .fetch_one(&mut *transaction)
        .await
        .map_err(db_error)?;
        if to_u64(pending)? >= max_pending {
            return Ok(false);
        }
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO media ({MEDIA_COLUMNS}) \
             VALUES ($1, $2, $3, NULL, NULL, NULL, NULL, $4, NULL, $5, $6, $7)"
        )))
        .bind(record.origin.as_str())
        .bind(record.media_id.as_str())
        .bind(record.uploader.as_str())
        .bind(record.created_ts)
        .bind(record.last_access_ts)
        .bind(record.expires_ts)
        .bind(flag(record.counts_toward_quota))
        .execute(&mut *transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => {
                return Err(Error::bug("media ID collision"));
            }
            Err(error) => return Err(db_error(error)),
        }
        transaction.commit().await.map_err(db_error)?;
        Ok(true)
    }

    async fn complete_pending_media(
        &self,
        origin: &ServerName,
        media_id: &str,
        uploader: &UserId,
        content: &MediaContent,
        quota: Option<u64>,
        now: i64,
    ) -> Result<PendingCompletion> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let counted: Option<i64> = sqlx::query_scalar(
            "UPDATE media SET content_type = $4, filename = $5, size = $6, sha256 = $7, \
             uploaded_ts = $8, expires_ts = NULL \
             WHERE origin = $1 AND media_id = $2 AND uploader = $3 AND sha256 IS NULL \
             AND expires_ts > $9 RETURNING quota_counted",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(uploader.as_str())
        .bind(content.content_type.as_deref())
        .bind(content.filename.as_deref())
        .bind(to_i64(content.size)?)
        .bind(content.sha256.as_str())
        .bind(content.uploaded_ts)
        .bind(now)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(db_error)?;
        match counted {
            Some(counted) => {
                if counted != 0
                    && !charge_usage(&mut transaction, uploader, content.size, quota).await?
                {
                    return Ok(PendingCompletion::QuotaExceeded);
                }
                transaction.commit().await.map_err(db_error)?;
                Ok(PendingCompletion::Stored)
            }
            None => {
                drop(transaction);
                let Some(existing) = self.get_media(origin, media_id).await? else {
                    return Ok(PendingCompletion::NotFound);
                };
                Ok(if existing.uploader != uploader {
                    PendingCompletion::NotUploader
                } else if existing.content.is_some() {
                    PendingCompletion::AlreadyUploaded
                } else {
                    PendingCompletion::NotFound
                })
            }
        }
    }

    async fn get_media(&self, origin: &ServerName, media_id: &str) -> Result<Option<MediaRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MEDIA_COLUMNS} FROM media WHERE origin = $1 AND media_id = $2"
        )))
        .bind(origin.as_str())
        .bind(media_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(media_from_row).transpose()
    }

    async fn touch_media(&self, origin: &ServerName, media_id: &str, ts: i64) -> Result<()> {
        sqlx::query(
            "UPDATE media SET last_access_ts = $3 \
             WHERE origin = $1 AND media_id = $2 AND last_access_ts < $3",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .bind(ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn media_usage(&self, user_id: &UserId) -> Result<u64> {
        let bytes: Option<i64> =
            sqlx::query_scalar("SELECT bytes FROM media_usage WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_optional(&self.read)
                .await
                .map_err(db_error)?;
        to_u64(bytes.unwrap_or(0))
    }

    async fn content_referenced(&self, sha256: &str) -> Result<bool> {
        let mut connection = self.read.acquire().await.map_err(db_error)?;
        is_referenced(&mut connection, sha256).await
    }

    async fn get_thumbnail(
        &self,
        origin: &ServerName,
        media_id: &str,
        key: &ThumbnailKey,
    ) -> Result<Option<ThumbnailRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE origin = $1 AND \
             media_id = $2 AND width = $3 AND height = $4 AND method = $5 AND animated = $6"
        )))
        .bind(origin.as_str())
        .bind(media_id)
        .bind(i64::from(key.width))
        .bind(i64::from(key.height))
        .bind(key.method.as_str())
        .bind(flag(key.animated))
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(thumbnail_from_row).transpose()
    }

    async fn list_thumbnails(
        &self,
        origin: &ServerName,
        media_id: &str,
    ) -> Result<Vec<ThumbnailRecord>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {THUMBNAIL_COLUMNS} FROM media_thumbnails WHERE origin = $1 AND media_id = $2 \
             ORDER BY width, height, method, animated"
        )))
        .bind(origin.as_str())
        .bind(media_id)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(thumbnail_from_row).collect()
    }

    async fn insert_thumbnail(&self, thumbnail: &ThumbnailRecord) -> Result<bool> {
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO media_thumbnails ({THUMBNAIL_COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS \
             (SELECT 1 FROM media WHERE origin = $1 AND media_id = $2 AND sha256 IS NOT NULL) \
             ON CONFLICT (origin, media_id, width, height, method, animated) DO NOTHING"
        )))
        .bind(thumbnail.origin.as_str())
        .bind(thumbnail.media_id.as_str())
        .bind(i64::from(thumbnail.width))
        .bind(i64::from(thumbnail.height))
        .bind(thumbnail.method.as_str())
        .bind(flag(thumbnail.animated))
        .bind(thumbnail.content_type.as_str())
        .bind(thumbnail.sha256.as_str())
        .bind(to_i64(thumbnail.size)?)
        .bind(thumbnail.created_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn delete_media(
        &self,
        origin: &ServerName,
        media_id: &str,
    ) -> Result<Option<DeletedMedia>> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MEDIA_COLUMNS} FROM media WHERE origin = $1 AND media_id = $2"
        )))
        .bind(origin.as_str())
        .bind(media_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(db_error)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = media_from_row(&row)?;
        let mut hashes: Vec<String> = sqlx::query_scalar(
            "SELECT sha256 FROM media_thumbnails WHERE origin = $1 AND media_id = $2",
        )
        .bind(origin.as_str())
        .bind(media_id)
        .fetch_all(&mut *transaction)
        .await
        .map_err(db_error)?;
        sqlx::query("DELETE FROM media_thumbnails WHERE origin = $1 AND media_id = $2")
            .bind(origin.as_str())
            .bind(media_id)
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM media WHERE origin = $1 AND media_id = $2")
            .bind(origin.as_str())
            .bind(media_id)
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        if let Some(content) = &record.content {
            hashes.push(content.sha256.clone());
            if record.counts_toward_quota {
                sqlx::query(
                    "UPDATE media_usage SET bytes = CASE WHEN bytes > $2 THEN bytes - $2 ELSE 0 \
                     END WHERE user_id = $1",
                )
                .bind(record.uploader.as_str())
                .bind(to_i64(content.size)?)
                .execute(&mut *transaction)
                .await
                .map_err(db_error)?;
            }
        }
        hashes.sort();
        hashes.dedup();
        let mut unreferenced = Vec::new();
        for hash in hashes {
            if !is_referenced(&mut transaction, &hash).await? {
                unreferenced.push(hash);
            }
        }
        transaction.commit().await.map_err(db_error)?;
        Ok(Some(DeletedMedia { record, unreferenced }))
    }

    async fn media_unused_since(
        &self,
        origin: &ServerName,
        before_ts: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT media_id FROM media WHERE origin = $1 AND sha256 IS NOT NULL \
             AND last_access_ts < $2 ORDER BY last_access_ts, media_id LIMIT $3",
        )
        .bind(origin.as_str())
        .bind(before_ts)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)
    }

    async fn delete_expired_pending_media(&self, now: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM media WHERE sha256 IS NULL AND expires_ts <= $1")
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected())
    }

    async fn get_url_preview(
        &self,
        url_hash: &str,
        fetched_after_ts: i64,
    ) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT json FROM url_previews WHERE url_hash = $1 AND fetched_ts >= $2")
            .bind(url_hash)
            .bind(fetched_after_ts)
            .fetch_optional(&self.read)
            .await
            .map_err(db_error)
    }

    async fn set_url_preview(&self, url_hash: &str, json: &str, fetched_ts: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO url_previews (url_hash, json, fetched_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (url_hash) DO UPDATE SET json = excluded.json, \
             fetched_ts = excluded.fetched_ts",
        )
        .bind(url_hash)
        .bind(json)
        .bind(fetched_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn delete_url_previews_before(&self, before_ts: i64) -> Result<u64> {
        let deleted = sqlx::query("DELETE FROM url_previews WHERE fetched_ts < $1")
            .bind(before_ts)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(deleted.rows_affected())
    }
}
