//! What calls, widgets and bridges ask the server for: TURN credentials for calls, OpenID
//! tokens that widgets check through the federation API, and third-party protocols (none:
//! Rhizome runs no bridges).

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_service::users::openid::OPENID_TOKEN_LIFETIME;
use ruma::{
    api::client::{
        account::request_openid_token, thirdparty::get_protocols, voip::get_turn_server_info,
    },
    authentication::TokenType,
};
use serde_json::json;

use crate::{ApiResult, AppState, Ruma, RumaResponse, error::ApiError, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_turn_server_info::v3::Request, _, _>(router, turn_server);
    let router = add::<request_openid_token::v3::Request, _, _>(router, openid_token);
    add::<get_protocols::v3::Request, _, _>(router, protocols)
}

/// TURN credentials; with no TURN server configured, an empty object, as Synapse answers and
/// clients expect (they then call without a relay).
async fn turn_server(
    State(services): State<AppState>,
    request: Ruma<get_turn_server_info::v3::Request>,
) -> Result<Response, ApiError> {
    let requester = request.requester()?;
    Ok(match services.turn_credentials(&requester.user_id).await? {
        Some(credentials) => RumaResponse(get_turn_server_info::v3::Response::new(
            credentials.username,
            credentials.password,
            credentials.uris,
            credentials.ttl,
        ))
        .into_response(),
        None => Json(json!({})).into_response(),
    })
}

async fn openid_token(
    State(services): State<AppState>,
    request: Ruma<request_openid_token::v3::Request>,
) -> ApiResult<request_openid_token::v3::Response> {
    let token = services.create_openid_token(request.requester()?, &request.body.user_id).await?;
    Ok(RumaResponse(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        services.owned_server_name(),
        OPENID_TOKEN_LIFETIME,
    )))
}

async fn protocols(
    request: Ruma<get_protocols::v3::Request>,
) -> ApiResult<get_protocols::v3::Response> {
    request.requester()?;
    Ok(RumaResponse(get_protocols::v3::Response::new(BTreeMap::new())))
}
