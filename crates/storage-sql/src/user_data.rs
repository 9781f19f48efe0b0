//! Per-user data in SQL: account data, filters, receipts, pushers and notification counts.

use std::collections::HashMap;

use async_trait::async_trait;
use rhizome_core::Result;
use rhizome_storage::{
    AccountDataRecord, NotificationRecord, PushActionRetention, PusherRecord, ReceiptRecord,
    StreamPos, UnreadCounts, UserDataStore,
};
use ruma::{EventId, OwnedDeviceId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

use crate::{SqlStore, db_error, flag, parse_id, placeholders, recent::Touch};

/// The stream position up to which the user has read the notification `a` (a row of
/// `push_actions`): their latest read receipt, private or public, that covers it (an
/// unthreaded receipt covers everything, a threaded one its own thread, `main` for events
/// outside threads); 0 without one.
macro_rules! last_read {
    () => {
        "COALESCE((SELECT MAX(r.event_stream_pos) FROM receipts r \
           WHERE r.room_id = a.room_id AND r.user_id = a.user_id \
             AND r.receipt_type IN ('m.read', 'm.read.private') \
             AND (r.thread_id = '' OR r.thread_id = COALESCE(a.thread_id, 'main'))), 0)"
    };
}

fn account_data_from_row(row: &AnyRow) -> Result<AccountDataRecord> {
    let room_id: String = row.try_get("room_id").map_err(db_error)?;
    Ok(AccountDataRecord {
        room_id: if room_id.is_empty() { None } else { Some(parse_id(room_id)?) },
        data_type: row.try_get("data_type").map_err(db_error)?,
        content: row.try_get("content").map_err(db_error)?,
        stream_pos: row.try_get("stream_pos").map_err(db_error)?,
    })
}

fn receipt_from_row(row: &AnyRow) -> Result<ReceiptRecord> {
    let thread_id: String = row.try_get("thread_id").map_err(db_error)?;
    Ok(ReceiptRecord {
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        receipt_type: row.try_get("receipt_type").map_err(db_error)?,
        user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
        thread_id: if thread_id.is_empty() { None } else { Some(thread_id) },
        event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
        ts: row.try_get("ts").map_err(db_error)?,
        stream_pos: row.try_get("stream_pos").map_err(db_error)?,
    })
}

#[async_trait]
impl UserDataStore for SqlStore {
    async fn set_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
        content: &str,
    ) -> Result<StreamPos> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        sqlx::query(
                        "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (user_id, room_id, data_type) \
                         DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos",
                    )
                    .bind(user_id.as_str())
                    .bind(room_id.map_or("", |room| room.as_str()))
                    .bind(data_type)
                    .bind(content)
                    .bind(pos)
                    .execute(write.connection())
                    .await
                    .map_err(db_error)?;
        write.touch(Touch::AccountData(user_id.to_owned()));
        let pos = write.commit().await?;
        self.recent.values_changed(user_id);
        Ok(pos)
    }

    async fn get_account_data(
        &self,
        user_id: &UserId,
        room_id: Option<&RoomId>,
        data_type: &str,
    ) -> Result<Option<AccountDataRecord>> {
        // A user's global account data is read by every sync (ignored users): remembered.
        let generation = match room_id {
            None => match self.recent.account_data(user_id, data_type) {
                Some(record) => return Ok(record),
                None => Some(self.recent.generation(user_id)),
            },
            Some(_) => None,
        };
        let row = sqlx::query(
            "SELECT room_id, data_type, content, stream_pos FROM account_data \
             WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(user_id.as_str())
        .bind(room_id.map_or("", |room| room.as_str()))
        .bind(data_type)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        let record = row.as_ref().map(account_data_from_row).transpose()?;
        if let Some(generation) = generation {
            self.recent.remember_account_data(user_id, data_type, generation, record.clone());
        }
        Ok(record)
    }

    async fn account_data_since(
        &self,
        user_id: &UserId,
        since: Option<StreamPos>,
    ) -> Result<Vec<AccountDataRecord>> {
        if self.recent.no_account_data_since(user_id, since) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT room_id, data_type, content, stream_pos FROM account_data \
             WHERE user_id = $1 AND stream_pos > $2 ORDER BY stream_pos",
        )
        .bind(user_id.as_str())
        .bind(since.unwrap_or(i64::MIN))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(account_data_from_row).collect()
    }

    async fn create_filter(&self, user_id: &UserId, json: &str) -> Result<String> {
        let filter_id: i64 = sqlx::query_scalar(
            "INSERT INTO filters (user_id, json) VALUES ($1, $2) RETURNING filter_id",
        )
        .bind(user_id.as_str())
        .bind(json)
        .fetch_one(&self.write)
        .await
        .map_err(db_error)?;
        Ok(filter_id.to_string())
    }

    async fn get_filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
        let Ok(filter_id) = filter_id.parse::<i64>() else {
            return Ok(None);
        };
        sqlx::query_scalar("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id.as_str())
            .bind(filter_id)
            .fetch_optional(&self.read)
            .await
            .map_err(db_error)
    }

    async fn set_receipt(
        &self,
        room_id: &RoomId,
        receipt_type: &str,
        user_id: &UserId,
        thread_id: Option<&str>,
        event_id: &EventId,
        ts: i64,
    ) -> Result<StreamPos> {
        let mut write = self.begin_stream_write().await?;
        let pos = write.pos();
        let event_pos: Option<i64> =
            sqlx::query_scalar("SELECT stream_pos FROM events WHERE event_id = $1")
                .bind(event_id.as_str())
                .fetch_optional(write.connection())
                .await
                .map_err(db_error)?;
        sqlx::query(
                        "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, \
                         event_stream_pos, ts, stream_pos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET \
                         event_id = excluded.event_id, event_stream_pos = excluded.event_stream_pos, \
                         ts = excluded.ts, stream_pos = excluded.stream_pos",
                    )
                    .bind(room_id.as_str())
                    .bind(receipt_type)
                    .bind(user_id.as_str())
                    .bind(thread_id.unwrap_or_default())
                    .bind(event_id.as_str())
                    .bind(event_pos.unwrap_or(0))
                    .bind(ts)
                    .bind(pos)
                    .execute(write.connection())
                    .await
                    .map_err(db_error)?;
        write.touch(Touch::Receipt(room_id.to_owned(), user_id.to_owned()));
        write.commit().await
    }

    async fn receipts_since(
        &self,
        room_ids: &[&RoomId],
        since: Option<StreamPos>,
    ) -> Result<Vec<ReceiptRecord>> {
        let mut receipts = Vec::new();
        let room_ids = self.recent.rooms_maybe_with_receipts(room_ids, since);
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts, stream_pos \
                 FROM receipts WHERE stream_pos > $1 AND room_id IN ({}) ORDER BY stream_pos",
                placeholders(2, chunk.len())
            );
            let mut query =
                sqlx::query(AssertSqlSafe(sql.as_str())).bind(since.unwrap_or(i64::MIN));
            for room_id in chunk {
                query = query.bind(room_id.as_str());
            }
            for row in query.fetch_all(&self.read).await.map_err(db_error)? {
                receipts.push(receipt_from_row(&row)?);
            }
        }
        Ok(receipts)
    }

    async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId) -> Result<UnreadCounts> {
        let threads = self.unread_counts_by_thread(user_id, room_id).await?;
        Ok(threads.iter().fold(UnreadCounts::default(), |total, (_, counts)| UnreadCounts {
            notifications: total.notifications + counts.notifications,
            highlights: total.highlights + counts.highlights,
        }))
    }

    async fn unread_counts_in_rooms(
        &self,
        user_id: &UserId,
        room_ids: &[&RoomId],
    ) -> Result<HashMap<OwnedRoomId, UnreadCounts>> {
        let mut counts = HashMap::new();
        // Remembered counts first; the others are read, and remembered unless they changed
        // meanwhile.
        let mut unknown = Vec::new();
        for room_id in room_ids {
            match self.recent.unread_counts(user_id, room_id) {
                Some(known) if known == UnreadCounts::default() => {}
                Some(known) => {
                    counts.insert((*room_id).to_owned(), known);
                }
                None => unknown.push((*room_id, self.recent.unread_generation(room_id))),
            }
        }
        let room_ids: Vec<&RoomId> = unknown.iter().map(|(room_id, _)| *room_id).collect();
        let found = self.read_unread_counts(user_id, &room_ids).await?;
        for (room_id, generation) in unknown {
            let room_counts = found.get(room_id).copied().unwrap_or_default();
            self.recent.remember_unread(user_id, room_id, generation, room_counts);
        }
        counts.extend(found);
        Ok(counts)
    }

    async fn unread_counts_by_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<(Option<OwnedEventId>, UnreadCounts)>> {
        let rows = sqlx::query(concat!(
            "SELECT a.thread_id, \
                    CAST(COALESCE(SUM(a.notify), 0) AS BIGINT) AS notifications, \
                    CAST(COALESCE(SUM(a.highlight), 0) AS BIGINT) AS highlights \
             FROM push_actions a \
             WHERE a.user_id = $1 AND a.room_id = $2 AND a.stream_pos > ",
            last_read!(),
            " GROUP BY a.thread_id ORDER BY COALESCE(a.thread_id, '')",
        ))
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let thread: Option<String> = row.try_get("thread_id").map_err(db_error)?;
            let thread = thread.map(parse_id::<OwnedEventId>).transpose()?;
            let notifications: i64 = row.try_get("notifications").map_err(db_error)?;
            let highlights: i64 = row.try_get("highlights").map_err(db_error)?;
            if notifications > 0 || highlights > 0 {
                counts.push((
                    thread,
                    UnreadCounts {
                        notifications: notifications.max(0).unsigned_abs(),
                        highlights: highlights.max(0).unsigned_abs(),
                    },
                ));
            }
        }
        Ok(counts)
    }

    async fn notifications(
        &self,
        user_id: &UserId,
        before: Option<StreamPos>,
        highlights_only: bool,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT a.room_id, e.event_id, a.stream_pos, e.origin_server_ts, a.highlight, \
                    a.actions, CAST(CASE WHEN a.stream_pos <= ",
            last_read!(),
            " THEN 1 ELSE 0 END AS BIGINT) AS is_read \
             FROM (SELECT * FROM (SELECT user_id, room_id, stream_pos, highlight, thread_id, \
                                         actions FROM event_push_actions \
                                  WHERE user_id = $1 AND stream_pos < $2 \
                                    AND (highlight = 1 OR (notify = 1 AND $3 = 0)) \
                                  ORDER BY stream_pos DESC LIMIT $4) AS settled \
                   UNION ALL \
                   SELECT * FROM (SELECT user_id, room_id, stream_pos, highlight, thread_id, \
                                         actions FROM event_push_actions_staged \
                                  WHERE user_id = $1 AND stream_pos < $2 \
                                    AND (highlight = 1 OR (notify = 1 AND $3 = 0)) \
                                  ORDER BY stream_pos DESC LIMIT $4) AS staged) a \
             JOIN events e ON e.stream_pos = a.stream_pos \
             ORDER BY a.stream_pos DESC LIMIT $4",
        ))
        .bind(user_id.as_str())
        .bind(before.unwrap_or(i64::MAX))
        .bind(flag(highlights_only))
        .bind(limit.max(0))
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(NotificationRecord {
                    room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                    event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
                    stream_pos: row.try_get("stream_pos").map_err(db_error)?,
                    ts: row.try_get("origin_server_ts").map_err(db_error)?,
                    highlight: row.try_get::<i64, _>("highlight").map_err(db_error)? != 0,
                    actions: row.try_get("actions").map_err(db_error)?,
                    read: row.try_get::<i64, _>("is_read").map_err(db_error)? != 0,
                })
            })
            .collect()
    }

    async fn set_pusher(&self, pusher: &PusherRecord, append: bool) -> Result<()> {
        let mut transaction = self.write.begin().await.map_err(db_error)?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&pusher.app_id)
                .bind(&pusher.pushkey)
                .bind(pusher.user_id.as_str())
                .execute(&mut *transaction)
                .await
                .map_err(db_error)?;
        }
        sqlx::query(
            "INSERT INTO pushers (user_id, app_id, pushkey, json, device_id, created_ts) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET json = excluded.json, \
               device_id = excluded.device_id, created_ts = excluded.created_ts",
        )
        .bind(pusher.user_id.as_str())
        .bind(&pusher.app_id)
        .bind(&pusher.pushkey)
        .bind(&pusher.json)
        .bind(pusher.device_id.as_ref().map(|device| device.as_str()))
        .bind(pusher.created_ts)
        .execute(&mut *transaction)
        .await
        .map_err(db_error)?;
        transaction.commit().await.map_err(db_error)
    }

    async fn rooms_with_unread_notifications(&self, user_id: &UserId) -> Result<u64> {
        // Per room the user is in or invited to, whether one notifying action is unread:
        // an index seek each, from the room's unthreaded read receipt (every action before it
        // is read, whatever its thread). Counting over the user's actions instead made every
        // push cost as much as the user's whole backlog. Rooms left no longer count.
        let count: i64 = sqlx::query_scalar(concat!(
            "SELECT CAST(COUNT(*) AS BIGINT) FROM room_memberships m \
             WHERE m.user_id = $1 AND m.membership IN ('join', 'invite') AND EXISTS \
             (SELECT 1 FROM push_actions a WHERE a.user_id = m.user_id \
              AND a.room_id = m.room_id AND a.notify = 1 \
              AND a.stream_pos > COALESCE((SELECT MAX(r.event_stream_pos) FROM receipts r \
                WHERE r.room_id = m.room_id AND r.user_id = m.user_id \
                  AND r.receipt_type IN ('m.read', 'm.read.private') AND r.thread_id = ''), 0) \
              AND a.stream_pos > ",
            last_read!(),
            ")",
        ))
        .bind(user_id.as_str())
        .fetch_one(&self.read)
        .await
        .map_err(db_error)?;
        Ok(count.max(0).unsigned_abs())
    }

    async fn delete_pusher(&self, user_id: &UserId, app_id: &str, pushkey: &str) -> Result<()> {
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id.as_str())
            .bind(app_id)
            .bind(pushkey)
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn list_pushers(&self, user_id: &UserId) -> Result<Vec<PusherRecord>> {
        let rows = sqlx::query(
            "SELECT user_id, app_id, pushkey, json, device_id, created_ts FROM pushers \
             WHERE user_id = $1 ORDER BY app_id, pushkey",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(PusherRecord {
                    user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
                    app_id: row.try_get("app_id").map_err(db_error)?,
                    pushkey: row.try_get("pushkey").map_err(db_error)?,
                    json: row.try_get("json").map_err(db_error)?,
                    device_id: row
                        .try_get::<Option<String>, _>("device_id")
                        .map_err(db_error)?
                        .map(OwnedDeviceId::from),
                    created_ts: row
                        .try_get::<Option<i64>, _>("created_ts")
                        .map_err(db_error)?
                        .unwrap_or(0),
                })
            })
            .collect()
    }

    async fn prune_push_actions(&self, now_ms: i64, keep: &PushActionRetention) -> Result<u64> {
        if self.backend == crate::Backend::Sqlite {
            // Staged rows are moved first, so that one table holds what is pruned.
            self.move_staged_push_actions().await?;
        }
        sqlx::query(
            "INSERT INTO push_action_marks (ts, stream_pos) VALUES ($1, $2) \
             ON CONFLICT (ts) DO NOTHING",
        )
        .bind(now_ms)
        .bind(self.stream.current())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        let read = self.position_as_of(now_ms.saturating_sub(keep.read_ms)).await?;
        let read_highlight =
            self.position_as_of(now_ms.saturating_sub(keep.read_highlight_ms)).await?;
        let unread = self.position_as_of(now_ms.saturating_sub(keep.unread_ms)).await?;
        // The marks the longest retention no longer needs (the newest of those stays: it
        // maps that age to a position).
        let longest = keep.read_ms.max(keep.read_highlight_ms).max(keep.unread_ms);
        sqlx::query(
            "DELETE FROM push_action_marks WHERE ts < \
             (SELECT MAX(ts) FROM push_action_marks WHERE ts <= $1)",
        )
        .bind(now_ms.saturating_sub(longest))
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        let mut pruned = 0;
        if let Some(read) = read {
            // Read ones: a read receipt of the whole room covers them, so no count changes.
            // Driven by the receipts, each a range of the table's key.
            pruned += self
                .prune_in_batches(
                    "DELETE FROM event_push_actions WHERE (user_id, room_id, stream_pos) IN \
                     (SELECT a.user_id, a.room_id, a.stream_pos FROM receipts r \
                      JOIN event_push_actions a ON a.user_id = r.user_id \
                       AND a.room_id = r.room_id AND a.stream_pos <= r.event_stream_pos \
                      WHERE r.receipt_type IN ('m.read', 'm.read.private') \
                        AND r.thread_id = '' AND a.stream_pos <= $1 \
                        AND (a.highlight = 0 OR a.stream_pos <= $2) LIMIT $3) \
                     RETURNING user_id, room_id",
                    &[read, read_highlight.unwrap_or(StreamPos::MIN)],
                    false,
                )
                .await?;
        }
        if let Some(unread) = unread {
            // Any: the counts of those rooms change. Driven by the memberships (every user
            // with push actions in a room has a membership row there).
            pruned += self
                .prune_in_batches(
                    "DELETE FROM event_push_actions WHERE (user_id, room_id, stream_pos) IN \
                     (SELECT a.user_id, a.room_id, a.stream_pos FROM room_memberships m \
                      JOIN event_push_actions a ON a.user_id = m.user_id \
                       AND a.room_id = m.room_id AND a.stream_pos <= $1 LIMIT $2) \
                     RETURNING user_id, room_id",
                    &[unread],
                    true,
                )
                .await?;
        }
        Ok(pruned)
    }
}

