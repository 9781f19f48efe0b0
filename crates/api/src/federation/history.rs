//! A room's history for other servers: `/event`, `/state`, `/state_ids`, `/event_auth`,
//! `/backfill`, `/get_missing_events` and `/timestamp_to_event`. What each may have is the
//! service's to judge (the room's server ACL, then history visibility for that server).

use axum::{Router, extract::State};
use rhizome_storage::Direction;
use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::{
        Direction as RumaDirection,
        federation::{
            authorization::get_event_authorization,
            backfill::get_backfill,
            event::{
                get_event, get_event_by_timestamp, get_missing_events, get_room_state,
                get_room_state_ids,
            },
        },
    },
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_event::v1::Request, _, _>(router, event);
    let router = add::<get_room_state::v1::Request, _, _>(router, state);
    let router = add::<get_room_state_ids::v1::Request, _, _>(router, state_ids);
    let router = add::<get_event_authorization::v1::Request, _, _>(router, event_auth);
    let router = add::<get_backfill::v1::Request, _, _>(router, backfill);
    let router = add::<get_missing_events::v1::Request, _, _>(router, missing_events);
    add::<get_event_by_timestamp::v1::Request, _, _>(router, timestamp_to_event)
}

async fn event(
    State(services): State<AppState>,
    request: Ruma<get_event::v1::Request>,
) -> ApiResult<get_event::v1::Response> {
    let origin = request.origin()?.clone();
    let pdu = services.serve_event(&origin, &request.body.event_id).await?;
    Ok(RumaResponse(get_event::v1::Response::new(
        services.owned_server_name(),
        MilliSecondsSinceUnixEpoch::now(),
        pdu,
    )))
}

async fn state(
    State(services): State<AppState>,
    request: Ruma<get_room_state::v1::Request>,
) -> ApiResult<get_room_state::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let answer = services.serve_state(&origin, &body.room_id, &body.event_id).await?;
    Ok(RumaResponse(get_room_state::v1::Response::new(answer.auth_chain, answer.state)))
}

async fn state_ids(
    State(services): State<AppState>,
    request: Ruma<get_room_state_ids::v1::Request>,
) -> ApiResult<get_room_state_ids::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let answer = services.serve_state_ids(&origin, &body.room_id, &body.event_id).await?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(answer.auth_chain, answer.state)))
}

async fn event_auth(
    State(services): State<AppState>,
    request: Ruma<get_event_authorization::v1::Request>,
) -> ApiResult<get_event_authorization::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let chain = services.serve_event_auth(&origin, &body.room_id, &body.event_id).await?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(chain)))
}

async fn backfill(
    State(services): State<AppState>,
    request: Ruma<get_backfill::v1::Request>,
) -> ApiResult<get_backfill::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let limit = usize::try_from(body.limit).unwrap_or(usize::MAX);
    let pdus = services.serve_backfill(&origin, &body.room_id, &body.v, limit).await?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        services.owned_server_name(),
        MilliSecondsSinceUnixEpoch::now(),
        pdus,
    )))
}

async fn missing_events(
    State(services): State<AppState>,
    request: Ruma<get_missing_events::v1::Request>,
) -> ApiResult<get_missing_events::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let events = services
        .serve_missing_events(
            &origin,
            &body.room_id,
            &body.earliest_events,
            &body.latest_events,
            usize::try_from(body.limit).unwrap_or(usize::MAX),
            body.min_depth.into(),
        )
        .await?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events)))
}

async fn timestamp_to_event(
    State(services): State<AppState>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> ApiResult<get_event_by_timestamp::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let direction = match body.dir {
        RumaDirection::Forward => Direction::Forward,
        RumaDirection::Backward => Direction::Backward,
    };
    let ts = rhizome_core::clock::millis_from_ts(body.ts);
    let (event_id, origin_server_ts) =
        services.serve_timestamp_to_event(&origin, &body.room_id, ts, direction).await?;
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(event_id, origin_server_ts)))
}
