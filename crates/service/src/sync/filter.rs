//! Event filters (`RoomEventFilter`, `Filter`): which events and rooms a client wants.

use ruma::{
    RoomId, UserId,
    api::client::filter::{Filter, RoomEventFilter, RoomFilter, UrlFilter},
};

use rhizome_room::Pdu;

/// Whether `kind` matches a filter type pattern (`*` matches any run of characters).
pub fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == kind,
        Some((prefix, rest)) => {
            kind.starts_with(prefix) && {
                let tail = &kind[prefix.len()..];
                // Try every split point for the rest of the pattern.
                (0..=tail.len())
                    .any(|index| tail.is_char_boundary(index) && type_matches(rest, &tail[index..]))
            }
        }
    }
}

fn types_pass(types: Option<&Vec<String>>, not_types: &[String], kind: &str) -> bool {
    types.is_none_or(|types| types.iter().any(|pattern| type_matches(pattern, kind)))
        && !not_types.iter().any(|pattern| type_matches(pattern, kind))
}

fn senders_pass(
    senders: Option<&Vec<ruma::OwnedUserId>>,
    not_senders: &[ruma::OwnedUserId],
    sender: &UserId,
) -> bool {
    senders.is_none_or(|senders| senders.iter().any(|allowed| allowed == sender))
        && !not_senders.iter().any(|denied| denied == sender)
}

/// Whether a room event passes a `RoomEventFilter`.
pub fn room_event_passes(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    if !room_passes(filter.rooms.as_ref(), &filter.not_rooms, &pdu.room_id) {
        return false;
    }
    if !types_pass(filter.types.as_ref(), &filter.not_types, &pdu.kind.to_string())
        || !senders_pass(filter.senders.as_ref(), &filter.not_senders, &pdu.sender)
    {
        return false;
    }
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => pdu.content_str("url").is_some(),
        Some(UrlFilter::EventsWithoutUrl) => pdu.content_str("url").is_none(),
        _ => true,
    }
}

/// Whether an ephemeral or account-data event type passes a `RoomEventFilter`.
pub fn room_event_type_passes(filter: &RoomEventFilter, kind: &str) -> bool {
    types_pass(filter.types.as_ref(), &filter.not_types, kind)
}

/// Whether an event type (and sender) passes a plain `Filter`.
pub fn event_passes(filter: &Filter, kind: &str, sender: Option<&UserId>) -> bool {
    types_pass(filter.types.as_ref(), &filter.not_types, kind)
        && sender
            .is_none_or(|sender| senders_pass(filter.senders.as_ref(), &filter.not_senders, sender))
}

fn room_passes(
    rooms: Option<&Vec<ruma::OwnedRoomId>>,
    not_rooms: &[ruma::OwnedRoomId],
    room_id: &RoomId,
) -> bool {
    rooms.is_none_or(|rooms| rooms.iter().any(|allowed| allowed == room_id))
        && !not_rooms.iter().any(|denied| denied == room_id)
}

/// Whether a room passes the room filter as a whole.
pub fn room_filter_passes(filter: &RoomFilter, room_id: &RoomId) -> bool {
    room_passes(filter.rooms.as_ref(), &filter.not_rooms, room_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_the_spec_says() {
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.*.name", "m.room.name"));
        assert!(!type_matches("m.*.name", "m.room.topic"));
        assert!(!type_matches("m.room.*", "org.example"));
    }
}
