//! Memberships across servers, as a resident of a room: `make_join`/`send_join`,
//! `make_leave`/`send_leave`, and invites of this server's users (`invite` v2).

use axum::{Router, extract::State};
use ruma::{
    RoomVersionId,
    api::federation::membership::{
        RawStrippedState, create_invite, create_join_event, create_leave_event, prepare_join_event,
        prepare_leave_event,
    },
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<prepare_join_event::v1::Request, _, _>(router, make_join);
    let router = add::<create_join_event::v2::Request, _, _>(router, send_join);
    let router = add::<prepare_leave_event::v1::Request, _, _>(router, make_leave);
    let router = add::<create_leave_event::v2::Request, _, _>(router, send_leave);
    add::<create_invite::v2::Request, _, _>(router, invite)
}

async fn make_join(
    State(services): State<AppState>,
    request: Ruma<prepare_join_event::v1::Request>,
) -> ApiResult<prepare_join_event::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    // Without `ver`, a server supports room version 1 only.
    let supported = if body.ver.is_empty() { vec![RoomVersionId::V1] } else { body.ver };
    let (version, event) = services
        .membership_template(&origin, &body.room_id, &body.user_id, "join", Some(&supported))
        .await?;
    let mut response = prepare_join_event::v1::Response::new(event);
    response.room_version = Some(version);
    Ok(RumaResponse(response))
}

async fn send_join(
    State(services): State<AppState>,
    request: Ruma<create_join_event::v2::Request>,
) -> ApiResult<create_join_event::v2::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let accepted = services
        .receive_membership(&origin, &body.room_id, &body.event_id, &body.pdu, "join")
        .await?;
    let vouched = accepted.json().get() != body.pdu.get();
    let answer = services.join_answer(&accepted, vouched).await?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = answer.state;
    room_state.auth_chain = answer.auth_chain;
    room_state.event = answer.event;
    room_state.servers_in_room = Some(answer.servers_in_room);
    Ok(RumaResponse(create_join_event::v2::Response::new(room_state)))
}

async fn make_leave(
    State(services): State<AppState>,
    request: Ruma<prepare_leave_event::v1::Request>,
) -> ApiResult<prepare_leave_event::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let (version, event) =
        services.membership_template(&origin, &body.room_id, &body.user_id, "leave", None).await?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(Some(version), event)))
}

async fn send_leave(
    State(services): State<AppState>,
    request: Ruma<create_leave_event::v2::Request>,
) -> ApiResult<create_leave_event::v2::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    services.receive_membership(&origin, &body.room_id, &body.event_id, &body.pdu, "leave").await?;
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

async fn invite(
    State(services): State<AppState>,
    request: Ruma<create_invite::v2::Request>,
) -> ApiResult<create_invite::v2::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    #[allow(deprecated)] // Stripped events are still accepted from older servers.
    let state: Vec<Box<serde_json::value::RawValue>> = body
        .invite_room_state
        .into_iter()
        .map(|state| match state {
            RawStrippedState::Pdu(json) => json,
            RawStrippedState::Stripped(raw) => raw.into_json(),
            _ => Box::<serde_json::value::RawValue>::default(),
        })
        .collect();
    let signed = services
        .receive_invite(
            &origin,
            &body.room_id,
            &body.event_id,
            &body.room_version,
            &body.event,
            &state,
        )
        .await?;
    Ok(RumaResponse(create_invite::v2::Response::new(signed.json().to_owned())))
}
