//! Events as clients see them: the client format with `unsigned` filled in (age, the sender
//! device's transaction ID, the viewer's membership at the event, the state replaced, the
//! redaction, bundled relations).

use std::{collections::HashSet, sync::Arc};

use rhizome_core::{
    Result,
    clock::{millis_from_ts, now_millis},
};
use ruma::{OwnedEventId, events::StateEventType, serde::Raw};
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

use crate::{Requester, Services, rooms::cache::LoadedEvent};

/// How to format events.
#[derive(Clone, Copy, Debug)]
pub struct Format<'a> {
    /// Who is looking (for the transaction ID echo and thread participation).
    pub viewer: Option<&'a Requester>,
    /// Whether to include `room_id` (left out of `/sync` timelines).
    pub with_room_id: bool,
    /// Whether to bundle relations (edits, threads, references).
    pub bundle_relations: bool,
}

impl Services {
    /// Formats one event for a client.
    pub async fn format_event(
        &self,
        event: &LoadedEvent,
        format: Format<'_>,
    ) -> Result<Box<RawJsonValue>> {
        let mut unsigned = Map::new();
        let pdu = &event.pdu;
        unsigned
            .insert("age".into(), Value::from(now_millis() - millis_from_ts(pdu.origin_server_ts)));
        if let (Some(txn), Some(viewer)) = (&event.record.txn, format.viewer)
            && txn.user_id == viewer.user_id
            && txn.device_id == viewer.device_id
        {
            unsigned.insert("transaction_id".into(), Value::from(txn.txn_id.clone()));
        }
        if let Some(viewer) = format.viewer {
            // MSC4115: the viewer's membership at the event, the event's own change included.
            let membership = self
                .state_event_in(
                    event.record.state_after,
                    &StateEventType::RoomMember,
                    viewer.user_id.as_str(),
                )
                .await?
                .and_then(|member| member.pdu.content_str("membership"))
                .unwrap_or_else(|| "leave".to_owned());
            unsigned.insert("membership".into(), Value::from(membership));
        }
        if let Some(state_key) = &pdu.state_key {
            let kind = StateEventType::from(pdu.kind.to_string());
            if let Some(previous) =
                self.state_event_in(event.record.state_before, &kind, state_key).await?
                && previous.pdu.event_id != pdu.event_id
            {
                let content: Value = serde_json::from_str(previous.pdu.content.get())?;
                unsigned.insert("prev_content".into(), content);
                unsigned.insert(
                    "replaces_state".into(),
                    Value::from(previous.pdu.event_id.to_string()),
                );
                unsigned.insert("prev_sender".into(), Value::from(previous.pdu.sender.to_string()));
            }
        }
        if let Some(redacted_by) = &event.record.redacted_by {
            if let Some(redaction) = self.load_event(redacted_by).await? {
                let because: Value =
                    serde_json::from_str(redaction.pdu.client_event(true, None).get())?;
                unsigned.insert("redacted_because".into(), because);
            }
        } else if format.bundle_relations
            && !pdu.is_state()
            && let Some(relations) = Box::pin(self.bundled_relations(event, format)).await?
        {
            unsigned.insert("m.relations".into(), relations);
        }
        Ok(pdu.client_event(format.with_room_id, Some(unsigned)))
    }

    /// Formats events for a client, in order.
    pub async fn format_events(
        &self,
        events: &[Arc<LoadedEvent>],
        format: Format<'_>,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        // One query finds the few events that have relations; only those get bundles.
        let related = if format.bundle_relations {
            self.events_with_relations(events.iter()).await?
        } else {
            Default::default()
        };
        self.format_events_related(events, format, &related).await
    }

    /// Of the events, those some other event relates to: the only ones that can have relations
    /// to bundle (state events never get any). One query for all, however many rooms they
    /// come from.
    pub async fn events_with_relations<'a>(
        &self,
        events: impl Iterator<Item = &'a Arc<LoadedEvent>>,
    ) -> Result<HashSet<OwnedEventId>> {
        let ids: Vec<OwnedEventId> = events
            .filter(|event| !event.pdu.is_state())
            .map(|event| event.pdu.event_id.clone())
            .collect();
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        self.store.events_with_relations(&ids).await
    }

    /// Formats events for a client, in order, bundling relations only for those in `related`
    /// (see [`Self::events_with_relations`]).
    pub async fn format_events_related(
        &self,
        events: &[Arc<LoadedEvent>],
        format: Format<'_>,
        related: &HashSet<OwnedEventId>,
    ) -> Result<Vec<Box<RawJsonValue>>> {
        let mut formatted = Vec::with_capacity(events.len());
        for event in events {
            let bundle = format.bundle_relations && related.contains(&event.pdu.event_id);
            formatted.push(
                self.format_event(event, Format { bundle_relations: bundle, ..format }).await?,
            );
        }
        Ok(formatted)
    }
}

/// Wraps raw JSON as a typed ruma `Raw`.
pub fn raw<T>(json: Box<RawJsonValue>) -> Raw<T> {
    Raw::from_json(json)
}
