//! Device keys, one-time and fallback keys, cross-signing keys and signatures in SQL.

use rhizome_core::{Error, Result};
use rhizome_storage::{
    StreamPos,
    e2ee::{
        CrossSigningKeyRecord, CrossSigningKeyType, CrossSigningKeys, DeviceKeysRecord,
        OneTimeKeyRecord, SignatureRecord,
    },
};
use ruma::{DeviceId, OwnedDeviceId, UserId};
use sqlx::{AssertSqlSafe, Row};

use crate::{SqlStore, db_error, parse_id, placeholders, recent::Touch, stream::StreamWrite};

/// How often a claim retries after losing a race for the same one-time key.
const CLAIM_ATTEMPTS: usize = 100;

/// Records a device-list change of `user_id` at `pos`, for everyone (`viewer` = "") or one
/// viewer.
pub(super) async fn record_change(
    write: &mut StreamWrite<'_>,
    user_id: &str,
    viewer: &str,
    pos: StreamPos,
) -> Result<()> {
    write.touch(Touch::DeviceLists);
    sqlx::query(
        "INSERT INTO e2ee_device_list_changes (user_id, viewer, stream_pos) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, viewer) DO UPDATE SET stream_pos = excluded.stream_pos",
    )
    .bind(user_id)
    .bind(viewer)
    .bind(pos)
    .execute(write.connection())
    .await
    .map_err(db_error)?;
    Ok(())
}

pub(super) async fn set_device_keys(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    json: &str,
) -> Result<Option<StreamPos>> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT json FROM e2ee_device_keys WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .fetch_optional(write.connection())
    .await
    .map_err(db_error)?;
    if existing.as_deref() == Some(json) {
        // Dropping the write rolls it back and frees the position.
        return Ok(None);
    }
    sqlx::query(
        "INSERT INTO e2ee_device_keys (user_id, device_id, json) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(json)
    .execute(write.connection())
    .await
    .map_err(db_error)?;
    record_change(&mut write, user_id.as_str(), "", pos).await?;
    write.commit().await.map(Some)
}

pub(super) async fn device_keys(
    store: &SqlStore,
    user_id: &UserId,
    device_ids: &[OwnedDeviceId],
) -> Result<Vec<DeviceKeysRecord>> {
    let mut records = Vec::new();
    let chunks: Vec<&[OwnedDeviceId]> =
        if device_ids.is_empty() { vec![&[]] } else { device_ids.chunks(500).collect() };
    for chunk in chunks {
        let filter = if chunk.is_empty() {
            String::new()
        } else {
            format!(" AND k.device_id IN ({})", placeholders(2, chunk.len()))
        };
        let sql = format!(
            "SELECT k.user_id, k.device_id, k.json, d.display_name FROM e2ee_device_keys k \
             JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id \
             WHERE k.user_id = $1{filter} ORDER BY k.device_id"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id.as_str());
        for device_id in chunk {
            query = query.bind(device_id.as_str());
        }
        for row in query.fetch_all(&store.read).await.map_err(db_error)? {
            records.push(DeviceKeysRecord {
                user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
                device_id: row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
                json: row.try_get("json").map_err(db_error)?,
                display_name: row.try_get("display_name").map_err(db_error)?,
            });
        }
    }
    records.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok(records)
}

