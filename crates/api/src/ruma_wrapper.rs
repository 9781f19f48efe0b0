//! `Ruma<T>`: an axum extractor that reads the body (within limits), checks it is JSON,
//! authenticates the request as the endpoint's metadata requires, and parses it into ruma's
//! request type; and `RumaResponse<T>`, which serialises ruma's response type.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, FromRequest, RawPathParams, Request},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use http::{StatusCode, header};
use rhizome_core::{Error, error::MatrixErrorKind};
use rhizome_service::{Requester, Services};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponse, OutgoingResponseExt,
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
        NoAuthentication,
    },
    error::{DeserializationError, FromHttpRequestError},
    path_builder::PathBuilder,
};

use crate::error::ApiError;

/// The shared state handlers get.
pub type AppState = Arc<Services>;

/// How an endpoint is authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRequirement {
    /// No access token.
    None,
    /// An access token if the client sends one.
    Optional,
    /// An access token is required.
    Required,
    /// Another server's `X-Matrix` signature is required.
    Server,
}

/// Maps ruma's authentication schemes to what Rhizome checks.
pub trait AuthKind {
    /// The requirement.
    const REQUIREMENT: AuthRequirement;
}

impl AuthKind for NoAuthentication {
    const REQUIREMENT: AuthRequirement = AuthRequirement::None;
}
impl AuthKind for NoAccessToken {
    const REQUIREMENT: AuthRequirement = AuthRequirement::None;
}
impl AuthKind for AccessToken {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Required;
}
impl AuthKind for AccessTokenOptional {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Optional;
}
impl AuthKind for AppserviceToken {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Required;
}
impl AuthKind for AppserviceTokenOptional {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Optional;
}
impl AuthKind for ruma::api::federation::authentication::ServerSignatures {
    const REQUIREMENT: AuthRequirement = AuthRequirement::Server;
}

/// A parsed, authenticated Matrix request.
pub struct Ruma<T> {
    /// The request.
    pub body: T,
    /// Who sent it, when authenticated.
    pub requester: Option<Requester>,
    /// The server that sent it, for federation requests (verified).
    pub origin: Option<ruma::OwnedServerName>,
    /// The client's address, for rate limiting only (never stored or logged).
    pub client_key: String,
    /// The raw JSON body, for endpoints that keep fields ruma's types drop.
    pub json_body: Bytes,
}

impl<T> Ruma<T> {
    /// The verified origin of a federation request.
    pub fn origin(&self) -> Result<&ruma::OwnedServerName, ApiError> {
        self.origin.as_ref().ok_or_else(|| {
            ApiError(Error::matrix(MatrixErrorKind::Unauthorized, "Missing X-Matrix authorization"))
        })
    }

    /// The requester of an endpoint that requires authentication.
    pub fn requester(&self) -> Result<&Requester, ApiError> {
        self.requester.as_ref().ok_or_else(|| {
            ApiError(Error::matrix(MatrixErrorKind::MissingToken, "Missing access token"))
        })
    }
}

/// The access token of a request: `Authorization: Bearer …` or `?access_token=`.
fn access_token(request: &http::request::Parts) -> Option<String> {
    if let Some(value) =
        request.headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_owned());
    }
    request.uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token").then(|| value.to_owned())
    })
}

