//! Checks of a PDU received from another server that need nothing but the PDU and keys
//! handed in: size and format, the event ID, which servers must have signed it, and the
//! signatures and content hash (an event whose hash does not match is kept redacted).

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    UserId,
    signatures::{
        PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event,
    },
};
use serde_json::value::to_raw_value;

use crate::{Pdu, build::MAX_DEPTH, build::event_id_of, pdu::canonical_str, versions};

/// The largest PDU, in bytes of JSON.
pub const MAX_PDU_BYTES: usize = 65_536;
/// The most `prev_events` a PDU may cite.
pub const MAX_PREV_EVENTS: usize = 20;
/// The most `auth_events` a PDU may cite.
pub const MAX_AUTH_EVENTS: usize = 10;
/// The longest identifier fields (`sender`, `room_id`, `type`, `state_key`, `event_id`).
const MAX_ID_BYTES: usize = 255;

/// Why a received PDU was refused before it could be authorised.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// It is larger than the spec allows.
    #[error("the event is larger than 65536 bytes")]
    TooLarge,
    /// It does not have the form of a PDU of its room version.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// Its room version is not one Rhizome supports.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    /// It belongs to another room than the one it was sent for.
    #[error("the event belongs to another room")]
    WrongRoom,
    /// A required signature is missing or does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
}

/// A received PDU whose form is checked: its ID and its JSON as a canonical object.
#[derive(Clone, Debug)]
pub struct CheckedPdu {
    /// The event ID (its reference hash, or the `event_id` it carries in versions 1 and 2).
    pub event_id: OwnedEventId,
    /// The event as received.
    pub object: CanonicalJsonObject,
}

fn malformed(reason: impl Into<String>) -> ReceiveError {
    ReceiveError::Malformed(reason.into())
}

/// Checks a received PDU's size and form for its room version, and computes its ID. With
/// `room_id`, the PDU must belong to that room.
pub fn check_format(
    json: &str,
    room_version: &RoomVersionId,
    room_id: Option<&RoomId>,
) -> Result<CheckedPdu, ReceiveError> {
    if json.len() > MAX_PDU_BYTES {
        return Err(ReceiveError::TooLarge);
    }
    let rules = versions::rules(room_version)
        .ok_or_else(|| ReceiveError::UnsupportedRoomVersion(room_version.clone()))?;
    let mut object: CanonicalJsonObject =
        serde_json::from_str(json).map_err(|error| malformed(error.to_string()))?;
    // `unsigned` is the sender's local data: never trusted, never kept.
    object.remove("unsigned");
    // The canonical form must also fit (it may be longer than what was sent, never shorter
    // by much, but the limit is on the event as signed).
    let canonical = serde_json::to_string(&object).map_err(|error| malformed(error.to_string()))?;
    if canonical.len() > MAX_PDU_BYTES {
        return Err(ReceiveError::TooLarge);
    }
    for field in ["sender", "type", "room_id", "state_key", "event_id"] {
        if canonical_str(&object, field).is_some_and(|value| value.len() > MAX_ID_BYTES) {
            return Err(malformed(format!("`{field}` is too long")));
        }
    }
    match object.get("depth") {
        Some(CanonicalJsonValue::Integer(depth))
            if i64::from(*depth) >= 0
                && u64::try_from(i64::from(*depth)).unwrap_or(u64::MAX) <= MAX_DEPTH => {}
        _ => return Err(malformed("`depth` must be an integer from 0 to 2^53 - 1")),
    }
    if !matches!(object.get("origin_server_ts"), Some(CanonicalJsonValue::Integer(_))) {
        return Err(malformed("missing `origin_server_ts`"));
    }
    if !matches!(object.get("hashes"), Some(CanonicalJsonValue::Object(_)))
        || !matches!(object.get("signatures"), Some(CanonicalJsonValue::Object(_)))
    {
        return Err(malformed("missing `hashes` or `signatures`"));
    }
    if !matches!(object.get("content"), Some(CanonicalJsonValue::Object(_))) {
        return Err(malformed("`content` must be an object"));
    }
    let count = |field: &str| match object.get(field) {
        Some(CanonicalJsonValue::Array(items)) => Ok(items.len()),
        _ => Err(malformed(format!("`{field}` must be an array"))),
    };
    if count("prev_events")? > MAX_PREV_EVENTS {
        return Err(malformed("too many `prev_events`"));
    }
    if count("auth_events")? > MAX_AUTH_EVENTS {
        return Err(malformed("too many `auth_events`"));
    }
    let sender = canonical_str(&object, "sender").ok_or_else(|| malformed("missing `sender`"))?;
    UserId::parse(sender).map_err(|error| malformed(format!("sender: {error}")))?;
    let event_id =
        event_id_of(&object, room_version).map_err(|error| malformed(error.to_string()))?;
    let json = to_raw_value(&object).map_err(|error| malformed(error.to_string()))?;
    let pdu = Pdu::from_json(event_id.clone(), json, room_version)
        .map_err(|error| malformed(error.to_string()))?;
    if let Some(room_id) = room_id
        && pdu.room_id != room_id
    {
        return Err(ReceiveError::WrongRoom);
    }
    let _ = rules;
    Ok(CheckedPdu { event_id, object })
}

