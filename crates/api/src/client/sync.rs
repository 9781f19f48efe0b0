//! `/sync`. The response carries every section of a joined or left room even when it is empty
//! (`timeline.limited: false`, `state`, `ephemeral`, `account_data`), as clients that validate
//! the response against the spec's schema (matrix-nio) require.

use std::{collections::BTreeMap, time::Duration};

use axum::{
    Router,
    extract::State,
    response::{IntoResponse, Response},
};
use http::header;
use rhizome_core::Error;
use rhizome_service::sync::SyncRequest;
use ruma::api::{
    OutgoingResponseExt,
    client::{filter::FilterDefinition, sync::sync_events},
};
use serde_json::value::RawValue;

use crate::{AppState, Ruma, error::ApiError, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<sync_events::v3::Request, _, _>(router, sync)
}

async fn sync(
    State(services): State<AppState>,
    request: Ruma<sync_events::v3::Request>,
) -> Result<Response, ApiError> {
    let requester = request.requester()?;
    let body = &request.body;
    let filter = match &body.filter {
        Some(sync_events::v3::Filter::FilterDefinition(definition)) => definition.clone(),
        Some(sync_events::v3::Filter::FilterId(id)) => {
            services.filter(&requester.user_id, id).await?
        }
        _ => FilterDefinition::default(),
    };
    let sync_request = SyncRequest {
        since: body.since.clone(),
        timeout: body.timeout.unwrap_or(Duration::ZERO),
        full_state: body.full_state,
        filter,
        set_presence: body.set_presence.clone(),
        use_state_after: body.use_state_after,
    };
    let use_state_after = body.use_state_after;
    let response = services.sync(requester, sync_request).await?;
    let http = response.try_into_http_response::<Vec<u8>>().map_err(Error::internal)?;
    let bytes = with_every_section(http.body(), use_state_after).map_err(Error::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// A JSON object whose values are kept as they are, unparsed (events are never looked into).
type RawObject = BTreeMap<String, Box<RawValue>>;

/// Fills in the sections ruma leaves out of a sync response when they are empty. The events
/// themselves are copied through as raw JSON: an initial sync is megabytes of them.
fn with_every_section(body: &[u8], use_state_after: bool) -> serde_json::Result<Vec<u8>> {
    let mut top: RawObject = serde_json::from_slice(body)?;
    let mut rooms: BTreeMap<String, BTreeMap<String, RawObject>> = match top.get("rooms") {
        Some(rooms) => serde_json::from_str(rooms.get())?,
        None => BTreeMap::new(),
    };
    for section in ["join", "invite", "leave", "knock"] {
        rooms.entry(section.to_owned()).or_default();
    }
    let state_key = if use_state_after { "state_after" } else { "state" };
    for (section, room_keys) in [
        ("join", &[state_key, "ephemeral", "account_data"][..]),
        ("leave", &[state_key, "account_data"][..]),
    ] {
        let Some(section) = rooms.get_mut(section) else { continue };
        for room in section.values_mut() {
            fill_object(room, "timeline", &[("events", "[]"), ("limited", "false")])?;
            for key in room_keys {
                fill_object(room, key, &[("events", "[]")])?;
            }
        }
    }
    top.insert("rooms".to_owned(), serde_json::value::to_raw_value(&rooms)?);
    serde_json::to_vec(&top)
}

/// Makes `object[key]` an object (empty when missing or not an object) holding each of
/// `defaults` it lacks.
fn fill_object(
    object: &mut RawObject,
    key: &str,
    defaults: &[(&str, &str)],
) -> serde_json::Result<()> {
    let mut inner: RawObject = object
        .get(key)
        .and_then(|value| serde_json::from_str(value.get()).ok())
        .unwrap_or_default();
    for (name, value) in defaults {
        if !inner.contains_key(*name) {
            inner.insert((*name).to_owned(), RawValue::from_string((*value).to_owned())?);
        }
    }
    object.insert(key.to_owned(), serde_json::value::to_raw_value(&inner)?);
    Ok(())
}
