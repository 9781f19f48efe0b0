//! Reporting events and rooms to the server's administrator.

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::api::client::room::{report_content, report_room};
use serde_json::Value;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<report_content::v3::Request, _, _>(router, report_event);
    add::<report_room::v3::Request, _, _>(router, report_room)
}

async fn report_event(
    State(services): State<AppState>,
    request: Ruma<report_content::v3::Request>,
) -> ApiResult<report_content::v3::Response> {
    // ruma's request type has no `score`: read it from the body.
    let body: Value = serde_json::from_slice(&request.json_body).unwrap_or(Value::Null);
    let score = match body.get("score") {
        None | Some(Value::Null) => None,
        Some(value) => {
            Some(value.as_i64().ok_or_else(|| Error::bad_json("`score` must be an integer"))?)
        }
    };
    services
        .report_event(
            request.requester()?,
            &request.body.room_id,
            &request.body.event_id,
            request.body.reason.as_deref(),
            score,
        )
        .await?;
    Ok(RumaResponse(report_content::v3::Response::new()))
}

async fn report_room(
    State(services): State<AppState>,
    request: Ruma<report_room::v3::Request>,
) -> ApiResult<report_room::v3::Response> {
    services
        .report_room(request.requester()?, &request.body.room_id, Some(&request.body.reason))
        .await?;
    Ok(RumaResponse(report_room::v3::Response::new()))
}
