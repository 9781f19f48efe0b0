//! Account data (global and per room, deleted as MSC3391 has it), room tags and filters.

use axum::{
    Json, Router,
    extract::State,
    response::{IntoResponse, Response},
};
use rhizome_core::Error;
use rhizome_service::Requester;
use ruma::{
    RoomId, UserId,
    api::auth_scheme::AccessToken,
    api::client::{
        config::{
            get_global_account_data, get_room_account_data, set_global_account_data,
            set_room_account_data,
        },
        filter::{create_filter, get_filter},
        tag::{create_tag, delete_tag, get_tags},
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    ApiResult, AppState, Ruma, RumaResponse, client::raw_endpoint::raw_endpoint, error::ApiError,
    routes::add,
};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_global_account_data::v3::Request, _, _>(router, get_global);
    let router = add::<set_global_account_data::v3::Request, _, _>(router, set_global);
    let router = add::<get_room_account_data::v3::Request, _, _>(router, get_room);
    let router = add::<set_room_account_data::v3::Request, _, _>(router, set_room);
    let router = add::<DeleteGlobal, _, _>(router, delete_global);
    let router = add::<DeleteRoom, _, _>(router, delete_room);
    let router = add::<get_tags::v3::Request, _, _>(router, tags);
    let router = add::<create_tag::v3::Request, _, _>(router, set_tag);
    let router = add::<delete_tag::v3::Request, _, _>(router, delete_tag);
    let router = add::<create_filter::v3::Request, _, _>(router, new_filter);
    add::<get_filter::v3::Request, _, _>(router, filter)
}

raw_endpoint!(
    /// `DELETE /user/{userId}/account_data/{type}` (MSC3391).
    DeleteGlobal,
    DELETE,
    AccessToken,
    "/_matrix/client/unstable/org.matrix.msc3391/user/{user_id}/account_data/{type}"
);
raw_endpoint!(
    /// `DELETE /user/{userId}/rooms/{roomId}/account_data/{type}` (MSC3391).
    DeleteRoom,
    DELETE,
    AccessToken,
    "/_matrix/client/unstable/org.matrix.msc3391/user/{user_id}/rooms/{room_id}/account_data/{type}"
);

/// The user named in the first path argument, who must be the requester.
fn own_path<'a, T>(request: &'a Ruma<T>, path_args: &[String]) -> Result<&'a Requester, ApiError> {
    let user_id = path_args
        .first()
        .and_then(|user| UserId::parse(user).ok())
        .ok_or_else(|| Error::invalid_param("Invalid user ID"))?;
    own(request, &user_id)
}

async fn delete_global(
    State(services): State<AppState>,
    request: Ruma<DeleteGlobal>,
) -> Result<Response, ApiError> {
    let requester = own_path(&request, &request.body.path_args)?;
    let data_type = request.body.path_args.get(1).map(String::as_str).unwrap_or_default();
    services.delete_account_data(requester, None, data_type).await?;
    Ok(Json(json!({})).into_response())
}

async fn delete_room(
    State(services): State<AppState>,
    request: Ruma<DeleteRoom>,
) -> Result<Response, ApiError> {
    let requester = own_path(&request, &request.body.path_args)?;
    let room_id = request
        .body
        .path_args
        .get(1)
        .and_then(|room| RoomId::parse(room).ok())
        .ok_or_else(|| Error::invalid_param("Invalid room ID"))?;
    let data_type = request.body.path_args.get(2).map(String::as_str).unwrap_or_default();
    services.delete_account_data(requester, Some(&room_id), data_type).await?;
    Ok(Json(json!({})).into_response())
}

/// The requester, who must be the user named in the path.
pub(crate) fn own<'a, T>(
    request: &'a Ruma<T>,
    user_id: &UserId,
) -> Result<&'a Requester, ApiError> {
    let requester = request.requester()?;
    if requester.user_id != user_id {
        return Err(Error::forbidden("You can only act on your own account").into());
    }
    Ok(requester)
}

fn raw<T>(value: &Value) -> Result<Raw<T>, ApiError> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value).map_err(Error::internal)?))
}

async fn get_global(
    State(services): State<AppState>,
    request: Ruma<get_global_account_data::v3::Request>,
) -> ApiResult<get_global_account_data::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let value =
        services.account_data(requester, None, &request.body.event_type.to_string()).await?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(raw(&value)?)))
}

async fn set_global(
    State(services): State<AppState>,
    request: Ruma<set_global_account_data::v3::Request>,
) -> ApiResult<set_global_account_data::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let content: Value = request
        .body
        .data
        .deserialize_as()
        .map_err(|_| Error::bad_json("Account data must be a JSON object"))?;
    services
        .set_account_data(requester, None, &request.body.event_type.to_string(), &content)
        .await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

async fn get_room(
    State(services): State<AppState>,
    request: Ruma<get_room_account_data::v3::Request>,
) -> ApiResult<get_room_account_data::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let value = services
        .account_data(requester, Some(&request.body.room_id), &request.body.event_type.to_string())
        .await?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(raw(&value)?)))
}

async fn set_room(
    State(services): State<AppState>,
    request: Ruma<set_room_account_data::v3::Request>,
) -> ApiResult<set_room_account_data::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let content: Value = request
        .body
        .data
        .deserialize_as()
        .map_err(|_| Error::bad_json("Account data must be a JSON object"))?;
    services
        .set_account_data(
            requester,
            Some(&request.body.room_id),
            &request.body.event_type.to_string(),
            &content,
        )
        .await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

async fn tags(
    State(services): State<AppState>,
    request: Ruma<get_tags::v3::Request>,
) -> ApiResult<get_tags::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let tags = services.room_tags(requester, &request.body.room_id).await?;
    let tags = serde_json::from_value(Value::Object(tags))
        .map_err(|_| Error::bug("stored tags do not parse"))?;
    Ok(RumaResponse(get_tags::v3::Response::new(tags)))
}

async fn set_tag(
    State(services): State<AppState>,
    request: Ruma<create_tag::v3::Request>,
) -> ApiResult<create_tag::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let info = serde_json::to_value(&request.body.tag_info).map_err(Error::internal)?;
    services.set_room_tag(requester, &request.body.room_id, &request.body.tag, Some(info)).await?;
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

async fn delete_tag(
    State(services): State<AppState>,
    request: Ruma<delete_tag::v3::Request>,
) -> ApiResult<delete_tag::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    services.set_room_tag(requester, &request.body.room_id, &request.body.tag, None).await?;
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}

async fn new_filter(
    State(services): State<AppState>,
    request: Ruma<create_filter::v3::Request>,
) -> ApiResult<create_filter::v3::Response> {
    let requester = own(&request, &request.body.user_id)?;
    let filter_id = services.create_filter(requester, &request.body.filter).await?;
    Ok(RumaResponse(create_filter::v3::Response::new(filter_id)))
}

async fn filter(
    State(services): State<AppState>,
    request: Ruma<get_filter::v3::Request>,
) -> ApiResult<get_filter::v3::Response> {
    own(&request, &request.body.user_id)?;
    let filter = services.filter(&request.body.user_id, &request.body.filter_id).await?;
    Ok(RumaResponse(get_filter::v3::Response::new(filter)))
}
