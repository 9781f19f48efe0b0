//! Room queries in SQL beyond events themselves: memberships, relations and threads, event
//! lookup by time, message search, aliases and the public directory.

use std::collections::HashSet;

use rhizome_core::Result;
use rhizome_storage::{
    AliasRecord, Direction, EventRecord, MembershipRecord, PublishedRoom, StreamPos,
};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomAliasId, RoomId, UserId};
use sqlx::{AssertSqlSafe, Row, any::AnyRow};

use crate::{
    SqlStore,
    accounts::escape_like,
    db_error, is_unique_violation, parse_id, placeholders,
    rooms::{EVENT_COLUMNS, event_from_row},
};

const MEMBERSHIP_COLUMNS: &str =
    "room_id, user_id, membership, event_id, stream_pos, displayname, avatar_url";

fn membership_from_row(row: &AnyRow) -> Result<MembershipRecord> {
    Ok(MembershipRecord {
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        user_id: parse_id(row.try_get("user_id").map_err(db_error)?)?,
        membership: row.try_get("membership").map_err(db_error)?,
        event_id: parse_id(row.try_get("event_id").map_err(db_error)?)?,
        stream_pos: row.try_get("stream_pos").map_err(db_error)?,
        displayname: row.try_get("displayname").map_err(db_error)?,
        avatar_url: row.try_get("avatar_url").map_err(db_error)?,
    })
}

fn membership_filter(first: usize, memberships: &[&str]) -> String {
    if memberships.is_empty() {
        String::new()
    } else {
        format!(" AND membership IN ({})", placeholders(first, memberships.len()))
    }
}

pub(crate) async fn get_membership(
    store: &SqlStore,
    room_id: &RoomId,
    user_id: &UserId,
) -> Result<Option<MembershipRecord>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = $1 AND user_id = $2"
    )))
    .bind(room_id.as_str())
    .bind(user_id.as_str())
    .fetch_optional(&store.read)
    .await
    .map_err(db_error)?;
    row.as_ref().map(membership_from_row).transpose()
}

pub(crate) async fn rooms_of_user(
    store: &SqlStore,
    user_id: &UserId,
    memberships: &[&str],
) -> Result<Vec<MembershipRecord>> {
    let sql = format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE user_id = $1 AND forgotten = 0{} \
         ORDER BY stream_pos",
        membership_filter(2, memberships)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(user_id.as_str());
    for membership in memberships {
        query = query.bind(*membership);
    }
    let rows = query.fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter().map(membership_from_row).collect()
}

pub(crate) async fn members_of_room(
    store: &SqlStore,
    room_id: &RoomId,
    memberships: &[&str],
) -> Result<Vec<MembershipRecord>> {
    let sql = format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE room_id = $1{} ORDER BY user_id",
        membership_filter(2, memberships)
    );
    let mut query = sqlx::query(AssertSqlSafe(sql.as_str())).bind(room_id.as_str());
    for membership in memberships {
        query = query.bind(*membership);
    }
    let rows = query.fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter().map(membership_from_row).collect()
}

pub(crate) async fn membership_changes_since(
    store: &SqlStore,
    user_id: &UserId,
    since: StreamPos,
) -> Result<Vec<MembershipRecord>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {MEMBERSHIP_COLUMNS} FROM room_memberships WHERE user_id = $1 AND stream_pos > $2 \
         ORDER BY stream_pos"
    )))
    .bind(user_id.as_str())
    .bind(since)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter().map(membership_from_row).collect()
}

#[allow(clippy::too_many_arguments)] // Mirrors the query parameters of `/relations`.
pub(crate) async fn relations(
    store: &SqlStore,
    event_id: &EventId,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: StreamPos,
    to: Option<StreamPos>,
    direction: Direction,
    limit: i64,
) -> Result<Vec<EventRecord>> {
    let (comparison, bound_comparison, order, default_bound) = match direction {
        Direction::Backward => ("<", ">", "DESC", i64::MIN),
        Direction::Forward => (">", "<=", "ASC", i64::MAX),
    };
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM event_relations r JOIN events e ON e.event_id = r.event_id \
         WHERE r.relates_to = $1 AND ($2 = '' OR r.rel_type = $2) AND ($3 = '' OR r.event_type = $3) \
         AND r.stream_pos {comparison} $4 AND r.stream_pos {bound_comparison} $5 AND e.rejected = 0 \
         ORDER BY r.stream_pos {order} LIMIT $6"
    );
    let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
        .bind(event_id.as_str())
        .bind(rel_type.unwrap_or_default())
        .bind(event_type.unwrap_or_default())
        .bind(from)
        .bind(to.unwrap_or(default_bound))
        .bind(limit)
        .fetch_all(&store.read)
        .await
        .map_err(db_error)?;
    rows.iter().map(event_from_row).collect()
}

