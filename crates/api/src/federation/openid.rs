//! `/openid/userinfo`, with which a third party (a widget) checks an OpenID token a client
//! gave it.

use axum::{Router, extract::State};
use ruma::api::federation::openid::get_openid_userinfo;

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<get_openid_userinfo::v1::Request, _, _>(router, openid_userinfo)
}

async fn openid_userinfo(
    State(services): State<AppState>,
    request: Ruma<get_openid_userinfo::v1::Request>,
) -> ApiResult<get_openid_userinfo::v1::Response> {
    let user_id = services.openid_userinfo(&request.body.access_token).await?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(user_id)))
}
