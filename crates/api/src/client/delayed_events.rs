//! Delayed events (MSC4140) on their unstable paths: `?org.matrix.msc4140.delay=` on `/send`
//! and `/state` (read by `events`), the list of a user's scheduled events, one of them, and
//! restarting, sending or cancelling one: with an access token (the action in the body), or with
//! the delay ID alone (the action in the path), each rate limited (per user, per client address).

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_core::Error;
use rhizome_service::{
    rate_limit::Action,
    rooms::{NewEvent, delayed::DelayedAction},
};
use rhizome_storage::DelayedEventRecord;
use ruma::api::client::delayed_events::{
    get_all_delayed_events, get_delayed_event, send_delayed_event, update_delayed_event,
};
use serde_json::json;

use crate::{
    ApiResult, AppState, Ruma, RumaResponse, client::events::content_of, error::ApiError,
    routes::add,
};

/// The query parameter that asks for a delay.
const DELAY_PARAMETER: &str = "org.matrix.msc4140.delay";

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_all_delayed_events::unstable::Request, _, _>(router, list);
    let router = add::<get_delayed_event::unstable::Request, _, _>(router, one);
    let router = add::<send_delayed_event::unstable::Request, _, _>(router, schedule);
    let router = add::<update_delayed_event::unstable_v1::Request, _, _>(router, update);
    add::<update_delayed_event::unstable_v2::Request, _, _>(router, update_by_id)
}

/// The delay a `/send` or `/state` request asks for, in milliseconds, if any.
pub(crate) fn requested_delay(query: Option<&str>) -> Result<Option<u64>, Error> {
    let Some(query) = query else { return Ok(None) };
    let parameters = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{query}").parse().map_err(|_| Error::invalid_param("Malformed query"))?,
    )
    .map_err(|_| Error::invalid_param("Malformed query"))?;
    let Some((_, value)) = parameters.0.into_iter().find(|(key, _)| key == DELAY_PARAMETER) else {
        return Ok(None);
    };
    value
        .parse::<u64>()
        .map(Some)
        .map_err(|_| Error::invalid_param("The delay must be a whole number of milliseconds"))
}

/// A delayed event as clients see it: MSC4140's fields under their first names and their
/// current ones (`delay_ms`, `delayed_since_ts`), as Synapse gives both.
fn data(record: DelayedEventRecord) -> Result<serde_json::Value, Error> {
    let running_since = record.send_ts.saturating_sub(record.delay_ms).max(0);
    let delay = record.delay_ms.max(0);
    let content: serde_json::Value =
        serde_json::from_str(&record.content).map_err(Error::internal)?;
    let mut data = json!({
        "delay_id": record.delay_id,
        "room_id": record.room_id,
        "type": record.event_type,
        "content": content,
        "delay": delay,
        "delay_ms": delay,
        "running_since": running_since,
        "delayed_since_ts": running_since,
    });
    if let Some(state_key) = record.state_key {
        data["state_key"] = json!(state_key);
    }
    Ok(data)
}

async fn list(
    State(services): State<AppState>,
    request: Ruma<get_all_delayed_events::unstable::Request>,
) -> Result<Response, ApiError> {
    let records = services.delayed_events(&request.requester()?.user_id).await?;
    let events = records.into_iter().map(data).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "delayed_events": events })).into_response())
}

async fn one(
    State(services): State<AppState>,
    request: Ruma<get_delayed_event::unstable::Request>,
) -> Result<Response, ApiError> {
    let record =
        services.delayed_event(&request.requester()?.user_id, &request.body.delay_id).await?;
    Ok(Json(data(record)?).into_response())
}

async fn schedule(
    State(services): State<AppState>,
    request: Ruma<send_delayed_event::unstable::Request>,
) -> ApiResult<send_delayed_event::unstable::Response> {
    let requester = request.requester()?;
    let body = &request.body;
    services.rate_limiter.check_sending(requester.user_id.as_str(), &request.client_key)?;
    let event = NewEvent {
        kind: body.event_type.clone(),
        content: content_of(&body.content)?,
        state_key: body.state_key.clone(),
        redacts: None,
    };
    crate::client::events::check_client_event(requester, &event)?;
    let delay_ms = u64::try_from(body.delay.as_millis()).unwrap_or(u64::MAX);
    let txn = Some(body.txn_id.as_str());
    let delay_id =
        services.schedule_delayed_event(requester, &body.room_id, event, delay_ms, txn).await?;
    Ok(RumaResponse(send_delayed_event::unstable::Response::new(delay_id)))
}

async fn update(
    State(services): State<AppState>,
    request: Ruma<update_delayed_event::unstable_v1::Request>,
) -> ApiResult<update_delayed_event::unstable_v1::Response> {
    let requester = request.requester()?;
    services.rate_limiter.check(Action::DelayedEventManagement, requester.user_id.as_str())?;
    let action = DelayedAction::parse(request.body.action.as_str())?;
    services.update_delayed_event(Some(&requester.user_id), &request.body.delay_id, action).await?;
    Ok(RumaResponse(update_delayed_event::unstable_v1::Response::new()))
}

async fn update_by_id(
    State(services): State<AppState>,
    request: Ruma<update_delayed_event::unstable_v2::Request>,
) -> ApiResult<update_delayed_event::unstable_v2::Response> {
    // Before the delay ID is looked up: it is all this endpoint asks for, so guesses are
    // limited too.
    services.rate_limiter.check(Action::DelayedEventManagementPerAddress, &request.client_key)?;
    let action = DelayedAction::parse(request.body.action.as_str())?;
    services.update_delayed_event(None, &request.body.delay_id, action).await?;
    Ok(RumaResponse(update_delayed_event::unstable_v2::Response::new()))
}
