//! The persistent data unit: a room event as signed and exchanged between servers, parsed once
//! into the fields the server needs, with its signed JSON kept beside.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId,
    OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UInt, UserId,
    canonical_json::{RedactedBecause, redact},
    events::{StateEventType, TimelineEventType},
};
use serde::Deserialize;
use serde_json::value::{RawValue as RawJsonValue, to_raw_value};

use crate::versions;

/// A PDU did not parse or break a format rule.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The JSON was malformed or lacked a required field.
    #[error("malformed PDU: {0}")]
    Malformed(String),
    /// The room version is not one Rhizome supports.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(RoomVersionId),
    /// Hashing, signing or redaction failed.
    #[error("PDU JSON error: {0}")]
    Json(String),
    /// The PDU is larger than the 65,535 bytes the spec allows.
    #[error("the event is larger than 65535 bytes")]
    TooLarge,
}

/// A room event in its federation form.
#[derive(Clone, Debug)]
pub struct Pdu {
    /// The event ID (`$` and the reference hash for the supported room versions).
    pub event_id: OwnedEventId,
    /// The room; for a v12 create event, derived from its event ID.
    pub room_id: OwnedRoomId,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// When its server says it was sent.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The event type.
    pub kind: TimelineEventType,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The content, as sent.
    pub content: Box<RawJsonValue>,
    /// The events this one follows in the room graph.
    pub prev_events: Vec<OwnedEventId>,
    /// The state events that authorise this one.
    pub auth_events: Vec<OwnedEventId>,
    /// For a redaction: the event it redacts (top level up to v10, in content since v11).
    pub redacts: Option<OwnedEventId>,
    /// The depth in the room graph.
    pub depth: u64,
    /// Whether the auth rules rejected this event (kept for the graph, never served as state).
    pub rejected: bool,
    /// Whether `room_id` appeared in the JSON (it does not for v12 create events).
    room_id_in_json: bool,
    /// The signed PDU, as stored and sent to other servers.
    json: Box<RawJsonValue>,
}

#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    state_key: Option<String>,
    content: Box<RawJsonValue>,
    #[serde(deserialize_with = "event_references")]
    prev_events: Vec<OwnedEventId>,
    #[serde(deserialize_with = "event_references")]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

/// `prev_events` and `auth_events`: event IDs (room version 3 and later), or pairs of an event
/// ID and its hashes (versions 1 and 2), of which only the ID matters.
fn event_references<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<OwnedEventId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Reference {
        Id(OwnedEventId),
        Pair(OwnedEventId, serde::de::IgnoredAny),
    }
    let references: Vec<Reference> = Vec::deserialize(deserializer)?;
    Ok(references
        .into_iter()
        .map(|reference| match reference {
            Reference::Id(id) | Reference::Pair(id, _) => id,
        })
        .collect())
}

#[derive(Deserialize)]
struct ContentRedacts {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses a stored or received PDU of the given room version.
    pub fn from_json(
        event_id: OwnedEventId,
        json: Box<RawJsonValue>,
        room_version: &RoomVersionId,
    ) -> Result<Self, PduError> {
        let rules = versions::rules(room_version)
            .ok_or_else(|| PduError::UnsupportedRoomVersion(room_version.clone()))?;
        let fields: PduFields = serde_json::from_str(json.get())
            .map_err(|error| PduError::Malformed(error.to_string()))?;
        let room_id_in_json = fields.room_id.is_some();
        let room_id = match fields.room_id {
            Some(room_id) => room_id,
            None if fields.kind == TimelineEventType::RoomCreate
                && rules.authorization.room_create_event_id_as_room_id =>
            {
                OwnedRoomId::try_from(format!("!{}", event_id.as_str().trim_start_matches('$')))
                    .map_err(|error| PduError::Malformed(error.to_string()))?
            }
            None => return Err(PduError::Malformed("missing `room_id`".to_owned())),
        };
        let redacts = if fields.kind == TimelineEventType::RoomRedaction {
            if rules.redaction.content_field_redacts {
                serde_json::from_str::<ContentRedacts>(fields.content.get())
                    .ok()
                    .and_then(|content| content.redacts)
                    .or(fields.redacts)
            } else {
                fields.redacts
            }
        } else {
            None
        };
        Ok(Self {
            event_id,
            room_id,
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            state_key: fields.state_key,
            content: fields.content,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            redacts,
            depth: u64::from(fields.depth),
            rejected: false,
            room_id_in_json,
            json,
        })
    }

    /// The signed PDU JSON, as stored and sent to other servers.
    pub fn json(&self) -> &RawJsonValue {
        &self.json
    }

