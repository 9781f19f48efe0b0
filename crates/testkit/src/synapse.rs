//! Synapse, the reference homeserver, as a real peer for federation tests: a throwaway instance
//! on SQLite in a temporary directory, serving the client and federation APIs over TLS on a
//! loopback address, its server name `IP:PORT` so that no DNS, SRV or `.well-known` look-up is
//! needed.
//!
//! Synapse comes from PyPI: `scripts/synapse-venv.sh` installs a pinned version into a virtual
//! environment. `scripts/test.sh` runs it before `cargo test` and names the environment in
//! `SYNAPSE_VENV`; when that variable is unset, the first test to need Synapse runs the
//! script itself (the first time this takes about half a minute, then it is instant).
//!
//! Each instance is killed when dropped. It runs in its own process group, watched by a small
//! shell loop that kills that group once the test process is gone, so no Synapse outlives its
//! tests, even when they panic or the test process is killed.

mod config;

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use ruma::{OwnedServerName, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::certs::TestCertificate;

/// The loopback address Synapse instances listen on unless told otherwise.
pub const DEFAULT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);

/// How long Synapse may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The environment variable naming the virtual environment Synapse is installed in.
pub const VENV_VARIABLE: &str = "SYNAPSE_VENV";

/// How a Synapse instance is set up.
#[derive(Clone, Debug)]
pub struct SynapseOptions {
    ip: Ipv4Addr,
    overrides: serde_json::Map<String, Value>,
    extra_yaml: Option<String>,
}

impl Default for SynapseOptions {
    fn default() -> Self {
        Self { ip: DEFAULT_IP, overrides: serde_json::Map::new(), extra_yaml: None }
    }
}

impl SynapseOptions {
    /// The loopback address to listen on (any of 127.0.0.0/8; the port is chosen free).
    pub fn ip(mut self, ip: Ipv4Addr) -> Self {
        self.ip = ip;
        self
    }

    /// Sets a top-level configuration option, replacing the test default for that key whole
    /// (e.g. `config("federation_domain_whitelist", json!(["127.0.0.13:8448"]))`).
    pub fn config(mut self, key: &str, value: Value) -> Self {
        self.overrides.insert(key.to_owned(), value);
        self
    }

    /// Extra YAML configuration, read after the test defaults: each top-level key it sets
    /// replaces the default for that key whole (Synapse merges its config files shallowly).
    pub fn extra_yaml(mut self, yaml: impl Into<String>) -> Self {
        self.extra_yaml = Some(yaml.into());
        self
    }
}

/// A user registered on a Synapse instance.
#[derive(Clone, Debug)]
pub struct RegisteredUser {
    /// The full user ID.
    pub user_id: OwnedUserId,
    /// An access token for the client API.
    pub access_token: String,
    /// The device the token belongs to.
    pub device_id: String,
}

/// A running Synapse, killed when dropped.
pub struct Synapse {
    server_name: OwnedServerName,
    address: SocketAddr,
    base_url: String,
    shared_secret: String,
    certificate: TestCertificate,
    started_in: Duration,
    process: Child,
    watchdog: Option<Child>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Synapse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synapse")
            .field("server_name", &self.server_name)
            .field("pid", &self.process.id())
            .finish_non_exhaustive()
    }
}

/// Why an attempt to start Synapse failed.
enum StartError {
    /// Another process took the port between choosing it and Synapse binding it.
    PortTaken,
    /// Anything else, with what Synapse logged.
    Failed(String),
}

impl Synapse {
    /// Starts a Synapse with the test defaults on [`DEFAULT_IP`].
    pub async fn start() -> Self {
        Self::start_with(SynapseOptions::default()).await
    }

