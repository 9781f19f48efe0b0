//! Server-side message search over the rooms a user is in, through the visibility rules.

use rhizome_core::{Error, Result};
use ruma::{OwnedRoomId, api::client::filter::RoomEventFilter};
use serde_json::value::RawValue as RawJsonValue;

use crate::{Requester, Services, rooms::format::Format, sync::filter::room_event_passes};

/// One page of search results.
#[derive(Debug)]
pub struct SearchPage {
    /// The matching events, newest first.
    pub results: Vec<Box<RawJsonValue>>,
    /// The token of the next page.
    pub next_batch: Option<String>,
}

/// How many results a page holds.
const PAGE_SIZE: i64 = 20;

impl Services {
    /// Searches message bodies in the requester's joined rooms (or the filter's rooms among
    /// them).
    pub async fn search_messages(
        &self,
        requester: &Requester,
        term: &str,
        filter: &RoomEventFilter,
        next_batch: Option<&str>,
    ) -> Result<SearchPage> {
        if term.trim().is_empty() {
            return Err(Error::invalid_param("The search term is empty"));
        }
        let before = next_batch
            .map(|token| {
                token
                    .strip_prefix('q')
                    .and_then(|pos| pos.parse::<i64>().ok())
                    .ok_or_else(|| Error::invalid_param("Invalid search token"))
            })
            .transpose()?;
        let mut rooms: Vec<OwnedRoomId> = self
            .store
            .rooms_of_user(&requester.user_id, &["join"])
            .await?
            .into_iter()
            .map(|member| member.room_id)
            .collect();
        if let Some(wanted) = &filter.rooms {
            rooms.retain(|room| wanted.contains(room));
        }
        rooms.retain(|room| !filter.not_rooms.contains(room));
        let dropped = self.events_dropped();
        let records = self.store.search_messages(&rooms, term, before, PAGE_SIZE).await?;
        let next_batch = (records.len() == usize::try_from(PAGE_SIZE).unwrap_or(20))
            .then(|| records.last().map(|record| format!("q{}", record.stream_pos)))
            .flatten();
        let events = self.loaded_from_records(dropped, records).await?;
        let events: Vec<_> =
            events.into_iter().filter(|event| room_event_passes(filter, &event.pdu)).collect();
        let mut visible = Vec::with_capacity(events.len());
        for event in events {
            if self.can_see_event(&requester.user_id, &event).await? {
                visible.push(event);
            }
        }
        let format = Format { viewer: Some(requester), with_room_id: true, bundle_relations: true };
        Ok(SearchPage { results: self.format_events(&visible, format).await?, next_batch })
    }
}