/// The servers whose signatures a PDU needs, each with the key IDs it signed with.
pub fn signing_keys_needed(
    pdu: &CheckedPdu,
    room_version: &RoomVersionId,
) -> Result<BTreeMap<OwnedServerName, Vec<String>>, ReceiveError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| ReceiveError::UnsupportedRoomVersion(room_version.clone()))?;
    let servers = required_server_signatures_to_verify_event(&pdu.object, &rules.signatures)
        .map_err(|error| ReceiveError::BadSignature(error.to_string()))?;
    let signatures = match pdu.object.get("signatures") {
        Some(CanonicalJsonValue::Object(signatures)) => signatures,
        _ => return Err(ReceiveError::BadSignature("unsigned".into())),
    };
    let mut needed = BTreeMap::new();
    for server in servers {
        let key_ids: Vec<String> = match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(keys)) => keys.keys().cloned().collect(),
            _ => return Err(ReceiveError::BadSignature(format!("not signed by {server}"))),
        };
        needed.insert(server, key_ids);
    }
    Ok(needed)
}

/// Whether signatures must be made by keys valid at the event's time (room version 5 on).
pub fn enforces_key_validity(room_version: &RoomVersionId) -> bool {
    versions::rules(room_version).is_some_and(|rules| rules.enforce_key_validity)
}

/// The PDU's `origin_server_ts`.
pub fn origin_server_ts(pdu: &CheckedPdu) -> i64 {
    match pdu.object.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => 0,
    }
}

