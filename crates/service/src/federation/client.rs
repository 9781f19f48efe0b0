//! The federation client: sends any ruma federation endpoint request to another server by
//! name and parses its response (spec: "Request Authentication").
//!
//! Requests are signed with this server's key (`Authorization: X-Matrix …` over the method,
//! URI, origin, destination and JSON body) when the endpoint asks for server signatures, and
//! sent unsigned otherwise (`/_matrix/key/v2/server`). Before anything is sent the destination
//! is checked against `federation.enabled` and the server allow/deny lists; discovery then
//! checks every address. Connections are TLS with verified certificates (unless
//! `federation.verify_certificates = false`), pooled per destination, each request bounded in
//! time (`federation.request_timeout_secs`, or per call) and response size (per call).

pub(crate) mod body;
mod error;
#[cfg(test)]
mod tests;
pub(crate) mod transport;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, header};
use http_body_util::Full;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioTimer},
};
use rhizome_core::config::FederationConfig;
use rhizome_room::SigningKey;
use ruma::{
    OwnedServerName, ServerName,
    api::{
        EndpointError, IncomingResponse, OutgoingRequest, OutgoingRequestExt,
        auth_scheme::{AuthScheme, NoAuthentication},
        error::{Error as MatrixError, ErrorBody},
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::PathBuilder,
    },
};
use rustls::pki_types::CertificateDer;

pub use self::error::{Cause, FederationError};
use self::transport::{FederationConnector, Transport};
use super::discovery::{Discovery, DiscoveryOptions, Dns, SystemDns};

/// The `User-Agent` of every federation request.
pub(crate) const USER_AGENT: &str = concat!("Rhizome/", env!("CARGO_PKG_VERSION"));

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The longest remote error message kept.
const MAX_REMOTE_MESSAGE: usize = 512;

/// Limits of one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// The largest response body read; a larger one is cut off and refused.
    pub max_body_bytes: usize,
    /// How long the call may take; `None` for `federation.request_timeout_secs`.
    pub timeout: Option<Duration>,
}

impl RequestLimits {
    /// The default body limit: 16 MiB.
    pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

    /// For small answers (`/send`, `/query/*`, keys): 1 MiB.
    pub fn small() -> Self {
        Self { max_body_bytes: 1024 * 1024, timeout: None }
    }

    /// For whole rooms (`/send_join`, `/state`): 256 MiB.
    pub fn large() -> Self {
        Self { max_body_bytes: 256 * 1024 * 1024, timeout: None }
    }

    /// With another body limit.
    pub fn with_max_body_bytes(self, max_body_bytes: usize) -> Self {
        Self { max_body_bytes, ..self }
    }

    /// With another time limit.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout: Some(timeout), ..self }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_body_bytes: Self::DEFAULT_MAX_BODY_BYTES, timeout: None }
    }
}

/// What the client is built with besides the configuration; the defaults suit a real server.
#[derive(Clone, Default)]
pub struct ClientOptions {
    /// The DNS; `None` for the system's ([`SystemDns`]).
    pub dns: Option<Arc<dyn Dns>>,
    /// Discovery's tunables.
    pub discovery: DiscoveryOptions,
    /// Root certificates trusted besides the platform's (a private CA of a closed federation,
    /// or a test's).
    pub extra_root_certificates: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("discovery", &self.discovery)
            .field("extra_root_certificates", &self.extra_root_certificates.len())
            .finish_non_exhaustive()
    }
}

/// How an endpoint's authentication is produced from this server's identity.
pub trait FederationAuthentication: AuthScheme {
    /// The input ruma's request builder needs.
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        signing_key: &'a SigningKey,
    ) -> Self::Input<'a>;
}

impl FederationAuthentication for ServerSignatures {
    fn input<'a>(
        origin: &ServerName,
        destination: &ServerName,
        signing_key: &'a SigningKey,
    ) -> XMatrixSigningInput<'a> {
        XMatrixSigningInput::new(origin.to_owned(), destination.to_owned(), signing_key.pair())
    }
}