pub(crate) async fn events_with_relations(
    store: &SqlStore,
    event_ids: &[OwnedEventId],
) -> Result<HashSet<OwnedEventId>> {
    let mut found = HashSet::new();
    for chunk in event_ids.chunks(500) {
        let sql = format!(
            "SELECT DISTINCT relates_to FROM event_relations WHERE relates_to IN ({})",
            placeholders(1, chunk.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(AssertSqlSafe(sql.as_str()));
        for event_id in chunk {
            query = query.bind(event_id.as_str());
        }
        for event_id in query.fetch_all(&store.read).await.map_err(db_error)? {
            found.insert(parse_id(event_id)?);
        }
    }
    Ok(found)
}

pub(crate) async fn latest_edit(
    store: &SqlStore,
    event_id: &EventId,
    sender: &UserId,
) -> Result<Option<EventRecord>> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM event_relations r JOIN events e ON e.event_id = r.event_id \
         WHERE r.relates_to = $1 AND r.rel_type = 'm.replace' AND r.sender = $2 \
         AND e.rejected = 0 AND e.redacted_by IS NULL \
         ORDER BY r.stream_pos DESC LIMIT 1"
    )))
    .bind(event_id.as_str())
    .bind(sender.as_str())
    .fetch_optional(&store.read)
    .await
    .map_err(db_error)?;
    row.as_ref().map(event_from_row).transpose()
}

pub(crate) async fn thread_summary(
    store: &SqlStore,
    root: &EventId,
    user_id: &UserId,
) -> Result<Option<(i64, EventRecord, bool)>> {
    let count: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM event_relations WHERE relates_to = $1 AND rel_type = 'm.thread'",
    )
    .bind(root.as_str())
    .fetch_one(&store.read)
    .await
    .map_err(db_error)?;
    if count == 0 {
        return Ok(None);
    }
    let latest = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM event_relations r JOIN events e ON e.event_id = r.event_id \
         WHERE r.relates_to = $1 AND r.rel_type = 'm.thread' ORDER BY r.stream_pos DESC LIMIT 1"
    )))
    .bind(root.as_str())
    .fetch_one(&store.read)
    .await
    .map_err(db_error)?;
    let participated: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM event_relations WHERE relates_to = $1 AND rel_type = 'm.thread' \
         AND sender = $2",
    )
    .bind(root.as_str())
    .bind(user_id.as_str())
    .fetch_one(&store.read)
    .await
    .map_err(db_error)?;
    let root_sender: Option<String> =
        sqlx::query_scalar("SELECT sender FROM events WHERE event_id = $1")
            .bind(root.as_str())
            .fetch_optional(&store.read)
            .await
            .map_err(db_error)?;
    let participated = participated > 0 || root_sender.as_deref() == Some(user_id.as_str());
    Ok(Some((count, event_from_row(&latest)?, participated)))
}

pub(crate) async fn thread_roots(
    store: &SqlStore,
    room_id: &RoomId,
    from: Option<StreamPos>,
    participant: Option<&UserId>,
    limit: i64,
) -> Result<Vec<(EventRecord, StreamPos)>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS}, t.latest FROM ( \
             SELECT relates_to, MAX(stream_pos) AS latest FROM event_relations \
             WHERE room_id = $1 AND rel_type = 'm.thread' GROUP BY relates_to) t \
         JOIN events e ON e.event_id = t.relates_to \
         WHERE t.latest < $2 AND ($3 = '' OR e.sender = $3 OR EXISTS ( \
             SELECT 1 FROM event_relations p WHERE p.relates_to = t.relates_to \
             AND p.rel_type = 'm.thread' AND p.sender = $3)) \
         ORDER BY t.latest DESC LIMIT $4"
    )))
    .bind(room_id.as_str())
    .bind(from.unwrap_or(i64::MAX))
    .bind(participant.map_or("", |user| user.as_str()))
    .bind(limit)
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| Ok((event_from_row(row)?, row.try_get("latest").map_err(db_error)?)))
        .collect()
}

