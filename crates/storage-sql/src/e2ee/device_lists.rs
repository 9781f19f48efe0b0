//! Device lists across servers in SQL: the published state of local users' devices and the
//! cache of remote users' device lists.

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{
    DeviceListStore, StreamPos,
    device_lists::{
        PublishedDevice, PublishedDeviceChange, PublishedDeviceList, RemoteDevice, RemoteDeviceList,
    },
};
use ruma::{DeviceId, OwnedUserId, UserId};
use sqlx::{AnyConnection, Row};

use super::keys::record_change;
use crate::{SqlStore, db_error, flag, parse_id};

#[async_trait]
impl DeviceListStore for SqlStore {
    async fn published_device_list(&self, user_id: &UserId) -> Result<PublishedDeviceList> {
        let row = sqlx::query(
            "SELECT stream_id, master_key, self_signing_key FROM e2ee_published_device_lists \
             WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        let mut list = PublishedDeviceList::default();
        if let Some(row) = row {
            list.stream_id = row.try_get("stream_id").map_err(db_error)?;
            list.master_key = row.try_get("master_key").map_err(db_error)?;
            list.self_signing_key = row.try_get("self_signing_key").map_err(db_error)?;
        }
        let rows = sqlx::query(
            "SELECT device_id, keys FROM e2ee_published_devices WHERE user_id = $1 \
             ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        for row in rows {
            list.devices.push(PublishedDevice {
                device_id: row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
                keys: row.try_get("keys").map_err(db_error)?,
            });
        }
        Ok(list)
    }

    async fn publish_device_changes(
        &self,
        user_id: &UserId,
        changes: &[PublishedDeviceChange],
    ) -> Result<(i64, Vec<i64>)> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        sqlx::query(
            "INSERT INTO e2ee_published_device_lists (user_id, stream_id) VALUES ($1, 0) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id.as_str())
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        let previous: i64 = sqlx::query_scalar(
            "SELECT stream_id FROM e2ee_published_device_lists WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_one(&mut *transaction)
        .await
        .map_err(db_error)?;
        let mut stream_ids = Vec::with_capacity(changes.len());
        let mut stream_id = previous;
        for change in changes {
            stream_id += 1;
            stream_ids.push(stream_id);
            if change.deleted {
                sqlx::query(
                    "DELETE FROM e2ee_published_devices WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user_id.as_str())
                .bind(change.device_id.as_str())
                .execute(&mut *transaction)
                .await
                .map_err(db_error)?;
            } else {
                sqlx::query(
                    "INSERT INTO e2ee_published_devices (user_id, device_id, keys) \
                     VALUES ($1, $2, $3) ON CONFLICT (user_id, device_id) \
                     DO UPDATE SET keys = excluded.keys",
                )
                .bind(user_id.as_str())
                .bind(change.device_id.as_str())
                .bind(change.keys.as_deref())
                .execute(&mut *transaction)
                .await
                .map_err(db_error)?;
            }
        }
        sqlx::query("UPDATE e2ee_published_device_lists SET stream_id = $1 WHERE user_id = $2")
            .bind(stream_id)
            .bind(user_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)?;
        Ok((previous, stream_ids))
    }

    async fn publish_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&str>,
        self_signing_key: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO e2ee_published_device_lists \
             (user_id, stream_id, master_key, self_signing_key) VALUES ($1, 0, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET master_key = excluded.master_key, \
             self_signing_key = excluded.self_signing_key",
        )
        .bind(user_id.as_str())
        .bind(master_key)
        .bind(self_signing_key)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        let Some(row) = sqlx::query(
            "SELECT stream_id, stale, fetched_ts, fetched_pos, master_key, self_signing_key \
             FROM e2ee_remote_device_lists WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?
        else {
            return Ok(None);
        };
        let mut list = RemoteDeviceList {
            user_id: user_id.to_owned(),
            stream_id: row.try_get("stream_id").map_err(db_error)?,
            stale: row.try_get::<i64, _>("stale").map_err(db_error)? != 0,
            fetched_ts: row.try_get("fetched_ts").map_err(db_error)?,
            fetched_pos: row.try_get("fetched_pos").map_err(db_error)?,
            devices: Vec::new(),
            master_key: row.try_get("master_key").map_err(db_error)?,
            self_signing_key: row.try_get("self_signing_key").map_err(db_error)?,
        };
        let rows = sqlx::query(
            "SELECT device_id, keys, display_name FROM e2ee_remote_devices WHERE user_id = $1 \
             ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        for row in rows {
            list.devices.push(RemoteDevice {
                device_id: row.try_get::<String, _>("device_id").map_err(db_error)?.into(),
                keys: row.try_get("keys").map_err(db_error)?,
                display_name: row.try_get("display_name").map_err(db_error)?,
            });
        }
        Ok(Some(list))
    }

    async fn replace_remote_device_list(
        &self,
        list: &RemoteDeviceList,
        record: bool,
    ) -> Result<Option<StreamPos>> {
        if !record {
            let mut transaction = self.write.begin().await.map_err(db_error)?;
            write_remote_list(&mut transaction, list).await?;
            transaction.commit().await.map_err(db_error)?;
            return Ok(None);
        }
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        write_remote_list(write.connection(), list).await?;
        record_change(&mut write, list.user_id.as_str(), "", pos).await?;
        write.commit().await.map(Some)
    }

    async fn update_remote_device(
        &self,
        user_id: &UserId,
        stream_id: i64,
        device_id: &DeviceId,
        device: Option<&RemoteDevice>,
    ) -> Result<Option<StreamPos>> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        let user = user_id.as_str();
        let tracked =
            sqlx::query("UPDATE e2ee_remote_device_lists SET stream_id = $1 WHERE user_id = $2")
                .bind(stream_id)
                .bind(user)
                .execute(write.connection())
                .await
                .map_err(db_error)?
                .rows_affected();
        if tracked == 0 {
            return Ok(None);
        }
        match device {
            Some(device) => upsert_remote_device(write.connection(), user, device).await?,
            None => {
                sqlx::query(
                    "DELETE FROM e2ee_remote_devices WHERE user_id = $1 AND device_id = $2",
                )
                .bind(user)
                .bind(device_id.as_str())
                .execute(write.connection())
                .await
                .map_err(db_error)?;
            }
        }
        record_change(&mut write, user, "", pos).await?;
        write.commit().await.map(Some)
    }

    async fn update_remote_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&str>,
        self_signing_key: Option<&str>,
    ) -> Result<Option<StreamPos>> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        let tracked = sqlx::query(
            "UPDATE e2ee_remote_device_lists SET \
             master_key = COALESCE($1, master_key), \
             self_signing_key = COALESCE($2, self_signing_key) WHERE user_id = $3",
        )
        .bind(master_key)
        .bind(self_signing_key)
        .bind(user_id.as_str())
        .execute(write.connection())
        .await
        .map_err(db_error)?
        .rows_affected();
        if tracked == 0 {
            return Ok(None);
        }
        record_change(&mut write, user_id.as_str(), "", pos).await?;
        write.commit().await.map(Some)
    }

