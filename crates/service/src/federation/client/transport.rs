//! Connections to other servers: TLS (certificates verified against the platform's roots,
//! unless configured otherwise), TCP pinned to the addresses discovery checked, and the
//! connector through which the pooled HTTP client reaches a server by name.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::future::BoxFuture;
use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection},
    rt::TokioIo,
};
use ruma::ServerName;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName as TlsServerName, UnixTime},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::FederationError;
use crate::federation::discovery::Discovery;

/// The longest wait for one TCP connection before the next address is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the TLS configuration: the platform's roots (or the webpki roots when the platform
/// has none) plus `extra_roots`, or no verification at all when `verify` is false.
pub(crate) fn tls_config(
    verify: bool,
    extra_roots: &[CertificateDer<'static>],
) -> Result<ClientConfig, FederationError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
    let verifier: Arc<dyn ServerCertVerifier> = if !verify {
        Arc::new(NoVerification(provider))
    } else {
        let platform = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        );
        match platform {
            Ok(verifier) => Arc::new(verifier),
            Err(error) => {
                tracing::warn!(%error, "no platform CA roots: using the webpki roots");
                webpki_verifier(extra_roots, provider)?
            }
        }
    };
    let mut config =
        builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn webpki_verifier(
    extra_roots: &[CertificateDer<'static>],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, FederationError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        roots
            .add(root.clone())
            .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
    }
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|error| FederationError::Request(FederationError::cause(error)))?;
    Ok(verifier)
}

/// Accepts any certificate (`federation.verify_certificates = false`, for tests only), while
/// still checking that the handshake is signed by the certificate presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &TlsServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The verifying settings with the platform's roots and no others: built on first use (the
/// platform's certificate store, parsed, is about a third of a megabyte, which a server that
/// never reaches another one need not hold) and shared by every client of the process that
/// wants them: federation, push gateways, URL previews.
pub(crate) fn platform_verifying() -> Result<Arc<ClientConfig>, FederationError> {
    static SHARED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let config = Arc::new(tls_config(true, &[])?);
    Ok(SHARED.get_or_init(|| config).clone())
}

/// Opens TLS connections to checked addresses.
#[derive(Clone)]
pub(crate) struct Transport {
    tls: Arc<LazyConnector>,
}

/// A TLS connector built on the first connection.
struct LazyConnector {
    verify: bool,
    extra_roots: Vec<CertificateDer<'static>>,
    connector: OnceLock<TlsConnector>,
}

impl LazyConnector {
    fn get(&self) -> Result<&TlsConnector, FederationError> {
        if let Some(connector) = self.connector.get() {
            return Ok(connector);
        }
        let config = match self.verify && self.extra_roots.is_empty() {
            true => platform_verifying()?,
            false => Arc::new(tls_config(self.verify, &self.extra_roots)?),
        };
        Ok(self.connector.get_or_init(|| TlsConnector::from(config)))
    }
}

impl Transport {
    /// Connections verified as `tls_config` says, set up on the first one.
    pub(crate) fn new(verify: bool, extra_roots: Vec<CertificateDer<'static>>) -> Self {
        Self { tls: Arc::new(LazyConnector { verify, extra_roots, connector: OnceLock::new() }) }
    }

    /// Connects to the first of `addresses` that answers, then shakes hands for `tls_name` (a
    /// host name, sent as SNI and checked against the certificate, or an IP address, checked
    /// against the certificate's IP names and not sent). The addresses must have been checked.
    pub(crate) async fn connect(
        &self,
        addresses: &[SocketAddr],
        tls_name: &str,
    ) -> Result<TlsStream<TcpStream>, FederationError> {
        let name = TlsServerName::try_from(tls_name.to_owned())
            .map_err(|error| FederationError::Tls(FederationError::cause(error)))?;
        let mut last_error = None;
        for address in addresses {
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
                Ok(Ok(tcp)) => {
                    // Requests are small and latency matters more than packet count.
                    let _ = tcp.set_nodelay(true);
                    return self
                        .tls
                        .get()?
                        .connect(name, tcp)
                        .await
                        .map_err(|error| FederationError::Tls(FederationError::cause(error)));
                }
                Ok(Err(error)) => last_error = Some(error),
                Err(_) => last_error = Some(io::Error::from(io::ErrorKind::TimedOut)),
            }
        }
        let error = last_error.unwrap_or_else(|| io::Error::other("no address to connect to"));
        tracing::debug!(%error, "could not connect to a federation destination");
        Err(FederationError::Connection(FederationError::cause(error)))
    }
}

/// A TLS connection to another server, as the pooled HTTP client holds it.
pub(crate) struct FederationStream(TlsStream<TcpStream>);

impl Connection for FederationStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for FederationStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for FederationStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

/// The pooled client's connector: the URI's authority is the destination's server name, which
/// discovery resolves (policy checks included) to the addresses and TLS name to use.
#[derive(Clone)]
pub(crate) struct FederationConnector {
    pub(crate) discovery: Arc<Discovery>,
    pub(crate) transport: Transport,
}

impl tower_service::Service<Uri> for FederationConnector {
    type Response = TokioIo<FederationStream>;
    type Error = FederationError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or(FederationError::Unresolvable)?;
            let server_name = <&ServerName>::try_from(authority.as_str())
                .map_err(|_| FederationError::Unresolvable)?;
            let resolved = connector.discovery.resolve(server_name).await?;
            let stream = connector
                .transport
                .connect(&resolved.addresses, &resolved.destination.tls_name)
                .await?;
            Ok(TokioIo::new(FederationStream(stream)))
        })
    }
}
