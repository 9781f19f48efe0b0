//! Test support (dev only): a real Rhizome server started in this process on a free loopback
//! port, over SQLite (a temporary data directory) or PostgreSQL (a throwaway server), and a
//! small HTTP client speaking JSON to it; a push gateway that records what it is sent
//! ([`RecordingPushGateway`]). For federation: Synapse as a real peer ([`synapse`])
//! and a scriptable federation peer of our own ([`peer`]).

pub mod certs;
mod client;
mod media;
pub mod peer;
mod push_gateway;
pub mod synapse;

use std::{sync::Arc, sync::Once};

use rhizome::RunningServer;
use rhizome_core::{Config, config::RegistrationMode};
use rhizome_service::Services;

pub use client::{Api, Response, encode};
pub use media::{RawResponse, mxc_parts};
pub use push_gateway::RecordingPushGateway;

/// The database a test server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in the data directory.
    Sqlite,
    /// A fresh database on the shared throwaway PostgreSQL server.
    Postgres,
}

/// A running test server.
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// `https://<tls.listen>` when the server has a TLS listener (see [`TestServer::start_tls`]
    /// and [`use_tls`]).
    pub tls_base_url: Option<String>,
    /// The TLS listener's certificate (PEM) as it was at start, for clients to trust.
    pub tls_certificate_pem: Option<String>,
    /// The configuration it runs with (bound addresses and server name filled in).
    pub config: Config,
    running: Option<RunningServer>,
    _data_dir: tempfile::TempDir,
}

/// Gives a test server a TLS listener on `ip` (a free port) with a fresh self-signed
/// certificate for `names` (DNS names or IP addresses), written into the data directory as
/// `tls.crt` and `tls.key`. Call it from the `adjust` closure of [`TestServer::start_with`].
pub fn use_tls(config: &mut Config, ip: &str, names: &[&str]) -> certs::TestCertificate {
    let certificate = certs::TestCertificate::self_signed(names);
    let (certificate_file, private_key_file) = certificate.write_to(&config.data_dir, "tls");
    let ip: std::net::IpAddr = ip.parse().expect("an IP address to listen on");
    config.tls.listen = Some(std::net::SocketAddr::new(ip, 0));
    config.tls.certificate_file = Some(certificate_file);
    config.tls.private_key_file = Some(private_key_file);
    certificate
}

/// A reqwest client (HTTP/1.1 and HTTP/2) that trusts only the given PEM certificates.
pub fn https_client_trusting(certificates_pem: &[&str]) -> reqwest::Client {
    let roots = certificates_pem
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).expect("a PEM certificate"));
    reqwest::Client::builder()
        .tls_certs_only(roots)
        .tls_info(true)
        .build()
        .expect("an HTTPS client")
}

/// Federation settings for tests on loopback: loopback addresses allowed, self-signed
/// certificates accepted, quick retries and timeouts.
pub fn federate_on_loopback(config: &mut Config) {
    config.federation.verify_certificates = false;
    config.federation.allowed_addresses =
        vec!["127.0.0.0/8".parse().expect("invariant: a valid range")];
    config.federation.min_retry_interval_secs = 1;
    config.federation.max_retry_interval_secs = 4;
    config.federation.request_timeout_secs = 15;
}

fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("RHIZOME_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    });
}

impl TestServer {
    /// A server on SQLite with open registration and no rate limits.
    pub async fn start() -> Self {
        Self::start_with(Backend::Sqlite, |_| {}).await
    }

