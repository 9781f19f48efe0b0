//! The Rhizome server as a library: loading configuration, opening the data directory (signing
//! key, database), building the services and serving HTTP until shutdown. The `rhizome`
//! binary and the test kit both start the server through here.

pub mod acme;
pub mod admin;
pub mod shutdown;
pub mod tls;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use axum::serve::ListenerExt;
use rhizome_core::Config;
use rhizome_room::SigningKey;
use rhizome_service::Services;
use rhizome_storage::DataStore;
use rhizome_storage_sql::SqlStore;
use tokio::net::TcpListener;

/// Environment variables that are not configuration keys.
pub const NON_CONFIG_ENV: &[&str] = &["RHIZOME_CONFIG", "RHIZOME_LOG"];

/// Loads the configuration: the file (if any), then `RHIZOME_*` environment overrides.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    let text = match path {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => String::new(),
    };
    let env = std::env::vars().filter(|(key, _)| !NON_CONFIG_ENV.contains(&key.as_str()));
    Ok(Config::from_toml_and_env(&text, env)?)
}

/// The database URL the configuration selects.
pub fn database_url(config: &Config) -> Result<String> {
    if !config.database.url.is_empty() {
        return Ok(config.database.url.clone());
    }
    if let Some(file) = &config.database.url_file {
        let url =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(url.trim().to_owned());
    }
    Ok(format!("sqlite://{}", config.data_dir.join("rhizome.db").display()))
}

/// Loads the signing key from the data directory, generating it on first start.
pub fn load_or_create_signing_key(data_dir: &Path) -> Result<SigningKey> {
    let path = data_dir.join("signing.key");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        return SigningKey::from_file_text(&text)
            .with_context(|| format!("parsing {}", path.display()));
    }
    let (key, text) = SigningKey::generate_with_file_text();
    // Written aside, then linked into place: processes starting together on one data
    // directory keep the first key linked, and every one of them reads that.
    let aside = data_dir.join(format!("signing.key.{}.new", std::process::id()));
    let _ = std::fs::remove_file(&aside);
    write_private_file(&aside, &text)?;
    let linked = std::fs::hard_link(&aside, &path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => {
            tracing::info!(key_id = %key.key_id(), "generated a new server signing key");
            Ok(key)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            load_or_create_signing_key(data_dir)
        }
        Err(error) => Err(error).with_context(|| format!("creating {}", path.display())),
    }
}

#[cfg(unix)]
fn write_private_file(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("creating {}", path.display()))
}

/// Opens the data directory and the database.
pub async fn open_store(config: &Config) -> Result<Arc<SqlStore>> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let url = database_url(config)?;
    let store = SqlStore::connect(&url, config.database.max_connections)
        .await
        .context("opening the database")?;
    Ok(Arc::new(store))
}

/// Builds the services over an opened store.
pub async fn build_services(config: Config, store: Arc<SqlStore>) -> Result<Arc<Services>> {
    let key = load_or_create_signing_key(&config.data_dir)?;
    rhizome_service::media::check_store(&config)
        .map_err(|error| anyhow::anyhow!("media.s3: {error:?}"))?;
    let store: Arc<dyn DataStore> = store;
    Ok(Services::new(config, store, key))
}

/// An exclusive lock on a data directory (`<data_dir>/rhizome.lock`), held by a running
/// server for as long as it runs, and by the administrator's commands that change rooms or
/// sessions: on SQLite those must not run beside a server on the same data (the stream
/// position and the server's caches live in its memory). On PostgreSQL several processes
/// share the data directory and the database (positions, room locks and cache invalidations
/// go through the database), so no lock is taken. Released when dropped, and by the system
/// when the process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Option<std::fs::File>,
}

impl DataDirLock {
    /// Takes the lock for a server or command with this configuration: nothing on
    /// PostgreSQL, [`DataDirLock::acquire`] on SQLite.
    pub fn acquire_for(config: &Config, purpose: &str) -> Result<Self> {
        if database_url(config)?.starts_with("postgres") {
            return Ok(Self { _file: None });
        }
        Self::acquire(&config.data_dir, purpose)
    }

