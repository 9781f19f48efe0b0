//! The Rhizome server as a library: loading configuration, opening the data directory (signing
//! key, database), building the services and serving HTTP until shutdown. The `rhizome`
//! binary and the test kit both start the server through here.

pub mod admin;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
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
    write_private_file(&path, &text)?;
    tracing::info!(key_id = %key.key_id(), "generated a new server signing key");
    Ok(key)
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
    let store: Arc<dyn DataStore> = store;
    Ok(Services::new(config, store, key))
}

/// An exclusive lock on a data directory (`<data_dir>/rhizome.lock`), held by a running
/// server for as long as it runs, and by the administrator's commands that change rooms or
/// sessions: those must not run beside a server on the same data (the stream position and the
/// server's caches live in its memory). Released when dropped, and by the system when the
/// process ends.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
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
            Ok(()) => Ok(Self { _file: file }),
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
    /// The address it listens on.
    pub address: SocketAddr,
    /// The services.
    pub services: Arc<Services>,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    store: Arc<SqlStore>,
    _lock: DataDirLock,
}

impl RunningServer {
    /// Stops serving, waits for requests in flight and closes the database.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        let mut task = self.task;
        // Long-polling syncs may hold the graceful shutdown; give them a moment, then stop.
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut task).await.is_err() {
            task.abort();
        }
        self.store.close().await;
    }
}

/// Starts serving on the configured address (port 0 picks a free port).
pub async fn start(mut config: Config) -> Result<RunningServer> {
    let lock = DataDirLock::acquire(&config.data_dir, "cannot start")?;
    let store = open_store(&config).await?;
    let listen = config.listen;
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    // The address actually bound (port 0 picks one), for the URLs the server gives out.
    config.listen = address;
    let services = build_services(config, store.clone()).await?;
    services.start_push_worker();
    let app = rhizome_api::app(services.clone());
    let (shutdown, shutdown_signal) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(async move {
                let _ = shutdown_signal.await;
            });
        if let Err(error) = serve.await {
            tracing::error!(%error, "the HTTP server stopped with an error");
        }
    });
    tracing::info!(%address, backend = services.store.backend_name(), "Rhizome is listening");
    Ok(RunningServer { address, services, shutdown, task, store, _lock: lock })
}

/// The default configuration file location, if one exists there.
pub fn default_config_path() -> Option<PathBuf> {
    let path = PathBuf::from("rhizome.toml");
    path.exists().then_some(path)
}