    /// The signed PDU as a canonical JSON object.
    pub fn canonical_object(&self) -> Result<CanonicalJsonObject, PduError> {
        serde_json::from_str(self.json.get()).map_err(|error| PduError::Json(error.to_string()))
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The state slot this event fills, for state events.
    pub fn state_slot(&self) -> Option<(StateEventType, String)> {
        self.state_key
            .as_ref()
            .map(|key| (StateEventType::from(self.kind.to_string()), key.clone()))
    }

    /// Deserialises the content into a concrete type.
    pub fn content_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.content.get())
    }

    /// The event after redaction by `because` (the redaction event's client form), keeping the
    /// hashes and signatures so the redacted PDU still verifies.
    pub fn redacted(
        &self,
        room_version: &RoomVersionId,
        because: Option<CanonicalJsonObject>,
    ) -> Result<Self, PduError> {
        let rules = versions::rules(room_version)
            .ok_or_else(|| PduError::UnsupportedRoomVersion(room_version.clone()))?;
        let object = self.canonical_object()?;
        let redacted = redact(object, &rules.redaction, because.map(RedactedBecause::from_json))
            .map_err(|error| PduError::Json(error.to_string()))?;
        let json = to_raw_value(&redacted).map_err(|error| PduError::Json(error.to_string()))?;
        let mut pdu = Self::from_json(self.event_id.clone(), json, room_version)?;
        pdu.rejected = self.rejected;
        Ok(pdu)
    }

    /// The event as clients see it: the federation fields stripped, `event_id` added and
    /// `unsigned` set to the given object. `room_id` is left out in `/sync` timelines.
    pub fn client_event(
        &self,
        include_room_id: bool,
        unsigned: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Box<RawJsonValue> {
        #[derive(serde::Serialize)]
        struct ClientEvent<'a> {
            content: &'a RawJsonValue,
            event_id: &'a EventId,
            origin_server_ts: MilliSecondsSinceUnixEpoch,
            #[serde(skip_serializing_if = "Option::is_none")]
            room_id: Option<&'a RoomId>,
            sender: &'a UserId,
            #[serde(skip_serializing_if = "Option::is_none")]
            state_key: Option<&'a str>,
            #[serde(rename = "type")]
            kind: &'a TimelineEventType,
            #[serde(skip_serializing_if = "Option::is_none")]
            redacts: Option<&'a EventId>,
            #[serde(skip_serializing_if = "Option::is_none")]
            unsigned: Option<serde_json::Map<String, serde_json::Value>>,
        }
        let event = ClientEvent {
            content: &self.content,
            event_id: &self.event_id,
            origin_server_ts: self.origin_server_ts,
            room_id: include_room_id.then_some(&*self.room_id),
            sender: &self.sender,
            state_key: self.state_key.as_deref(),
            kind: &self.kind,
            redacts: self.redacts.as_deref(),
            unsigned: unsigned.filter(|map| !map.is_empty()),
        };
        to_raw_value(&event).expect("invariant: a client event always serialises")
    }

    /// The stripped form used in invite and knock state.
    pub fn stripped_state_event(&self) -> Box<RawJsonValue> {
        let value = serde_json::json!({
            "content": &*self.content,
            "sender": &self.sender,
            "state_key": self.state_key.as_deref().unwrap_or_default(),
            "type": &self.kind,
        });
        to_raw_value(&value).expect("invariant: a stripped event always serialises")
    }

    /// A field of the content, as a string (`None` when absent, not a string, or the content
    /// not a JSON object). Only that field is read into memory: a big room's send reads one
    /// field of every member's event.
    pub fn content_str(&self, field: &str) -> Option<String> {
        field_str(self.content.get(), field)
    }
}

/// A field of a JSON object, as a string: `None` when absent, not a string, or `object` not
/// a JSON object.
pub(crate) fn field_str(object: &str, field: &str) -> Option<String> {
    let mut json = serde_json::Deserializer::from_str(object);
    let found = serde::de::DeserializeSeed::deserialize(FieldOf(field), &mut json).ok()?;
    json.end().ok()?;
    found
}

/// Reads one field of a JSON object as a string, skipping the others (the last of duplicate
/// keys wins, as when the object is read whole).
struct FieldOf<'f>(&'f str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldOf<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldOf<'_> {
    type Value = Option<String>;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == self.0 {
                let value: serde_json::Value = map.next_value()?;
                found = value.as_str().map(str::to_owned);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawJsonValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

/// Reads a string field of a canonical JSON object.
pub fn canonical_str<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(value)) => Some(value),
        _ => None,
    }
}