    /// Starts a Synapse set up by `options`. Panics, with Synapse's log, if it does not start.
    pub async fn start_with(options: SynapseOptions) -> Self {
        let venv = tokio::task::spawn_blocking(venv)
            .await
            .expect("invariant: the install task does not panic")
            .unwrap_or_else(|error| panic!("Synapse is not installed: {error}"));
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::try_start(&venv, &options).await {
                Ok(synapse) => return synapse,
                Err(StartError::PortTaken) if attempts < 5 => continue,
                Err(StartError::PortTaken) => panic!("Synapse found no free port"),
                Err(StartError::Failed(error)) => panic!("Synapse did not start: {error}"),
            }
        }
    }

    /// One Synapse shared by every test of this process that asks for it, started on first use
    /// and killed when the process ends. Register users with unique names on it.
    pub async fn shared() -> &'static Self {
        static SHARED: tokio::sync::OnceCell<Synapse> = tokio::sync::OnceCell::const_new();
        SHARED.get_or_init(Self::start).await
    }

    async fn try_start(venv: &Path, options: &SynapseOptions) -> Result<Self, StartError> {
        let failed = |error: std::io::Error| StartError::Failed(error.to_string());
        let dir = tempfile::Builder::new().prefix("rhizome-synapse-").tempdir().map_err(failed)?;
        let port = TcpListener::bind((options.ip, 0))
            .and_then(|listener| listener.local_addr())
            .map_err(failed)?
            .port();
        let address = SocketAddr::from((options.ip, port));
        let server_name = OwnedServerName::try_from(address.to_string())
            .expect("invariant: an IP address and port make a server name");
        let certificate = TestCertificate::self_signed(&[&options.ip.to_string()]);
        let shared_secret = config::random_hex(32).map_err(failed)?;
        let config_files = config::write(
            dir.path(),
            &config::Settings { server_name: &server_name, address, certificate: &certificate },
            &shared_secret,
            options,
        )
        .map_err(failed)?;

        let started = Instant::now();
        let output = std::fs::File::create(dir.path().join("synapse.out")).map_err(failed)?;
        let mut command = Command::new(venv.join("bin/python"));
        command.args(["-m", "synapse.app.homeserver"]);
        for file in &config_files {
            command.arg("-c").arg(file);
        }
        let process = command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(output.try_clone().map_err(failed)?)
            .stderr(output)
            .process_group(0)
            .spawn()
            .map_err(failed)?;
        let watchdog = spawn_watchdog(process.id());
        let mut synapse = Self {
            server_name,
            address,
            base_url: format!("https://{address}"),
            shared_secret,
            certificate,
            started_in: Duration::ZERO,
            process,
            watchdog,
            dir,
        };
        synapse.wait_until_ready(started).await?;
        synapse.started_in = started.elapsed();
        Ok(synapse)
    }

    async fn wait_until_ready(&mut self, started: Instant) -> Result<(), StartError> {
        let client = self.client();
        let url = self.url("/_matrix/client/versions");
        loop {
            if let Ok(Some(status)) = self.process.try_wait() {
                let log = self.log_tail(60);
                if log.contains("Address already in use") {
                    return Err(StartError::PortTaken);
                }
                return Err(StartError::Failed(format!("it exited ({status}):\n{log}")));
            }
            let answer = client.get(&url).timeout(Duration::from_secs(5)).send().await;
            if answer.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(StartError::Failed(format!(
                    "no answer after {START_TIMEOUT:?}:\n{}",
                    self.log_tail(60)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its server name, `IP:PORT`.
    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// The address it listens on (client and federation APIs, TLS).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// `https://IP:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The base URL followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Its self-signed TLS certificate.
    pub fn certificate(&self) -> &TestCertificate {
        &self.certificate
    }

    /// How long it took from starting the process to its first answer.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The secret of its shared-secret registration API.
    pub fn registration_shared_secret(&self) -> &str {
        &self.shared_secret
    }

    /// An HTTPS client that trusts this instance's certificate (and only that).
    pub fn client(&self) -> reqwest::Client {
        let certificate =
            reqwest::Certificate::from_pem(self.certificate.certificate_pem.as_bytes())
                .expect("invariant: the test certificate is valid PEM");
        reqwest::Client::builder()
            .tls_certs_only([certificate])
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("invariant: the HTTP client builds")
    }

    /// Registers a user through the shared-secret admin API
    /// (`/_synapse/admin/v1/register`): fetch a nonce, then send the HMAC-SHA1 of nonce, user
    /// name, password and admin flag keyed with the shared secret.
    pub async fn register(&self, localpart: &str, admin: bool) -> RegisteredUser {
        let client = self.client();
        let url = self.url("/_synapse/admin/v1/register");
        let nonce: Value = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /_synapse/admin/v1/register")
            .json()
            .await
            .expect("a nonce");
        let nonce = nonce["nonce"].as_str().expect("a nonce string").to_owned();
        let password = format!("{localpart}-password");
        let mac = registration_mac(&self.shared_secret, &nonce, localpart, &password, admin);
        let body = json!({
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac,
        });
        let response = client.post(&url).json(&body).send().await.expect("POST register");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "registering {localpart} on Synapse: {status} {text}");
        #[derive(Deserialize)]
        struct Registered {
            user_id: OwnedUserId,
            access_token: String,
            device_id: String,
        }
        let registered: Registered = serde_json::from_str(&text).expect("a registration answer");
        RegisteredUser {
            user_id: registered.user_id,
            access_token: registered.access_token,
            device_id: registered.device_id,
        }
    }

    /// The directory it runs in (configuration, database, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of its log (and of what it printed), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        for name in ["synapse.out", "homeserver.log"] {
            let content = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
            let all: Vec<&str> = content.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            text.push_str(&format!("--- {name}\n{}\n", tail.join("\n")));
        }
        text
    }
}

impl Drop for Synapse {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        kill_group(self.process.id());
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The HMAC-SHA1 the shared-secret registration API expects, as lowercase hex.
pub fn registration_mac(
    shared_secret: &str,
    nonce: &str,
    localpart: &str,
    password: &str,
    admin: bool,
) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(shared_secret.as_bytes())
        .expect("invariant: HMAC takes keys of any length");
    let admin = if admin { "admin" } else { "notadmin" };
    for (index, part) in [nonce, localpart, password, admin].into_iter().enumerate() {
        if index > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Kills a process group with SIGKILL (procps' `kill`, which takes `--`, unlike dash's).
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A shell loop, in a process group of its own (so a terminal's Ctrl-C does not end it first),
/// that kills Synapse's process group once this test process is gone (with the external
/// `kill`: the shell's own does not take `--`).
fn spawn_watchdog(group: u32) -> Option<Child> {
    let script = format!(
        "while kill -0 {test} 2>/dev/null && kill -0 {group} 2>/dev/null; do sleep 1; done; \
         env kill -KILL -- -{group} 2>/dev/null",
        test = std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// The virtual environment Synapse is installed in: `$SYNAPSE_VENV`, or else the one
/// `scripts/synapse-venv.sh` installs (run once per test process).
pub fn venv() -> Result<PathBuf, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| match std::env::var_os(VENV_VARIABLE) {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            if path.join("bin/python").exists() {
                Ok(path)
            } else {
                Err(format!(
                    "{VENV_VARIABLE}={} holds no Python (run scripts/synapse-venv.sh)",
                    path.display()
                ))
            }
        }
        _ => install_venv(),
    })
    .clone()
}

fn install_venv() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/synapse-venv.sh");
    let output = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| format!("running {}: {error}", script.display()))?;
    if !output.status.success() {
        return Err(format!("{} failed ({})", script.display(), output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim();
    if path.is_empty() {
        return Err(format!("{} printed no path", script.display()));
    }
    Ok(PathBuf::from(path))
}
