//! The ACME client's HTTP: the ACME crate's requests sent with reqwest (rustls, the same
//! aws-lc-rs provider as the rest of Rhizome), trusting the system's roots or, for a private
//! or test ACME server, only the roots of `tls.acme.directory_ca_file`.

use std::{future::Future, path::Path, pin::Pin, time::Duration};

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

/// An [`HttpClient`] over reqwest.
#[derive(Clone)]
pub struct ReqwestClient(reqwest::Client);

impl ReqwestClient {
    /// A client trusting the system's roots, or only those in `ca_file` if given.
    pub fn new(ca_file: Option<&Path>) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("Rhizome/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = ca_file {
            let pem =
                std::fs::read(ca_file).with_context(|| format!("reading {}", ca_file.display()))?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("reading certificates from {}", ca_file.display()))?;
            if roots.is_empty() {
                anyhow::bail!("{} holds no certificate", ca_file.display());
            }
            builder = builder.tls_certs_only(roots);
        }
        Ok(Self(builder.build().context("building the ACME HTTP client")?))
    }
}

fn other(error: impl std::error::Error + Send + Sync + 'static) -> instant_acme::Error {
    instant_acme::Error::Other(Box::new(error))
}

impl HttpClient for ReqwestClient {
    fn request(
        &self,
        request: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let client = self.0.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            let response = client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .map_err(other)?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = response.bytes().await.map_err(other)?;
            let mut answer = http::Response::new(Full::new(bytes));
            *answer.status_mut() = status;
            *answer.headers_mut() = headers;
            Ok(BytesResponse::from(answer))
        })
    }
}

/// Turns an ACME error into one with context.
pub fn acme_error(what: &'static str) -> impl FnOnce(instant_acme::Error) -> anyhow::Error {
    move |error| anyhow!("{what}: {error}")
}
