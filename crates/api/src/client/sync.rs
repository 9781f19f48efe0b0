//! `/sync`. The response carries every section of a joined or left room even when it is empty
//! (`timeline.limited: false`, `state`, `ephemeral`, `account_data`), as clients that validate
//! the response against the spec's schema (matrix-nio) require.

use std::time::Duration;

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
use serde_json::{Map, Value, json};

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
    let response = services.sync(requester, sync_request).await?;
    let mut value: Value = serde_json::from_slice(
        response.try_into_http_response::<Vec<u8>>().map_err(Error::internal)?.body(),
    )
    .map_err(Error::internal)?;
    with_every_section(&mut value, body.use_state_after);
    let bytes = serde_json::to_vec(&value).map_err(Error::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// Fills in the sections ruma leaves out of a sync response when they are empty.
fn with_every_section(response: &mut Value, use_state_after: bool) {
    let Some(rooms) = response.as_object_mut().and_then(|top| object_at(top, "rooms")) else {
        return;
    };
    for section in ["join", "invite", "leave", "knock"] {
        object_at(rooms, section);
    }
    let state_key = if use_state_after { "state_after" } else { "state" };
    for (section, room_keys) in [
        ("join", &[state_key, "ephemeral", "account_data"][..]),
        ("leave", &[state_key, "account_data"][..]),
    ] {
        let Some(section) = rooms.get_mut(section).and_then(Value::as_object_mut) else {
            continue;
        };
        for room in section.values_mut().filter_map(Value::as_object_mut) {
            if let Some(timeline) = object_at(room, "timeline") {
                timeline.entry("events").or_insert_with(|| json!([]));
                timeline.entry("limited").or_insert(Value::Bool(false));
            }
            for key in room_keys {
                if let Some(part) = object_at(room, key) {
                    part.entry("events").or_insert_with(|| json!([]));
                }
            }
        }
    }
}

/// The object under `key`, made empty when missing (or not an object).
fn object_at<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let value = map.entry(key).or_insert_with(|| json!({}));
    if !value.is_object() {
        *value = json!({});
    }
    value.as_object_mut()
}