impl FederationAuthentication for NoAuthentication {
    fn input(_: &ServerName, _: &ServerName, _: &SigningKey) {}
}

/// The client for other servers. Cheap to clone; clones share the connection pool and the
/// discovery cache.
#[derive(Clone)]
pub struct FederationClient {
    origin: OwnedServerName,
    signing_key: Arc<SigningKey>,
    discovery: Arc<Discovery>,
    http: Client<FederationConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient")
            .field("origin", &self.origin)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl FederationClient {
    /// A client for `origin` (this server's name) signing with `signing_key`.
    pub fn new(
        config: &FederationConfig,
        origin: OwnedServerName,
        signing_key: Arc<SigningKey>,
    ) -> Result<Self, FederationError> {
        Self::with_options(config, origin, signing_key, ClientOptions::default())
    }

    /// A client with other DNS, discovery tunables or extra trusted roots.
    pub fn with_options(
        config: &FederationConfig,
        origin: OwnedServerName,
        signing_key: Arc<SigningKey>,
        options: ClientOptions,
    ) -> Result<Self, FederationError> {
        let transport =
            Transport::new(config.verify_certificates, options.extra_root_certificates.clone());
        let dns = options.dns.unwrap_or_else(|| Arc::new(SystemDns::new()));
        let discovery = Arc::new(Discovery::new(
            Arc::new(config.clone()),
            dns,
            transport.clone(),
            options.discovery,
        ));
        let connector = FederationConnector { discovery: discovery.clone(), transport };
        let http = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        Ok(Self {
            origin,
            signing_key,
            discovery,
            http,
            timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
        })
    }

    /// This server's name, the `origin` of its requests.
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// Server discovery, with its cache.
    pub fn discovery(&self) -> &Discovery {
        &self.discovery
    }

    /// Sends a request to `destination` with the default limits and parses the response.
    pub async fn send<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuthentication,
        R::PathBuilder: for<'a> PathBuilder<Input<'a> = ()>,
    {
        self.send_with_limits(destination, request, RequestLimits::default()).await
    }

    /// Sends a request to `destination` within `limits` and parses the response.
    pub async fn send_with_limits<R>(
        &self,
        destination: &ServerName,
        request: R,
        limits: RequestLimits,
    ) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuthentication,
        R::PathBuilder: for<'a> PathBuilder<Input<'a> = ()>,
    {
        let http_request = self.http_request(destination, request)?;
        let response = self.execute(destination, http_request, limits).await?;
        let (parts, body) = response.into_parts();
        let response = http::Response::from_parts(parts, body.as_ref());
        R::IncomingResponse::try_from_http_response_inner(response)
            .map_err(|error| FederationError::Malformed(FederationError::cause(error)))
    }

    /// Sends a request and returns the body of its successful response as it came: for callers
    /// that need the exact signed JSON (server keys).
    pub async fn send_raw<R>(
        &self,
        destination: &ServerName,
        request: R,
        limits: RequestLimits,
    ) -> Result<Bytes, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuthentication,
        R::PathBuilder: for<'a> PathBuilder<Input<'a> = ()>,
    {
        let http_request = self.http_request(destination, request)?;
        Ok(self.execute(destination, http_request, limits).await?.into_body())
    }

    /// Sends a request and returns its successful response whole, headers and body as they
    /// came: for answers that are not JSON (media, `multipart/mixed`).
    pub async fn send_for_response<R>(
        &self,
        destination: &ServerName,
        request: R,
        limits: RequestLimits,
    ) -> Result<http::Response<Bytes>, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuthentication,
        R::PathBuilder: for<'a> PathBuilder<Input<'a> = ()>,
    {
        let http_request = self.http_request(destination, request)?;
        self.execute(destination, http_request, limits).await
    }

    /// Sends an unsigned `GET` of `path_and_query` (which starts with `/`) to `destination`
    /// and returns its successful response whole: for the few unauthenticated paths other
    /// servers serve besides the federation API (the legacy media download of servers older
    /// than Matrix 1.11). The same policy, discovery and limits apply as to any request.
    pub async fn get_unsigned(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        limits: RequestLimits,
    ) -> Result<http::Response<Bytes>, FederationError> {
        self.discovery.check_policy(destination)?;
        if !path_and_query.starts_with('/') {
            return Err(FederationError::Request(FederationError::message_cause(
                "a request path must start with /",
            )));
        }
        let request = http::Request::get(format!("https://{destination}{path_and_query}"))
            .body(Vec::new())
            .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
        self.execute(destination, request, limits).await
    }

    /// Builds (and signs, when the endpoint wants it) the HTTP request.
    fn http_request<R>(
        &self,
        destination: &ServerName,
        request: R,
    ) -> Result<http::Request<Vec<u8>>, FederationError>
    where
        R: OutgoingRequest,
        R::Authentication: FederationAuthentication,
        R::PathBuilder: for<'a> PathBuilder<Input<'a> = ()>,
    {
        self.discovery.check_policy(destination)?;
        let base_url = format!("https://{destination}");
        let input = R::Authentication::input(&self.origin, destination, &self.signing_key);
        request
            .try_into_http_request::<Vec<u8>>(&base_url, input, ())
            .map_err(|error| FederationError::Request(FederationError::cause(error)))
    }

    /// Sends an HTTP request within the limits; a non-2xx answer is an error.
    async fn execute(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        limits: RequestLimits,
    ) -> Result<http::Response<Bytes>, FederationError> {
        let timeout = limits.timeout.unwrap_or(self.timeout);
        let response = tokio::time::timeout(
            timeout,
            self.execute_unbounded(destination, request, limits.max_body_bytes),
        )
        .await
        .map_err(|_| {
            tracing::debug!(%destination, "a federation request timed out");
            FederationError::Timeout
        })??;
        if !response.status().is_success() {
            return Err(remote_error(&response));
        }
        Ok(response)
    }

    async fn execute_unbounded(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        max_body_bytes: usize,
    ) -> Result<http::Response<Bytes>, FederationError> {
        let target = self.discovery.destination(destination).await?;
        let (mut parts, body) = request.into_parts();
        let host = HeaderValue::from_str(&target.host_header)
            .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
        parts.headers.insert(header::HOST, host);
        parts.headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        let request = http::Request::from_parts(parts, Full::new(Bytes::from(body)));
        let response = self.http.request(request).await.map_err(client_error)?;
        let (parts, body) = response.into_parts();
        let body = body::read_limited(&parts.headers, body, max_body_bytes).await?;
        Ok(http::Response::from_parts(parts, body))
    }
}

/// The typed error behind an HTTP stack error: the connector's own, or the connection's.
fn client_error(error: hyper_util::client::legacy::Error) -> FederationError {
    if let Some(found) = FederationError::find_in(&error) {
        return found;
    }
    let parse_error =
        std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |error| {
            error.source()
        })
        .filter_map(|error| error.downcast_ref::<hyper::Error>())
        .any(hyper::Error::is_parse);
    if parse_error {
        FederationError::Malformed(FederationError::cause(error))
    } else {
        FederationError::Connection(FederationError::cause(error))
    }
}

/// A remote's error answer: its status and, if the body is a Matrix error, its code and
/// message.
fn remote_error(response: &http::Response<Bytes>) -> FederationError {
    let status = response.status();
    let mut borrowed = http::Response::new(response.body().as_ref());
    *borrowed.status_mut() = status;
    *borrowed.headers_mut() = response.headers().clone();
    let (kind, message) = match MatrixError::from_http_response(borrowed).body {
        ErrorBody::Standard(body) => {
            let mut message = body.message;
            if message.len() > MAX_REMOTE_MESSAGE {
                let mut end = MAX_REMOTE_MESSAGE;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            (Some(body.kind), Some(message))
        }
        _ => (None, None),
    };
    tracing::debug!(%status, "a federation request was answered with an error");
    FederationError::Remote { status, kind, message }
}