    async fn mark_remote_device_list_stale(&self, user_id: &UserId) -> Result<bool> {
        let marked =
            sqlx::query("UPDATE e2ee_remote_device_lists SET stale = 1 WHERE user_id = $1")
                .bind(user_id.as_str())
                .execute(&self.write)
                .await
                .map_err(db_error)?
                .rows_affected();
        Ok(marked > 0)
    }

    async fn forget_remote_device_list(&self, user_id: &UserId) -> Result<bool> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        sqlx::query("DELETE FROM e2ee_remote_devices WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        let forgotten = sqlx::query("DELETE FROM e2ee_remote_device_lists WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?
            .rows_affected();
        transaction.commit().await.map_err(db_error)?;
        Ok(forgotten > 0)
    }

    async fn tracked_remote_users(&self, stale_only: bool) -> Result<Vec<OwnedUserId>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM e2ee_remote_device_lists WHERE stale >= $1 ORDER BY user_id",
        )
        .bind(flag(stale_only))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        users.into_iter().map(parse_id).collect()
    }
}

/// Writes a whole remote list, replacing what was cached.
async fn write_remote_list(connection: &mut AnyConnection, list: &RemoteDeviceList) -> Result<()> {
    let user = list.user_id.as_str();
    sqlx::query(
        "INSERT INTO e2ee_remote_device_lists \
         (user_id, stream_id, stale, fetched_ts, fetched_pos, master_key, self_signing_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (user_id) DO UPDATE SET \
         stream_id = excluded.stream_id, stale = excluded.stale, \
         fetched_ts = excluded.fetched_ts, fetched_pos = excluded.fetched_pos, \
         master_key = excluded.master_key, \
         self_signing_key = excluded.self_signing_key",
    )
    .bind(user)
    .bind(list.stream_id)
    .bind(flag(list.stale))
    .bind(list.fetched_ts)
    .bind(list.fetched_pos)
    .bind(list.master_key.as_deref())
    .bind(list.self_signing_key.as_deref())
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    sqlx::query("DELETE FROM e2ee_remote_devices WHERE user_id = $1")
        .bind(user)
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    for device in &list.devices {
        upsert_remote_device(&mut *connection, user, device).await?;
    }
    Ok(())
}

async fn upsert_remote_device(
    connection: &mut AnyConnection,
    user: &str,
    device: &RemoteDevice,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO e2ee_remote_devices (user_id, device_id, keys, display_name) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id) DO UPDATE SET \
         keys = excluded.keys, display_name = excluded.display_name",
    )
    .bind(user)
    .bind(device.device_id.as_str())
    .bind(device.keys.as_deref())
    .bind(device.display_name.as_deref())
    .execute(connection)
    .await
    .map_err(db_error)?;
    Ok(())
}
