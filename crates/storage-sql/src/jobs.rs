//! Leases on singleton jobs and the push queue.

use async_trait::async_trait;
use rhizome_core::{Error, Result};
use rhizome_storage::{JobStore, PersistEvent, QueuedPush};
use ruma::OwnedUserId;
use sqlx::{AnyConnection, Row};

use crate::{SqlStore, db_error, parse_id};

#[async_trait]
impl JobStore for SqlStore {
    async fn acquire_job_lease(
        &self,
        job: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let taken: Option<String> = sqlx::query_scalar(
            "INSERT INTO job_leases (job, holder, expires_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (job) DO UPDATE SET holder = excluded.holder, \
             expires_ts = excluded.expires_ts \
             WHERE job_leases.holder = excluded.holder OR job_leases.expires_ts < $4 \
             RETURNING holder",
        )
        .bind(job)
        .bind(holder)
        .bind(until)
        .bind(now)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)?;
        Ok(taken.as_deref() == Some(holder))
    }

    async fn release_job_lease(&self, job: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM job_leases WHERE job = $1 AND holder = $2")
            .bind(job)
            .bind(holder)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn queued_pushes(&self, limit: i64) -> Result<Vec<QueuedPush>> {
        let rows =
            sqlx::query("SELECT id, room_id, event_id, users FROM push_queue ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(&self.write)
                .await
                .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let users: String = row.try_get("users").map_err(db_error)?;
                let users: Vec<(OwnedUserId, String)> = serde_json::from_str(&users)
                    .map_err(|error| Error::bug(format!("a garbled push job: {error}")))?;
                Ok(QueuedPush {
                    id: row.try_get("id").map_err(db_error)?,
                    room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                    event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
                    users,
                })
            })
            .collect()
    }

    async fn delete_queued_push(&self, id: i64) -> Result<()> {
        sqlx::query("DELETE FROM push_queue WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }
}

/// Queues the event's notifications for push gateways (inside its persisting transaction),
/// when it notifies a user who has a pusher. (On SQLite the event's own batch of statements
/// does it in the same call: `rooms::write_extremities_and_push_actions`.)
pub(crate) async fn queue_pushes(
    connection: &mut AnyConnection,
    event: &PersistEvent,
    now: i64,
) -> Result<bool> {
    let users: Vec<(&OwnedUserId, &str)> = event
        .push_actions
        .iter()
        .filter(|action| action.notify)
        .map(|action| (&action.user_id, action.actions.as_str()))
        .collect();
    if users.is_empty() || !event.queue_pushes {
        return Ok(false);
    }
    // Who has a pusher, in one query however big the room (inside the write transaction):
    // the users go as one JSON array.
    let list = serde_json::to_string(
        &users.iter().map(|(user_id, _)| user_id.as_str()).collect::<Vec<_>>(),
    )
    .map_err(Error::internal)?;
    let sql = if crate::is_postgres(connection) {
        "SELECT DISTINCT user_id FROM pushers \
         WHERE user_id IN (SELECT jsonb_array_elements_text(CAST($1 AS JSONB)))"
    } else {
        "SELECT DISTINCT user_id FROM pushers WHERE user_id IN (SELECT value FROM json_each($1))"
    };
    let has_pusher: std::collections::HashSet<String> = sqlx::query_scalar::<_, String>(sql)
        .bind(list)
        .fetch_all(&mut *connection)
        .await
        .map_err(db_error)?
        .into_iter()
        .collect();
    let with_pusher: Vec<&(&OwnedUserId, &str)> =
        users.iter().filter(|(user_id, _)| has_pusher.contains(user_id.as_str())).collect();
    if with_pusher.is_empty() {
        return Ok(false);
    }
    let users = serde_json::to_string(&with_pusher).map_err(Error::internal)?;
    sqlx::query(
        "INSERT INTO push_queue (room_id, event_id, users, queued_ts) VALUES ($1, $2, $3, $4)",
    )
    .bind(event.room_id.as_str())
    .bind(event.event_id.as_str())
    .bind(users)
    .bind(now)
    .execute(&mut *connection)
    .await
    .map_err(db_error)?;
    Ok(true)
}
