//! Profiles (display name, avatar) and the user directory.

use axum::{Router, extract::State};
use rhizome_core::Error;
use ruma::{
    api::client::{
        profile::{delete_profile_field, get_profile, get_profile_field, set_profile_field},
        user_directory::search_users,
    },
    profile::{ProfileFieldName, ProfileFieldValue},
};
use serde_json::Value;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    let router = add::<get_profile::v3::Request, _, _>(router, profile);
    let router = add::<get_profile_field::v3::Request, _, _>(router, get_field);
    let router = add::<set_profile_field::v3::Request, _, _>(router, set_field);
    let router = add::<delete_profile_field::v3::Request, _, _>(router, delete_field);
    add::<search_users::v3::Request, _, _>(router, search)
}

async fn profile(
    State(services): State<AppState>,
    request: Ruma<get_profile::v3::Request>,
) -> ApiResult<get_profile::v3::Response> {
    let profile = services.user_profile(&request.body.user_id).await?;
    let mut data = ruma::profile::UserProfile::new();
    if let Some(name) = profile.displayname {
        data.set("displayname".to_owned(), Value::String(name));
    }
    if let Some(avatar) = profile.avatar_url {
        data.set("avatar_url".to_owned(), Value::String(avatar));
    }
    let mut response = get_profile::v3::Response::new();
    response.data = data;
    Ok(RumaResponse(response))
}

async fn get_field(
    State(services): State<AppState>,
    request: Ruma<get_profile_field::v3::Request>,
) -> ApiResult<get_profile_field::v3::Response> {
    let profile = services.user_profile(&request.body.user_id).await?;
    let value = match request.body.field {
        ProfileFieldName::DisplayName => profile.displayname.map(ProfileFieldValue::DisplayName),
        ProfileFieldName::AvatarUrl => {
            profile.avatar_url.map(|url| ProfileFieldValue::AvatarUrl(url.into()))
        }
        _ => None,
    };
    let value = value.ok_or_else(|| Error::not_found("That profile field is not set"))?;
    let mut response = get_profile_field::v3::Response::default();
    response.value = Some(value);
    Ok(RumaResponse(response))
}

async fn set_field(
    State(services): State<AppState>,
    request: Ruma<set_profile_field::v3::Request>,
) -> ApiResult<set_profile_field::v3::Response> {
    let requester = request.requester()?;
    if request.body.user_id != requester.user_id {
        return Err(Error::forbidden("You can only change your own profile").into());
    }
    match &request.body.value {
        ProfileFieldValue::DisplayName(name) => {
            services
                .set_displayname(
                    requester,
                    Some(name).filter(|name| !name.is_empty()).map(String::as_str),
                )
                .await?
        }
        ProfileFieldValue::AvatarUrl(url) => {
            services.set_avatar_url(requester, Some(url.as_str())).await?
        }
        _ => {
            return Err(Error::matrix(
                rhizome_core::error::MatrixErrorKind::Unrecognized,
                "Only displayname and avatar_url are supported",
            )
            .into());
        }
    }
    Ok(RumaResponse(set_profile_field::v3::Response::new()))
}

async fn delete_field(
    State(services): State<AppState>,
    request: Ruma<delete_profile_field::v3::Request>,
) -> ApiResult<delete_profile_field::v3::Response> {
    let requester = request.requester()?;
    if request.body.user_id != requester.user_id {
        return Err(Error::forbidden("You can only change your own profile").into());
    }
    match request.body.field {
        ProfileFieldName::DisplayName => services.set_displayname(requester, None).await?,
        ProfileFieldName::AvatarUrl => services.set_avatar_url(requester, None).await?,
        _ => {}
    }
    Ok(RumaResponse(delete_profile_field::v3::Response::new()))
}

async fn search(
    State(services): State<AppState>,
    request: Ruma<search_users::v3::Request>,
) -> ApiResult<search_users::v3::Response> {
    let requester = request.requester()?;
    let limit = usize::try_from(u64::from(request.body.limit)).unwrap_or(50).clamp(1, 100);
    let found = services
        .search_user_directory(&requester.user_id, &request.body.search_term, limit + 1)
        .await?;
    let limited = found.len() > limit;
    let results = found
        .into_iter()
        .take(limit)
        .map(|user| {
            let mut result = search_users::v3::User::new(user.user_id);
            result.display_name = user.displayname;
            result.avatar_url = user.avatar_url.map(Into::into);
            result
        })
        .collect();
    let response = search_users::v3::Response::new(results, limited);
    Ok(RumaResponse(response))
}
