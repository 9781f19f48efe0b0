//! Device-list changes, to-device messages, dehydrated devices and the removal of deleted
//! devices' encryption data, in SQL.

use rhizome_core::Result;
use rhizome_storage::{
    MembershipRecord, StreamPos,
    e2ee::{ToDeviceMessage, ToDeviceRecord, ToDeviceTarget},
};
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};
use sqlx::{AssertSqlSafe, Row};

use super::keys::record_change;
use crate::{SqlStore, db_error, parse_id, placeholders, recent::Touch};

pub(super) async fn record_device_list_change(
    store: &SqlStore,
    user_id: &UserId,
) -> Result<StreamPos> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    record_change(&mut write, user_id.as_str(), "", pos).await?;
    write.commit().await
}

pub(super) async fn device_list_changes(
    store: &SqlStore,
    viewer: &UserId,
    since: StreamPos,
    until: StreamPos,
) -> Result<Vec<OwnedUserId>> {
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM e2ee_device_list_changes \
         WHERE stream_pos > $1 AND stream_pos <= $2 AND (viewer = '' OR viewer = $3) \
         ORDER BY user_id",
    )
    .bind(since)
    .bind(until)
    .bind(viewer.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    users.into_iter().map(parse_id).collect()
}

pub(super) async fn memberships_changed_between(
    store: &SqlStore,
    room_ids: &[OwnedRoomId],
    since: StreamPos,
    until: StreamPos,
) -> Result<Vec<MembershipRecord>> {
    let mut records = Vec::new();
    for chunk in room_ids.chunks(500) {
        let sql = format!(
            "SELECT room_id, user_id, membership, event_id, stream_pos, displayname, avatar_url \
             FROM room_memberships WHERE stream_pos > $1 AND stream_pos <= $2 \
             AND room_id IN ({}) ORDER BY stream_pos",
            placeholders(3, chunk.len())
        );
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(since).bind(until);
        for room_id in chunk {
            query = query.bind(room_id.as_str());
        }
        for row in query.fetch_all(&store.read).await.map_err(db_error)? {
            records.push(MembershipRecord {
                room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
                membership: row.try_get("membership").map_err(db_error)?,
                event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
                stream_pos: row.try_get("stream_pos").map_err(db_error)?,
                displayname: row.try_get("displayname").map_err(db_error)?,
                avatar_url: row.try_get("avatar_url").map_err(db_error)?,
            });
        }
    }
    Ok(records)
}

/// Per-device tables, with the column naming the device.
const DEVICE_TABLES: &[&str] = &[
    "e2ee_device_keys",
    "e2ee_one_time_keys",
    "e2ee_fallback_keys",
    "e2ee_to_device",
    "e2ee_to_device_txns",
    "e2ee_dehydrated_devices",
];

/// Removes what deleted devices left behind; returns how many device keys went, and how
/// many rows in all.
pub(super) async fn remove_deleted_devices_e2ee(
    store: &SqlStore,
    user_id: &UserId,
) -> Result<(u64, u64)> {
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let (mut removed, mut total) = (0, 0);
    for table in DEVICE_TABLES {
        let result = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE user_id = $1 \
             AND device_id NOT IN (SELECT device_id FROM devices WHERE user_id = $1)"
        )))
        .bind(user_id.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        total += result.rows_affected();
        if *table == "e2ee_device_keys" {
            removed = result.rows_affected();
        }
    }
    let result = sqlx::query(
        "DELETE FROM e2ee_signatures WHERE target_user_id = $1 \
         AND target_key_id NOT IN (SELECT device_id FROM devices WHERE user_id = $1) \
         AND target_key_id NOT IN \
             (SELECT public_key FROM e2ee_cross_signing_keys WHERE user_id = $1)",
    )
    .bind(user_id.as_str())
    .execute(&mut *transaction)
    .await
    .map_err(db_error)?;
    total += result.rows_affected();
    transaction.commit().await.map_err(db_error)?;
    Ok((removed, total))
}