    /// Takes the lock, or fails at once (with `purpose` in the message) if a server or
    /// another command holds it.
    pub fn acquire(data_dir: &Path, purpose: &str) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let path = data_dir.join("rhizome.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{purpose}: Rhizome is already running on {} (or another administration \
                 command is); stop it first",
                data_dir.display()
            ),
            Err(std::fs::TryLockError::Error(error)) => {
                Err(error).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// A running server.
pub struct RunningServer {
    /// The address the HTTP listener listens on.
    pub address: SocketAddr,
    /// The address the TLS listener listens on, if there is one.
    pub tls_address: Option<SocketAddr>,
    /// The services.
    pub services: Arc<Services>,
    shutdown: tokio::sync::watch::Sender<bool>,
    /// Ends the requests still running after the grace period.
    end_requests: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tls: Option<Arc<tls::TlsCertificates>>,
    store: Arc<SqlStore>,
    _lock: DataDirLock,
}

impl RunningServer {
    /// Reads the TLS certificate again (what SIGHUP does): new connections get the new one,
    /// open connections keep theirs. If it cannot be read, the old certificate stays in
    /// service and the error (logged too) is returned. Does nothing without a TLS listener.
    pub fn reload_tls_certificate(&self) -> Result<()> {
        match &self.tls {
            Some(certificates) => certificates.reload(),
            None => Ok(()),
        }
    }

    /// The certificate chain the TLS listener serves now (end entity first), if any.
    pub fn tls_certificate_chain(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.tls.as_ref().and_then(|certificates| certificates.resolver.certificate_chain())
    }

    /// Stops in order: the listeners take no more connections or requests; requests in flight
    /// get [`shutdown::GRACE`] to finish, then are ended (long-polling syncs, mostly); the
    /// federation senders stop and the push queue is drained; then the database closes.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        let deadline = tokio::time::Instant::now() + shutdown::GRACE;
        let mut running = Vec::new();
        for mut task in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                running.push(task);
            }
        }
        let _ = self.end_requests.send(true);
        let deadline = tokio::time::Instant::now() + shutdown::CLOSE;
        for mut task in running {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::debug!("a listener still had connections open; stopping it");
                task.abort();
            }
        }
        self.services.stop_federation_sender().await;
        self.services.stop_delayed_events_worker().await;
        self.services.stop_push_action_pruner().await;
        self.services.stop_push_worker(shutdown::PUSH_DRAIN).await;
        self.store.close().await;
        tracing::info!("stopped");
    }
}

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct StartOptions {
    /// Name the server after its TLS listener's bound address (`127.0.0.11:8448`), once bound:
    /// for tests whose servers federate under IP literals on ports picked at start.
    pub server_name_from_tls_listener: bool,
}

/// Starts serving on the configured address (port 0 picks a free port), and over TLS on
/// `tls.listen` if set.
pub async fn start(config: Config) -> Result<RunningServer> {
    start_with_options(config, StartOptions::default()).await
}