    /// A server on the given backend, with the configuration adjusted by `adjust`.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_options(backend, adjust, rhizome::StartOptions::default()).await
    }

    /// A server with a TLS listener on `ip` (a free port) and a self-signed certificate for
    /// `ip`, named after its TLS address (`127.0.0.11:<port>`), as federation tests need; the
    /// configuration is adjusted by `adjust` first (which may change the certificate).
    pub async fn start_tls(backend: Backend, ip: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let options = rhizome::StartOptions { server_name_from_tls_listener: true };
        let ip = ip.to_owned();
        Self::start_with_options(
            backend,
            move |config| {
                use_tls(config, &ip, &[&ip]);
                adjust(config);
            },
            options,
        )
        .await
    }

    /// A server that federates over loopback: TLS on `ip`, named `ip:port`, reaching other
    /// loopback servers (their self-signed certificates accepted), retrying quickly.
    pub async fn start_federating(ip: &str) -> Self {
        Self::start_federating_with(Backend::Sqlite, ip, |_| {}).await
    }

    /// Like [`TestServer::start_federating`], on a backend and with more configuration.
    pub async fn start_federating_with(
        backend: Backend,
        ip: &str,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        Self::start_tls(backend, ip, |config| {
            federate_on_loopback(config);
            adjust(config);
        })
        .await
    }

    /// A server started with `options`.
    pub async fn start_with_options(
        backend: Backend,
        adjust: impl FnOnce(&mut Config),
        options: rhizome::StartOptions,
    ) -> Self {
        init_logging();
        let data_dir = tempfile::Builder::new()
            .prefix("rhizome-test-")
            .tempdir()
            .expect("temporary directory");
        let mut config = Config {
            data_dir: data_dir.path().to_owned(),
            listen: "127.0.0.1:0".parse().expect("invariant: valid address"),
            ..Config::default()
        };
        config.registration.mode = RegistrationMode::Open;
        config.rate_limits.enabled = false;
        if backend == Backend::Postgres {
            let server = rhizome_storage_sql::testing::shared_postgres();
            config.database.url =
                server.create_database().await.expect("a fresh PostgreSQL database");
        }
        adjust(&mut config);
        let running =
            rhizome::start_with_options(config.clone(), options).await.expect("the server starts");
        let base_url = format!("http://{}", running.address);
        config.listen = running.address;
        config.tls.listen = running.tls_address;
        config.server_name = running.services.config.server_name.clone();
        let tls_base_url = running.tls_address.map(|address| format!("https://{address}"));
        let tls_certificate_pem = match (&running.tls_address, &config.tls.certificate_file) {
            (Some(_), Some(file)) => std::fs::read_to_string(file).ok(),
            _ => None,
        };
        Self {
            base_url,
            tls_base_url,
            tls_certificate_pem,
            config,
            running: Some(running),
            _data_dir: data_dir,
        }
    }

    /// The running server (its addresses, TLS certificate reloads).
    pub fn running(&self) -> &RunningServer {
        self.running.as_ref().expect("invariant: the server is running")
    }

    /// An HTTPS client trusting this server's certificate (as it was at start).
    pub fn https_client(&self) -> reqwest::Client {
        let pem = self.tls_certificate_pem.as_deref().expect("a server started with TLS");
        https_client_trusting(&[pem])
    }

    /// A JSON client for this server over its TLS listener.
    pub fn tls_api(&self) -> Api {
        let base_url = self.tls_base_url.as_deref().expect("a server started with TLS");
        Api::with_client(base_url, self.https_client())
    }

    /// The server's services, for looking behind the API.
    pub fn services(&self) -> &Arc<Services> {
        &self.running().services
    }

    /// Stops the server and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        self.stop_for_now().await;
        self.start_again().await;
    }

    /// Stops the server, keeping its data and addresses, until [`TestServer::start_again`]
    /// (to play a server that is down for a while).
    pub async fn stop_for_now(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// Starts a stopped server again on the same data and ports.
    pub async fn start_again(&mut self) {
        let running = rhizome::start(self.config.clone()).await.expect("the server restarts");
        self.running = Some(running);
    }

    /// Moves a server on SQLite to a fresh database on the shared throwaway PostgreSQL server,
    /// as an operator would: stops it, runs `rhizome admin migrate-db --to <url>` (its code,
    /// in this process) and starts it again on the same data directory (signing key, media)
    /// and port, now on PostgreSQL. The command's output lines.
    pub async fn move_to_postgres(&mut self) -> Vec<String> {
        self.stop_for_now().await;
        let url = rhizome_storage_sql::testing::shared_postgres()
            .create_database()
            .await
            .expect("a fresh PostgreSQL database");
        let lines = rhizome::admin::migrate::migrate_db(&self.config, &url)
            .await
            .expect("migrate-db copies the database");
        self.config.database.url = url;
        self.start_again().await;
        lines
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// An HTTP client for this server.
    pub fn api(&self) -> Api {
        Api::new(&self.base_url)
    }
}