pub(super) async fn add_one_time_keys(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    keys: &[OneTimeKeyRecord],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    for key in keys {
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT json FROM e2ee_one_time_keys \
             WHERE user_id = $1 AND device_id = $2 AND key_id = $3",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(&key.key_id)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(db_error)?;
        match existing {
            Some(json) if json == key.json => continue,
            Some(_) => {
                return Err(Error::invalid_param(format!(
                    "The one-time key {} already exists with a different key",
                    key.key_id
                )));
            }
            None => {}
        }
        sqlx::query(
            "INSERT INTO e2ee_one_time_keys (user_id, device_id, algorithm, key_id, json) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(key.algorithm())
        .bind(&key.key_id)
        .bind(&key.json)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    }
    transaction.commit().await.map_err(db_error)
}

pub(super) async fn set_fallback_keys(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    keys: &[OneTimeKeyRecord],
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    for key in keys {
        sqlx::query(
            "INSERT INTO e2ee_fallback_keys (user_id, device_id, algorithm, key_id, json, used) \
             VALUES ($1, $2, $3, $4, $5, 0) \
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET \
               key_id = excluded.key_id, json = excluded.json, used = 0 \
             WHERE e2ee_fallback_keys.key_id <> excluded.key_id \
                OR e2ee_fallback_keys.json <> excluded.json",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(key.algorithm())
        .bind(&key.key_id)
        .bind(&key.json)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    }
    transaction.commit().await.map_err(db_error)
}

pub(super) async fn one_time_key_counts(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query(
        "SELECT algorithm, CAST(COUNT(*) AS BIGINT) AS keys FROM e2ee_one_time_keys \
         WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm ORDER BY algorithm",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("algorithm").map_err(db_error)?,
                row.try_get("keys").map_err(db_error)?,
            ))
        })
        .collect()
}

pub(super) async fn unused_fallback_key_algorithms(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT algorithm FROM e2ee_fallback_keys \
         WHERE user_id = $1 AND device_id = $2 AND used = 0 ORDER BY algorithm",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)
}