/// Verifies the signatures (with the keys handed in) and the content hash, and parses the
/// PDU. One whose content hash does not match is returned redacted, as the spec requires.
pub fn verify(
    pdu: CheckedPdu,
    room_version: &RoomVersionId,
    keys: &PublicKeyMap,
) -> Result<Pdu, ReceiveError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| ReceiveError::UnsupportedRoomVersion(room_version.clone()))?;
    let verified = verify_event(keys, &pdu.object, &rules)
        .map_err(|error| ReceiveError::BadSignature(error.to_string()))?;
    let json = to_raw_value(&pdu.object).map_err(|error| malformed(error.to_string()))?;
    let parsed = Pdu::from_json(pdu.event_id, json, room_version)
        .map_err(|error| malformed(error.to_string()))?;
    match verified {
        Verified::All => Ok(parsed),
        Verified::Signatures => {
            parsed.redacted(room_version, None).map_err(|error| malformed(error.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::{RoomVersionId, serde::Base64, user_id};
    use serde_json::json;

    use super::*;
    use crate::{SigningKey, fixture::FixtureRoom};

    fn keys_of(server: &str, key: &SigningKey) -> PublicKeyMap {
        let public = Base64::parse(key.public_key_base64()).unwrap();
        [(server.to_owned(), [(key.key_id(), public)].into_iter().collect())].into_iter().collect()
    }

    #[test]
    fn a_good_event_verifies_and_a_tampered_one_is_redacted_or_refused() {
        for version in crate::versions::SUPPORTED_ROOM_VERSIONS {
            let room = FixtureRoom::new(version.clone(), user_id!("@alice:example.org"));
            let event =
                room.events.values().find(|e| e.kind.to_string() == "m.room.power_levels").unwrap();
            let json = event.json().get();
            let checked = check_format(json, version, Some(&room.room_id)).unwrap();
            assert_eq!(checked.event_id, event.event_id);
            let needed = signing_keys_needed(&checked, version).unwrap();
            assert_eq!(needed.keys().map(|s| s.as_str()).collect::<Vec<_>>(), ["example.org"]);
            let keys = keys_of("example.org", room.signing_key());
            let verified = verify(checked.clone(), version, &keys).unwrap();
            assert_eq!(verified.content.get(), event.content.get());

            // Content changed after signing: the hash no longer matches; kept redacted.
            let mut tampered = checked.object.clone();
            if let Some(CanonicalJsonValue::Object(content)) = tampered.get_mut("content") {
                content.insert("users_default".into(), CanonicalJsonValue::Integer(100.into()));
            }
            let tampered_json = serde_json::to_string(&tampered).unwrap();
            let checked = check_format(&tampered_json, version, None).unwrap();
            if !crate::versions::rules(version).unwrap().event_format.require_event_id {
                assert_ne!(checked.event_id, event.event_id, "{version}: the ID is the hash");
            }
            // The redacted form keeps `users_default`, so the signature still fails: content
            // keys kept by redaction are signed.
            assert!(verify(checked, version, &keys).is_err(), "{version}");

            // Another key: refused.
            let other = SigningKey::generate();
            let checked = check_format(json, version, None).unwrap();
            assert!(verify(checked, version, &keys_of("example.org", &other)).is_err());
        }
    }

    #[test]
    fn a_changed_message_body_keeps_the_signature_but_is_redacted() {
        let version = RoomVersionId::V11;
        let mut room = FixtureRoom::new(version.clone(), user_id!("@alice:example.org"));
        let head = room.head();
        let message = room
            .send(
                &[head],
                user_id!("@alice:example.org"),
                "m.room.message",
                None,
                json!({"body": "hi", "msgtype": "m.text"}),
            )
            .unwrap();
        let event = room.events[&message].clone();
        let mut object = event.canonical_object().unwrap();
        if let Some(CanonicalJsonValue::Object(content)) = object.get_mut("content") {
            content.insert("body".into(), CanonicalJsonValue::String("changed".into()));
        }
        let json = serde_json::to_string(&object).unwrap();
        let checked = check_format(&json, &version, None).unwrap();
        let keys = keys_of("example.org", room.signing_key());
        let verified = verify(checked, &version, &keys).unwrap();
        assert_eq!(verified.content.get(), "{}", "kept redacted");
    }

    #[test]
    fn malformed_events_are_refused() {
        let version = RoomVersionId::V11;
        let room = FixtureRoom::new(version.clone(), user_id!("@alice:example.org"));
        let event = &room.events[&room.create_event_id];
        let base: serde_json::Value = serde_json::from_str(event.json().get()).unwrap();
        let with = |field: &str, value: serde_json::Value| {
            let mut object = base.clone();
            object[field] = value;
            serde_json::to_string(&object).unwrap()
        };
        let too_many: Vec<String> = (0..21).map(|i| format!("$e{i}")).collect();
        assert!(matches!(
            check_format(&with("prev_events", json!(too_many)), &version, None),
            Err(ReceiveError::Malformed(_))
        ));
        let many_auth: Vec<String> = (0..11).map(|i| format!("$a{i}")).collect();
        assert!(check_format(&with("auth_events", json!(many_auth)), &version, None).is_err());
        assert!(
            check_format(&with("depth", json!(9_007_199_254_740_992_i64)), &version, None).is_err()
        );
        assert!(check_format(&with("depth", json!(-1)), &version, None).is_err());
        assert!(check_format(&with("sender", json!("not a user")), &version, None).is_err());
        assert!(check_format(&with("content", json!([])), &version, None).is_err());
        let huge = "x".repeat(MAX_PDU_BYTES);
        assert!(matches!(
            check_format(&with("padding", json!(huge)), &version, None),
            Err(ReceiveError::TooLarge)
        ));
        assert!(matches!(
            check_format(event.json().get(), &version, Some(ruma::room_id!("!other:example.org"))),
            Err(ReceiveError::WrongRoom)
        ));
        assert!(matches!(
            check_format(event.json().get(), &RoomVersionId::try_from("99").unwrap(), None),
            Err(ReceiveError::UnsupportedRoomVersion(_))
        ));
    }
}
