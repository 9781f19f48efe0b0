//! Fetching what a remote event needs from the server that sent it, bounded in count and
//! time: missing auth events (`/event_auth`), missing predecessors (`/get_missing_events`)
//! and the state at an event (`/state_ids`, then `/event` or `/state` for what is unknown).
//! Everything fetched is checked like any PDU before it is stored.

use std::collections::HashSet;

use futures_util::{StreamExt, stream};
use rhizome_core::{Error, Result};
use rhizome_room::{Pdu, StateMap, received};
use ruma::{
    OwnedEventId, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::{
        authorization::get_event_authorization,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
};

use super::client::RequestLimits;
use crate::Services;

/// How many predecessors one `get_missing_events` asks for.
const MISSING_EVENTS_LIMIT: u32 = 10;
/// Up to this many unknown state events are fetched one by one; more, with `/state`.
const FETCH_SINGLY: usize = 100;
/// Concurrent `/event` requests.
const FETCH_CONCURRENCY: usize = 8;
/// The largest state or auth chain accepted from another server.
const MAX_FETCHED_EVENTS: usize = 100_000;

impl Services {
    /// Fetches the auth events of `pdu` this server does not know, from `origin`.
    pub(crate) async fn fetch_missing_auth_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<()> {
        let known = self.load_events(&pdu.auth_events).await?;
        if known.len() == pdu.auth_events.len() || origin == self.server_name() {
            return Ok(());
        }
        let client = self.federation_client()?;
        let response = client
            .send_with_limits(
                origin,
                get_event_authorization::v1::Request::new(room_id.to_owned(), pdu.event_id.clone()),
                RequestLimits::large(),
            )
            .await?;
        if response.auth_chain.len() > MAX_FETCHED_EVENTS {
            return Err(Error::forbidden("The auth chain is too long"));
        }
        self.store_fetched_events(room_id, version, response.auth_chain).await?;
        Ok(())
    }

    /// Fetches the events between the room's forward extremities and `pdu` from `origin`, and
    /// processes them oldest first (each may fetch further, `depth` times at most).
    pub(crate) async fn fetch_missing_prevs(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        pdu: &Pdu,
        depth: usize,
    ) -> Result<()> {
        if origin == self.server_name() {
            return Ok(());
        }
        let client = self.federation_client()?;
        let earliest = self.store.forward_extremities(room_id).await?;
        let min_depth = pdu.depth.saturating_sub(u64::from(MISSING_EVENTS_LIMIT) * 2);
        let mut request = get_missing_events::v1::Request::new(
            room_id.to_owned(),
            earliest,
            vec![pdu.event_id.clone()],
        );
        request.limit = UInt::from(MISSING_EVENTS_LIMIT);
        request.min_depth = UInt::try_from(min_depth).unwrap_or_default();
        let response = match client.send_with_limits(origin, request, RequestLimits::large()).await
        {
            Ok(response) => response,
            Err(error) => {
                // Not fatal: the state at the event is asked for instead.
                tracing::debug!(%error, "get_missing_events failed");
                return Ok(());
            }
        };
        let mut missing = Vec::new();
        for json in response
            .events
            .into_iter()
            .take(usize::try_from(MISSING_EVENTS_LIMIT).unwrap_or(10) * 2)
        {
            let Ok(checked) = received::check_format(json.get(), version, Some(room_id)) else {
                continue;
            };
            if checked.event_id == pdu.event_id || self.known_in_timeline(&checked.event_id).await?
            {
                continue;
            }
            match self.verify_received(checked, version).await {
                Ok(event) => missing.push(event),
                Err(error) => tracing::debug!(%error, "a missing event failed its checks"),
            }
        }
        missing.sort_by_key(|event| (event.depth, event.origin_server_ts));
        for event in missing {
            let event_id = event.event_id.clone();
            if let Err(error) =
                self.process_pdu_locked(origin, room_id, version, event, depth - 1).await
            {
                tracing::debug!(%error, %event_id, "a missing event could not be processed");
            }
        }
        Ok(())
    }

    /// The state before `event_id`, as `origin` knows it: the IDs from `/state_ids`, the
    /// unknown events fetched and checked (and stored as outliers). Events that fail their
    /// checks are left out of the state.
    pub(crate) async fn fetch_state_at(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersionId,
        event_id: &ruma::EventId,
    ) -> Result<StateMap> {
        let client = self.federation_client()?;
        let ids = client
            .send_with_limits(
                origin,
                get_room_state_ids::v1::Request::new(event_id.to_owned(), room_id.to_owned()),
                RequestLimits::large(),
            )
            .await?;
        if ids.pdu_ids.len() + ids.auth_chain_ids.len() > MAX_FETCHED_EVENTS {
            return Err(Error::forbidden("The room's state is too large"));
        }
        let wanted: Vec<OwnedEventId> =
            ids.auth_chain_ids.iter().chain(ids.pdu_ids.iter()).cloned().collect();
        let known: HashSet<OwnedEventId> = self
            .load_events(&wanted)
            .await?
            .into_iter()
            .map(|event| event.pdu.event_id.clone())
            .collect();
        let unknown: Vec<OwnedEventId> =
            wanted.into_iter().filter(|id| !known.contains(id)).collect();
        if unknown.len() > FETCH_SINGLY {
            let state = client
                .send_with_limits(
                    origin,
                    get_room_state::v1::Request::new(event_id.to_owned(), room_id.to_owned()),
                    RequestLimits::large(),
                )
                .await?;
            let events: Vec<_> = state.auth_chain.into_iter().chain(state.pdus).collect();
            self.store_fetched_events(room_id, version, events).await?;
        } else if !unknown.is_empty() {
            let fetched: Vec<_> = stream::iter(unknown)
                .map(|id| async move {
                    client
                        .send_with_limits(
                            origin,
                            get_event::v1::Request::new(id),
                            RequestLimits::small(),
                        )
                        .await
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .collect()
                .await;
            let mut events = Vec::new();
            for response in fetched {
                match response {
                    Ok(response) => events.push(response.pdu),
                    Err(error) => tracing::debug!(%error, "a state event could not be fetched"),
                }
            }
            self.store_fetched_events(room_id, version, events).await?;
        }
        let mut state = StateMap::new();
        for event in self.load_events(&ids.pdu_ids).await? {
            if event.record.rejected || event.pdu.room_id != room_id {
                continue;
            }
            if let Some(slot) = event.pdu.state_slot() {
                state.insert(slot, event.pdu.event_id.clone());
            }
        }
        if state.is_empty() {
            return Err(Error::forbidden("No usable state could be fetched for the event"));
        }
        Ok(state)
    }
}
