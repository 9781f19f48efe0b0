//! Self-signed TLS certificates for test servers (HTTPS and federation over loopback).

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct TestCertificate {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key (PKCS#8), PEM.
    pub private_key_pem: String,
}

impl TestCertificate {
    /// A self-signed certificate for the given names: DNS names, or IP addresses
    /// (`127.0.0.11`), which become IP subject alternative names.
    pub fn self_signed(names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let certified = rcgen::generate_simple_self_signed(names)
            .expect("invariant: test certificate names are valid");
        Self {
            certificate_pem: certified.cert.pem(),
            private_key_pem: certified.signing_key.serialize_pem(),
        }
    }

    /// Writes the certificate and key into `dir` as `<stem>.crt` and `<stem>.key`, returning
    /// their paths.
    pub fn write_to(
        &self,
        dir: &std::path::Path,
        stem: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let certificate = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&certificate, &self.certificate_pem).expect("writing a test certificate");
        std::fs::write(&key, &self.private_key_pem).expect("writing a test key");
        (certificate, key)
    }
}
