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

/// A group as stored: its base, and its own entries (an event, or a removal).
type Delta = (Option<StateGroupId>, GroupEntries);

/// Loads the full state maps of several groups: one query per 200 groups reads every group
/// their delta chains reach, each once with its own entries, and the maps are built here, a
/// group from its base's map (groups of one room share most of their chain).
pub(crate) async fn load_groups(
    connection: &mut AnyConnection,
    groups: &[StateGroupId],
) -> Result<HashMap<StateGroupId, HashMap<StateSlot, OwnedEventId>>> {
    let mut deltas: HashMap<StateGroupId, Delta> = HashMap::new();
    for chunk in groups.chunks(200) {
        let asked: Vec<StateGroupId> =
            chunk.iter().copied().filter(|group| !deltas.contains_key(group)).collect();
        if asked.is_empty() {
            continue;
        }
        let sql = format!(
            "WITH RECURSIVE reach (group_id) AS ( \
                 SELECT group_id FROM state_groups WHERE group_id IN ({}) \
                 UNION \
                 SELECT s.prev_group FROM state_groups s JOIN reach r ON s.group_id = r.group_id \
                 WHERE s.prev_group IS NOT NULL) \
             SELECT g.group_id, g.prev_group, e.event_type, e.state_key, e.event_id \
             FROM reach r JOIN state_groups g ON g.group_id = r.group_id \
             LEFT JOIN state_group_entries e ON e.group_id = g.group_id",
            crate::placeholders(1, asked.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for group in &asked {
            query = query.bind(*group);
        }
        let mut fresh: HashMap<StateGroupId, Delta> = HashMap::new();
        for row in query.fetch_all(&mut *connection).await.map_err(db_error)? {
            let group: StateGroupId = row.try_get("group_id").map_err(db_error)?;
            if deltas.contains_key(&group) {
                // Read whole by an earlier chunk.
                continue;
            }
            let base: Option<StateGroupId> = row.try_get("prev_group").map_err(db_error)?;
            let delta = fresh.entry(group).or_insert_with(|| (base, Vec::new()));
            let kind: Option<String> = row.try_get("event_type").map_err(db_error)?;
            let Some(kind) = kind else { continue };
            let key: String = row.try_get("state_key").map_err(db_error)?;
            let event_id = match row.try_get::<Option<String>, _>("event_id").map_err(db_error)? {
                Some(event_id) => Some(parse_id(event_id)?),
                None => None,
            };
            delta.1.push(((kind, key), event_id));
        }
        deltas.extend(fresh);
    }
    let mut built: HashMap<StateGroupId, HashMap<StateSlot, OwnedEventId>> = HashMap::new();
    for group in groups {
        build_map(*group, &deltas, &mut built);
    }
    let mut maps = HashMap::with_capacity(groups.len());
    for group in groups {
        if let Some(map) = built.get(group) {
            maps.insert(*group, map.clone());
        }
    }
    Ok(maps)
}

/// Builds a group's map into `built` from its chain, building its bases first (iteratively:
/// a chain is at most [`MAX_DELTA_DEPTH`] long, but nothing here relies on it).
fn build_map(
    group: StateGroupId,
    deltas: &HashMap<StateGroupId, Delta>,
    built: &mut HashMap<StateGroupId, HashMap<StateSlot, OwnedEventId>>,
) {
    // The groups from `group` down to the first one already built (or the chain's start).
    let mut pending = Vec::new();
    let mut next = Some(group);
    while let Some(current) = next {
        if built.contains_key(&current) || pending.contains(&current) {
            break;
        }
        let Some((base, _)) = deltas.get(&current) else { break };
        pending.push(current);
        next = *base;
    }
    for current in pending.into_iter().rev() {
        let Some((base, entries)) = deltas.get(&current) else { continue };
        let mut map = base.and_then(|base| built.get(&base)).cloned().unwrap_or_default();
        for (slot, event_id) in entries {
            match event_id {
                Some(event_id) => {
                    map.insert(slot.clone(), event_id.clone());
                }
                None => {
                    map.remove(slot);
                }
            }
        }
        built.insert(current, map);
    }
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
