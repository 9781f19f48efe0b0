//! Rhizome's configuration: one documented struct, read from TOML with `RHIZOME_*` overrides.
//!
//! Every option has a default, so an empty file (or none) gives a working server on
//! `http://localhost:8008`. The example file `rhizome.example.toml` is generated from this struct
//! by [`Config::example_toml`], and a test fails when the committed copy is stale.

mod example;
mod federation;
mod media;
mod push;
mod tls;
mod voip;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use ruma::{OwnedServerName, RoomVersionId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use federation::{FederationConfig, TrustedKeyServer, glob_match};
pub use media::{MediaConfig, S3Config, ThumbnailMethod, ThumbnailSize, UrlPreviewConfig};
pub use push::PushConfig;
pub use tls::{AcmeConfig, TlsConfig};
pub use voip::VoipConfig;

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "RHIZOME_";

/// Rhizome's configuration.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The name of this server: the part after the colon in user IDs (`@alice:example.org`).
    /// It cannot be changed once users and rooms exist.
    #[schemars(with = "String")]
    pub server_name: OwnedServerName,
    /// The directory holding the database, the signing key and media files.
    pub data_dir: PathBuf,
    /// The address and port the HTTP listener binds to.
    pub listen: SocketAddr,
    /// The public URL clients use to reach this server, advertised in
    /// `/.well-known/matrix/client`. Empty means `http://<listen>`.
    pub public_base_url: String,
    /// The database.
    pub database: DatabaseConfig,
    /// Who may create an account.
    pub registration: RegistrationConfig,
    /// Access tokens and sessions.
    pub sessions: SessionsConfig,
    /// Rooms.
    pub rooms: RoomsConfig,
    /// Request and sync limits.
    pub limits: LimitsConfig,
    /// Rate limits for login, registration and sending.
    pub rate_limits: RateLimitsConfig,
    /// Logging. Nothing is logged of message content, access tokens or IP addresses unless
    /// stated here.
    pub logging: LoggingConfig,
    /// The media repository: uploads, downloads, thumbnails and URL previews.
    pub media: MediaConfig,
    /// Voice and video calls.
    pub voip: VoipConfig,
    /// Push notifications to users' phones.
    pub push: PushConfig,
    /// Federation with other homeservers.
    pub federation: FederationConfig,
    /// Rhizome's own HTTPS listener.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: OwnedServerName::try_from("localhost")
                .expect("invariant: `localhost` is a valid server name"),
            data_dir: PathBuf::from("./data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            public_base_url: String::new(),
            database: DatabaseConfig::default(),
            registration: RegistrationConfig::default(),
            sessions: SessionsConfig::default(),
            rooms: RoomsConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            logging: LoggingConfig::default(),
            media: MediaConfig::default(),
            voip: VoipConfig::default(),
            push: PushConfig::default(),
            federation: FederationConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The database.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// The database URL. Empty means SQLite at `<data_dir>/rhizome.db`. A PostgreSQL URL
    /// (`postgres://user:password@host/dbname`) selects PostgreSQL.
    pub url: String,
    /// A file whose content is the database URL (keeps a password out of this file).
    /// Used when `url` is empty.
    pub url_file: Option<PathBuf>,
    /// The most connections used for reading (SQLite) or in all (PostgreSQL).
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: String::new(), url_file: None, max_connections: 8 }
    }
}

/// Who may create an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RegistrationMode {
    /// Sign-up needs an invite token made with `rhizome admin token create`.
    Token,
    /// Anyone who can reach the server may sign up.
    Open,
    /// Nobody may sign up through the API.
    Disabled,
}

