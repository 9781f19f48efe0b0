//! Test support (dev only): a real Rhizome server started in this process on a free loopback
//! port, over SQLite (a temporary data directory) or PostgreSQL (a throwaway server), and a
//! small HTTP client speaking JSON to it. For federation: Synapse as a real peer ([`synapse`])
//! and a scriptable federation peer of our own ([`peer`]).

pub mod certs;
mod client;
mod media;
pub mod peer;
pub mod synapse;

use std::{sync::Arc, sync::Once};

use rhizome::RunningServer;
use rhizome_core::{Config, config::RegistrationMode};
use rhizome_service::Services;

pub use client::{Api, Response, encode};
pub use media::{RawResponse, mxc_parts};

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
    /// The configuration it runs with.
    pub config: Config,
    running: Option<RunningServer>,
    _data_dir: tempfile::TempDir,
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
        let running = rhizome::start(config.clone()).await.expect("the server starts");
        let base_url = format!("http://{}", running.address);
        config.listen = running.address;
        Self { base_url, config, running: Some(running), _data_dir: data_dir }
    }

    /// The server's services, for looking behind the API.
    pub fn services(&self) -> &Arc<Services> {
        &self.running.as_ref().expect("invariant: the server is running").services
    }

    /// Stops the server and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
        let running = rhizome::start(self.config.clone()).await.expect("the server restarts");
        self.running = Some(running);
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
