//! The configuration a test Synapse runs with: SQLite, one TLS listener for the client and
//! federation APIs, federation to loopback addresses allowed with certificates unchecked, quick
//! federation retries, no rate limits, no trusted key servers, no presence.
//!
//! The files are written as JSON, which YAML reads as it is.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ruma::ServerName;
use serde_json::{Value, json};

use super::SynapseOptions;
use crate::certs::TestCertificate;

/// What the configuration is made from, besides the options.
pub(super) struct Settings<'a> {
    pub server_name: &'a ServerName,
    pub address: SocketAddr,
    pub certificate: &'a TestCertificate,
}

/// Writes the configuration (and the TLS certificate and key) into `dir` and returns the
/// configuration files to pass to Synapse, in order.
pub(super) fn write(
    dir: &Path,
    settings: &Settings<'_>,
    shared_secret: &str,
    options: &SynapseOptions,
) -> io::Result<Vec<PathBuf>> {
    let (certificate_path, key_path) = write_certificate(dir, settings.certificate)?;
    let log_config = dir.join("log.config");
    std::fs::write(&log_config, log_config_json(&dir.join("homeserver.log")).to_string())?;

    let mut config = base_config(dir, settings, shared_secret, &log_config)?;
    config.insert("tls_certificate_path".to_owned(), path_value(&certificate_path));
    config.insert("tls_private_key_path".to_owned(), path_value(&key_path));
    config.extend(rate_limits());
    for (key, value) in &options.overrides {
        config.insert(key.clone(), value.clone());
    }
    let main = dir.join("homeserver.yaml");
    std::fs::write(&main, Value::Object(config).to_string())?;
    let mut files = vec![main];
    if let Some(yaml) = &options.extra_yaml {
        let extra = dir.join("extra.yaml");
        std::fs::write(&extra, yaml)?;
        files.push(extra);
    }
    Ok(files)
}

fn write_certificate(dir: &Path, certificate: &TestCertificate) -> io::Result<(PathBuf, PathBuf)> {
    let certificate_path = dir.join("tls.crt");
    let key_path = dir.join("tls.key");
    std::fs::write(&certificate_path, &certificate.certificate_pem)?;
    std::fs::write(&key_path, &certificate.private_key_pem)?;
    Ok((certificate_path, key_path))
}

fn path_value(path: &Path) -> Value {
    Value::String(path.to_string_lossy().into_owned())
}

fn base_config(
    dir: &Path,
    settings: &Settings<'_>,
    shared_secret: &str,
    log_config: &Path,
) -> io::Result<serde_json::Map<String, Value>> {
    let config = json!({
        "server_name": settings.server_name.as_str(),
        "report_stats": false,
        "pid_file": path_value(&dir.join("homeserver.pid")),
        "listeners": [{
            "port": settings.address.port(),
            "bind_addresses": [settings.address.ip().to_string()],
            "type": "http",
            "tls": true,
            "x_forwarded": false,
            "resources": [{ "names": ["client", "federation"], "compress": false }],
        }],
        "database": {
            "name": "sqlite3",
            "args": { "database": path_value(&dir.join("homeserver.db")) },
        },
        "log_config": path_value(log_config),
        "media_store_path": path_value(&dir.join("media_store")),
        "signing_key_path": path_value(&dir.join("signing.key")),
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": random_hex(32)?,
        "form_secret": random_hex(32)?,
        "enable_metrics": false,
        "trusted_key_servers": [],
        "suppress_key_server_warning": true,
        "federation_verify_certificates": false,
        // These exact spellings: Synapse ignores the `…blocklist` ones.
        "ip_range_blacklist": [],
        "federation_ip_range_blacklist": [],
        "federation": {
            "client_timeout": "20s",
            "max_short_retry_delay": "1s",
            "max_long_retry_delay": "5s",
            "destination_min_retry_interval": "2s",
            "destination_retry_multiplier": 1,
            "destination_max_retry_interval": "5s",
        },
        "allow_public_rooms_over_federation": true,
        "room_list_publication_rules": [{ "action": "allow" }],
        "presence": { "enabled": false },
        "url_preview_enabled": false,
    });
    Ok(object(config))
}

/// Every rate limit raised far beyond what a test does.
fn rate_limits() -> serde_json::Map<String, Value> {
    let high = json!({ "per_second": 10_000, "burst_count": 100_000 });
    let config = json!({
        "rc_message": high,
        "rc_registration": high,
        "rc_registration_token_validity": high,
        "rc_login": { "address": high, "account": high, "failed_attempts": high },
        "rc_joins": { "local": high, "remote": high },
        "rc_joins_per_room": high,
        "rc_invites": { "per_room": high, "per_user": high, "per_issuer": high },
        "rc_3pid_validation": high,
        "rc_third_party_invite": high,
        "rc_media_create": high,
        "rc_profile": high,
        "rc_presence": { "per_user": high },
        "rc_delayed_event_mgmt": high,
        "rc_room_creation": high,
        "rc_reports": high,
        "rc_admin_redaction": high,
        "rc_key_requests": high,
        "rc_user_directory": high,
        "rc_federation": {
            "window_size": 1000,
            "sleep_limit": 100_000,
            "sleep_delay": 1,
            "reject_limit": 100_000,
            "concurrent": 1000,
        },
    });
    object(config)
}

fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// Python logging to `homeserver.log` at INFO, with Synapse's request context in each line.
fn log_config_json(log_file: &Path) -> Value {
    json!({
        "version": 1,
        "formatters": {
            "precise": {
                "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(request)s - %(message)s",
            },
        },
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "precise",
                "filename": path_value(log_file),
                "encoding": "utf8",
            },
        },
        "loggers": { "synapse.storage.SQL": { "level": "INFO" } },
        "root": { "level": "INFO", "handlers": ["file"] },
        "disable_existing_loggers": false,
    })
}

/// `bytes` random bytes from the kernel, as lowercase hex.
pub(super) fn random_hex(bytes: usize) -> io::Result<String> {
    use std::io::Read;
    let mut buffer = vec![0_u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buffer)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}
