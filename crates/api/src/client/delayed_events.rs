//! Delayed events (MSC4140) on their unstable paths: `?org.matrix.msc4140.delay=` on `/send`
//! and `/state` (read by `events`), the list of a user's scheduled events, one of them, and
//! restarting, sending or cancelling one: with an access token (the action in the body), or with
//! the delay ID alone (the action in the path).

use axum::{Router, extract::State};
use rhizome_core::{Error, clock::ts_from_millis};
use rhizome_service::rooms::{NewEvent, delayed::DelayedAction};
use rhizome_storage::DelayedEventRecord;
use ruma::{
    api::client::delayed_events::{
        DelayedEventData, get_all_delayed_events, get_delayed_event, send_delayed_event,
        update_delayed_event,
    },
    events::TimelineEventType,
    serde::Raw,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, client::events::content_of, routes::add};

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

fn data(record: DelayedEventRecord) -> Result<DelayedEventData, Error> {
    let delay = std::time::Duration::from_millis(record.delay_ms.max(0).unsigned_abs());
    Ok(DelayedEventData::new(
        record.delay_id,
        record.room_id,
        TimelineEventType::from(record.event_type),
        record.state_key,
        Raw::from_json_string(record.content).map_err(Error::internal)?,
        delay,
        ts_from_millis(record.send_ts.saturating_sub(record.delay_ms)),
    ))
}

async fn list(
    State(services): State<AppState>,
    request: Ruma<get_all_delayed_events::unstable::Request>,
) -> ApiResult<get_all_delayed_events::unstable::Response> {
    let records = services.delayed_events(&request.requester()?.user_id).await?;
    let events = records.into_iter().map(data).collect::<Result<Vec<_>, _>>()?;
    Ok(RumaResponse(get_all_delayed_events::unstable::Response::new(events)))
}

async fn one(
    State(services): State<AppState>,
    request: Ruma<get_delayed_event::unstable::Request>,
) -> ApiResult<get_delayed_event::unstable::Response> {
    let record =
        services.delayed_event(&request.requester()?.user_id, &request.body.delay_id).await?;
    Ok(RumaResponse(get_delayed_event::unstable::Response::new(data(record)?)))
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
    let action = DelayedAction::parse(request.body.action.as_str())?;
    services.update_delayed_event(Some(&requester.user_id), &request.body.delay_id, action).await?;
    Ok(RumaResponse(update_delayed_event::unstable_v1::Response::new()))
}

async fn update_by_id(
    State(services): State<AppState>,
    request: Ruma<update_delayed_event::unstable_v2::Request>,
) -> ApiResult<update_delayed_event::unstable_v2::Response> {
    let action = DelayedAction::parse(request.body.action.as_str())?;
    services.update_delayed_event(None, &request.body.delay_id, action).await?;
    Ok(RumaResponse(update_delayed_event::unstable_v2::Response::new()))
}
