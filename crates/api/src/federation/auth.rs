//! Authentication of requests from other servers (`Authorization: X-Matrix …`): the origin's
//! key, fetched through the key ring, must have signed the method, URI, origin, destination
//! and body, the destination must be this server, and the origin must be allowed to
//! federate. Nothing of a request runs before this passes; a failure is 401 `M_UNAUTHORIZED`
//! (403 `M_FORBIDDEN` for a server the organiser does not federate with), never a 500.

use rhizome_core::{Error, clock::now_millis, error::MatrixErrorKind};
use rhizome_service::Services;
use ruma::{OwnedServerName, api::federation::authentication::XMatrix, signatures::PublicKeyMap};

fn unauthorized(message: &'static str) -> Error {
    Error::matrix(MatrixErrorKind::Unauthorized, message)
}

/// Verifies a request's `X-Matrix` signature; returns the origin.
pub(crate) async fn authenticate_server(
    services: &Services,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<OwnedServerName, Error> {
    if !services.config.federation.enabled {
        return Err(Error::forbidden("Federation is disabled on this server"));
    }
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("Missing X-Matrix authorization"))?;
    let x_matrix = header
        .to_str()
        .ok()
        .and_then(|value| XMatrix::parse(value).ok())
        .ok_or_else(|| unauthorized("Malformed X-Matrix authorization"))?;
    if x_matrix
        .destination
        .as_deref()
        .is_some_and(|destination| destination != services.server_name())
    {
        return Err(unauthorized("The request is for another server"));
    }
    if !services.config.federation.server_allowed(x_matrix.origin.as_str()) {
        return Err(Error::forbidden("This server does not federate with yours"));
    }
    let key_id = x_matrix.key.to_string();
    let keys = services
        .server_verify_keys(&x_matrix.origin, std::slice::from_ref(&key_id), Some(now_millis()))
        .await
        .map_err(|error| {
            tracing::debug!(%error, "could not get the keys of a requesting server");
            unauthorized("The origin's signing key could not be found")
        })?;
    if keys.is_empty() {
        return Err(unauthorized("Unknown or expired signing key"));
    }
    let map: PublicKeyMap = [(x_matrix.origin.to_string(), keys)].into_iter().collect();
    let mut request = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
    if let Some(headers) = request.headers_mut() {
        headers.extend(parts.headers.clone());
    }
    let request = request.body(body).map_err(|_| unauthorized("Malformed request"))?;
    x_matrix
        .verify_http_request(&request, services.server_name(), &map)
        .map_err(|_| unauthorized("Invalid X-Matrix signature"))?;
    Ok(x_matrix.origin)
}
