//! Media helpers for endpoint tests: uploads of raw bytes with a chosen `Content-Type`, and
//! responses whose body is bytes rather than JSON, with their headers.

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;

use crate::{Api, Response};

/// A response kept as raw bytes, with its headers.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub bytes: Vec<u8>,
}

impl RawResponse {
    /// A header's value as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    /// Panics unless the status is 200, showing the body; returns the bytes.
    pub fn ok(self) -> Vec<u8> {
        assert_eq!(self.status, StatusCode::OK, "unexpected response: {}", self.json());
        self.bytes
    }

    /// Panics unless the status and errcode are as given.
    pub fn expect_error(&self, status: u16, errcode: &str) {
        let body = self.json();
        assert_eq!(
            (self.status.as_u16(), body.get("errcode").and_then(Value::as_str)),
            (status, Some(errcode)),
            "body: {body}"
        );
    }
}

/// The server name and media ID of an `mxc://` URI.
pub fn mxc_parts(mxc: &str) -> (String, String) {
    let rest = mxc.strip_prefix("mxc://").expect("an mxc:// URI");
    let (server, media_id) = rest.split_once('/').expect("an mxc:// URI with a media ID");
    (server.to_owned(), media_id.to_owned())
}

impl Api {
    /// Sends raw bytes with the given `Content-Type` and returns the response as JSON.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        bytes: Vec<u8>,
    ) -> Response {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .expect("the request reaches the server");
        let status = response.status();
        let body = response.bytes().await.expect("the response body arrives");
        Response { status, body: serde_json::from_slice(&body).unwrap_or(Value::Null) }
    }

    /// `POST /_matrix/media/v3/upload`.
    pub async fn upload(
        &self,
        content_type: &str,
        filename: Option<&str>,
        bytes: Vec<u8>,
    ) -> Response {
        let path = match filename {
            Some(name) => format!("/_matrix/media/v3/upload?filename={}", crate::encode(name)),
            None => "/_matrix/media/v3/upload".to_owned(),
        };
        self.send_bytes(Method::POST, &path, content_type, bytes).await
    }

    /// Uploads and returns the `mxc://` URI (panics unless the upload succeeds).
    pub async fn upload_ok(&self, content_type: &str, bytes: Vec<u8>) -> String {
        let body = self.upload(content_type, None, bytes).await.ok();
        body["content_uri"].as_str().expect("a content URI").to_owned()
    }

    /// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}` to a URI from `/create`.
    pub async fn upload_to(&self, mxc: &str, content_type: &str, bytes: Vec<u8>) -> Response {
        let (server, media_id) = mxc_parts(mxc);
        let path = format!("/_matrix/media/v3/upload/{server}/{media_id}");
        self.send_bytes(Method::PUT, &path, content_type, bytes).await
    }

    /// A `GET` whose response is kept as bytes (sent with the token when logged in).
    pub async fn get_raw(&self, path: &str) -> RawResponse {
        let mut request = self.http.get(format!("{}{path}", self.base_url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the request reaches the server");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("the response body arrives").to_vec();
        RawResponse { status, headers, bytes }
    }

    /// `GET /_matrix/client/v1/media/download/…` of an `mxc://` URI.
    pub async fn download(&self, mxc: &str) -> RawResponse {
        let (server, media_id) = mxc_parts(mxc);
        self.get_raw(&format!("/_matrix/client/v1/media/download/{server}/{media_id}")).await
    }

    /// `GET /_matrix/client/v1/media/thumbnail/…` of an `mxc://` URI with a query such as
    /// `width=64&height=64&method=crop`.
    pub async fn thumbnail(&self, mxc: &str, query: &str) -> RawResponse {
        let (server, media_id) = mxc_parts(mxc);
        self.get_raw(&format!("/_matrix/client/v1/media/thumbnail/{server}/{media_id}?{query}"))
            .await
    }
}
