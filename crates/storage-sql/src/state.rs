//! State groups in SQL: full snapshots, or deltas on an earlier group with a bounded chain, so
//! the state at any event is a few rows away without a full copy per event.

use std::collections::HashMap;

use rhizome_core::Result;
use rhizome_storage::{StateGroupId, StateSlot, StateSpec};
use ruma::{OwnedEventId, RoomId};
use sqlx::{AnyConnection, Row};

use crate::{db_error, parse_id};

/// The rows of a new state group: slots set to an event, or removed.
type GroupEntries = Vec<(StateSlot, Option<OwnedEventId>)>;

/// The longest chain of deltas before a group is written as a full snapshot.
pub(crate) const MAX_DELTA_DEPTH: i64 = 64;

/// Loads the full state map of a group, walking its delta chain.
pub(crate) async fn load_group(
    connection: &mut AnyConnection,
    group: StateGroupId,
) -> Result<HashMap<StateSlot, OwnedEventId>> {
    let rows = sqlx::query(
        "WITH RECURSIVE chain (group_id, prev_group, n) AS ( \
             SELECT group_id, prev_group, 0 FROM state_groups WHERE group_id = $1 \
             UNION ALL \
             SELECT s.group_id, s.prev_group, c.n + 1 FROM state_groups s \
             JOIN chain c ON s.group_id = c.prev_group) \
         SELECT c.n, e.event_type, e.state_key, e.event_id \
         FROM chain c JOIN state_group_entries e ON e.group_id = c.group_id \
         ORDER BY c.n DESC",
    )
    .bind(group)
    .fetch_all(&mut *connection)
    .await
    .map_err(db_error)?;
    let mut state = HashMap::with_capacity(rows.len());
    for row in rows {
        let slot: StateSlot = (
            row.try_get("event_type").map_err(db_error)?,
            row.try_get("state_key").map_err(db_error)?,
        );
        match row.try_get::<Option<String>, _>("event_id").map_err(db_error)? {
            Some(event_id) => {
                state.insert(slot, parse_id(event_id)?);
            }
            None => {
                state.remove(&slot);
            }
        }
    }
    Ok(state)
}

/// Writes the group a [`StateSpec`] describes (or returns the existing one).
pub(crate) async fn write_group(
    connection: &mut AnyConnection,
    room_id: &RoomId,
    spec: &StateSpec,
) -> Result<StateGroupId> {
    match spec {
        StateSpec::Existing(group) => Ok(*group),
        StateSpec::New { base, changes } => write_delta(connection, room_id, *base, changes).await,
    }
}

/// Writes a new group: a delta on `base`, or a snapshot when there is no base or its chain is
/// long.
pub(crate) async fn write_delta(
    connection: &mut AnyConnection,
    room_id: &RoomId,
    base: Option<StateGroupId>,
    changes: &[(StateSlot, Option<OwnedEventId>)],
) -> Result<StateGroupId> {
    let base_depth = match base {
        Some(base) => Some(
            sqlx::query_scalar::<_, i64>(
                "SELECT delta_depth FROM state_groups WHERE group_id = $1",
            )
            .bind(base)
            .fetch_one(&mut *connection)
            .await
            .map_err(db_error)?,
        ),
        None => None,
    };
    let (prev_group, depth, entries): (Option<StateGroupId>, i64, GroupEntries) =
        match (base, base_depth) {
            (Some(base), Some(depth)) if depth < MAX_DELTA_DEPTH => {
                (Some(base), depth + 1, changes.to_vec())
            }
            _ => {
                let mut state = match base {
                    Some(base) => load_group(connection, base).await?,
                    None => HashMap::new(),
                };
                for (slot, event_id) in changes {
                    match event_id {
                        Some(event_id) => state.insert(slot.clone(), event_id.clone()),
                        None => state.remove(slot),
                    };
                }
                (None, 0, state.into_iter().map(|(slot, id)| (slot, Some(id))).collect())
            }
        };
    let group: StateGroupId = sqlx::query_scalar(
        "INSERT INTO state_groups (room_id, prev_group, delta_depth) VALUES ($1, $2, $3) \
         RETURNING group_id",
    )
    .bind(room_id.as_str())
    .bind(prev_group)
    .bind(depth)
    .fetch_one(&mut *connection)
    .await
    .map_err(db_error)?;
    for ((event_type, state_key), event_id) in entries {
        sqlx::query(
            "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(group)
        .bind(event_type)
        .bind(state_key)
        .bind(event_id.as_ref().map(|id| id.as_str()))
        .execute(&mut *connection)
        .await
        .map_err(db_error)?;
    }
    Ok(group)
}