/// The smallest limit on federation request bodies.
const FEDERATION_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// The largest body accepted on this path.
fn body_limit(services: &Services, path: &str) -> usize {
    if path.starts_with("/_matrix/federation/") {
        // A transaction carries up to 50 PDUs of 64 KiB each, and 100 EDUs.
        services.config.limits.max_request_bytes.max(FEDERATION_BODY_LIMIT)
    } else if path.starts_with("/_matrix/media/") {
        usize::try_from(services.config.media.max_upload_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(64 * 1024)
    } else {
        services.config.limits.max_request_bytes
    }
}

impl<T> FromRequest<AppState> for Ruma<T>
where
    T: IncomingRequest + Send,
    T::Authentication: AuthKind,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, services: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        if let Some(route) = parts.extensions.get::<axum::extract::MatchedPath>() {
            tracing::Span::current().record("route", route.as_str());
        }
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
        let client_key =
            client_address(peer, &parts.headers, &services.config.rate_limits.trusted_proxies)
                .map_or_else(|| "unknown".to_owned(), |address| address.to_string());
        let path_params =
            <RawPathParams as axum::extract::FromRequestParts<AppState>>::from_request_parts(
                &mut parts, services,
            )
            .await
            .map_err(|_| Error::invalid_param("Invalid characters in the request path"))?;
        let mut path_args: Vec<String> =
            path_params.iter().map(|(_, value)| value.to_owned()).collect();
        // Endpoints with an optional last segment (an empty state key) are routed without it.
        let expected = T::PATH_BUILDER._path_parameters().len();
        while path_args.len() < expected {
            path_args.push(String::new());
        }

        let limit = body_limit(services, parts.uri.path());
        let bytes = axum::body::to_bytes(Body::new(body), limit)
            .await
            .map_err(|_| Error::matrix(MatrixErrorKind::TooLarge, "Request body too large"))?;
        let is_json_endpoint = !parts.uri.path().starts_with("/_matrix/media/");
        // Not JSON, or JSON with bytes that are not UTF-8 (which skipping over strings misses).
        if is_json_endpoint
            && !bytes.is_empty()
            && (std::str::from_utf8(&bytes).is_err()
                || serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err())
        {
            return Err(Error::matrix(
                MatrixErrorKind::NotJson,
                "The request body is not valid JSON",
            )
            .into());
        }

        let origin = if T::Authentication::REQUIREMENT == AuthRequirement::Server {
            let origin =
                crate::federation::auth::authenticate_server(services, &parts, &bytes).await?;
            services.destination_contacted(&origin).await;
            Some(origin)
        } else {
            None
        };
        let requester = match (T::Authentication::REQUIREMENT, access_token(&parts)) {
            (AuthRequirement::None | AuthRequirement::Server, _)
            | (AuthRequirement::Optional, None) => None,
            (AuthRequirement::Required | AuthRequirement::Optional, Some(token)) => {
                Some(services.authenticate(&token).await?)
            }
            (AuthRequirement::Required, None) => {
                return Err(
                    Error::matrix(MatrixErrorKind::MissingToken, "Missing access token").into()
                );
            }
        };

        let http_request = http::Request::from_parts(parts, bytes.as_ref());
        let arguments: Vec<&str> = path_args.iter().map(String::as_str).collect();
        let body =
            T::try_from_http_request(http_request, &arguments).map_err(|error| match error {
                // Query strings and path segments are parameters; the body is JSON.
                FromHttpRequestError::Deserialization(
                    error @ (DeserializationError::Query(_) | DeserializationError::Ident(_)),
                ) => Error::invalid_param(format!("Invalid parameter: {error}")),
                FromHttpRequestError::Deserialization(error) => {
                    Error::bad_json(format!("Invalid request: {error}"))
                }
                FromHttpRequestError::MethodMismatch { .. } => Error::matrix(
                    MatrixErrorKind::Unrecognized,
                    "Method not allowed on this endpoint",
                ),
                _ => Error::bad_json("Invalid request"),
            })?;
        Ok(Self { body, requester, origin, client_key, json_body: bytes })
    }
}

/// The client's address, for rate limiting only: the peer's, unless the peer is a trusted
/// reverse proxy, in which case the last address in `X-Forwarded-For` that is not itself a
/// trusted proxy (the one the outermost trusted proxy saw).
fn client_address(
    peer: Option<IpAddr>,
    headers: &http::HeaderMap,
    trusted_proxies: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|address| address.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    for address in forwarded.into_iter().rev() {
        match address {
            Some(address) if trusted_proxies.contains(&address) => continue,
            Some(address) => return Some(address),
            // An unparsable hop: nothing before it can be trusted.
            None => return Some(peer),
        }
    }
    Some(peer)
}

/// A ruma response on its way to the client.
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                if !parts.headers.contains_key(header::CONTENT_TYPE) {
                    parts.headers.insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                }
                Response::from_parts(parts, Body::from(body))
            }
            Err(error) => {
                tracing::error!(%error, "could not serialise a response");
                (StatusCode::INTERNAL_SERVER_ERROR, "").into_response()
            }
        }
    }
}

/// What handlers return.
pub type ApiResult<T> = Result<RumaResponse<T>, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", http::HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_client_address_is_the_peer_unless_a_trusted_proxy_forwards() {
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let client: IpAddr = "203.0.113.9".parse().unwrap();
        let forged = headers(&["198.51.100.1"]);
        // Untrusted peers cannot choose their address.
        assert_eq!(client_address(Some(client), &forged, &[proxy]), Some(client));
        assert_eq!(client_address(Some(proxy), &forged, &[]), Some(proxy));
        // A trusted proxy's header is read from the right, skipping trusted hops; what the
        // client itself put in front cannot be trusted.
        let chain = headers(&["198.51.100.1, 203.0.113.9", "127.0.0.1"]);
        assert_eq!(client_address(Some(proxy), &chain, &[proxy]), Some(client));
        assert_eq!(client_address(Some(proxy), &headers(&[]), &[proxy]), Some(proxy));
        assert_eq!(client_address(Some(proxy), &headers(&["junk"]), &[proxy]), Some(proxy));
        assert_eq!(client_address(None, &chain, &[proxy]), None);
    }
}