pub(crate) async fn event_at_timestamp(
    store: &SqlStore,
    room_id: &RoomId,
    ts: i64,
    direction: Direction,
) -> Result<Option<EventRecord>> {
    let sql = match direction {
        Direction::Forward => format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.origin_server_ts >= $2 \
             AND e.rejected = 0 ORDER BY e.origin_server_ts ASC, e.stream_pos ASC LIMIT 1"
        ),
        Direction::Backward => format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.origin_server_ts <= $2 \
             AND e.rejected = 0 ORDER BY e.origin_server_ts DESC, e.stream_pos DESC LIMIT 1"
        ),
    };
    let row = sqlx::query(AssertSqlSafe(sql.as_str()))
        .bind(room_id.as_str())
        .bind(ts)
        .fetch_optional(&store.read)
        .await
        .map_err(db_error)?;
    row.as_ref().map(event_from_row).transpose()
}

pub(crate) async fn search_messages(
    store: &SqlStore,
    room_ids: &[OwnedRoomId],
    term: &str,
    before: Option<StreamPos>,
    limit: i64,
) -> Result<Vec<EventRecord>> {
    if room_ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events e WHERE e.body IS NOT NULL \
         AND LOWER(e.body) LIKE $1 ESCAPE '\\' AND e.stream_pos < $2 AND e.room_id IN ({}) \
         ORDER BY e.stream_pos DESC LIMIT $3",
        placeholders(4, room_ids.len())
    );
    let mut query = sqlx::query(AssertSqlSafe(sql.as_str()))
        .bind(format!("%{}%", escape_like(&term.to_lowercase())))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit);
    for room_id in room_ids {
        query = query.bind(room_id.as_str());
    }
    let rows = query.fetch_all(&store.read).await.map_err(db_error)?;
    rows.iter().map(event_from_row).collect()
}

fn alias_from_row(row: &AnyRow) -> Result<AliasRecord> {
    Ok(AliasRecord {
        alias: parse_id(row.try_get("alias").map_err(db_error)?)?,
        room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
        creator: parse_id(row.try_get("creator").map_err(db_error)?)?,
    })
}

pub(crate) async fn create_alias(store: &SqlStore, alias: &AliasRecord) -> Result<bool> {
    let result =
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)")
            .bind(alias.alias.as_str())
            .bind(alias.room_id.as_str())
            .bind(alias.creator.as_str())
            .execute(&store.write)
            .await;
    match result {
        Ok(_) => Ok(true),
        Err(error) if is_unique_violation(&error) => Ok(false),
        Err(error) => Err(db_error(error)),
    }
}

pub(crate) async fn get_alias(
    store: &SqlStore,
    alias: &RoomAliasId,
) -> Result<Option<AliasRecord>> {
    let row = sqlx::query("SELECT alias, room_id, creator FROM room_aliases WHERE alias = $1")
        .bind(alias.as_str())
        .fetch_optional(&store.read)
        .await
        .map_err(db_error)?;
    row.as_ref().map(alias_from_row).transpose()
}

pub(crate) async fn delete_alias(store: &SqlStore, alias: &RoomAliasId) -> Result<bool> {
    let result = sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
        .bind(alias.as_str())
        .execute(&store.write)
        .await
        .map_err(db_error)?;
    Ok(result.rows_affected() > 0)
}

pub(crate) async fn aliases_of_room(
    store: &SqlStore,
    room_id: &RoomId,
) -> Result<Vec<AliasRecord>> {
    let rows = sqlx::query(
        "SELECT alias, room_id, creator FROM room_aliases WHERE room_id = $1 ORDER BY alias",
    )
    .bind(room_id.as_str())
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter().map(alias_from_row).collect()
}

pub(crate) async fn published_rooms(store: &SqlStore) -> Result<Vec<PublishedRoom>> {
    let rows = sqlx::query(
        "SELECT r.room_id, (SELECT COUNT(*) FROM room_memberships m \
             WHERE m.room_id = r.room_id AND m.membership = 'join') AS joined \
         FROM rooms r WHERE r.published = 1 ORDER BY joined DESC, r.room_id",
    )
    .fetch_all(&store.read)
    .await
    .map_err(db_error)?;
    rows.iter()
        .map(|row| {
            Ok(PublishedRoom {
                room_id: parse_id(row.try_get("room_id").map_err(db_error)?)?,
                joined_members: row.try_get("joined").map_err(db_error)?,
            })
        })
        .collect()
}
