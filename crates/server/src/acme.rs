//! Certificates over ACME (RFC 8555, e.g. Let's Encrypt), answered with the TLS-ALPN-01
//! challenge (RFC 8737; RFC 8738 for IP addresses) on Rhizome's own TLS listener: the
//! validator connects to the listener asking for `acme-tls/1`, and the certificate resolver
//! shows it a challenge certificate instead of the real one. A background task obtains the
//! certificate, keeps it in `<data_dir>/acme/`, and renews it once a third of its lifetime is
//! left; it stops with the server.

mod http;
mod store;

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result, anyhow};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::{pki_types::PrivateKeyDer, sign::CertifiedKey};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::store::CertificateInfo;
use self::{
    http::{ReqwestClient, acme_error},
    store::{account_file, certificate_files, write_private},
};
use crate::tls::{CertificateResolver, certified_key_from_pem, crypto_provider};

/// Whether an ACME directory holds a certificate.
pub fn stored_certificate_exists(directory: &Path) -> bool {
    let (certificate, key) = certificate_files(directory);
    certificate.exists() && key.exists()
}

/// The certificate chain and key files in an ACME directory.
pub fn stored_certificate_files(directory: &Path) -> (PathBuf, PathBuf) {
    certificate_files(directory)
}

/// The longest sleep between two looks at the certificate (a clock that jumps is noticed).
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(12 * 3600);

/// How long to wait for the ACME server to validate or to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The account as stored: its credentials and the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory_url: String,
    credentials: instant_acme::AccountCredentials,
}

/// Obtains and renews the TLS listener's certificate.
pub struct AcmeManager {
    directory_url: String,
    contact: Vec<String>,
    identifiers: Vec<Identifier>,
    storage: PathBuf,
    resolver: Arc<CertificateResolver>,
    http: ReqwestClient,
}

