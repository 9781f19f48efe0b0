//! Thread subscriptions and delayed events.

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{DelayedEventRecord, ScheduledStore, StreamPos, ThreadSubscriptionRecord};
use ruma::{EventId, RoomId, UserId};
use sqlx::{Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, parse_id};

const SUBSCRIPTION_COLUMNS: &str = "room_id, thread_root_id, subscribed, automatic, stream_pos";
const DELAYED_COLUMNS: &str = "delay_id, user_id, device_id, room_id, event_type, state_key, \
                               content, delay_ms, send_ts, created_ts";

fn subscription_from_row(row: &AnyRow) -> Result<ThreadSubscriptionRecord> {
    Ok(ThreadSubscriptionRecord {
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        thread_root_id: parse_id(row.try_get("thread_root_id").map_err(db_error)?)?,
        subscribed: row.try_get::<i64, _>("subscribed").map_err(db_error)? != 0,
        automatic: row.try_get::<i64, _>("automatic").map_err(db_error)? != 0,
        stream_pos: row.try_get("stream_pos").map_err(db_error)?,
    })
}

fn delayed_from_row(row: &AnyRow) -> Result<DelayedEventRecord> {
    let device_id: Option<String> = row.try_get("device_id").map_err(db_error)?;
    Ok(DelayedEventRecord {
        delay_id: row.try_get("delay_id").map_err(db_error)?,
        user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
        device_id: device_id.map(Into::into),
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        event_type: row.try_get("event_type").map_err(db_error)?,
        state_key: row.try_get("state_key").map_err(db_error)?,
        content: row.try_get("content").map_err(db_error)?,
        delay_ms: row.try_get("delay_ms").map_err(db_error)?,
        send_ts: row.try_get("send_ts").map_err(db_error)?,
        created_ts: row.try_get("created_ts").map_err(db_error)?,
    })
}

impl SqlStore {
    async fn set_thread_subscription(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
        subscribed: bool,
        automatic: bool,
    ) -> Result<StreamPos> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        sqlx::query(
            "INSERT INTO thread_subscriptions \
             (user_id, room_id, thread_root_id, subscribed, automatic, stream_pos) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, room_id, thread_root_id) DO UPDATE SET \
             subscribed = excluded.subscribed, automatic = excluded.automatic, \
             stream_pos = excluded.stream_pos",
        )
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .bind(thread_root_id.as_str())
        .bind(flag(subscribed))
        .bind(flag(automatic))
        .bind(pos)
        .execute(write.connection())
        .await
        .map_err(db_error)?;
        write.commit().await
    }
}

#[async_trait]
impl ScheduledStore for SqlStore {
    async fn subscribe_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
        automatic: bool,
    ) -> Result<StreamPos> {
        self.set_thread_subscription(user_id, room_id, thread_root_id, true, automatic).await
    }

    async fn unsubscribe_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
    ) -> Result<StreamPos> {
        self.set_thread_subscription(user_id, room_id, thread_root_id, false, false).await
    }

    async fn thread_subscription(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        thread_root_id: &EventId,
    ) -> Result<Option<ThreadSubscriptionRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM thread_subscriptions \
             WHERE user_id = $1 AND room_id = $2 AND thread_root_id = $3"
        )))
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .bind(thread_root_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(subscription_from_row).transpose()
    }

    async fn thread_subscriptions_between(
        &self,
        user_id: &UserId,
        since: Option<StreamPos>,
        until: StreamPos,
        limit: i64,
    ) -> Result<Vec<ThreadSubscriptionRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM thread_subscriptions \
             WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 \
             ORDER BY stream_pos DESC LIMIT $4"
        )))
        .bind(user_id.as_str())
        .bind(since.unwrap_or(0))
        .bind(until)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(subscription_from_row).collect()
    }

    async fn add_delayed_event(&self, event: &DelayedEventRecord) -> Result<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO delayed_events ({DELAYED_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&event.delay_id)
        .bind(event.user_id.as_str())
        .bind(event.device_id.as_ref().map(|device| device.as_str()))
        .bind(event.room_id.as_str())
        .bind(&event.event_type)
        .bind(event.state_key.as_deref())
        .bind(&event.content)
        .bind(event.delay_ms)
        .bind(event.send_ts)
        .bind(event.created_ts)
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn delayed_event(&self, delay_id: &str) -> Result<Option<DelayedEventRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELAYED_COLUMNS} FROM delayed_events WHERE delay_id = $1"
        )))
        .bind(delay_id)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(delayed_from_row).transpose()
    }

    async fn delayed_events_of(&self, user_id: &UserId) -> Result<Vec<DelayedEventRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELAYED_COLUMNS} FROM delayed_events WHERE user_id = $1 \
             ORDER BY send_ts, delay_id"
        )))
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(delayed_from_row).collect()
    }

    async fn due_delayed_events(&self, now: i64, limit: i64) -> Result<Vec<DelayedEventRecord>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {DELAYED_COLUMNS} FROM delayed_events WHERE send_ts <= $1 \
             ORDER BY send_ts, delay_id LIMIT $2"
        )))
        .bind(now)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(delayed_from_row).collect()
    }

    async fn next_delayed_event_ts(&self) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT MIN(send_ts) FROM delayed_events")
            .fetch_one(&self.read)
            .await
            .map_err(db_error)
    }

    async fn reschedule_delayed_event(&self, delay_id: &str, send_ts: i64) -> Result<bool> {
        let result = sqlx::query("UPDATE delayed_events SET send_ts = $2 WHERE delay_id = $1")
            .bind(delay_id)
            .bind(send_ts)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn take_delayed_event(&self, delay_id: &str) -> Result<bool> {
        let result = sqlx::query("DELETE FROM delayed_events WHERE delay_id = $1")
            .bind(delay_id)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() > 0)
    }

    async fn cancel_delayed_state_events(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        sender: &UserId,
    ) -> Result<u64> {
        let result = sqlx::query(
            "DELETE FROM delayed_events WHERE room_id = $1 AND event_type = $2 \
             AND state_key = $3 AND user_id <> $4",
        )
        .bind(room_id.as_str())
        .bind(event_type)
        .bind(state_key)
        .bind(sender.as_str())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(result.rows_affected())
    }
}
