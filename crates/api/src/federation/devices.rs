//! Device lists and encryption keys of this server's users, for other servers:
//! `GET /user/devices/{userId}`, `POST /user/keys/query` and `POST /user/keys/claim`
//! (Server-Server API, "Device Management" and "End-to-End Encryption").

use axum::{Router, extract::State};
use ruma::api::federation::{
    device::get_devices,
    keys::{claim_keys, get_keys},
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_devices::v1::Request, _, _>(router, user_devices);
    let router = add::<get_keys::v1::Request, _, _>(router, query_keys);
    add::<claim_keys::v1::Request, _, _>(router, claim_keys)
}

async fn user_devices(
    State(services): State<AppState>,
    request: Ruma<get_devices::v1::Request>,
) -> ApiResult<get_devices::v1::Response> {
    request.origin()?;
    Ok(RumaResponse(services.federation_user_devices(&request.body.user_id).await?))
}

async fn query_keys(
    State(services): State<AppState>,
    request: Ruma<get_keys::v1::Request>,
) -> ApiResult<get_keys::v1::Response> {
    request.origin()?;
    Ok(RumaResponse(services.federation_query_keys(&request.body.device_keys).await?))
}

async fn claim_keys(
    State(services): State<AppState>,
    request: Ruma<claim_keys::v1::Request>,
) -> ApiResult<claim_keys::v1::Response> {
    request.origin()?;
    Ok(RumaResponse(services.federation_claim_keys(&request.body.one_time_keys).await?))
}
