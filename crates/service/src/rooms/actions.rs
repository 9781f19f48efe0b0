//! Client actions with rules of their own on top of sending an event: state events (a no-op
//! when nothing changes; no second create event; power levels that name no creator of a room
//! version that privileges them; canonical aliases that exist here) and redactions (only one's own events, or with the power to redact).

use rhizome_core::{Error, Result, error::MatrixErrorKind};
use rhizome_room::versions;
use rhizome_storage::TxnRecord;
use ruma::{
    EventId, OwnedEventId, RoomAliasId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Value, json};

use crate::{Requester, Services, rooms::NewEvent};

impl Services {
    /// Sends a state event; if the room already holds the same content from the same sender in
    /// that slot, returns that event instead of a duplicate.
    pub async fn send_state_event(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        event: NewEvent,
    ) -> Result<OwnedEventId> {
        let state_key =
            event.state_key.clone().ok_or_else(|| Error::bug("state event without a state key"))?;
        let kind = StateEventType::from(event.kind.to_string());
        self.check_client_state(room_id, &kind, &event).await?;
        if let Some(current) = self.current_state_event(room_id, &kind, &state_key).await? {
            let same_content = serde_json::from_str::<Value>(current.pdu.content.get()).ok()
                == serde_json::from_str::<Value>(event.content.get()).ok();
            if same_content && current.pdu.sender == sender {
                return Ok(current.pdu.event_id.clone());
            }
        }
        self.send_event(sender, room_id, event, None).await
    }

    /// Refusals of state a client sends that the auth rules would refuse less clearly (or not
    /// at all): a second create event, creators listed in the power levels of a room version
    /// that privileges them, levels canonical JSON cannot carry.
    async fn check_client_state(
        &self,
        room_id: &RoomId,
        kind: &StateEventType,
        event: &NewEvent,
    ) -> Result<()> {
        match kind {
            StateEventType::RoomCreate => {
                Err(Error::bad_json("A room's create event cannot be sent again"))
            }
            StateEventType::RoomPowerLevels => {
                let content: Value = serde_json::from_str(event.content.get())
                    .map_err(|_| Error::bad_json("Invalid power levels"))?;
                check_power_level_values(&content)?;
                let version = self.room_version(room_id).await?;
                if versions::rules(&version)
                    .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators)
                {
                    let group = self.current_state_group(room_id).await?;
                    let users = content.get("users").and_then(Value::as_object);
                    for creator in self.room_creators(group).await? {
                        if users.is_some_and(|users| users.contains_key(creator.as_str())) {
                            return Err(Error::invalid_param(
                                "Room creators have the highest power already and cannot be \
                                 listed in the power levels",
                            ));
                        }
                    }
                }
                Ok(())
            }
            StateEventType::RoomCanonicalAlias => self.check_canonical_alias(room_id, event).await,
            _ => Ok(()),
        }
    }

    /// A canonical alias (and its alternatives) must be aliases, and those of this server must
    /// exist and point to this room (`M_BAD_ALIAS`).
    async fn check_canonical_alias(&self, room_id: &RoomId, event: &NewEvent) -> Result<()> {
        let content: Value = serde_json::from_str(event.content.get())
            .map_err(|_| Error::bad_json("Invalid canonical alias content"))?;
        let alias = content.get("alias").filter(|alias| !alias.is_null());
        let alternatives = match content.get("alt_aliases") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(list)) => list.iter().collect(),
            Some(_) => return Err(Error::invalid_param("alt_aliases must be a list of aliases")),
        };
        for alias in alias.into_iter().chain(alternatives) {
            let alias = alias
                .as_str()
                .and_then(|alias| RoomAliasId::parse(alias).ok())
                .ok_or_else(|| Error::invalid_param("Not a room alias"))?;
            if alias.server_name() != self.server_name() {
                continue;
            }
            let points_here =
                self.store.get_alias(&alias).await?.is_some_and(|record| record.room_id == room_id);
            if !points_here {
                return Err(Error::matrix(
                    MatrixErrorKind::BadAlias,
                    "That alias does not exist or points to another room",
                ));
            }
        }
        Ok(())
    }

    /// Redacts an event: the requester's own, or anyone's with the power to redact.
    pub async fn redact(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
        txn: TxnRecord,
    ) -> Result<OwnedEventId> {
        if let Some(existing) = self.store.event_for_txn(&txn).await? {
            return Ok(existing);
        }
        if self.load_event(event_id).await?.is_some_and(|event| event.pdu.room_id != room_id) {
            return Err(Error::invalid_param("That event is in another room"));
        }
        let target = self.visible_event(requester, room_id, event_id).await?;
        let power_levels = self.power_levels(room_id).await?;
        let allowed = if target.pdu.sender == requester.user_id {
            power_levels.user_can_redact_own_event(&requester.user_id)
        } else {
            power_levels.user_can_redact_event_of_other(&requester.user_id)
        };
        if !allowed {
            return Err(Error::forbidden("You may not redact this event"));
        }
        let mut content = json!({ "redacts": event_id });
        if let Some(reason) = reason {
            content["reason"] = json!(reason);
        }
        let event = NewEvent {
            kind: TimelineEventType::RoomRedaction,
            content: serde_json::value::to_raw_value(&content)?,
            state_key: None,
            redacts: Some(event_id.to_owned()),
        };
        self.send_event(&requester.user_id, room_id, event, Some(txn)).await
    }
}

/// The largest integer canonical JSON carries.
const MAX_CANONICAL_INT: i64 = 9_007_199_254_740_991;

/// Every level in power levels content is an integer canonical JSON can carry (the auth rules
/// read the rest).
fn check_power_level_values(content: &Value) -> Result<()> {
    let in_range = |value: &Value| match value {
        Value::Number(number) => number
            .as_i64()
            .is_some_and(|level| (-MAX_CANONICAL_INT..=MAX_CANONICAL_INT).contains(&level)),
        _ => true,
    };
    let Some(object) = content.as_object() else {
        return Err(Error::bad_json("Power levels must be an object"));
    };
    for (key, value) in object {
        let fine = match value {
            Value::Object(map) => map.values().all(|value| match value {
                Value::Object(inner) => inner.values().all(in_range),
                other => in_range(other),
            }),
            other => in_range(other),
        };
        if !fine {
            return Err(Error::bad_json(format!("{key}: a power level out of range")));
        }
    }
    Ok(())
}
