//! `/sync`.

use std::time::Duration;

use axum::{Router, extract::State};
use rhizome_service::sync::SyncRequest;
use ruma::api::client::{filter::FilterDefinition, sync::sync_events};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<sync_events::v3::Request, _, _>(router, sync)
}

async fn sync(
    State(services): State<AppState>,
    request: Ruma<sync_events::v3::Request>,
) -> ApiResult<sync_events::v3::Response> {
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
    Ok(RumaResponse(response))
}