impl SqlStore {
    /// The stream position noted at the newest mark at or before `ts`, if any.
    async fn position_as_of(&self, ts: i64) -> Result<Option<StreamPos>> {
        sqlx::query_scalar(
            "SELECT stream_pos FROM push_action_marks WHERE ts <= $1 ORDER BY ts DESC LIMIT 1",
        )
        .bind(ts)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)
    }

    /// Runs a pruning `DELETE … RETURNING user_id, room_id` (bound to `bounds`, then a batch
    /// size) until it deletes less than a batch, each batch a write of its own so the
    /// events being sent meanwhile wait one batch at most. With `counts_change`, the unread
    /// counts remembered for what it deleted are forgotten.
    async fn prune_in_batches(
        &self,
        sql: &'static str,
        bounds: &[i64],
        counts_change: bool,
    ) -> Result<u64> {
        const BATCH: i64 = 5_000;
        let mut pruned = 0;
        loop {
            let mut query = sqlx::query(sql);
            for bound in bounds {
                query = query.bind(*bound);
            }
            let rows = query.bind(BATCH).fetch_all(&self.write).await.map_err(db_error)?;
            pruned += rows.len() as u64;
            if counts_change {
                let mut seen = std::collections::HashSet::new();
                for row in &rows {
                    let user: String = row.try_get("user_id").map_err(db_error)?;
                    let room: String = row.try_get("room_id").map_err(db_error)?;
                    if seen.insert((user.clone(), room.clone())) {
                        let (user, room): (ruma::OwnedUserId, OwnedRoomId) =
                            (parse_id(user)?, parse_id(room)?);
                        self.recent.unread_pruned(&user, &room);
                    }
                }
            }
            if rows.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                return Ok(pruned);
            }
            tokio::task::yield_now().await;
        }
    }

    /// Unread counts (all threads together) of rooms, read from the database.
    async fn read_unread_counts(
        &self,
        user_id: &UserId,
        room_ids: &[&RoomId],
    ) -> Result<HashMap<OwnedRoomId, UnreadCounts>> {
        let mut counts = HashMap::new();
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                concat!(
                    "SELECT a.room_id, \
                            CAST(COALESCE(SUM(a.notify), 0) AS BIGINT) AS notifications, \
                            CAST(COALESCE(SUM(a.highlight), 0) AS BIGINT) AS highlights \
                     FROM push_actions a \
                     WHERE a.user_id = $1 AND a.room_id IN ({}) AND a.stream_pos > ",
                    last_read!(),
                    " GROUP BY a.room_id",
                ),
                placeholders(2, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(user_id.as_str());
            for room_id in chunk {
                query = query.bind(room_id.as_str());
            }
            for row in query.fetch_all(&self.read).await.map_err(db_error)? {
                let room_id: OwnedRoomId = parse_id(row.try_get("room_id").map_err(db_error)?)?;
                let notifications: i64 = row.try_get("notifications").map_err(db_error)?;
                let highlights: i64 = row.try_get("highlights").map_err(db_error)?;
                if notifications > 0 || highlights > 0 {
                    let room_counts = UnreadCounts {
                        notifications: notifications.max(0).unsigned_abs(),
                        highlights: highlights.max(0).unsigned_abs(),
                    };
                    counts.insert(room_id, room_counts);
                }
            }
        }
        Ok(counts)
    }
}
