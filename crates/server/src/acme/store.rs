//! What ACME leaves in the data directory (`<data_dir>/acme/`): the account (`account.json`),
//! the certificate chain (`certificate.pem`) and its key (`private_key.pem`), private files
//! written whole or not at all; and reading a certificate's names and lifetime to know when
//! it is due for renewal.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, anyhow};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use x509_parser::extensions::GeneralName;

/// The certificate chain and key files in an ACME directory.
pub fn certificate_files(directory: &Path) -> (PathBuf, PathBuf) {
    (directory.join("certificate.pem"), directory.join("private_key.pem"))
}

/// The account file in an ACME directory.
pub fn account_file(directory: &Path) -> PathBuf {
    directory.join("account.json")
}

/// Writes `contents` to `path` readable by the owner only, through a temporary file renamed
/// over it, so a reader sees the old file or the new one, never half of one.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let directory = path.parent().ok_or_else(|| anyhow!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file =
        options.open(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing {}", path.display()))
}

/// What renewal needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The names it covers: DNS names in lower case, IP addresses in their usual form.
    pub names: Vec<String>,
    /// The start of its validity.
    pub not_before: SystemTime,
    /// The end of its validity.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// Reads the first certificate of a PEM chain.
    pub fn from_pem(chain_pem: &[u8]) -> Result<Self> {
        let first = CertificateDer::pem_slice_iter(chain_pem)
            .next()
            .ok_or_else(|| anyhow!("no certificate in the chain"))?
            .map_err(|error| anyhow!("the certificate chain is not valid PEM: {error}"))?;
        Self::from_der(&first)
    }

    /// Reads a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<Self> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| anyhow!("the certificate cannot be parsed: {error}"))?;
        let validity = certificate.validity();
        let time = |seconds: i64| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds.max(0)).unwrap_or_default())
        };
        let mut names = Vec::new();
        if let Ok(Some(extension)) = certificate.subject_alternative_name() {
            for name in &extension.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push(dns.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        let address = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        names.extend(address.map(|address| address.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            names,
            not_before: time(validity.not_before.timestamp()),
            not_after: time(validity.not_after.timestamp()),
        })
    }

    /// When to renew: once a third of the lifetime is left.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        self.not_after - lifetime / 3
    }

    /// Whether it covers every one of `names`.
    pub fn covers(&self, names: &[String]) -> bool {
        names.iter().all(|name| self.names.contains(name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn certificate(names: &[&str], days: i64) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = params.not_before + time_days(days);
        params.self_signed(&key).unwrap().pem()
    }

    fn time_days(days: i64) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(days).unwrap() * 86_400)
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let info =
            CertificateInfo::from_pem(certificate(&["Hs.Test", "127.0.0.11"], 90).as_bytes())
                .unwrap();
        assert_eq!(info.names, vec!["hs.test".to_owned(), "127.0.0.11".to_owned()]);
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(lifetime, time_days(90));
        assert_eq!(info.not_after.duration_since(info.renew_at()).unwrap(), time_days(30));
        assert!(info.covers(&["hs.test".to_owned()]));
        assert!(info.covers(&["127.0.0.11".to_owned(), "hs.test".to_owned()]));
        assert!(!info.covers(&["other.test".to_owned()]));
    }

    #[test]
    fn writes_private_files_whole() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("acme").join("private_key.pem");
        write_private(&path, b"first").unwrap();
        write_private(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!path.with_extension("tmp").exists());
    }
}