pub(super) async fn delete_user_e2ee(store: &SqlStore, user_id: &UserId) -> Result<()> {
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let tables = DEVICE_TABLES.iter().chain(&[
        "e2ee_cross_signing_keys",
        "e2ee_backup_keys",
        "e2ee_backup_versions",
    ]);
    for table in tables {
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1")))
            .bind(user_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
    }
    sqlx::query("DELETE FROM e2ee_signatures WHERE target_user_id = $1 OR signer_user_id = $1")
        .bind(user_id.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
    transaction.commit().await.map_err(db_error)
}

pub(super) async fn queue_to_device(
    store: &SqlStore,
    sender: &UserId,
    sender_device: &DeviceId,
    txn_id: &str,
    event_type: &str,
    messages: &[ToDeviceMessage],
) -> Result<Option<(StreamPos, Vec<OwnedUserId>)>> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    let fresh = sqlx::query(
        "INSERT INTO e2ee_to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
    )
    .bind(sender.as_str())
    .bind(sender_device.as_str())
    .bind(txn_id)
    .execute(write.connection())
    .await
    .map_err(db_error)?
    .rows_affected();
    if fresh == 0 {
        return Ok(None);
    }
    let mut recipients: Vec<OwnedUserId> = Vec::new();
    for message in messages {
        let (filter, device) = match &message.target {
            ToDeviceTarget::AllDevices => ("", None),
            ToDeviceTarget::Device(device_id) => (" AND device_id = $6", Some(device_id)),
        };
        let sql = format!(
            "INSERT INTO e2ee_to_device (user_id, device_id, stream_pos, sender, event_type, \
             content) SELECT user_id, device_id, $2, $3, $4, $5 FROM devices \
             WHERE user_id = $1{filter} ORDER BY device_id"
        );
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(message.user_id.as_str())
            .bind(pos)
            .bind(sender.as_str())
            .bind(event_type)
            .bind(&message.content);
        if let Some(device) = device {
            query = query.bind(device.as_str());
        }
        let inserted = query.execute(write.connection()).await.map_err(db_error)?.rows_affected();
        write.touch(Touch::ToDevice(message.user_id.clone()));
        if inserted > 0 && !recipients.contains(&message.user_id) {
            recipients.push(message.user_id.clone());
        }
    }
    let pos = write.commit().await?;
    Ok(Some((pos, recipients)))
}

pub(super) async fn to_device_messages(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    until: StreamPos,
    limit: i64,
) -> Result<Vec<ToDeviceRecord>> {
    let rows = sqlx::query(
        "SELECT message_id, stream_pos, sender, event_type, content FROM e2ee_to_device \
         WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3 \
         ORDER BY stream_pos, message_id LIMIT $4",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(until)
    .bind(limit)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(ToDeviceRecord {
                id: row.try_get("message_id").map_err(db_error)?,
                stream_pos: row.try_get("stream_pos").map_err(db_error)?,
                sender: parse_id(row.try_get("sender").map_err(db_error)?)?,
                event_type: row.try_get("event_type").map_err(db_error)?,
                content: row.try_get("content").map_err(db_error)?,
            })
        })
        .collect()
}

pub(super) async fn delete_to_device_messages(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    until: StreamPos,
) -> Result<u64> {
    let result = sqlx::query(
        "DELETE FROM e2ee_to_device WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(until)
    .execute(&store.write)
    .await
    .map_err(db_error)?;
    Ok(result.rows_affected())
}

pub(super) async fn defer_to_device_messages(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    after: &ToDeviceRecord,
) -> Result<StreamPos> {
    let mut write = store.begin_stream_write().await?;
    let pos = write.pos();
    sqlx::query(
        "UPDATE e2ee_to_device SET stream_pos = $1 WHERE user_id = $2 AND device_id = $3 \
         AND (stream_pos > $4 OR (stream_pos = $4 AND message_id > $5))",
    )
    .bind(pos)
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(after.stream_pos)
    .bind(after.id)
    .execute(write.connection())
    .await
    .map_err(db_error)?;
    write.touch(Touch::ToDevice(user_id.to_owned()));
    write.commit().await
}

pub(super) async fn set_dehydrated_device(
    store: &SqlStore,
    user_id: &UserId,
    device_id: &DeviceId,
    device_data: &str,
) -> Result<Option<OwnedDeviceId>> {
    let mut transaction = store.write.begin().await.map_err(db_error)?;
    let previous: Option<String> =
        sqlx::query_scalar("SELECT device_id FROM e2ee_dehydrated_devices WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(&mut *transaction)
            .await
            .map_err(db_error)?;
    sqlx::query(
        "INSERT INTO e2ee_dehydrated_devices (user_id, device_id, device_data) \
         VALUES ($1, $2, $3) ON CONFLICT (user_id) DO UPDATE SET \
         device_id = excluded.device_id, device_data = excluded.device_data",
    )
    .bind(user_id.as_str())
    .bind(device_id.as_str())
    .bind(device_data)
    .execute(&mut *transaction)
    .await
    .map_err(db_error)?;
    transaction.commit().await.map_err(db_error)?;
    Ok(previous.filter(|previous| previous != device_id.as_str()).map(Into::into))
}

pub(super) async fn dehydrated_device(
    store: &SqlStore,
    user_id: &UserId,
) -> Result<Option<(OwnedDeviceId, String)>> {
    let row = sqlx::query(
        "SELECT device_id, device_data FROM e2ee_dehydrated_devices WHERE user_id = $1",
    )
    .bind(user_id.as_str())
    .fetch_optional(&store.read)
    .await
    .map_err(db_error)?;
    row.map(|row| {
        Ok((
            row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
            row.try_get("device_data").map_err(db_error)?,
        ))
    })
    .transpose()
}

pub(super) async fn delete_dehydrated_device(
    store: &SqlStore,
    user_id: &UserId,
) -> Result<Option<OwnedDeviceId>> {
    let device_id: Option<String> = sqlx::query_scalar(
        "DELETE FROM e2ee_dehydrated_devices WHERE user_id = $1 RETURNING device_id",
    )
    .bind(user_id.as_str())
    .fetch_optional(&store.write)
    .await
    .map_err(db_error)?;
    Ok(device_id.map(Into::into))
}