/// Who may create an account.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// `token` (invite-only, the default), `open` or `disabled`.
    pub mode: RegistrationMode,
    /// The shortest password accepted at sign-up and password change.
    pub min_password_length: usize,
    /// A secret that lets tools holding it create accounts (administrators included) through
    /// `POST /_synapse/admin/v1/register`, as Synapse's `register_new_matrix_user` does.
    /// Unset (the default) turns that endpoint off. Prefer `shared_secret_file`.
    pub shared_secret: Option<String>,
    /// A file holding that secret (its surrounding whitespace ignored).
    pub shared_secret_file: Option<std::path::PathBuf>,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        Self {
            mode: RegistrationMode::Token,
            min_password_length: 8,
            shared_secret: None,
            shared_secret_file: None,
        }
    }
}

/// Access tokens and sessions.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// How long an access token lives, in seconds, when the client asked for a refresh token.
    /// Tokens of clients that did not ask for one never expire.
    pub refreshable_access_token_lifetime_secs: u64,
    /// How long a user-interactive authentication session lives, in seconds.
    pub uia_session_lifetime_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self { refreshable_access_token_lifetime_secs: 300, uia_session_lifetime_secs: 900 }
    }
}

/// Rooms.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    /// The room version of new rooms when the client does not choose one (1 to 12).
    #[schemars(with = "String")]
    #[serde(deserialize_with = "room_version_text_or_number")]
    pub default_room_version: RoomVersionId,
}

/// A room version written as text (`"10"`) or as a number (`10`, as an environment variable
/// gives it).
fn room_version_text_or_number<'de, D>(deserializer: D) -> Result<RoomVersionId, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Text(String),
        Number(u64),
    }
    let text = match Written::deserialize(deserializer)? {
        Written::Text(text) => text,
        Written::Number(number) => number.to_string(),
    };
    RoomVersionId::try_from(text.as_str()).map_err(serde::de::Error::custom)
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { default_room_version: RoomVersionId::V12 }
    }
}

/// Request and sync limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest request body accepted on the client API, in bytes (media uploads have their
    /// own limit).
    pub max_request_bytes: usize,
    /// The longest `/sync` long-poll a client may ask for, in milliseconds.
    pub max_sync_timeout_ms: u64,
    /// The longest delay a client may give an event it schedules (delayed events, MSC4140, as
    /// MatrixRTC calls use them), in milliseconds; 0 turns delayed events off.
    pub max_event_delay_ms: u64,
    /// How many delayed events one user may have scheduled at a time.
    pub max_delayed_events_per_user: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
            max_sync_timeout_ms: 60_000,
            max_event_delay_ms: 24 * 3600 * 1000,
            max_delayed_events_per_user: 100,
        }
    }
}

/// One rate limit: a bucket of `burst` requests refilled at `per_second`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests regained per second.
    pub per_second: f64,
    /// The most requests allowed at once.
    pub burst: u32,
}

/// Rate limits, per user and per client address (the address is held in memory only).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Whether rate limits apply at all.
    pub enabled: bool,
    /// Login attempts, per client address and per account.
    pub login: RateLimit,
    /// Completed sign-ups, per client address. Asking for the sign-up steps is not counted.
    pub registration: RateLimit,
    /// Checks of a registration token's validity (Element's sign-up page), per client address.
    pub registration_token_validity: RateLimit,
    /// Messages, state events and redactions sent, per user.
    pub message: RateLimit,
    /// Messages, state events and redactions sent, per client address (everyone behind one
    /// address together, so keep it well above `message`).
    pub message_per_address: RateLimit,
    /// Restarting, sending or cancelling a delayed event with an access token, per user (a
    /// call's client restarts its delayed "left the call" event every few seconds).
    pub delayed_event_management: RateLimit,
    /// Restarting, sending or cancelling a delayed event by its delay ID alone, without an
    /// access token, per client address (a call's server may act for many users from one
    /// address, so keep it well above `delayed_event_management`).
    pub delayed_event_management_per_address: RateLimit,
    /// Reverse proxies in front of Rhizome. For connections from these addresses, the client's
    /// address is read from the `X-Forwarded-For` header they add (the last address in it that
    /// is not itself a trusted proxy). Empty: every client is the address it connects from.
    pub trusted_proxies: Vec<IpAddr>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            login: RateLimit { per_second: 0.2, burst: 5 },
            registration: RateLimit { per_second: 0.1, burst: 5 },
            registration_token_validity: RateLimit { per_second: 0.1, burst: 5 },
            message: RateLimit { per_second: 5.0, burst: 30 },
            message_per_address: RateLimit { per_second: 50.0, burst: 200 },
            delayed_event_management: RateLimit { per_second: 1.0, burst: 10 },
            delayed_event_management_per_address: RateLimit { per_second: 10.0, burst: 50 },
            trusted_proxies: Vec::new(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The log filter, in `tracing` syntax (`info`, `rhizome=debug,info`, …).
    /// The `RUST_LOG` environment variable wins over it.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self { level: "info".to_owned() }
    }
}

