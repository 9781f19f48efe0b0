//! Queries other servers make: `/query/directory` (a local alias to its room and the servers
//! in it) and `/query/profile` (a local user's display name and avatar, or one of them).

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::api::federation::query::{get_profile_information, get_room_information};
use serde_json::Value;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_room_information::v1::Request, _, _>(router, directory);
    add::<get_profile_information::v1::Request, _, _>(router, profile)
}

async fn directory(
    State(services): State<AppState>,
    request: Ruma<get_room_information::v1::Request>,
) -> ApiResult<get_room_information::v1::Response> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.server_name() {
        return Err(Error::not_found("That alias is not of this server").into());
    }
    let record = services
        .store
        .get_alias(alias)
        .await?
        .ok_or_else(|| Error::not_found("Room alias not found"))?;
    let mut servers = vec![services.owned_server_name()];
    servers.extend(services.room_servers(&record.room_id).await?);
    Ok(RumaResponse(get_room_information::v1::Response::new(record.room_id, servers)))
}

async fn profile(
    State(services): State<AppState>,
    request: Ruma<get_profile_information::v1::Request>,
) -> ApiResult<get_profile_information::v1::Response> {
    request.origin()?;
    let body = &request.body;
    let fields = services.profile_for_server(&body.user_id, body.field.as_ref()).await?;
    let mut response = get_profile_information::v1::Response::new();
    for (name, value) in fields {
        response.set(name.to_owned(), Value::String(value));
    }
    Ok(RumaResponse(response))
}
