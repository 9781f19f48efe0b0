//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding sync
//! (MSC4186).

use axum::{Router, extract::State};
use ruma::api::client::sync::sync_events::v5;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<v5::Request, _, _>(router, sliding_sync)
}

async fn sliding_sync(
    State(services): State<AppState>,
    request: Ruma<v5::Request>,
) -> ApiResult<v5::Response> {
    let response = services.sliding_sync(request.requester()?, &request.body).await?;
    Ok(RumaResponse(response))
}
