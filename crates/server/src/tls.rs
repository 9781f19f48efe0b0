//! Rhizome's own HTTPS listener (rustls with the aws-lc-rs provider): the certificate resolver
//! whose certificate can be swapped while connections stay open (SIGHUP, ACME renewals), PEM
//! loading, and the rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN, plus
//! `acme-tls/1` for ACME's TLS-ALPN-01 challenge when ACME is on).

mod listener;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result, anyhow};
use parking_lot::RwLock;
use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

pub use listener::TlsListener;

/// The ALPN protocol of ACME's TLS-ALPN-01 challenge (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The one cryptographic provider Rhizome uses for TLS, the same as its HTTP client's.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Chooses the certificate of each handshake: the current certificate, swappable at any time
/// (connections already open keep the one they were opened with), or an ACME challenge
/// certificate when the client asks for `acme-tls/1`.
#[derive(Debug, Default)]
pub struct CertificateResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates by the server name the validator sends (SNI).
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertificateResolver {
    /// Serves `certificate` on every new connection from now on.
    pub fn set_certificate(&self, certificate: CertifiedKey) {
        *self.current.write() = Some(Arc::new(certificate));
    }

    /// The certificate served now (its chain, end entity first), if any.
    pub fn certificate_chain(&self) -> Option<Vec<CertificateDer<'static>>> {
        self.current.read().as_ref().map(|key| key.cert.clone())
    }

    /// Answers the TLS-ALPN-01 challenge for `server_name` with `certificate`.
    pub fn set_challenge(&self, server_name: &str, certificate: CertifiedKey) {
        self.challenges.write().insert(server_name.to_ascii_lowercase(), Arc::new(certificate));
    }

    /// Stops answering the TLS-ALPN-01 challenge for `server_name`.
    pub fn remove_challenge(&self, server_name: &str) {
        self.challenges.write().remove(&server_name.to_ascii_lowercase());
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = client_hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|protocol| protocol == ACME_TLS_ALPN));
        if acme {
            // RFC 8737: a validator gets the challenge certificate or nothing.
            let server_name = client_hello.server_name()?.to_ascii_lowercase();
            return self.challenges.read().get(&server_name).cloned();
        }
        self.current.read().clone()
    }
}

/// The rustls configuration of the listener: TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by ALPN,
/// and `acme-tls/1` when `acme` is set.
pub fn server_config(resolver: Arc<CertificateResolver>, acme: bool) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// A certificate chain and its private key from PEM text (the key in PKCS#8, PKCS#1 or SEC1),
/// checked to belong together. Errors name what is wrong, never the key material.
pub fn certified_key_from_pem(
    certificate_pem: &[u8],
    private_key_pem: &[u8],
) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(certificate_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| anyhow!("the certificate file is not valid PEM: {error}"))?;
    if chain.is_empty() {
        anyhow::bail!("the certificate file holds no certificate");
    }
    let key = PrivateKeyDer::from_pem_slice(private_key_pem).map_err(|error| {
        anyhow!(
            "the private key file holds no usable private key (PKCS#8, PKCS#1 or SEC1): {error}"
        )
    })?;
    CertifiedKey::from_der(chain, key, &crypto_provider())
        .map_err(|error| anyhow!("the certificate and private key do not fit together: {error}"))
}

/// Reads a certificate chain and its key from PEM files.
pub fn load_certified_key(
    certificate_file: &Path,
    private_key_file: &Path,
) -> Result<CertifiedKey> {
    let certificate = std::fs::read(certificate_file)
        .with_context(|| format!("reading {}", certificate_file.display()))?;
    let key = std::fs::read(private_key_file)
        .with_context(|| format!("reading {}", private_key_file.display()))?;
    certified_key_from_pem(&certificate, &key).with_context(|| {
        format!("loading {} and {}", certificate_file.display(), private_key_file.display())
    })
}

/// Where the listener's certificate comes from.
#[derive(Debug, Clone)]
pub enum CertificateSource {
    /// PEM files named in the configuration.
    Files {
        /// The certificate chain.
        certificate_file: PathBuf,
        /// Its private key.
        private_key_file: PathBuf,
    },
    /// Obtained over ACME and kept in this directory (`<data_dir>/acme`).
    Acme {
        /// The directory.
        directory: PathBuf,
    },
}

