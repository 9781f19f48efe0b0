//! Supported room versions and their rules.

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

pub use rhizome_core::SUPPORTED_ROOM_VERSIONS;

/// The rules of a supported room version, or `None` for a version Rhizome does not support.
pub fn rules(version: &RoomVersionId) -> Option<RoomVersionRules> {
    if SUPPORTED_ROOM_VERSIONS.contains(version) { version.rules() } else { None }
}

/// Whether the room version's room ID is the create event's reference hash (v12 and later).
pub fn room_id_is_create_event_hash(version: &RoomVersionId) -> bool {
    rules(version).is_some_and(|rules| rules.authorization.room_create_event_id_as_room_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supports_every_stable_version() {
        for version in 1..=12 {
            let id = RoomVersionId::try_from(version.to_string()).unwrap();
            assert!(rules(&id).is_some(), "{version}");
        }
        assert!(rules(&RoomVersionId::try_from("13").unwrap()).is_none());
        assert!(rules(&RoomVersionId::try_from("org.example.custom").unwrap()).is_none());
        assert!(room_id_is_create_event_hash(&RoomVersionId::V12));
        assert!(!room_id_is_create_event_hash(&RoomVersionId::V11));
    }
}