/// A device's one-time key counts and unused fallback key algorithms in one statement
/// (every sync asks for both).
pub(super) async fn key_values(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
) -> Result<(Vec<(String, i64)>, Vec<String>)> {
    let rows = sqlx::query(
        "SELECT CAST(0 AS BIGINT) AS fallback, algorithm, CAST(COUNT(*) AS BIGINT) AS keys \
         FROM e2ee_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm \
         UNION ALL \
         SELECT CAST(1 AS BIGINT) AS fallback, algorithm, CAST(0 AS BIGINT) AS keys FROM e2ee_fallback_keys \
         WHERE user_id = $1 AND device_id = $2 AND used = 0 \
         ORDER BY fallback, algorithm",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    let (mut counts, mut fallback) = (Vec::new(), Vec::new());
    for row in &rows {
        let algorithm: String = row.try_get("algorithm").map_err(db_error)?;
        if row.try_get::<i64, _>("fallback").map_err(db_error)? == 0 {
            counts.push((algorithm, row.try_get("keys").map_err(db_error)?));
        } else {
            fallback.push(algorithm);
        }
    }
    Ok((counts, fallback))
}

pub(super) async fn claim_key(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    algorithm: &str,
) -> Result<Option<OneTimeKeyRecord>> {
    for _ in 0..CLAIM_ATTEMPTS {
        // One statement takes the oldest key; a concurrent claim of the same row deletes
        // nothing here (the row is gone once its lock is released), and then tries again.
        let row = sqlx::query(
            "DELETE FROM e2ee_one_time_keys WHERE key_row = (\
                 SELECT key_row FROM e2ee_one_time_keys \
                 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 \
                 ORDER BY key_row LIMIT 1) \
             RETURNING key_id, json",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(algorithm)
        .fetch_optional(&store.write)
        .await
        .map_err(db_error)?;
        if let Some(row) = row {
            return Ok(Some(OneTimeKeyRecord {
                key_id: row.try_get("key_id").map_err(db_error)?,
                json: row.try_get("json").map_err(db_error)?,
            }));
        }
        let left: Option<i64> = sqlx::query_scalar(
            "SELECT key_row FROM e2ee_one_time_keys \
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 LIMIT 1",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(algorithm)
        .fetch_optional(&store.write)
        .await
        .map_err(db_error)?;
        if left.is_none() {
            break;
        }
    }
    let row = sqlx::query(
        "UPDATE e2ee_fallback_keys SET used = 1 \
         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 RETURNING key_id, json",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(algorithm)
    .fetch_optional(&store.write)
    .await
    .map_err(db_error)?;
    row.map(|row| {
        Ok(OneTimeKeyRecord {
            key_id: row.try_get("key_id").map_err(db_error)?,
            json: row.try_get("json").map_err(db_error)?,
        })
    })
    .transpose()
}

pub(super) async fn cross_signing_keys(
    store: &SqlStore,
    user_id: &UserId,
) -> Result<CrossSigningKeys> {
    let rows = sqlx::query(
        "SELECT key_type, public_key, json FROM e2ee_cross_signing_keys WHERE user_id = $1",
    )
    .bind(user_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    let mut keys = CrossSigningKeys::default();
    for row in rows {
        let name: String = row.try_get("key_type").map_err(db_error)?;
        let key_type = CrossSigningKeyType::parse(&name)
            .ok_or_else(|| Error::bug(format!("unknown cross-signing key type {name}")))?;
        let record = CrossSigningKeyRecord {
            key_type,
            public_key: row.try_get("public_key").map_err(db_error)?,
            json: row.try_get("json").map_err(db_error)?,
        };
        match key_type {
            CrossSigningKeyType::Master => keys.master = Some(record),
            CrossSigningKeyType::SelfSigning => keys.self_signing = Some(record),
            CrossSigningKeyType::UserSigning => keys.user_signing = Some(record),
        }
    }
    Ok(keys)
}

pub(super) async fn set_cross_signing_keys(
    store: &SqlStore,
    user_id: &UserId,
    keys: &[CrossSigningKeyRecord],
) -> Result<StreamPos> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    for key in keys {
        sqlx::query(
            "INSERT INTO e2ee_cross_signing_keys (user_id, key_type, public_key, json) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, key_type) DO UPDATE SET \
             public_key = excluded.public_key, json = excluded.json",
        )
        .bind(user_id.as_str())
        .bind(key.key_type.as_str())
        .bind(&key.public_key)
        .bind(&key.json)
        .execute(write.connection())
        .await
        .map_err(db_error)?;
    }
    record_change(&mut write, user_id.as_str(), "", pos).await?;
    write.commit().await
}

pub(super) async fn add_signatures(
    store: &SqlStore,
    signer: &UserId,
    signatures: &[SignatureRecord],
) -> Result<StreamPos> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    let mut targets: Vec<&UserId> = Vec::new();
    for signature in signatures {
        if signature.signer_user_id != signer {
            return Err(Error::bug("a signature stored under another signer"));
        }
        sqlx::query(
            "INSERT INTO e2ee_signatures (target_user_id, target_key_id, signer_user_id, \
             signer_key_id, signature) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id) \
             DO UPDATE SET signature = excluded.signature",
        )
        .bind(signature.target_user_id.as_str())
        .bind(&signature.target_key_id)
        .bind(signer.as_str())
        .bind(&signature.signer_key_id)
        .bind(&signature.signature)
        .execute(write.connection())
        .await
        .map_err(db_error)?;
        if !targets.contains(&signature.target_user_id.as_ref()) {
            targets.push(&signature.target_user_id);
        }
    }
    for target in targets {
        let viewer = if target == signer { "" } else { signer.as_str() };
        record_change(&mut write, target.as_str(), viewer, pos).await?;
    }
    write.commit().await
}

pub(super) async fn signatures_on(
    store: &SqlStore,
    target_user_id: &UserId,
    signers: &[&UserId],
) -> Result<Vec<SignatureRecord>> {
    if signers.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT target_user_id, target_key_id, signer_user_id, signer_key_id, signature \
         FROM e2ee_signatures WHERE target_user_id = $1 AND signer_user_id IN ({}) \
         ORDER BY target_key_id, signer_user_id, signer_key_id",
        placeholders(2, signers.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql)).bind(target_user_id.as_str());
    for signer in signers {
        query = query.bind(signer.as_str());
    }
    let rows = query.fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(SignatureRecord {
                target_user_id: parse_id(row.try_get("target_user_id").map_err(db_error)?)?,
                target_key_id: row.try_get("target_key_id").map_err(db_error)?,
                signer_user_id: parse_id(row.try_get("signer_user_id").map_err(db_error)?)?,
                signer_key_id: row.try_get("signer_key_id").map_err(db_error)?,
                signature: row.try_get("signature").map_err(db_error)?,
            })
        })
        .collect()
}