/// The TLS listener's certificate: its source and the resolver that serves it.
#[derive(Debug)]
pub struct TlsCertificates {
    /// The resolver the listener uses.
    pub resolver: Arc<CertificateResolver>,
    source: CertificateSource,
}

impl TlsCertificates {
    /// Loads the certificate from `source` (an ACME directory may hold none yet) into a new
    /// resolver.
    pub fn load(source: CertificateSource) -> Result<Self> {
        let certificates = Self { resolver: Arc::default(), source };
        match &certificates.source {
            CertificateSource::Files { .. } => certificates.read()?,
            CertificateSource::Acme { directory } => {
                if crate::acme::stored_certificate_exists(directory) {
                    certificates.read()?;
                }
            }
        }
        Ok(certificates)
    }

    /// Reads the certificate again (SIGHUP). New connections get the new certificate and
    /// open connections keep theirs; if it cannot be read, the old one stays in service and
    /// the error is logged and returned.
    pub fn reload(&self) -> Result<()> {
        match self.read() {
            Ok(()) => {
                tracing::info!("reloaded the TLS certificate");
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    error = format!("{error:#}"),
                    "could not reload the TLS certificate; keeping the previous one"
                );
                Err(error)
            }
        }
    }

    fn read(&self) -> Result<()> {
        let key = match &self.source {
            CertificateSource::Files { certificate_file, private_key_file } => {
                load_certified_key(certificate_file, private_key_file)?
            }
            CertificateSource::Acme { directory } => {
                let (certificate, key) = crate::acme::stored_certificate_files(directory);
                load_certified_key(&certificate, &key)?
            }
        };
        self.resolver.set_certificate(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn reads_pkcs8_pkcs1_and_sec1_keys_and_refuses_mismatches() {
        for algorithm in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_RSA_SHA256] {
            let (certificate, key) = self_signed("hs.test", algorithm);
            let pkcs8_pem = key.serialize_pem();
            assert!(certified_key_from_pem(certificate.as_bytes(), pkcs8_pem.as_bytes()).is_ok());
            // The same key as PKCS#1 ("RSA PRIVATE KEY") or SEC1 ("EC PRIVATE KEY"): the
            // PKCS#8 document wraps either in its last OCTET STRING.
            let label = if algorithm == &rcgen::PKCS_RSA_SHA256 {
                "RSA PRIVATE KEY"
            } else {
                "EC PRIVATE KEY"
            };
            let inner_pem = pem_block(label, &inner_key(&key.serialize_der()));
            assert!(certified_key_from_pem(certificate.as_bytes(), inner_pem.as_bytes()).is_ok());
        }

        let (certificate, key) = self_signed("hs.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other_key) = self_signed("other.test", &rcgen::PKCS_ECDSA_P256_SHA256);
        let error =
            certified_key_from_pem(certificate.as_bytes(), other_key.serialize_pem().as_bytes())
                .unwrap_err()
                .to_string();
        assert!(error.contains("do not fit together"), "{error}");
        let error = certified_key_from_pem(b"not a certificate", key.serialize_pem().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(error.contains("no certificate"), "{error}");
        let error =
            certified_key_from_pem(certificate.as_bytes(), b"garbage").unwrap_err().to_string();
        assert!(error.contains("no usable private key"), "{error}");
    }

    fn self_signed(
        name: &str,
        algorithm: &'static rcgen::SignatureAlgorithm,
    ) -> (String, rcgen::KeyPair) {
        let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key)
    }

    /// A DER element's content start and length.
    fn der_header(der: &[u8], at: usize) -> (usize, usize) {
        let first = der[at + 1];
        if first < 0x80 {
            return (at + 2, usize::from(first));
        }
        let count = usize::from(first & 0x7f);
        let length = der[at + 2..at + 2 + count]
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (at + 2 + count, length)
    }

    /// The key inside a PKCS#8 document: `SEQUENCE { version, algorithm, OCTET STRING key }`.
    fn inner_key(pkcs8: &[u8]) -> Vec<u8> {
        let (content, _) = der_header(pkcs8, 0);
        let (version, version_length) = der_header(pkcs8, content);
        let (algorithm, algorithm_length) = der_header(pkcs8, version + version_length);
        let octets = algorithm + algorithm_length;
        assert_eq!(pkcs8[octets], 0x04, "an OCTET STRING");
        let (key, key_length) = der_header(pkcs8, octets);
        pkcs8[key..key + key_length].to_vec()
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }
}
