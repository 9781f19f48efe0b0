//! `rhizome admin room …`: list rooms and shut one down.

use anyhow::Result;
use rhizome_service::Services;
use ruma::RoomOrAliasId;

use super::{format_ts, one_line};

/// The rooms, one line each: room ID, name, joined members, version, whether published, and
/// when shut down.
pub async fn list(services: &Services) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for room in services.store.list_rooms().await? {
        let summary = services.room_summary(&room.room_id).await?;
        let state = match room.shut_down_ts {
            Some(ts) => format!("shut down {}", format_ts(ts)),
            None if room.published => "published".to_owned(),
            None => "-".to_owned(),
        };
        lines.push(format!(
            "{}\t{}\t{} members\tv{}\t{state}",
            room.room_id,
            summary.name.as_deref().map_or_else(|| "-".to_owned(), one_line),
            summary.joined_members,
            room.room_version,
        ));
    }
    Ok(lines)
}

/// Shuts a room (by ID or local alias) down, optionally sending `message` to the members who
/// were joined, and says what was done.
pub async fn shutdown(
    services: &Services,
    room: &str,
    message: Option<&str>,
) -> Result<Vec<String>> {
    let room = <&RoomOrAliasId>::try_from(room)
        .map_err(|_| anyhow::anyhow!("`{room}` is neither a room ID nor a room alias"))?;
    let room_id = services.resolve_room(room).await?;
    let report = services.shutdown_room(&room_id, message).await?;
    let list = |users: &[ruma::OwnedUserId]| {
        if users.is_empty() {
            "none".to_owned()
        } else {
            users.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        }
    };
    let mut lines = vec![
        format!("shut down {room_id}: nobody of this server can join it any more"),
        format!("kicked: {}", list(&report.kicked)),
        format!("left: {}", list(&report.left)),
    ];
    for (user_id, error) in &report.failed {
        lines.push(format!("could not remove {user_id}: {error}"));
    }
    if report.was_published {
        lines.push("removed from the room directory".to_owned());
    }
    if !report.aliases_removed.is_empty() {
        let aliases: Vec<String> = report.aliases_removed.iter().map(ToString::to_string).collect();
        lines.push(format!("aliases removed: {}", aliases.join(", ")));
    }
    if let Some(notice_room) = &report.notice_room {
        lines.push(format!("notice sent in {notice_room}"));
    }
    Ok(lines)
}
