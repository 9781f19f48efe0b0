//! Configuration of Rhizome's own TLS listener, which serves the client and the federation API
//! over HTTPS, with a certificate from files or obtained over ACME.

use std::{net::SocketAddr, path::PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Rhizome's own HTTPS listener (client and federation API). Leave `listen` unset when a
/// reverse proxy (Caddy, nginx) terminates TLS in front of Rhizome.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The address and port of the HTTPS listener (`0.0.0.0:8448`). Unset: no TLS listener.
    pub listen: Option<SocketAddr>,
    /// The certificate chain, PEM. Re-read on SIGHUP without dropping connections.
    pub certificate_file: Option<PathBuf>,
    /// The certificate's private key, PEM. Re-read on SIGHUP.
    pub private_key_file: Option<PathBuf>,
    /// Obtaining and renewing the certificate automatically over ACME (Let's Encrypt).
    pub acme: AcmeConfig,
}

/// Automatic certificates over ACME. The account, certificate and key are kept in the data
/// directory (`acme/`); the certificate is renewed when a third of its lifetime is left.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeConfig {
    /// Whether Rhizome obtains its certificate itself. The ACME server checks control of each
    /// name with the TLS-ALPN-01 challenge on port 443, so `tls.listen` must be reachable there
    /// (`0.0.0.0:443`, or a port forwarded from 443). `tls.certificate_file` and
    /// `tls.private_key_file` are then not used.
    pub enabled: bool,
    /// The ACME directory. Let's Encrypt's production directory by default.
    pub directory_url: String,
    /// The names the certificate covers (DNS names, or IP addresses where the ACME server
    /// issues for them). Empty: the server name's host (without a port).
    pub domains: Vec<String>,
    /// Contact addresses given to the ACME server (`mailto:admin@example.org`).
    pub contact: Vec<String>,
    /// A PEM file of the root certificates to trust, instead of the system's, when talking to
    /// the ACME server (for a private or test ACME server).
    pub directory_ca_file: Option<PathBuf>,
}

impl Default for AcmeConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            directory_url: "https://acme-v02.api.letsencrypt.org/directory".to_owned(),
            domains: Vec::new(),
            contact: Vec::new(),
            directory_ca_file: None,
        }
    }
}