/// A configuration error that names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML text did not parse or did not fit the struct.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// An environment variable names no configuration key.
    #[error("unknown configuration key `{key}` (from environment variable {variable})")]
    UnknownEnvKey {
        /// The dotted key.
        key: String,
        /// The variable it came from.
        variable: String,
    },
}

impl Config {
    /// Parses TOML text, then applies `RHIZOME_*` overrides from `env` (pairs of variable name
    /// and value). A nested key is written with `__`: `RHIZOME_REGISTRATION__MODE=open`.
    /// Values are TOML (`true`, `42`, `"text"`); anything that does not parse as TOML is taken
    /// as a string. Unknown keys, in the file or the environment, are errors that name the key.
    pub fn from_toml_and_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|error| ConfigError::Invalid(error.to_string()))?;
        for (variable, value) in env {
            let Some(rest) = variable.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> =
                rest.split("__").map(|part| part.to_ascii_lowercase()).collect();
            apply_override(&mut table, &path, parse_env_value(&value), &variable)?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|error: toml::de::Error| ConfigError::Invalid(error.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks relations between options that their types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let version = &self.rooms.default_room_version;
        if !crate::SUPPORTED_ROOM_VERSIONS.contains(version) {
            return Err(ConfigError::Invalid(format!(
                "rooms.default_room_version: room version {version} is not supported \
                 (supported: 1 to 12)"
            )));
        }
        if !self.voip.turn_uris.is_empty() && self.voip.turn_shared_secret_file.is_none() {
            return Err(ConfigError::Invalid(
                "voip.turn_uris needs voip.turn_shared_secret_file (the TURN server's shared \
                 secret) so clients can be given credentials"
                    .to_owned(),
            ));
        }
        if self.tls.listen.is_some()
            && !self.tls.acme.enabled
            && (self.tls.certificate_file.is_none() || self.tls.private_key_file.is_none())
        {
            return Err(ConfigError::Invalid(
                "tls.listen needs tls.certificate_file and tls.private_key_file (PEM files), \
                 or tls.acme.enabled"
                    .to_owned(),
            ));
        }
        if self.federation.min_retry_interval_secs == 0
            || self.federation.max_retry_interval_secs < self.federation.min_retry_interval_secs
        {
            return Err(ConfigError::Invalid(
                "federation.min_retry_interval_secs must be greater than zero and at most \
                 federation.max_retry_interval_secs"
                    .to_owned(),
            ));
        }
        self.media.s3.validate().map_err(ConfigError::Invalid)?;
        if self.voip.turn_user_lifetime_secs == 0 {
            return Err(ConfigError::Invalid(
                "voip.turn_user_lifetime_secs must be greater than zero".to_owned(),
            ));
        }
        Ok(())
    }

    /// The documented example configuration file, generated from this struct.
    pub fn example_toml() -> String {
        example::render()
    }

    /// The base URL clients use, without a trailing slash.
    pub fn client_base_url(&self) -> String {
        if self.public_base_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_base_url.trim_end_matches('/').to_owned()
        }
    }
}

