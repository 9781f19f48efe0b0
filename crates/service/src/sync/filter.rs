//! Event filters (`RoomEventFilter`, `Filter`): which events and rooms a client wants.

use ruma::{
    RoomId, UserId,
    api::client::{
        filter::{Filter, RoomEventFilter, RoomFilter, UrlFilter},
        sync::sync_events::v3,
    },
    serde::Raw,
};
use serde_json::{Map, Value};

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

/// Whether no event type at all passes: an empty `types`, or `*` among `not_types` (then the
/// events it filters need not be read).
fn types_block_all(types: Option<&Vec<String>>, not_types: &[String]) -> bool {
    types.is_some_and(Vec::is_empty) || not_types.iter().any(|pattern| pattern == "*")
}

/// Whether a `RoomEventFilter` lets no event type through.
pub fn room_filter_blocks_all(filter: &RoomEventFilter) -> bool {
    types_block_all(filter.types.as_ref(), &filter.not_types)
}

/// Whether a plain `Filter` lets no event type through.
pub fn filter_blocks_all(filter: &Filter) -> bool {
    types_block_all(filter.types.as_ref(), &filter.not_types)
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

/// Splits an `event_fields` entry into its path: dots separate, `\.` is a literal dot and
/// `\\` a literal backslash.
fn field_path(field: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut current = String::new();
    let mut chars = field.chars();
    while let Some(char) = chars.next() {
        match char {
            '\\' => current.push(chars.next().unwrap_or('\\')),
            '.' => path.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    path.push(current);
    path
}

/// Copies the value at `path` in `source` (if there is one) to the same place in `target`.
fn copy_path(source: &Value, target: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else { return };
    let Some(value) = source.get(first) else { return };
    if rest.is_empty() {
        target.insert(first.clone(), value.clone());
        return;
    }
    if !value.is_object() {
        return;
    }
    let entry = target.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(inner) = entry {
        copy_path(value, inner, rest);
    }
}

/// Keeps only the named fields of one event.
fn keep_fields(event: &Value, paths: &[Vec<String>]) -> Value {
    let mut kept = Map::new();
    for path in paths {
        copy_path(event, &mut kept, path);
    }
    Value::Object(kept)
}

fn keep_fields_of_all<T>(events: &mut [Raw<T>], paths: &[Vec<String>]) {
    for event in events {
        let Ok(value) = serde_json::from_str::<Value>(event.json().get()) else { continue };
        if let Ok(json) = serde_json::value::to_raw_value(&keep_fields(&value, paths)) {
            *event = Raw::from_json(json);
        }
    }
}

fn keep_fields_of_state(state: &mut v3::State, paths: &[Vec<String>]) {
    match state {
        v3::State::Before(events) => keep_fields_of_all(&mut events.events, paths),
        v3::State::After(events) => keep_fields_of_all(&mut events.events, paths),
        _ => {}
    }
}

/// Applies a filter's `event_fields` to the room events of a sync response: each timeline and
/// state event keeps only the fields named (dot-separated paths into the event).
pub fn apply_event_fields(response: &mut v3::Response, fields: &[String]) {
    let paths: Vec<Vec<String>> = fields.iter().map(|field| field_path(field)).collect();
    for room in response.rooms.join.values_mut() {
        keep_fields_of_all(&mut room.timeline.events, &paths);
        keep_fields_of_state(&mut room.state, &paths);
    }
    for room in response.rooms.leave.values_mut() {
        keep_fields_of_all(&mut room.timeline.events, &paths);
        keep_fields_of_state(&mut room.state, &paths);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_filter_blocks_all_with_no_types_or_every_type_excluded() {
        let mut filter = RoomEventFilter::default();
        assert!(!room_filter_blocks_all(&filter), "no filter lets everything through");
        filter.types = Some(Vec::new());
        assert!(room_filter_blocks_all(&filter));
        assert!(!room_event_type_passes(&filter, "m.receipt"));
        filter.types = Some(vec!["m.typing".to_owned()]);
        assert!(!room_filter_blocks_all(&filter), "one type passes");
        filter.types = None;
        filter.not_types = vec!["m.*".to_owned()];
        assert!(!room_filter_blocks_all(&filter), "a type outside m.* passes");
        filter.not_types = vec!["*".to_owned()];
        assert!(room_filter_blocks_all(&filter));
        assert!(!room_event_type_passes(&filter, "org.example.anything"));
        let mut plain = Filter::default();
        assert!(!filter_blocks_all(&plain));
        plain.types = Some(Vec::new());
        assert!(filter_blocks_all(&plain));
        assert!(!event_passes(&plain, "m.push_rules", None));
    }

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

    #[test]
    fn event_fields_keep_the_paths_named() {
        assert_eq!(field_path("content.body"), ["content", "body"]);
        assert_eq!(field_path("content.m\\.relates_to"), ["content", "m.relates_to"]);
        assert_eq!(field_path("a\\\\b"), ["a\\b"]);
        let event = json!({
            "type": "m.room.message", "sender": "@a:x", "event_id": "$e",
            "content": { "body": "hi", "msgtype": "m.text", "m.relates_to": { "rel_type": "x" } },
        });
        let paths: Vec<_> = [
            "type",
            "content.body",
            "content.m\\.relates_to.rel_type",
            "content.nothing",
            "sender.deeper",
        ]
        .iter()
        .map(|field| field_path(field))
        .collect();
        assert_eq!(
            keep_fields(&event, &paths),
            json!({ "type": "m.room.message",
                    "content": { "body": "hi", "m.relates_to": { "rel_type": "x" } } })
        );
    }
}
