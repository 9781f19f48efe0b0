//! Client actions with rules of their own on top of sending an event: state events (a no-op
//! when nothing changes) and redactions (only one's own events, or with the power to redact).

use rhizome_core::{Error, Result};
use rhizome_storage::TxnRecord;
use ruma::{
    EventId, OwnedEventId, RoomId, UserId,
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
        if let Some(current) = self.current_state_event(room_id, &kind, &state_key).await? {
            let same_content = serde_json::from_str::<Value>(current.pdu.content.get()).ok()
                == serde_json::from_str::<Value>(event.content.get()).ok();
            if same_content && current.pdu.sender == sender {
                return Ok(current.pdu.event_id.clone());
            }
        }
        self.send_event(sender, room_id, event, None).await
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
