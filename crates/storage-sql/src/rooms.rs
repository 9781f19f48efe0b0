//! Rooms and events in SQL: persisting an event in one transaction, and reading events back.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_storage::{
    AliasRecord, CurrentState, Direction, EventRecord, MembershipRecord, PersistEvent,
    PersistedEvent, PublishedRoom, RoomLock, RoomRecord, RoomStore, StateGroupId, StateSlot,
    StreamPos, TxnRecord,
};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomAliasId, RoomId, RoomVersionId, UserId};
use sqlx::{AnyConnection, AssertSqlSafe, Row, any::AnyRow};

use crate::{
    SqlStore, db_error, flag, is_unique_violation, parse_id, placeholders, recent::Touch,
    rooms_query, state,
};

pub(crate) const EVENT_COLUMNS: &str = "e.event_id, e.room_id, e.stream_pos, e.json, e.rejected, \
     e.state_before, e.state_after, e.txn_user, e.txn_device, e.txn_id, e.redacted_by";

pub(crate) fn event_from_row(row: &AnyRow) -> Result<EventRecord> {
    let txn_user: Option<String> = row.try_get("txn_user").map_err(db_error)?;
    let txn_device: Option<String> = row.try_get("txn_device").map_err(db_error)?;
    let txn_id: Option<String> = row.try_get("txn_id").map_err(db_error)?;
    let txn = match (txn_user, txn_device, txn_id) {
        (Some(user_id), Some(device_id), Some(txn_id)) => {
            Some(TxnRecord { user_id: parse_id(user_id)?, device_id: device_id.into(), txn_id })
        }
        _ => None,
    };
    Ok(EventRecord {
        event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        stream_pos: row.try_get("stream_pos").map_err(db_error)?,
        json: row.try_get("json").map_err(db_error)?,
        rejected: row.try_get::<i64, _>("rejected").map_err(db_error)? == REJECTED,
        state_before: row.try_get("state_before").map_err(db_error)?,
        state_after: row.try_get("state_after").map_err(db_error)?,
        txn,
        redacted_by: row
            .try_get::<Option<String>, _>("redacted_by")
            .map_err(db_error)?
            .map(parse_id)
            .transpose()?,
        soft_failed: row.try_get::<i64, _>("rejected").map_err(db_error)? == SOFT_FAILED,
        outlier: false,
    })
}

/// `events.rejected`: rejected by the auth rules.
const REJECTED: i64 = 1;
/// `events.rejected`: soft-failed.
const SOFT_FAILED: i64 = 2;

fn outlier_from_row(row: &AnyRow) -> Result<EventRecord> {
    Ok(EventRecord {
        event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        stream_pos: 0,
        json: row.try_get("json").map_err(db_error)?,
        rejected: row.try_get::<i64, _>("rejected").map_err(db_error)? != 0,
        state_before: 0,
        state_after: 0,
        txn: None,
        redacted_by: None,
        soft_failed: false,
        outlier: true,
    })
}

fn room_from_row(row: &AnyRow) -> Result<RoomRecord> {
    let version: String = row.try_get("room_version").map_err(db_error)?;
    Ok(RoomRecord {
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        room_version: RoomVersionId::try_from(version.as_str())
            .map_err(|error| Error::bug(format!("bad room version in database: {error}")))?,
        published: row.try_get::<i64, _>("published").map_err(db_error)? != 0,
        current_state_group: row.try_get("current_state_group").map_err(db_error)?,
        shut_down_ts: row.try_get("shut_down_ts").map_err(db_error)?,
    })
}