/// The configuration as TOML text (every default filled in).
pub fn to_toml(config: &Config) -> Result<String, ConfigError> {
    toml::to_string(config).map_err(|error| ConfigError::Invalid(error.to_string()))
}

fn parse_env_value(value: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut table) => table.remove("v").unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    }
}

fn apply_override(
    table: &mut toml::Table,
    path: &[String],
    value: toml::Value,
    variable: &str,
) -> Result<(), ConfigError> {
    let unknown =
        || ConfigError::UnknownEnvKey { key: path.join("."), variable: variable.to_owned() };
    // Check the key against the defaults, so a typo is caught even for sections the file
    // does not mention.
    let defaults = toml::Value::try_from(Config::default())
        .map_err(|error| ConfigError::Invalid(error.to_string()))?;
    let mut known = &defaults;
    for (index, part) in path.iter().enumerate() {
        match known.get(part) {
            Some(next) => known = next,
            // Optional keys are absent from the serialised defaults; accept them at leaf level
            // when the struct knows them (deserialisation rejects the rest).
            None if index == path.len() - 1 && known.is_table() => {
                if !Config::optional_keys().contains(&path.join(".").as_str()) {
                    return Err(unknown());
                }
            }
            None => return Err(unknown()),
        }
    }
    let (last, parents) = path.split_last().ok_or_else(unknown)?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(unknown)?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

impl Config {
    /// Dotted keys of options whose default is "unset" (they do not appear in the serialised
    /// defaults but may be set).
    fn optional_keys() -> &'static [&'static str] {
        &[
            "database.url_file",
            "media.legacy_freeze_ts",
            "media.s3.secret_access_key",
            "media.s3.secret_access_key_file",
            "voip.turn_shared_secret_file",
            "tls.listen",
            "tls.certificate_file",
            "tls.private_key_file",
            "tls.acme.directory_ca_file",
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_default_room_version_is_text_or_a_number() {
        for value in ["10", "\"10\""] {
            let config = Config::from_toml_and_env(
                "",
                env(&[("RHIZOME_ROOMS__DEFAULT_ROOM_VERSION", value)]),
            )
            .unwrap();
            assert_eq!(config.rooms.default_room_version, RoomVersionId::V10, "{value}");
        }
        let config =
            Config::from_toml_and_env("[rooms]\ndefault_room_version = 11\n", Vec::new()).unwrap();
        assert_eq!(config.rooms.default_room_version, RoomVersionId::V11);
        assert!(
            Config::from_toml_and_env("", env(&[("RHIZOME_ROOMS__DEFAULT_ROOM_VERSION", "13")]))
                .is_err()
        );
    }

    #[test]
    fn empty_text_gives_the_defaults() {
        let config = Config::from_toml_and_env("", Vec::new()).unwrap();
        assert_eq!(config.server_name.as_str(), "localhost");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8008");
        assert_eq!(config.registration.mode, RegistrationMode::Token);
        assert_eq!(config.rooms.default_room_version, RoomVersionId::V12);
    }

    #[test]
    fn unknown_keys_in_the_file_are_named() {
        let error = Config::from_toml_and_env("sever_name = \"x\"\n", Vec::new()).unwrap_err();
        assert!(error.to_string().contains("sever_name"), "{error}");
        let error =
            Config::from_toml_and_env("[registration]\nmood = \"open\"\n", Vec::new()).unwrap_err();
        assert!(error.to_string().contains("mood"), "{error}");
    }

    #[test]
    fn env_overrides_nested_keys_and_types() {
        let config = Config::from_toml_and_env(
            "server_name = \"example.org\"\n",
            env(&[
                ("RHIZOME_REGISTRATION__MODE", "open"),
                ("RHIZOME_RATE_LIMITS__ENABLED", "false"),
                ("RHIZOME_LISTEN", "127.0.0.1:9000"),
                ("RHIZOME_DATA_DIR", "/tmp/x"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(config.server_name.as_str(), "example.org");
        assert_eq!(config.registration.mode, RegistrationMode::Open);
        assert!(!config.rate_limits.enabled);
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn unknown_env_keys_are_named() {
        let error = Config::from_toml_and_env("", env(&[("RHIZOME_REGISTRATON__MODE", "open")]))
            .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("registraton.mode") && text.contains("RHIZOME_REGISTRATON__MODE"));
    }

    #[test]
    fn optional_keys_may_be_set_from_env() {
        let config =
            Config::from_toml_and_env("", env(&[("RHIZOME_DATABASE__URL_FILE", "/run/db")]))
                .unwrap();
        assert_eq!(config.database.url_file, Some(PathBuf::from("/run/db")));
    }

    #[test]
    fn unsupported_default_room_version_is_refused() {
        let error =
            Config::from_toml_and_env("[rooms]\ndefault_room_version = \"13\"\n", Vec::new())
                .unwrap_err();
        assert!(error.to_string().contains("default_room_version"), "{error}");
    }

    #[test]
    fn turn_uris_need_a_shared_secret() {
        let error =
            Config::from_toml_and_env("[voip]\nturn_uris = [\"turn:t.example.org\"]\n", Vec::new())
                .unwrap_err();
        assert!(error.to_string().contains("turn_shared_secret_file"), "{error}");
        let config = Config::from_toml_and_env(
            "[voip]\nturn_uris = [\"turn:t.example.org\"]\n",
            env(&[("RHIZOME_VOIP__TURN_SHARED_SECRET_FILE", "/run/turn")]),
        )
        .unwrap();
        assert_eq!(config.voip.turn_shared_secret_file, Some(PathBuf::from("/run/turn")));
        assert_eq!(config.voip.turn_user_lifetime_secs, 86_400);
    }

    #[test]
    fn an_enabled_s3_media_store_is_checked() {
        let base = "[media.s3]\nenabled = true\n";
        let error = Config::from_toml_and_env(base, Vec::new()).unwrap_err();
        assert!(error.to_string().contains("media.s3.bucket"), "{error}");
        let with_bucket = format!("{base}bucket = \"media\"\naccess_key_id = \"AK\"\n");
        let error = Config::from_toml_and_env(&with_bucket, Vec::new()).unwrap_err();
        assert!(error.to_string().contains("secret_access_key_file"), "{error}");
        let plain_http =
            format!("{with_bucket}endpoint = \"http://127.0.0.1:9000\"\nregion = \"x\"\n");
        let secret = [("RHIZOME_MEDIA__S3__SECRET_ACCESS_KEY", "very-secret")];
        let error = Config::from_toml_and_env(&plain_http, env(&secret)).unwrap_err();
        assert!(error.to_string().contains("allow_http"), "{error}");
        let allowed = format!("{plain_http}allow_http = true\n");
        let config = Config::from_toml_and_env(&allowed, env(&secret)).unwrap();
        assert_eq!(config.media.s3.secret_access_key.as_deref(), Some("very-secret"));
        assert!(!format!("{config:?}").contains("very-secret"));
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = Config::example_toml();
        let parsed = Config::from_toml_and_env(&example, Vec::new()).unwrap();
        let defaults = Config::default();
        assert_eq!(toml::to_string(&parsed).unwrap(), toml::to_string(&defaults).unwrap(),);
    }

    #[test]
    fn the_committed_example_file_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../rhizome.example.toml");
        if std::env::var_os("UPDATE_EXAMPLE").is_some() {
            std::fs::write(path, Config::example_toml()).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap();
        assert!(
            committed == Config::example_toml(),
            "rhizome.example.toml is stale: regenerate it with \
             `UPDATE_EXAMPLE=1 cargo test -p rhizome-core` or `rhizome config example`"
        );
    }
}
