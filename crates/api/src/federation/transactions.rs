//! `PUT /_matrix/federation/v1/send/{txnId}`: another server's transaction of PDUs and EDUs.

use axum::{Router, extract::State};
use ruma::api::federation::transactions::send_transaction_message;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<send_transaction_message::v1::Request, _, _>(router, send_transaction)
}

async fn send_transaction(
    State(services): State<AppState>,
    request: Ruma<send_transaction_message::v1::Request>,
) -> ApiResult<send_transaction_message::v1::Response> {
    let origin = request.origin()?.clone();
    let body = request.body;
    if body.origin != origin {
        return Err(rhizome_core::Error::forbidden(
            "The transaction's origin is not the server that sent it",
        )
        .into());
    }
    let edus = body.edus.into_iter().map(|edu| edu.into_json()).collect();
    let results = services
        .receive_transaction(&origin, body.transaction_id.as_str(), body.pdus, edus)
        .await?;
    Ok(RumaResponse(send_transaction_message::v1::Response::new(results)))
}
