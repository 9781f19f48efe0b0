//! `/openid/userinfo`, with which a third party (a widget) checks an OpenID token a client
//! gave it.

use axum::{Router, extract::State};
use rhizome_core::{Error, error::MatrixErrorKind};
use ruma::api::{
    IncomingRequest, Metadata, error::DeserializationError, federation::openid::get_openid_userinfo,
};

use crate::{ApiResult, AppState, Ruma, RumaResponse, routes::add};

pub(crate) fn routes(router: Router<AppState>) -> Router<AppState> {
    add::<UserInfoRequest, _, _>(router, openid_userinfo)
}

/// The request as ruma reads it, or `None` when it carries no token (which is then 401
/// `M_MISSING_TOKEN` rather than a bad parameter, as the endpoint is authenticated by it).
struct UserInfoRequest(Option<get_openid_userinfo::v1::Request>);

impl Metadata for UserInfoRequest {
    const METHOD: http::Method = <get_openid_userinfo::v1::Request as Metadata>::METHOD;
    const RATE_LIMITED: bool = <get_openid_userinfo::v1::Request as Metadata>::RATE_LIMITED;
    type Authentication = <get_openid_userinfo::v1::Request as Metadata>::Authentication;
    type PathBuilder = <get_openid_userinfo::v1::Request as Metadata>::PathBuilder;
    const PATH_BUILDER: Self::PathBuilder =
        <get_openid_userinfo::v1::Request as Metadata>::PATH_BUILDER;
}

impl IncomingRequest for UserInfoRequest {
    type EndpointError = <get_openid_userinfo::v1::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = get_openid_userinfo::v1::Response;

    fn try_from_http_request_inner(
        request: http::Request<&[u8]>,
        path_args: &[&str],
    ) -> Result<Self, DeserializationError> {
        let has_token = request
            .uri()
            .query()
            .is_some_and(|query| query.split('&').any(|pair| pair.starts_with("access_token=")));
        if !has_token {
            return Ok(Self(None));
        }
        get_openid_userinfo::v1::Request::try_from_http_request_inner(request, path_args)
            .map(|request| Self(Some(request)))
    }
}

async fn openid_userinfo(
    State(services): State<AppState>,
    request: Ruma<UserInfoRequest>,
) -> ApiResult<get_openid_userinfo::v1::Response> {
    let Some(body) = &request.body.0 else {
        return Err(Error::matrix(MatrixErrorKind::MissingToken, "No OpenID token given").into());
    };
    let user_id = services.openid_userinfo(&body.access_token).await?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(user_id)))
}
