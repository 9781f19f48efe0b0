//! Knocks of other servers' users on rooms here: `make_knock` and `send_knock`.

use axum::{Router, extract::State};
use ruma::api::federation::membership::{create_knock_event, prepare_knock_event};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<prepare_knock_event::v1::Request, _, _>(router, make_knock);
    add::<create_knock_event::v1::Request, _, _>(router, send_knock)
}

async fn make_knock(
    State(services): State<AppState>,
    request: Ruma<prepare_knock_event::v1::Request>,
) -> ApiResult<prepare_knock_event::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let (version, event) =
        services.serve_make_knock(&origin, &body.room_id, &body.user_id, &body.ver).await?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(version, event)))
}

async fn send_knock(
    State(services): State<AppState>,
    request: Ruma<create_knock_event::v1::Request>,
) -> ApiResult<create_knock_event::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    let state =
        services.serve_send_knock(&origin, &body.room_id, &body.event_id, &body.pdu).await?;
    Ok(RumaResponse(create_knock_event::v1::Response::new(state)))
}
