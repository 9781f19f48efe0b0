//! The peer as a client of other servers: federation requests signed with X-Matrix, correctly or
//! in a chosen broken way.

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, header};
use ruma::{
    OwnedServerName, ServerName,
    api::federation::authentication::{XMatrix, XMatrixSigningInput},
    signatures::Ed25519KeyPair,
};
use serde_json::Value;

use super::TestPeer;

/// How a request's `Authorization` header is made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signing {
    /// Signed correctly with the peer's current key, for the destination.
    Valid,
    /// The peer's current key ID, but a signature made with another key.
    WrongSignature,
    /// Signed correctly, but for another destination, which the header names.
    OtherDestination(OwnedServerName),
    /// Signed with the peer's key, but claiming to come from another server.
    OtherOrigin(OwnedServerName),
    /// Signed with a key whose ID (`ed25519:unknown`) the peer does not publish.
    UnknownKey,
    /// No `Authorization` header at all.
    NoHeader,
    /// An `X-Matrix` header that lacks its `sig` parameter.
    MalformedHeader,
    /// Exactly this `Authorization` header.
    Header(String),
}

/// An answer to one of the peer's requests.
#[derive(Clone, Debug)]
pub struct PeerResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl PeerResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// The Matrix error code of an error answer.
    pub fn errcode(&self) -> Option<String> {
        self.json()["errcode"].as_str().map(ToOwned::to_owned)
    }
}

impl TestPeer {
    /// Sends a federation request to `destination` at `base_url` (`https://…`; any certificate
    /// is accepted), signed correctly with X-Matrix. `path` may carry a query string; `body` is
    /// sent as JSON. Panics only when no answer comes at all.
    pub async fn request(
        &self,
        destination: &ServerName,
        base_url: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> PeerResponse {
        self.request_with(Signing::Valid, destination, base_url, method, path, body).await
    }

    /// Like [`TestPeer::request`], with the `Authorization` header made as `signing` says.
    pub async fn request_with(
        &self,
        signing: Signing,
        destination: &ServerName,
        base_url: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> PeerResponse {
        let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
            .unwrap_or_else(|error| panic!("{base_url}{path} is not a URL: {error}"));
        // Sign exactly what goes on the wire: the path and query as the URL encodes them.
        let uri = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let body = body.map(|body| body.to_string().into_bytes()).unwrap_or_default();
        let authorization = self.authorization(&signing, destination, &method, &uri, &body);
        let mut request = self.http_client().request(method.clone(), url);
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json").body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|error| panic!("{method} {uri} to {destination}: {error}"));
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap_or_default();
        PeerResponse { status, headers, body }
    }

    /// The `Authorization` header value for a request, made as `signing` says (`None` for
    /// [`Signing::NoHeader`]). `uri` is the path and query as sent; `body` the exact body.
    pub fn authorization(
        &self,
        signing: &Signing,
        destination: &ServerName,
        method: &Method,
        uri: &str,
        body: &[u8],
    ) -> Option<String> {
        let key = self.signing_key();
        let origin = self.server_name().to_owned();
        let sign = |origin: OwnedServerName, destination: &ServerName, pair: &Ed25519KeyPair| {
            let request = http::Request::builder()
                .method(method.clone())
                .uri(uri)
                .body(body)
                .unwrap_or_else(|error| panic!("{uri} is not a request URI: {error}"));
            let input = XMatrixSigningInput::new(origin, destination.to_owned(), pair);
            XMatrix::sign_http_request(&request, input)
                .unwrap_or_else(|error| panic!("signing {uri}: {error}"))
                .to_string()
        };
        let other_key = |version: &str| {
            Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned())
                .expect("invariant: a freshly generated key parses")
        };
        match signing {
            Signing::Valid => Some(sign(origin, destination, key.pair())),
            Signing::WrongSignature => {
                Some(sign(origin, destination, &other_key(key.pair().version())))
            }
            Signing::OtherDestination(other) => Some(sign(origin, other, key.pair())),
            Signing::OtherOrigin(other) => Some(sign(other.clone(), destination, key.pair())),
            Signing::UnknownKey => Some(sign(origin, destination, &other_key("unknown"))),
            Signing::NoHeader => None,
            Signing::MalformedHeader => Some(format!(
                "X-Matrix origin=\"{origin}\",destination=\"{destination}\",key=\"{}\"",
                key.key_id()
            )),
            Signing::Header(value) => Some(value.clone()),
        }
    }

    fn http_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_danger_accept_invalid_certs(true)
            .no_proxy()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .expect("invariant: the HTTP client builds")
    }
}
