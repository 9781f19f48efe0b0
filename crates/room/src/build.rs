//! Building a new PDU: fill the fields for the room version, add the content hash, sign it with
//! the server's key and derive the event ID (and, for a v12 create event, the room ID).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ruma::room_version_rules::EventsReferenceFormatVersion;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedUserId, RoomVersionId, ServerName, UInt,
    events::TimelineEventType,
    signatures::{JsonError, hash_and_sign_event, reference_hash},
};
use serde_json::value::{RawValue as RawJsonValue, to_raw_value};
use sha2::{Digest, Sha256};

use crate::{Pdu, PduError, SigningKey, versions};

/// The largest depth a PDU may carry.
pub const MAX_DEPTH: u64 = 9_007_199_254_740_991;

/// The parts of a new event that its sender chooses and the room's graph decides.
#[derive(Clone, Debug)]
pub struct EventTemplate {
    /// The room; `None` only for a v12 create event, whose room ID is derived from it.
    pub room_id: Option<OwnedRoomId>,
    /// The sender.
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: TimelineEventType,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The content.
    pub content: Box<RawJsonValue>,
    /// For a redaction, the event it redacts.
    pub redacts: Option<OwnedEventId>,
    /// The current forward extremities.
    pub prev_events: Vec<OwnedEventId>,
    /// The authorising state events.
    pub auth_events: Vec<OwnedEventId>,
    /// One more than the greatest depth among `prev_events`.
    pub depth: u64,
    /// The sending time.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
}

/// Builds, hashes and signs a PDU of the given room version.
pub fn build_pdu(
    template: &EventTemplate,
    room_version: &RoomVersionId,
    origin: &ServerName,
    key: &SigningKey,
) -> Result<Pdu, PduError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| PduError::UnsupportedRoomVersion(room_version.clone()))?;
    let mut object = CanonicalJsonObject::new();
    let string = |value: &str| CanonicalJsonValue::String(value.to_owned());
    // Room versions 1 and 2 reference events as `[id, hashes]` pairs; the hashes are not
    // checked by anyone, so they are left empty.
    let pairs = rules.events_reference_format == EventsReferenceFormatVersion::V1;
    let ids = |ids: &[OwnedEventId]| {
        CanonicalJsonValue::Array(
            ids.iter()
                .map(|id| {
                    if pairs {
                        CanonicalJsonValue::Array(vec![
                            string(id.as_str()),
                            CanonicalJsonValue::Object(CanonicalJsonObject::new()),
                        ])
                    } else {
                        string(id.as_str())
                    }
                })
                .collect(),
        )
    };

    object.insert("auth_events".to_owned(), ids(&template.auth_events));
    let content: CanonicalJsonValue = serde_json::from_str(template.content.get())
        .map_err(|error| PduError::Malformed(format!("content: {error}")))?;
    if !matches!(content, CanonicalJsonValue::Object(_)) {
        return Err(PduError::Malformed("content must be an object".to_owned()));
    }
    object.insert("content".to_owned(), content);
    let depth = UInt::new(template.depth.min(MAX_DEPTH)).unwrap_or(UInt::MAX);
    object.insert("depth".to_owned(), CanonicalJsonValue::Integer(depth.into()));
    object.insert(
        "origin_server_ts".to_owned(),
        CanonicalJsonValue::Integer(template.origin_server_ts.0.into()),
    );
    object.insert("prev_events".to_owned(), ids(&template.prev_events));
    match &template.room_id {
        Some(room_id) => {
            object.insert("room_id".to_owned(), string(room_id.as_str()));
        }
        None => {
            let is_v12_create = template.kind == TimelineEventType::RoomCreate
                && rules.authorization.room_create_event_id_as_room_id;
            if !is_v12_create {
                return Err(PduError::Malformed("missing room ID".to_owned()));
            }
        }
    }
    object.insert("sender".to_owned(), string(template.sender.as_str()));
    if let Some(state_key) = &template.state_key {
        object.insert("state_key".to_owned(), string(state_key));
    }
    object.insert("type".to_owned(), string(&template.kind.to_string()));
    if let Some(redacts) = &template.redacts {
        // Since v11 `redacts` lives in the content (already there, put by the sender); older
        // versions carry it at the top level.
        if !rules.redaction.content_field_redacts {
            object.insert("redacts".to_owned(), string(redacts.as_str()));
        }
    }

    // Room versions 1 and 2 name events `$<local part>:<origin>`, signed with the event.
    let legacy_event_id = if rules.event_format.require_event_id {
        let event_id = legacy_event_id(&object, origin)?;
        object.insert("event_id".to_owned(), string(event_id.as_str()));
        Some(event_id)
    } else {
        None
    };
    hash_and_sign_event(origin.as_str(), key.pair(), &mut object, &rules.redaction)
        .map_err(json_error)?;
    let event_id = match legacy_event_id {
        Some(event_id) => event_id,
        None => {
            let hash = reference_hash(&object, &rules).map_err(json_error)?;
            OwnedEventId::try_from(format!("${hash}"))
                .map_err(|error| PduError::Json(error.to_string()))?
        }
    };
    let json = to_raw_value(&object).map_err(|error| PduError::Json(error.to_string()))?;
    Pdu::from_json(event_id, json, room_version)
}

fn json_error(error: JsonError) -> PduError {
    match error {
        JsonError::PduTooLarge => PduError::TooLarge,
        other => PduError::Json(other.to_string()),
    }
}

/// A room version 1 or 2 event ID for a new event: `$`, 18 URL-safe characters of a hash of the
/// unsigned event (unique, as the event carries its time and place in the room), `:origin`.
fn legacy_event_id(
    object: &CanonicalJsonObject,
    origin: &ServerName,
) -> Result<OwnedEventId, PduError> {
    let canonical =
        serde_json::to_vec(object).map_err(|error| PduError::Json(error.to_string()))?;
    let digest = Sha256::digest(&canonical);
    let local: String = URL_SAFE_NO_PAD.encode(digest).chars().take(18).collect();
    OwnedEventId::try_from(format!("${local}:{origin}"))
        .map_err(|error| PduError::Json(error.to_string()))
}

/// Computes the event ID of a received PDU: its reference hash, or for room versions 1 and 2
/// the `event_id` it carries.
pub fn event_id_of(
    object: &CanonicalJsonObject,
    room_version: &RoomVersionId,
) -> Result<OwnedEventId, PduError> {
    let rules = versions::rules(room_version)
        .ok_or_else(|| PduError::UnsupportedRoomVersion(room_version.clone()))?;
    if rules.event_format.require_event_id {
        let Some(CanonicalJsonValue::String(event_id)) = object.get("event_id") else {
            return Err(PduError::Malformed("missing `event_id`".to_owned()));
        };
        return OwnedEventId::try_from(event_id.as_str())
            .map_err(|error| PduError::Malformed(format!("event_id: {error}")));
    }
    let hash = reference_hash(object, &rules).map_err(json_error)?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|error| PduError::Json(error.to_string()))
}
