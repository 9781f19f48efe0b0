//! Test support for the federation tests: a private certificate authority, HTTPS servers on
//! loopback (axum over rustls) that record the SNI and `Host` of every request, a stub DNS,
//! and clients built to reach them.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::Router;
use futures_util::future::BoxFuture;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rhizome_core::config::FederationConfig;
use rhizome_room::SigningKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_rustls::TlsAcceptor;

use super::{ClientOptions, DiscoveryOptions, Dns, FederationClient, SrvRecord};

/// A private certificate authority whose root the test clients trust.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub(crate) fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Rhizome test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// The root certificate.
    pub(crate) fn root(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A certificate for the names (DNS names or IP addresses) and its key.
    pub(crate) fn issue(&self, names: &[&str]) -> Certified {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let key = KeyPair::generate().unwrap();
        let certificate =
            CertificateParams::new(names).unwrap().signed_by(&key, &self.issuer).unwrap();
        Certified {
            chain: vec![certificate.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

/// A certificate chain and its key.
pub(crate) struct Certified {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// What a test server saw of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The SNI of the connection (none for an IP address).
    pub sni: Option<String>,
    /// The `Host` header.
    pub host: Option<String>,
    /// The path and query.
    pub path: String,
}

/// An HTTPS server on loopback.
pub(crate) struct TestServer {
    pub address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Serves `router` on `127.0.0.1:0` with a certificate from `ca` for `names`.
    pub(crate) async fn start(ca: &TestCa, names: &[&str], router: Router) -> Self {
        Self::start_on(ca.issue(names), "127.0.0.1:0".parse().unwrap(), router).await
    }

    /// Serves `router` at `bind` with the given certificate.
    pub(crate) async fn start_on(certified: Certified, bind: SocketAddr, router: Router) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certified.chain, certified.key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(bind).await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let task =
            tokio::spawn(serve(listener, acceptor, router, seen.clone(), connections.clone()));
        Self { address, seen, connections, task }
    }

    pub(crate) fn port(&self) -> u16 {
        self.address.port()
    }

    /// Every request seen so far.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }

    /// How many requests had a path starting with `prefix`.
    pub(crate) fn count(&self, prefix: &str) -> usize {
        self.seen.lock().iter().filter(|seen| seen.path.starts_with(prefix)).count()
    }

    /// How many TCP connections were accepted.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        connections.fetch_add(1, Ordering::SeqCst);
        let (acceptor, router, seen) = (acceptor.clone(), router.clone(), seen.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else { return };
            let sni = tls.get_ref().1.server_name().map(str::to_owned);
            let service = hyper::service::service_fn(move |request: http::Request<Incoming>| {
                seen.lock().push(Seen {
                    sni: sni.clone(),
                    host: request
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_owned),
                    path: request.uri().to_string(),
                });
                let mut router = router.clone();
                async move { tower_service::Service::call(&mut router, request).await }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

/// A DNS answering from tables.
#[derive(Default)]
pub(crate) struct StubDns {
    hosts: Mutex<HashMap<String, Vec<IpAddr>>>,
    srv: Mutex<HashMap<String, Vec<SrvRecord>>>,
    /// How many host lookups were made.
    pub host_lookups: AtomicUsize,
}

impl StubDns {
    pub(crate) fn host(&self, name: &str, ips: &[&str]) {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.hosts.lock().insert(name.to_owned(), ips);
    }

    pub(crate) fn srv(&self, name: &str, records: &[(u16, &str)]) {
        let records = records
            .iter()
            .map(|(port, target)| SrvRecord {
                priority: 10,
                weight: 0,
                port: *port,
                target: (*target).to_owned(),
            })
            .collect();
        self.srv.lock().insert(name.to_owned(), records);
    }
}

impl Dns for StubDns {
    fn lookup_ip<'a>(&'a self, host: &'a str) -> BoxFuture<'a, io::Result<Vec<IpAddr>>> {
        self.host_lookups.fetch_add(1, Ordering::SeqCst);
        let found = self.hosts.lock().get(host).cloned();
        Box::pin(async move { found.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound)) })
    }

    fn lookup_srv<'a>(&'a self, name: &'a str) -> BoxFuture<'a, io::Result<Vec<SrvRecord>>> {
        let found = self.srv.lock().get(name).cloned().unwrap_or_default();
        Box::pin(async move { Ok(found) })
    }
}

/// Federation configuration that reaches loopback.
pub(crate) fn loopback_config() -> FederationConfig {
    FederationConfig {
        allowed_addresses: vec!["127.0.0.0/8".parse().unwrap()],
        request_timeout_secs: 10,
        ..FederationConfig::default()
    }
}

/// Discovery pointed at test ports, with short cache times.
pub(crate) fn test_options(well_known_port: u16, default_port: u16) -> DiscoveryOptions {
    DiscoveryOptions {
        well_known_port,
        default_port,
        well_known_timeout: Duration::from_secs(2),
        error_cache_min: Duration::from_millis(500),
        error_cache_max: Duration::from_secs(2),
        ..DiscoveryOptions::default()
    }
}

/// The name test clients send as.
pub(crate) const ORIGIN: &str = "origin.rhizome.test";

/// A client trusting `ca`, resolving through `dns`.
pub(crate) fn client(
    config: &FederationConfig,
    dns: &Arc<StubDns>,
    ca: &TestCa,
    options: DiscoveryOptions,
    signing_key: &Arc<SigningKey>,
) -> FederationClient {
    let dns: Arc<dyn Dns> = dns.clone();
    let options = ClientOptions {
        dns: Some(dns),
        discovery: options,
        extra_root_certificates: vec![ca.root()],
    };
    FederationClient::with_options(config, ORIGIN.try_into().unwrap(), signing_key.clone(), options)
        .unwrap()
}
