//! The peer's HTTPS server: TLS with its self-signed certificate, HTTP/1.1 and HTTP/2, every
//! request recorded, then answered by the newest matching handler, the built-in key and
//! version endpoints, or 404.

use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::{Handler, ReceivedRequest, Reply, State, keys, lock};
use crate::certs::TestCertificate;

/// The largest request body the peer reads.
const MAX_BODY: usize = 32 * 1024 * 1024;

/// A TLS acceptor serving `certificate`, offering HTTP/2 and HTTP/1.1.
pub(super) fn tls_acceptor(certificate: &TestCertificate) -> TlsAcceptor {
    let chain = vec![
        CertificateDer::from_pem_slice(certificate.certificate_pem.as_bytes())
            .expect("invariant: the test certificate is valid PEM"),
    ];
    let key = PrivateKeyDer::from_pem_slice(certificate.private_key_pem.as_bytes())
        .expect("invariant: the test key is valid PEM");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("invariant: the default protocol versions are supported")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("invariant: the test certificate matches its key");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Accepts connections until the task is aborted.
pub(super) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else { return };
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { Ok::<_, Infallible>(answer(&state, request).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn answer(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let reply = Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE", "too large");
            return response(reply);
        }
    };
    let mut request = ReceivedRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(ToOwned::to_owned),
        headers: parts.headers,
        body,
        params: BTreeMap::new(),
    };
    let handler = find_handler(state, &mut request);
    lock(&state.received).push(request.clone());
    let reply = match handler {
        Some(handler) => handler(&request),
        None => built_in(state, &request),
    };
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    response(reply)
}

/// The newest handler matching the request, with the request's path parameters filled.
fn find_handler(state: &State, request: &mut ReceivedRequest) -> Option<Handler> {
    let routes = lock(&state.routes);
    routes.iter().rev().find_map(|route| {
        if route.method != request.method {
            return None;
        }
        let params = match_path(&route.pattern, &request.path)?;
        request.params = params;
        Some(Arc::clone(&route.handler))
    })
}

/// The endpoints every peer serves: its key document and its version.
fn built_in(state: &State, request: &ReceivedRequest) -> Reply {
    let is_get = request.method == Method::GET;
    if is_get
        && (request.path == "/_matrix/key/v2/server"
            || match_path("/_matrix/key/v2/server/{key_id}", &request.path).is_some())
    {
        return Reply::json(StatusCode::OK, &keys::key_document(state));
    }
    if is_get && request.path == "/_matrix/federation/v1/version" {
        let version = serde_json::json!({
            "server": { "name": "rhizome-testkit peer", "version": env!("CARGO_PKG_VERSION") }
        });
        return Reply::json(StatusCode::OK, &version);
    }
    Reply::error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "the test peer has no handler for this")
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = reply.status;
    if let Ok(value) = header::HeaderValue::from_str(&reply.content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Matches a percent-encoded `path` against `pattern` (literal segments, `{name}` for one
/// segment, a final `*` for any rest), returning the decoded parameters.
pub(super) fn match_path(pattern: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut pattern_segments = pattern.split('/');
    let mut path_segments = path.split('/');
    loop {
        match (pattern_segments.next(), path_segments.next()) {
            (None, None) => return Some(params),
            (Some("*"), _) => return Some(params),
            (Some(expected), Some(actual)) => {
                if let Some(name) = expected.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    params.insert(name.to_owned(), percent_decode(actual));
                } else if expected != actual {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

/// Decodes `%XX` escapes; anything malformed is kept as it is.
pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments_and_rests() {
        let params = match_path("/a/{id}/c", "/a/%21room%3Ax/c").unwrap();
        assert_eq!(params["id"], "!room:x");
        assert!(match_path("/a/{id}/c", "/a/b/d").is_none());
        assert!(match_path("/a/{id}", "/a/b/c").is_none());
        assert!(match_path("/a/*", "/a/b/c").is_some());
        assert!(match_path("/a", "/a").is_some());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }
}