impl AcmeManager {
    /// A manager for `config.tls.acme`, serving through `resolver`, storing in `storage`.
    pub fn new(
        config: &rhizome_core::Config,
        storage: PathBuf,
        resolver: Arc<CertificateResolver>,
    ) -> Result<Self> {
        let acme = &config.tls.acme;
        let names = if acme.domains.is_empty() {
            vec![config.server_name.host().to_owned()]
        } else {
            acme.domains.clone()
        };
        let identifiers = names.iter().map(|name| identifier(name)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            directory_url: acme.directory_url.clone(),
            contact: acme.contact.clone(),
            identifiers,
            storage,
            resolver,
            http: ReqwestClient::new(acme.directory_ca_file.as_deref())?,
        })
    }

    /// Keeps the certificate current until `shutdown` turns true. Failures are logged and
    /// retried later, sooner at first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            let wait = match self.renew_if_due().await {
                Ok(next_check) => {
                    failures = 0;
                    next_check
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures);
                    tracing::error!(
                        error = format!("{error:#}"),
                        retry_in_secs = delay.as_secs(),
                        "could not obtain a TLS certificate over ACME"
                    );
                    delay
                }
            };
            tokio::select! {
                _ = shutdown.wait_for(|stopped| *stopped) => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The names the certificate must cover, as a certificate states them.
    fn names(&self) -> Vec<String> {
        self.identifiers.iter().map(identifier_name).collect()
    }

    /// Obtains a certificate if none is stored, if the stored one misses a name, or if it is
    /// due for renewal. Returns how long to wait before looking again.
    async fn renew_if_due(&self) -> Result<Duration> {
        let (certificate_file, key_file) = certificate_files(&self.storage);
        if let Ok(chain) = std::fs::read(&certificate_file) {
            match CertificateInfo::from_pem(&chain) {
                Ok(info) if info.covers(&self.names()) => {
                    if let Ok(wait) = info.renew_at().duration_since(SystemTime::now()) {
                        return Ok(wait.min(MAX_CHECK_INTERVAL));
                    }
                    tracing::info!("the TLS certificate is due for renewal");
                }
                Ok(_) => tracing::info!("the stored TLS certificate does not cover every name"),
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "the stored TLS certificate cannot be read; obtaining a new one"
                ),
            }
        }
        let (chain, key) = self.obtain().await?;
        let certified = certified_key_from_pem(chain.as_bytes(), key.as_bytes())
            .context("the certificate the ACME server issued")?;
        let info = CertificateInfo::from_pem(chain.as_bytes())?;
        write_private(&key_file, key.as_bytes())?;
        write_private(&certificate_file, chain.as_bytes())?;
        self.resolver.set_certificate(certified);
        tracing::info!(names = ?info.names, "obtained a TLS certificate over ACME");
        Ok(info
            .renew_at()
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::from_secs(3600))
            .min(MAX_CHECK_INTERVAL))
    }

    /// The account, created on first use.
    async fn account(&self) -> Result<Account> {
        let path = account_file(&self.storage);
        if let Ok(text) = std::fs::read(&path) {
            match serde_json::from_slice::<StoredAccount>(&text) {
                Ok(stored) if stored.directory_url == self.directory_url => {
                    return Account::builder_with_http(Box::new(self.http.clone()))
                        .from_credentials(stored.credentials)
                        .await
                        .map_err(acme_error("restoring the ACME account"));
                }
                Ok(_) => tracing::info!("the ACME directory changed; creating a new account"),
                Err(error) => tracing::warn!(%error, "the stored ACME account cannot be read"),
            }
        }
        let contact: Vec<&str> = self.contact.iter().map(String::as_str).collect();
        let new_account = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, credentials) = Account::builder_with_http(Box::new(self.http.clone()))
            .create(&new_account, self.directory_url.clone(), None)
            .await
            .map_err(acme_error("creating an ACME account"))?;
        let stored = StoredAccount { directory_url: self.directory_url.clone(), credentials };
        write_private(&path, &serde_json::to_vec_pretty(&stored)?)?;
        tracing::info!("created an ACME account");
        Ok(account)
    }

    /// Orders a certificate: answers each authorization's TLS-ALPN-01 challenge, then sends a
    /// signing request for a fresh key. Returns the chain and the key, PEM.
    async fn obtain(&self) -> Result<(String, String)> {
        let account = self.account().await?;
        let mut order = account
            .new_order(&NewOrder::new(&self.identifiers))
            .await
            .map_err(acme_error("ordering a certificate"))?;
        let mut challenge_names = Vec::new();
        let answered = self.answer_challenges(&mut order, &mut challenge_names).await;
        let result = match answered {
            Ok(()) => self.finalize(&mut order).await,
            Err(error) => Err(error),
        };
        for name in challenge_names {
            self.resolver.remove_challenge(&name);
        }
        result
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        challenge_names: &mut Vec<String>,
    ) -> Result<()> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization =
                authorization.map_err(acme_error("fetching an authorization"))?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => anyhow::bail!("an authorization is {status:?}"),
            }
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| anyhow!("the ACME server offers no tls-alpn-01 challenge"))?;
            let identifier = challenge.identifier().identifier.clone();
            let server_name = validation_server_name(&identifier)?;
            let certificate = challenge_certificate(
                &identifier,
                challenge.key_authorization().digest().as_ref(),
            )?;
            self.resolver.set_challenge(&server_name, certificate);
            challenge_names.push(server_name);
            challenge.set_ready().await.map_err(acme_error("answering a challenge"))?;
        }
        Ok(())
    }

    async fn finalize(&self, order: &mut instant_acme::Order) -> Result<(String, String)> {
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await.map_err(acme_error("validation"))?;
        if status != OrderStatus::Ready {
            anyhow::bail!("the order is {status:?} after validation");
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(self.names())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let request = params.serialize_request(&key)?;
        order.finalize_csr(request.der()).await.map_err(acme_error("finalizing the order"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(acme_error("fetching the certificate"))?;
        Ok((chain, key.serialize_pem()))
    }
}

/// The delay before the `failures`-th retry: 30 s, doubling up to six hours.
fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(10);
    Duration::from_secs(30 * 2u64.pow(doublings)).min(Duration::from_secs(6 * 3600))
}

/// The ACME identifier of a name: an IP address or a DNS name.
fn identifier(name: &str) -> Result<Identifier> {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = bare.parse::<IpAddr>() {
        return Ok(Identifier::Ip(address));
    }
    if name.is_empty() || name.contains([':', '/', ' ']) {
        anyhow::bail!("tls.acme.domains: {name:?} is not a domain name");
    }
    Ok(Identifier::Dns(name.to_ascii_lowercase()))
}

/// The name a certificate states for an identifier.
fn identifier_name(identifier: &Identifier) -> String {
    match identifier {
        Identifier::Ip(address) => address.to_string(),
        other => other.authorized(false).to_string().to_ascii_lowercase(),
    }
}

/// The server name (SNI) a validator sends for an identifier: the name itself, or for an IP
/// address its reverse-DNS name (RFC 8738).
fn validation_server_name(identifier: &Identifier) -> Result<String> {
    match identifier {
        Identifier::Dns(name) => Ok(name.to_ascii_lowercase()),
        Identifier::Ip(IpAddr::V4(address)) => {
            let [a, b, c, d] = address.octets();
            Ok(format!("{d}.{c}.{b}.{a}.in-addr.arpa"))
        }
        Identifier::Ip(IpAddr::V6(address)) => {
            let mut labels = String::new();
            for byte in address.octets().iter().rev() {
                labels.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            Ok(format!("{labels}ip6.arpa"))
        }
        other => Err(anyhow!("cannot answer a challenge for {other:?}")),
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge: the identifier as its
/// only name and the key authorization's digest in the `acmeIdentifier` extension.
fn challenge_certificate(identifier: &Identifier, digest: &[u8]) -> Result<CertifiedKey> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![identifier_name(identifier)])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let certificate = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate, and the
    // critical `acmeIdentifier` extension is unknown to the parser.
    let signing_key = crypto_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|error| anyhow!("loading the challenge key: {error}"))?;
    Ok(CertifiedKey::new(vec![certificate.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn identifiers_and_validation_names() {
        let ip = identifier("127.0.0.11").unwrap();
        assert_eq!(ip, Identifier::Ip("127.0.0.11".parse().unwrap()));
        assert_eq!(validation_server_name(&ip).unwrap(), "11.0.0.127.in-addr.arpa");
        let ipv6 = identifier("[2001:db8::1]").unwrap();
        assert_eq!(
            validation_server_name(&ipv6).unwrap(),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        let dns = identifier("Matrix.Example.org").unwrap();
        assert_eq!(identifier_name(&dns), "matrix.example.org");
        assert_eq!(validation_server_name(&dns).unwrap(), "matrix.example.org");
        assert!(identifier("example.org:8448").is_err());
        assert!(identifier("").is_err());
    }

    #[test]
    fn retries_back_off_up_to_six_hours() {
        assert_eq!(retry_delay(1), Duration::from_secs(30));
        assert_eq!(retry_delay(2), Duration::from_secs(60));
        assert_eq!(retry_delay(40), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn challenge_certificates_carry_the_name_and_the_digest() {
        let digest = [7u8; 32];
        let key = challenge_certificate(&identifier("hs.test").unwrap(), &digest).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let acme_identifier = parsed
            .extensions()
            .iter()
            .find(|extension| extension.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("the acmeIdentifier extension");
        assert!(acme_identifier.critical);
        // An OCTET STRING of the 32-byte digest.
        assert_eq!(acme_identifier.value, [&[0x04, 32][..], &digest].concat());
        let info = CertificateInfo::from_der(&key.cert[0]).unwrap();
        assert_eq!(info.names, vec!["hs.test".to_owned()]);
    }
}
