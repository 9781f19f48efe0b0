//! Relations: bundled aggregations (edits, threads, references) in `unsigned.m.relations`,
//! `/relations` and the threads list.

use std::sync::Arc;

use rhizome_core::{Error, Result};
use rhizome_storage::{Direction, StreamPos};
use ruma::{EventId, RoomId};
use serde_json::{Map, Value, value::RawValue as RawJsonValue};

use crate::{
    Requester, Services,
    rooms::{cache::LoadedEvent, format::Format},
};

/// A page of related events.
#[derive(Debug)]
pub struct RelationsPage {
    /// The events, formatted.
    pub chunk: Vec<Box<RawJsonValue>>,
    /// The token for the next page, if there may be one.
    pub next_batch: Option<String>,
}

/// What `/relations` asks for.
#[derive(Clone, Copy, Debug)]
pub struct RelationsQuery<'a> {
    /// Only relations of this type.
    pub rel_type: Option<&'a str>,
    /// Only related events of this type.
    pub event_type: Option<&'a str>,
    /// Where to start.
    pub from: Option<&'a str>,
    /// Where to stop.
    pub to: Option<&'a str>,
    /// Which way to go.
    pub direction: Direction,
    /// The most events to return.
    pub limit: usize,
}

/// Parses a relations or threads pagination token (a stream position).
pub fn parse_position_token(token: &str) -> Result<StreamPos> {
    token
        .trim_start_matches('r')
        .parse()
        .map_err(|_| Error::invalid_param("Invalid pagination token"))
}

impl Services {
    /// The `m.relations` object for an event, if anything relates to it.
    pub(crate) async fn bundled_relations(
        &self,
        event: &LoadedEvent,
        format: Format<'_>,
    ) -> Result<Option<Value>> {
        let pdu = &event.pdu;
        let mut relations = Map::new();
        let plain = Format { bundle_relations: false, ..format };
        let dropped = self.events_dropped();
        if let Some(edit) = self.store.latest_edit(&pdu.event_id, &pdu.sender).await?
            && let Some(edit) = self.loaded_from_records(dropped, vec![edit]).await?.pop()
            && self.viewer_can_see(format, &edit).await?
        {
            let edit: Value = serde_json::from_str(self.format_event(&edit, plain).await?.get())?;
            relations.insert("m.replace".into(), edit);
        }
        let viewer =
            format.viewer.map(|viewer| viewer.user_id.as_ref()).unwrap_or(pdu.sender.as_ref());
        let dropped = self.events_dropped();
        if let Some((count, latest, participated)) =
            self.store.thread_summary(&pdu.event_id, viewer).await?
            && let Some(latest) = self.loaded_from_records(dropped, vec![latest]).await?.pop()
            // A thread whose latest reply the viewer may not see (it came after they left) is
            // not summarised at all, rather than with a reply or count they should not know of.
            && self.viewer_can_see(format, &latest).await?
        {
            let latest_event: Value =
                serde_json::from_str(self.format_event(&latest, plain).await?.get())?;
            relations.insert(
                "m.thread".into(),
                serde_json::json!({
                    "latest_event": latest_event,
                    "count": count,
                    "current_user_participated": participated,
                }),
            );
        }
        let references = self
            .store
            .relations(
                &pdu.event_id,
                Some("m.reference"),
                None,
                i64::MAX,
                None,
                Direction::Backward,
                50,
            )
            .await?;
        if !references.is_empty() {
            let chunk: Vec<Value> = references
                .iter()
                .map(|reference| serde_json::json!({ "event_id": reference.event_id }))
                .collect();
            relations.insert("m.reference".into(), serde_json::json!({ "chunk": chunk }));
        }
        Ok((!relations.is_empty()).then_some(Value::Object(relations)))
    }

    /// Whether the viewer of a formatted event (if any) may see `event`.
    async fn viewer_can_see(&self, format: Format<'_>, event: &LoadedEvent) -> Result<bool> {
        match format.viewer {
            Some(viewer) => self.can_see_event(&viewer.user_id, event).await,
            None => Ok(true),
        }
    }

    /// `/relations`: events relating to `event_id`, newest first by default.
    pub async fn relations(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
        query: RelationsQuery<'_>,
    ) -> Result<RelationsPage> {
        let RelationsQuery { rel_type, event_type, from, to, direction, limit } = query;
        let parent = self.visible_event(requester, room_id, event_id).await?;
        let from = match from {
            Some(token) => parse_position_token(token)?,
            None => match direction {
                Direction::Backward => i64::MAX,
                Direction::Forward => 0,
            },
        };
        let to = to.map(parse_position_token).transpose()?;
        let limit = limit.clamp(1, 100);
        let dropped = self.events_dropped();
        let records = self
            .store
            .relations(
                &parent.pdu.event_id,
                rel_type,
                event_type,
                from,
                to,
                direction,
                i64::try_from(limit).unwrap_or(100),
            )
            .await?;
        let next_batch = (records.len() == limit)
            .then(|| records.last().map(|record| format!("r{}", record.stream_pos)))
            .flatten();
        let events = self.loaded_from_records(dropped, records).await?;
        let events = self.filter_visible(&requester.user_id, events).await?;
        let format =
            Format { viewer: Some(requester), with_room_id: true, bundle_relations: false };
        Ok(RelationsPage { chunk: self.format_events(&events, format).await?, next_batch })
    }

    /// `/threads`: the room's thread roots, latest activity first.
    pub async fn threads(
        &self,
        requester: &Requester,
        room_id: &RoomId,
        only_participated: bool,
        from: Option<&str>,
        limit: usize,
    ) -> Result<RelationsPage> {
        self.ensure_can_read_room(requester, room_id).await?;
        let from = from.map(parse_position_token).transpose()?;
        let limit = limit.clamp(1, 100);
        let participant = only_participated.then_some(requester.user_id.as_ref());
        let dropped = self.events_dropped();
        let roots = self
            .store
            .thread_roots(room_id, from, participant, i64::try_from(limit).unwrap_or(100))
            .await?;
        let next_batch = (roots.len() == limit)
            .then(|| roots.last().map(|(_, latest)| format!("r{latest}")))
            .flatten();
        let events: Vec<Arc<LoadedEvent>> = self
            .loaded_from_records(dropped, roots.into_iter().map(|(root, _)| root).collect())
            .await?;
        let events = self.filter_visible(&requester.user_id, events).await?;
        let format = Format { viewer: Some(requester), with_room_id: true, bundle_relations: true };
        Ok(RelationsPage { chunk: self.format_events(&events, format).await?, next_batch })
    }
}