/// The `body` of a message, kept for search.
fn searchable_body(event: &PersistEvent) -> Option<String> {
    if event.event_type != "m.room.message" || event.rejected {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(&event.json).ok()?;
    value.get("content")?.get("body")?.as_str().map(str::to_owned)
}

/// What [`persist_in_transaction`] wrote besides the event.
struct Written {
    /// The room's new current state group, if it changed.
    current_group: Option<StateGroupId>,
    /// Whether the stream counter now holds the event's position (SQLite, an event of the
    /// stream: see `write_extremities_and_push_actions`).
    counter: bool,
    /// SQLite: the event's notifications were queued for push gateways (`Some(true)`) or
    /// need not be (`Some(false)`), by the same call; `None` when that is still to do
    /// ([`crate::jobs::queue_pushes`]).
    pushes_queued: Option<bool>,
}

/// Writes the event and what it changes; returns what was persisted and what else was
/// written.
async fn persist_in_transaction(
    connection: &mut AnyConnection,
    event: &PersistEvent,
    pos: StreamPos,
) -> Result<(PersistedEvent, Written)> {
    let state_before = state::write_group(connection, &event.room_id, &event.state_before).await?;
    let state_after = if event.state_after_changes.is_empty() {
        state_before
    } else {
        state::write_delta(
            connection,
            &event.room_id,
            Some(state_before),
            &event.state_after_changes,
        )
        .await?
    };
    // SQLite runs every statement of one query in one call to its connection's thread: the
    // auth edges go with the event, as one JSON array. (PostgreSQL prepares one statement at a
    // time.)
    let sqlite = !crate::is_postgres(connection);
    let auth_edges = if event.auth_events.is_empty() {
        None
    } else {
        let ids: Vec<&str> = event.auth_events.iter().map(|id| id.as_str()).collect();
        Some(serde_json::to_string(&ids).map_err(Error::internal)?)
    };
    let insert_event = "INSERT INTO events (stream_pos, event_id, room_id, sender, event_type, \
         state_key, depth, origin_server_ts, json, rejected, state_before, state_after, txn_user, \
         txn_device, txn_id, body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
         $13, $14, $15, $16)";
    let with_edges;
    let sql = match (&auth_edges, sqlite) {
        (Some(_), true) => {
            with_edges = format!(
                "{insert_event}; INSERT INTO event_auth_edges (event_id, auth_event_id) \
                 SELECT $2, value FROM json_each($17) WHERE true \
                 ON CONFLICT (event_id, auth_event_id) DO NOTHING"
            );
            with_edges.as_str()
        }
        _ => insert_event,
    };
    let mut query = sqlx::query(AssertSqlSafe(sql))
        .bind(pos)
        .bind(event.event_id.as_str())
        .bind(event.room_id.as_str())
        .bind(event.sender.as_str())
        .bind(&event.event_type)
        .bind(event.state_key.as_deref())
        .bind(event.depth)
        .bind(event.origin_server_ts)
        .bind(&event.json)
        .bind(if event.rejected {
            REJECTED
        } else if event.soft_failed {
            SOFT_FAILED
        } else {
            0
        })
        .bind(state_before)
        .bind(state_after)
        .bind(event.txn.as_ref().map(|txn| txn.user_id.as_str()))
        .bind(event.txn.as_ref().map(|txn| txn.device_id.as_str()))
        .bind(event.txn.as_ref().map(|txn| txn.txn_id.as_str()))
        .bind(searchable_body(event));
    if sqlite && let Some(edges) = &auth_edges {
        query = query.bind(edges.as_str());
    }
    if let Err(error) = query.execute(&mut *connection).await {
        return Err(if is_unique_violation(&error) {
            Error::matrix(MatrixErrorKind::Unknown, "Event or transaction already persisted")
                .with_cause(error)
        } else {
            db_error(error)
        });
    }
    if !sqlite && let Some(edges) = &auth_edges {
        sqlx::query(
            "INSERT INTO event_auth_edges (event_id, auth_event_id) \
             SELECT $1, value FROM jsonb_array_elements_text(CAST($2 AS JSONB)) \
             ON CONFLICT (event_id, auth_event_id) DO NOTHING",
        )
        .bind(event.event_id.as_str())
        .bind(edges.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    if let Some(relation) = &event.relation {
        sqlx::query(
            "INSERT INTO event_relations (event_id, relates_to, rel_type, aggregation_key, \
             room_id, sender, event_type, stream_pos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(event.event_id.as_str())
        .bind(relation.relates_to.as_str())
        .bind(&relation.rel_type)
        .bind(relation.key.as_deref())
        .bind(event.room_id.as_str())
        .bind(event.sender.as_str())
        .bind(&event.event_type)
        .bind(pos)
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    // An outlier that joins the timeline is an outlier no more.
    if !event.new_here {
        sqlx::query("DELETE FROM event_outliers WHERE event_id = $1")
            .bind(event.event_id.as_str())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
    }
    // Redactions, history's too: a redaction fetched with history may target an event held
    // already.
    if let Some((target, redacted_json)) = &event.redaction {
        sqlx::query(
            "UPDATE events SET json = $1, redacted_by = $2, body = NULL WHERE event_id = $3",
        )
        .bind(redacted_json)
        .bind(event.event_id.as_str())
        .bind(target.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    if let Some(target) = &event.redaction_waits_for {
        sqlx::query(
            "INSERT INTO redactions_waiting (target_id, redaction_id) VALUES ($1, $2) \
             ON CONFLICT (target_id, redaction_id) DO NOTHING",
        )
        .bind(target.as_str())
        .bind(event.event_id.as_str())
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    if let Some(redaction) = &event.redacted_by {
        sqlx::query("UPDATE events SET redacted_by = $1 WHERE event_id = $2")
            .bind(redaction.as_str())
            .bind(event.event_id.as_str())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
        sqlx::query("DELETE FROM redactions_waiting WHERE target_id = $1")
            .bind(event.event_id.as_str())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
    }
    if event.historical {
        let persisted =
            PersistedEvent { stream_pos: pos, state_before, state_after, pushes_queued: false };
        let written = Written { current_group: None, counter: false, pushes_queued: None };
        return Ok((persisted, written));
    }
    let current_group = match &event.current_state {
        CurrentState::Unchanged => None,
        CurrentState::StateAfter => Some(state_after),
        CurrentState::New(spec) => {
            Some(state::write_group(connection, &event.room_id, spec).await?)
        }
    };
    if let Some(current_group) = current_group {
        sqlx::query("UPDATE rooms SET current_state_group = $1 WHERE room_id = $2")
            .bind(current_group)
            .bind(event.room_id.as_str())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
        for change in &event.membership_changes {
            sqlx::query(
                "INSERT INTO room_memberships (room_id, user_id, membership, event_id, stream_pos, \
                 displayname, avatar_url, forgotten) VALUES ($1, $2, $3, $4, $5, $6, $7, 0) \
                 ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, \
                 event_id = excluded.event_id, stream_pos = excluded.stream_pos, \
                 displayname = excluded.displayname, avatar_url = excluded.avatar_url, \
                 forgotten = 0",
            )
            .bind(event.room_id.as_str())
            .bind(change.user_id.as_str())
            .bind(&change.membership)
            .bind(change.event_id.as_str())
            .bind(pos)
            .bind(change.displayname.as_deref())
            .bind(change.avatar_url.as_deref())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
        }
    }
    if !event.federation_destinations.is_empty() {
        let queued = rhizome_storage::QueuedPdu {
            stream_pos: pos,
            room_id: event.room_id.clone(),
            event_id: event.event_id.clone(),
        };
        crate::federation::queue_event_in_transaction(
            connection,
            &event.federation_destinations,
            &queued,
        )
        .await?;
    }
    let (counter, pushes_queued) =
        write_extremities_and_push_actions(connection, event, pos).await?;
    let persisted =
        PersistedEvent { stream_pos: pos, state_before, state_after, pushes_queued: false };
    Ok((persisted, Written { current_group, counter, pushes_queued }))
}

/// The room's new forward extremities and the event's push actions. Each is one statement
/// however big the room: the rows go as one JSON array the database takes apart itself.
/// (Bound one value at a time, a room of 1,000 members took 32 statements, and
/// sqlx-over-SQLite's binding costs the square of a statement's parameters.) On SQLite the
/// statements go to the connection's thread in one call, with the stream counter's update
/// (which the stream write then leaves out of its commit) and the event's entry in the push
/// queue when a user it notifies has a pusher (what `jobs::queue_pushes` does in two calls):
/// two hand-offs fewer per event. Returns whether it wrote the counter and, on SQLite, whether
/// it queued pushes.
async fn write_extremities_and_push_actions(
    connection: &mut AnyConnection,
    event: &PersistEvent,
    pos: i64,
) -> Result<(bool, Option<bool>)> {
    let extremities: Vec<&str> = event.new_extremities.iter().map(|id| id.as_str()).collect();
    let extremities = serde_json::to_string(&extremities).map_err(Error::internal)?;
    let actions = if event.push_actions.is_empty() {
        None
    } else {
        let rows: Vec<(&str, i64, i64, Option<&str>, &str)> = event
            .push_actions
            .iter()
            .map(|action| {
                (
                    action.user_id.as_str(),
                    flag(action.notify),
                    flag(action.highlight),
                    action.thread_id.as_ref().map(|id| id.as_str()),
                    action.actions.as_str(),
                )
            })
            .collect();
        Some(serde_json::to_string(&rows).map_err(Error::internal)?)
    };
    if crate::is_postgres(connection) {
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1")
            .bind(event.room_id.as_str())
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO forward_extremities (room_id, event_id) \
             SELECT $1, value FROM jsonb_array_elements_text(CAST($2 AS JSONB))",
        )
        .bind(event.room_id.as_str())
        .bind(&extremities)
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
        if let Some(actions) = actions {
            // PostgreSQL writes them in place; SQLite stages them (see `staged`).
            sqlx::query(
                "INSERT INTO event_push_actions (user_id, room_id, stream_pos, notify, \
                 highlight, thread_id, actions) \
                 SELECT r->>0, $1, $2, CAST(r->>1 AS BIGINT), CAST(r->>2 AS BIGINT), r->>3, \
                 r->>4 FROM jsonb_array_elements(CAST($3 AS JSONB)) AS rows(r)",
            )
            .bind(event.room_id.as_str())
            .bind(pos)
            .bind(actions)
            .execute(&mut *connection)
            .await
            .map_err(db_error)?;
        }
        return Ok((false, None));
    }
    let mut sql = String::from(
        "DELETE FROM forward_extremities WHERE room_id = $1; \
         INSERT INTO forward_extremities (room_id, event_id) SELECT $1, value FROM json_each($2); \
         UPDATE stream_counter SET pos = $3 WHERE id = 1",
    );
    if actions.is_some() {
        sql.push_str(
            "; INSERT INTO event_push_actions_staged (user_id, room_id, stream_pos, notify, \
             highlight, thread_id, actions) \
             SELECT value->>0, $1, $3, value->>1, value->>2, value->>3, value->>4 \
             FROM json_each($4)",
        );
    }
    // The users it notifies who have a pusher, with their actions, as one row of the queue
    // (none when there is no such user): the only statement of the batch that returns a row.
    let queue_pushes = event.queue_pushes && event.push_actions.iter().any(|action| action.notify);
    if queue_pushes {
        sql.push_str(
            "; INSERT INTO push_queue (room_id, event_id, users, queued_ts) \
             SELECT $1, $5, json_group_array(json_array(value->>0, value->>4)), $6 \
             FROM json_each($4) \
             WHERE value->>1 = 1 AND value->>0 IN (SELECT user_id FROM pushers) \
             HAVING count(*) > 0 RETURNING id",
        );
    }
    let mut query =
        sqlx::query(AssertSqlSafe(sql)).bind(event.room_id.as_str()).bind(extremities).bind(pos);
    if let Some(actions) = actions {
        query = query.bind(actions);
    }
    if !queue_pushes {
        query.execute(&mut *connection).await.map_err(db_error)?;
        return Ok((true, Some(false)));
    }
    let queued = query
        .bind(event.event_id.as_str())
        .bind(rhizome_core::clock::now_millis())
        .fetch_all(&mut *connection)
        .await
        .map_err(db_error)?;
    Ok((true, Some(!queued.is_empty())))
}

#[async_trait]
impl RoomStore for SqlStore {
    async fn create_room(
        &self,
        room_id: &RoomId,
        room_version: &RoomVersionId,
        now: i64,
    ) -> Result<()> {
        let result = sqlx::query(
            "INSERT INTO rooms (room_id, room_version, published, created_ts) VALUES ($1, $2, 0, $3)",
        )
        .bind(room_id.as_str())
        .bind(room_version.as_str())
        .bind(now)
        .execute(&self.write)
        .await;
        self.recent.room_changed(room_id);
        match result {
            Ok(_) => Ok(()),
            Err(error) if is_unique_violation(&error) => {
                Err(Error::matrix(MatrixErrorKind::RoomInUse, "Room already exists"))
            }
            Err(error) => Err(db_error(error)),
        }
    }

    async fn get_room(&self, room_id: &RoomId) -> Result<Option<RoomRecord>> {
        // Every send reads it: remembered (an unknown room is not).
        if let Some(record) = self.recent.room_record(room_id) {
            return Ok(Some(record));
        }
        let generation = self.recent.room_generation(room_id);
        let row = sqlx::query(
            "SELECT room_id, room_version, published, current_state_group, shut_down_ts FROM rooms \
             WHERE room_id = $1",
        )
        .bind(room_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        let record = row.as_ref().map(room_from_row).transpose()?;
        if let Some(record) = &record {
            self.recent.remember_room_record(generation, record.clone());
        }
        Ok(record)
    }

    async fn list_rooms(&self) -> Result<Vec<RoomRecord>> {
        let rows = sqlx::query(
            "SELECT room_id, room_version, published, current_state_group, shut_down_ts FROM rooms \
             ORDER BY created_ts, room_id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        rows.iter().map(room_from_row).collect()
    }

    async fn persist_event(&self, event: &PersistEvent) -> Result<PersistedEvent> {
        let lock = self.lock_room(&event.room_id).await?;
        self.persist_event_locked(event, lock).await
    }

    async fn lock_room(&self, room_id: &RoomId) -> Result<RoomLock> {
        let Some(locks) = &self.locks else { return Ok(RoomLock::empty()) };
        let mut transaction = locks.begin().await.map_err(db_error)?;
        sqlx::query("SELECT rhizome_lock_room($1)")
            .bind(room_id.as_str())
            .execute(&mut *transaction)
            .await
            .map_err(db_error)?;
        Ok(RoomLock::holding(Box::new(transaction)))
    }

    async fn persist_event_locked(
        &self,
        event: &PersistEvent,
        lock: RoomLock,
    ) -> Result<PersistedEvent> {
        let held = match lock.into_held() {
            Some(held) => Some(
                held.downcast::<sqlx::Transaction<'static, sqlx::Any>>()
                    .map_err(|_| Error::bug("a room lock from another store"))?,
            ),
            None => None,
        };
        let transaction = match held {
            Some(transaction) => *transaction,
            None => self.write.begin().await.map_err(db_error)?,
        };
        if event.historical {
            // History takes the next position below every earlier one, outside the stream
            // syncs follow.
            let mut transaction = transaction;
            let pos: i64 = sqlx::query_scalar(
                "UPDATE stream_counter SET pos = pos - 1 WHERE id = 2 RETURNING pos",
            )
            .fetch_one(&mut *transaction)
            .await
            .map_err(db_error)?;
            let (persisted, _) = persist_in_transaction(&mut transaction, event, pos).await?;
            if let (Some(cluster), Some((target, _))) = (&self.cluster, &event.redaction) {
                cluster.announce_redaction(&mut transaction, target).await?;
            }
            transaction.commit().await.map_err(db_error)?;
            self.staged_push_actions(event.push_actions.len());
            if let Some(relation) = &event.relation {
                self.recent.relation_added(&relation.relates_to);
            }
            if let Some((target, json)) = &event.redaction {
                self.recent.redacted(target, json, &event.event_id);
            }
            return Ok(persisted);
        }
        let mut write = self.stream_write_in(transaction).await?;
        let pos = write.pos();
        let (mut persisted, written) =
            persist_in_transaction(write.connection(), event, pos).await?;
        if written.counter {
            write.counter_written();
        }
        let current_group = written.current_group;
        write.touch(Touch::RoomHead(
            event.room_id.clone(),
            current_group,
            event.new_extremities.clone(),
        ));
        if !event.rejected && !event.soft_failed {
            // Something may relate to it already (an event from another server may come
            // after the relations to it).
            let has_relations = self.recent.enabled()
                && !event.new_here
                && sqlx::query_scalar::<_, i64>(
                    "SELECT 1 FROM event_relations WHERE relates_to = $1 LIMIT 1",
                )
                .bind(event.event_id.as_str())
                .fetch_optional(write.connection())
                .await
                .map_err(db_error)?
                .is_some();
            let record = EventRecord {
                event_id: event.event_id.clone(),
                room_id: event.room_id.clone(),
                stream_pos: pos,
                json: event.json.clone(),
                rejected: false,
                state_before: persisted.state_before,
                state_after: persisted.state_after,
                txn: event.txn.clone(),
                redacted_by: event.redacted_by.clone(),
                soft_failed: false,
                outlier: false,
            };
            write.touch(Touch::RoomEvent(Box::new(record), has_relations));
        }
        if let Some(relation) = &event.relation {
            write.touch(Touch::Relation(relation.relates_to.clone()));
        }
        if self.recent.enabled() && !event.push_actions.is_empty() {
            let actions = event.push_actions.iter();
            let actions = actions.map(|a| (a.user_id.clone(), a.notify, a.highlight)).collect();
            write.touch(Touch::PushActions(event.room_id.clone(), actions));
        }
        if let Some((target, redacted_json)) = &event.redaction {
            let touch =
                Touch::Redaction(target.clone(), redacted_json.clone(), event.event_id.clone());
            write.touch(touch);
        }
        if !matches!(event.current_state, CurrentState::Unchanged) {
            // What persisting wrote to `room_memberships` (only with a new current state).
            for change in &event.membership_changes {
                write.touch(Touch::Membership(event.room_id.clone(), change.user_id.clone()));
            }
        }
        let pushes_queued = match written.pushes_queued {
            Some(queued) => queued,
            None => {
                let now = rhizome_core::clock::now_millis();
                crate::jobs::queue_pushes(write.connection(), event, now).await?
            }
        };
        if let Some(cluster) = &self.cluster
            && !event.membership_changes.is_empty()
        {
            let users: Vec<_> =
                event.membership_changes.iter().map(|change| change.user_id.clone()).collect();
            cluster.announce_memberships(write.connection(), &event.room_id, &users).await?;
        }
        if let (Some(cluster), Some((target, _))) = (&self.cluster, &event.redaction) {
            cluster.announce_redaction(write.connection(), target).await?;
        }
        persisted.pushes_queued = pushes_queued;
        write.commit().await?;
        self.staged_push_actions(event.push_actions.len());
        Ok(persisted)
    }

    async fn get_event(&self, event_id: &EventId) -> Result<Option<EventRecord>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"
        )))
        .bind(event_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        if let Some(row) = row {
            return event_from_row(&row).map(Some);
        }
        let row = sqlx::query(
            "SELECT event_id, room_id, json, rejected FROM event_outliers WHERE event_id = $1",
        )
        .bind(event_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(outlier_from_row).transpose()
    }

    async fn get_events(&self, event_ids: &[OwnedEventId]) -> Result<Vec<EventRecord>> {
        let mut events = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(500) {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for event_id in chunk {
                query = query.bind(event_id.as_str());
            }
            let rows = query.fetch_all(&self.read).await.map_err(db_error)?;
            let found_before = events.len();
            for row in &rows {
                events.push(event_from_row(row)?);
            }
            if events.len() - found_before == chunk.len() {
                continue;
            }
            let sql = format!(
                "SELECT event_id, room_id, json, rejected FROM event_outliers \
                 WHERE event_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for event_id in chunk {
                query = query.bind(event_id.as_str());
            }
            for row in &query.fetch_all(&self.read).await.map_err(db_error)? {
                let outlier = outlier_from_row(row)?;
                // An event persisted since the first query is already in the list.
                if !events[found_before..].iter().any(|event| event.event_id == outlier.event_id) {
                    events.push(outlier);
                }
            }
        }
        Ok(events)
    }

    async fn waiting_redactions(&self, target: &EventId) -> Result<Vec<OwnedEventId>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT w.redaction_id FROM redactions_waiting w \
             JOIN events e ON e.event_id = w.redaction_id \
             WHERE w.target_id = $1 ORDER BY e.stream_pos",
        )
        .bind(target.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(db_error)?;
        ids.into_iter().map(parse_id).collect()
    }

    async fn event_for_txn(&self, txn: &TxnRecord) -> Result<Option<OwnedEventId>> {
        let event_id: Option<String> = sqlx::query_scalar(
            "SELECT event_id FROM events WHERE txn_user = $1 AND txn_device = $2 AND txn_id = $3",
        )
        .bind(txn.user_id.as_str())
        .bind(txn.device_id.as_str())
        .bind(&txn.txn_id)
        .fetch_optional(&self.write)
        .await
        .map_err(db_error)?;
        event_id.map(parse_id).transpose()
    }

    async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<OwnedEventId>> {
        if let Some(extremities) = self.recent.forward_extremities(room_id) {
            return Ok(extremities);
        }
        let generation = self.recent.room_generation(room_id);
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT event_id FROM forward_extremities WHERE room_id = $1 ORDER BY event_id",
        )
        .bind(room_id.as_str())
        .fetch_all(&self.write)
        .await
        .map_err(db_error)?;
        let extremities = ids.into_iter().map(parse_id).collect::<Result<Vec<OwnedEventId>>>()?;
        self.recent.remember_forward_extremities(room_id, generation, extremities.clone());
        Ok(extremities)
    }

    async fn load_state_group(
        &self,
        group: StateGroupId,
    ) -> Result<HashMap<StateSlot, OwnedEventId>> {
        let mut connection = self.read.acquire().await.map_err(db_error)?;
        state::load_group(&mut connection, group).await
    }

    async fn load_state_groups(
        &self,
        groups: &[StateGroupId],
    ) -> Result<HashMap<StateGroupId, HashMap<StateSlot, OwnedEventId>>> {
        if groups.is_empty() {
            return Ok(HashMap::new());
        }
        let mut connection = self.read.acquire().await.map_err(db_error)?;
        state::load_groups(&mut connection, groups).await
    }

    async fn auth_chain(&self, event_ids: &[OwnedEventId]) -> Result<HashSet<OwnedEventId>> {
        let mut seen: HashSet<OwnedEventId> = event_ids.iter().cloned().collect();
        let mut frontier: Vec<OwnedEventId> = event_ids.to_vec();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for chunk in frontier.chunks(500) {
                let sql = format!(
                    "SELECT auth_event_id FROM event_auth_edges WHERE event_id IN ({})",
                    placeholders(1, chunk.len())
                );
                let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.as_str()));
                for event_id in chunk {
                    query = query.bind(event_id.as_str());
                }
                for auth_event_id in query.fetch_all(&self.read).await.map_err(db_error)? {
                    let auth_event_id: OwnedEventId = parse_id(auth_event_id)?;
                    if seen.insert(auth_event_id.clone()) {
                        next.push(auth_event_id);
                    }
                }
            }
            frontier = next;
        }
        Ok(seen)
    }

    async fn room_events(
        &self,
        room_id: &RoomId,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        if let Some(records) = self.recent.room_events(room_id, from, to, direction, limit) {
            return Ok(records);
        }
        let sql = match direction {
            Direction::Backward => format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.stream_pos < $2 \
                 AND e.stream_pos > $3 AND e.rejected = 0 ORDER BY e.stream_pos DESC LIMIT $4"
            ),
            Direction::Forward => format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.stream_pos > $2 \
                 AND e.stream_pos <= $3 AND e.rejected = 0 ORDER BY e.stream_pos ASC LIMIT $4"
            ),
        };
        let bound = to.unwrap_or(match direction {
            Direction::Backward => i64::MIN,
            Direction::Forward => i64::MAX,
        });
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(room_id.as_str())
            .bind(from)
            .bind(bound)
            .bind(limit)
            .fetch_all(&self.read)
            .await
            .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn latest_room_event_ids(
        &self,
        room_ids: &[&RoomId],
        upper: StreamPos,
        lower: Option<StreamPos>,
        limit: i64,
    ) -> Result<HashMap<OwnedRoomId, Vec<OwnedEventId>>> {
        let mut found: HashMap<OwnedRoomId, Vec<(StreamPos, OwnedEventId)>> =
            HashMap::with_capacity(room_ids.len());
        let mut asked: Vec<&RoomId> = Vec::new();
        for room_id in room_ids {
            match self.recent.room_events(room_id, upper, lower, Direction::Backward, limit) {
                Some(records) => {
                    let ids = records.into_iter().map(|e| (e.stream_pos, e.event_id)).collect();
                    found.insert((*room_id).to_owned(), ids);
                }
                None => asked.push(room_id),
            }
        }
        // One statement for many rooms: each room's newest events through its own index
        // range (a subquery with its own limit), joined by UNION ALL. SQLite allows at most
        // 500 terms in a compound SELECT.
        let lower = lower.unwrap_or(i64::MIN);
        for chunk in asked.chunks(100) {
            let terms: Vec<String> = (0..chunk.len())
                .map(|index| {
                    let first = index * 4 + 1;
                    format!(
                        "SELECT * FROM (SELECT e.room_id, e.stream_pos, e.event_id FROM events e \
                         WHERE e.room_id = ${first} AND e.stream_pos < ${} \
                         AND e.stream_pos > ${} AND e.rejected = 0 \
                         ORDER BY e.stream_pos DESC LIMIT ${}) t{index}",
                        first + 1,
                        first + 2,
                        first + 3
                    )
                })
                .collect();
            let sql = terms.join(" UNION ALL ");
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for room_id in chunk {
                query = query.bind(room_id.as_str()).bind(upper).bind(lower).bind(limit);
            }
            for row in query.fetch_all(&self.read).await.map_err(db_error)? {
                let room_id: OwnedRoomId = parse_id(row.try_get("room_id").map_err(db_error)?)?;
                let pos: StreamPos = row.try_get("stream_pos").map_err(db_error)?;
                let event_id: OwnedEventId = parse_id(row.try_get("event_id").map_err(db_error)?)?;
                found.entry(room_id).or_default().push((pos, event_id));
            }
        }
        Ok(found
            .into_iter()
            .map(|(room_id, mut events)| {
                events.sort_by_key(|event| std::cmp::Reverse(event.0));
                (room_id, events.into_iter().map(|(_, event_id)| event_id).collect())
            })
            .collect())
    }

    async fn current_state_groups(
        &self,
        room_ids: &[&RoomId],
    ) -> Result<HashMap<OwnedRoomId, StateGroupId>> {
        let mut found = HashMap::with_capacity(room_ids.len());
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT room_id, current_state_group FROM rooms WHERE room_id IN ({}) \
                 AND current_state_group IS NOT NULL",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
            for room_id in chunk {
                query = query.bind(room_id.as_str());
            }
            for row in query.fetch_all(&self.read).await.map_err(db_error)? {
                let room_id: String = row.try_get("room_id").map_err(db_error)?;
                let group: StateGroupId = row.try_get("current_state_group").map_err(db_error)?;
                found.insert(parse_id(room_id)?, group);
            }
        }
        Ok(found)
    }

    async fn last_event_at(&self, room_id: &RoomId, pos: StreamPos) -> Result<Option<EventRecord>> {
        if let Some(record) = self.recent.last_event_at(room_id, pos) {
            return Ok(Some(record));
        }
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.stream_pos <= $2 \
             AND e.rejected = 0 ORDER BY e.stream_pos DESC LIMIT 1"
        )))
        .bind(room_id.as_str())
        .bind(pos)
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn last_event_of_types(
        &self,
        room_id: &RoomId,
        event_types: &[&str],
        pos: StreamPos,
    ) -> Result<Option<StreamPos>> {
        if event_types.is_empty() {
            return Ok(None);
        }
        // Walks the room's events backwards on its index and stops at the first match.
        let sql = format!(
            "SELECT stream_pos FROM events WHERE room_id = $1 AND stream_pos <= $2 \
             AND rejected = 0 AND event_type IN ({}) ORDER BY stream_pos DESC LIMIT 1",
            placeholders(3, event_types.len())
        );
        let mut query = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.as_str()))
            .bind(room_id.as_str())
            .bind(pos);
        for event_type in event_types {
            query = query.bind(*event_type);
        }
        query.fetch_optional(&self.read).await.map_err(db_error)
    }

    async fn rooms_with_events_between(
        &self,
        room_ids: &[OwnedRoomId],
        since: StreamPos,
        until: StreamPos,
    ) -> Result<Vec<OwnedRoomId>> {
        // Rooms whose latest event falls in the window need no query, nor those without one.
        let (mut found, room_ids) = self.recent.rooms_with_events(room_ids, since, until);
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT room_id FROM events WHERE stream_pos > $1 AND stream_pos <= $2 \
                 AND rejected = 0 AND room_id IN ({})",
                placeholders(3, chunk.len())
            );
            let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.as_str()))
                .bind(since)
                .bind(until);
            for room_id in chunk {
                query = query.bind(room_id.as_str());
            }
            for room_id in query.fetch_all(&self.read).await.map_err(db_error)? {
                found.push(parse_id(room_id)?);
            }
        }
        Ok(found)
    }

    async fn get_membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Option<MembershipRecord>> {
        rooms_query::get_membership(self, room_id, user_id).await
    }

    async fn rooms_of_user(
        &self,
        user_id: &UserId,
        memberships: &[&str],
    ) -> Result<Vec<MembershipRecord>> {
        rooms_query::rooms_of_user(self, user_id, memberships).await
    }

    async fn members_of_room(
        &self,
        room_id: &RoomId,
        memberships: &[&str],
    ) -> Result<Vec<MembershipRecord>> {
        rooms_query::members_of_room(self, room_id, memberships).await
    }

    async fn membership_changes_since(
        &self,
        user_id: &UserId,
        since: StreamPos,
    ) -> Result<Vec<MembershipRecord>> {
        if self.recent.no_memberships_since(user_id, since) {
            return Ok(Vec::new());
        }
        rooms_query::membership_changes_since(self, user_id, since).await
    }

    async fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        sqlx::query(
            "UPDATE room_memberships SET forgotten = 1 WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn is_room_forgotten(&self, user_id: &UserId, room_id: &RoomId) -> Result<bool> {
        let forgotten: Option<i64> = sqlx::query_scalar(
            "SELECT forgotten FROM room_memberships WHERE user_id = $1 AND room_id = $2",
        )
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_error)?;
        Ok(forgotten.is_some_and(|forgotten| forgotten != 0))
    }

    async fn relations(
        &self,
        event_id: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: StreamPos,
        to: Option<StreamPos>,
        direction: Direction,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        rooms_query::relations(self, event_id, rel_type, event_type, from, to, direction, limit)
            .await
    }

    async fn events_with_relations(
        &self,
        event_ids: &[OwnedEventId],
    ) -> Result<HashSet<OwnedEventId>> {
        let (mut related, unknown) = self.recent.events_with_relations(event_ids);
        if !unknown.is_empty() {
            related.extend(rooms_query::events_with_relations(self, &unknown).await?);
        }
        Ok(related)
    }

    async fn latest_edit(
        &self,
        event_id: &EventId,
        sender: &UserId,
    ) -> Result<Option<EventRecord>> {
        rooms_query::latest_edit(self, event_id, sender).await
    }

    async fn thread_summary(
        &self,
        root: &EventId,
        user_id: &UserId,
    ) -> Result<Option<(i64, EventRecord, bool)>> {
        rooms_query::thread_summary(self, root, user_id).await
    }

    async fn thread_roots(
        &self,
        room_id: &RoomId,
        from: Option<StreamPos>,
        participant: Option<&UserId>,
        limit: i64,
    ) -> Result<Vec<(EventRecord, StreamPos)>> {
        rooms_query::thread_roots(self, room_id, from, participant, limit).await
    }

    async fn event_at_timestamp(
        &self,
        room_id: &RoomId,
        ts: i64,
        direction: Direction,
    ) -> Result<Option<EventRecord>> {
        rooms_query::event_at_timestamp(self, room_id, ts, direction).await
    }

    async fn search_messages(
        &self,
        room_ids: &[OwnedRoomId],
        term: &str,
        before: Option<StreamPos>,
        limit: i64,
    ) -> Result<Vec<EventRecord>> {
        rooms_query::search_messages(self, room_ids, term, before, limit).await
    }

    async fn create_alias(&self, alias: &AliasRecord) -> Result<bool> {
        rooms_query::create_alias(self, alias).await
    }

    async fn get_alias(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        rooms_query::get_alias(self, alias).await
    }

    async fn delete_alias(&self, alias: &RoomAliasId) -> Result<bool> {
        rooms_query::delete_alias(self, alias).await
    }

    async fn aliases_of_room(&self, room_id: &RoomId) -> Result<Vec<AliasRecord>> {
        rooms_query::aliases_of_room(self, room_id).await
    }

    async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()> {
        sqlx::query("UPDATE rooms SET published = $1 WHERE room_id = $2")
            .bind(flag(published))
            .bind(room_id.as_str())
            .execute(&self.write)
            .await
            .map_err(db_error)?;
        self.recent.room_changed(room_id);
        Ok(())
    }

    async fn published_rooms(&self) -> Result<Vec<PublishedRoom>> {
        rooms_query::published_rooms(self).await
    }

    async fn set_room_shut_down(&self, room_id: &RoomId, ts: i64) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE rooms SET shut_down_ts = COALESCE(shut_down_ts, $1) WHERE room_id = $2",
        )
        .bind(ts)
        .bind(room_id.as_str())
        .execute(&self.write)
        .await
        .map_err(db_error)?;
        self.recent.room_changed(room_id);
        Ok(result.rows_affected() > 0)
    }
}
