//! `PUT /sendToDevice/{eventType}/{txnId}`.

use axum::{Router, extract::State};
use ruma::api::client::to_device::send_event_to_device;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<send_event_to_device::v3::Request, _, _>(router, send)
}

async fn send(
    State(services): State<AppState>,
    request: Ruma<send_event_to_device::v3::Request>,
) -> ApiResult<send_event_to_device::v3::Response> {
    let body = &request.body;
    services
        .send_to_device(
            request.requester()?,
            &body.event_type.to_string(),
            body.txn_id.as_str(),
            &body.messages,
        )
        .await?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}