/// Starts serving, as [`start`], with options.
pub async fn start_with_options(
    mut config: Config,
    options: StartOptions,
) -> Result<RunningServer> {
    let lock = DataDirLock::acquire_for(&config, "cannot start")?;
    let store = open_store(&config).await?;
    let listen = config.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    // The address actually bound (port 0 picks one), for the URLs the server gives out.
    config.listen = address;
    let tls_listener = bind_tls(&mut config, options).await?;
    let tls_certificates = match &tls_listener {
        Some(_) => Some(Arc::new(load_tls_certificates(&config)?)),
        None => None,
    };
    let tls_server_config = match &tls_certificates {
        Some(certificates) => {
            Some(tls::server_config(certificates.resolver.clone(), config.tls.acme.enabled)?)
        }
        None => None,
    };
    let acme = match &tls_certificates {
        Some(certificates) if config.tls.acme.enabled => Some(acme::AcmeManager::new(
            &config,
            config.data_dir.join("acme"),
            certificates.resolver.clone(),
        )?),
        _ => None,
    };
    let services = build_services(config, store.clone()).await?;
    services.start_push_worker();
    services.start_federation_sender();
    services.start_delayed_events_worker();
    services.start_push_action_pruner();
    let (end_requests, requests_ended) = tokio::sync::watch::channel(false);
    let app = rhizome_api::app(services.clone())
        .layer(axum::middleware::from_fn_with_state(requests_ended, shutdown::end_at_shutdown));
    let (shutdown, shutdown_signal) = tokio::sync::watch::channel(false);
    let stopped = |mut signal: tokio::sync::watch::Receiver<bool>| async move {
        let _ = signal.wait_for(|stopped| *stopped).await;
    };
    let mut tasks = Vec::new();
    let plain =
        axum::serve(listener, app.clone().into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stopped(shutdown_signal.clone()));
    tasks.push(tokio::spawn(async move {
        if let Err(error) = plain.await {
            tracing::error!(%error, "the HTTP server stopped with an error");
        }
    }));
    let mut tls_address = None;
    if let (Some(tcp), Some(server_config)) = (tls_listener, tls_server_config) {
        tls_address = Some(tcp.local_addr()?);
        // `tap_io` makes axum give handlers the connection's `ConnectInfo<SocketAddr>` (the
        // client's address, for rate limits), as on the plain listener.
        let listener = tls::TlsListener::new(tcp, tokio_rustls::TlsAcceptor::from(server_config))?
            .tap_io(|_| {});
        let secure = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(stopped(shutdown_signal.clone()));
        tasks.push(tokio::spawn(async move {
            if let Err(error) = secure.await {
                tracing::error!(%error, "the HTTPS server stopped with an error");
            }
        }));
    }
    if let Some(acme) = acme {
        tasks.push(tokio::spawn(acme.run(shutdown_signal)));
    }
    tracing::info!(
        %address,
        tls_address = ?tls_address,
        backend = services.store.backend_name(),
        "Rhizome is listening"
    );
    Ok(RunningServer {
        address,
        tls_address,
        services,
        shutdown,
        end_requests,
        tasks,
        tls: tls_certificates,
        store,
        _lock: lock,
    })
}

/// Binds the TLS listener if one is configured, writing the bound address back into the
/// configuration (and the server name, if asked).
async fn bind_tls(config: &mut Config, options: StartOptions) -> Result<Option<TcpListener>> {
    let Some(listen) = config.tls.listen else {
        if options.server_name_from_tls_listener {
            anyhow::bail!("naming the server after its TLS listener needs tls.listen");
        }
        if config.tls.acme.enabled {
            anyhow::bail!(
                "tls.acme.enabled needs tls.listen (the TLS-ALPN-01 challenge is answered there)"
            );
        }
        return Ok(None);
    };
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen} (tls.listen)"))?;
    let bound = listener.local_addr()?;
    config.tls.listen = Some(bound);
    if options.server_name_from_tls_listener {
        config.server_name = ruma::OwnedServerName::try_from(bound.to_string())
            .with_context(|| format!("{bound} as a server name"))?;
    }
    Ok(Some(listener))
}

/// The TLS listener's certificate: from the ACME directory, or from the configured files.
fn load_tls_certificates(config: &Config) -> Result<tls::TlsCertificates> {
    let source = if config.tls.acme.enabled {
        if config.tls.certificate_file.is_some() {
            tracing::warn!(
                "tls.acme.enabled: tls.certificate_file and tls.private_key_file are not used"
            );
        }
        tls::CertificateSource::Acme { directory: config.data_dir.join("acme") }
    } else {
        match (&config.tls.certificate_file, &config.tls.private_key_file) {
            (Some(certificate_file), Some(private_key_file)) => tls::CertificateSource::Files {
                certificate_file: certificate_file.clone(),
                private_key_file: private_key_file.clone(),
            },
            _ => anyhow::bail!("tls.listen needs tls.certificate_file and tls.private_key_file"),
        }
    };
    tls::TlsCertificates::load(source).context("loading the TLS certificate")
}

/// The default configuration file location, if one exists there.
pub fn default_config_path() -> Option<PathBuf> {
    let path = PathBuf::from("rhizome.toml");
    path.exists().then_some(path)
}
