//! ACME against a real ACME server: pebble (Let's Encrypt's test server, Debian package
//! `pebble`, installed by scripts/test.sh) on loopback, validating for real over TLS-ALPN-01
//! against Rhizome's TLS listener (pebble's `tlsPort` is Rhizome's TLS port).

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rhizome_testkit::{Backend, TestServer, certs::TestCertificate, https_client_trusting};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A pebble process, killed when dropped.
struct Pebble {
    child: Child,
    directory_url: String,
    management_url: String,
    ca_file: std::path::PathBuf,
    client: reqwest::Client,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pebble {
    /// Starts pebble on loopback, validating TLS-ALPN-01 challenges on `tls_port`; again on
    /// other ports when it exits at once (a port it was given was taken meanwhile by another
    /// test).
    async fn start(dir: &Path, tls_port: u16) -> Self {
        for _ in 0..3 {
            if let Some(pebble) = Self::try_start(dir, tls_port).await {
                return pebble;
            }
        }
        panic!("pebble exited at every start, see its log in {}", dir.display());
    }

    /// One start: `None` when pebble exits before it answers.
    async fn try_start(dir: &Path, tls_port: u16) -> Option<Self> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let binary = std::env::split_paths(&path)
            .map(|dir| dir.join("pebble"))
            .find(|candidate| candidate.is_file())
            .expect("pebble is not installed: `apt-get install pebble` (scripts/test.sh does)");
        // Pebble's own HTTPS certificate, which Rhizome trusts through directory_ca_file.
        let certificate = TestCertificate::self_signed(&["127.0.0.1", "localhost"]);
        let (certificate_file, key_file) = certificate.write_to(dir, "pebble");
        let (port, management_port) = (free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": certificate_file,
                "privateKey": key_file,
                "httpPort": free_port(),
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_file = dir.join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let child = Command::new(binary)
            .arg("-config")
            .arg(&config_file)
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut pebble = Self {
            child,
            directory_url: format!("https://127.0.0.1:{port}/dir"),
            management_url: format!("https://127.0.0.1:{management_port}"),
            ca_file: certificate_file,
            client: https_client_trusting(&[&certificate.certificate_pem]),
        };
        let started = Instant::now();
        while !pebble
            .client
            .get(&pebble.directory_url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            if pebble.child.try_wait().is_ok_and(|status| status.is_some()) {
                return None;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "pebble did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(pebble)
    }

    /// The root that pebble's certificates chain to (new at every start).
    async fn root_pem(&self) -> String {
        let response =
            self.client.get(format!("{}/roots/0", self.management_url)).send().await.unwrap();
        assert!(response.status().is_success());
        response.text().await.unwrap()
    }
}

/// Waits until the server serves a certificate other than `previous`; returns its DER.
async fn wait_for_certificate(server: &TestServer, previous: Option<&[u8]>) -> Vec<u8> {
    let started = Instant::now();
    loop {
        let chain = server.running().tls_certificate_chain();
        if let Some(first) = chain.as_ref().and_then(|chain| chain.first())
            && Some(first.as_ref()) != previous
        {
            return first.to_vec();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no certificate over ACME");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_certificate_is_obtained_over_tls_alpn_01_stored_and_reused() {
    let work = tempfile::tempdir().unwrap();
    let tls_port = free_port();
    let pebble = Pebble::start(work.path(), tls_port).await;
    let mut server = TestServer::start_with(Backend::Sqlite, |config| {
        config.tls.listen = Some(SocketAddr::from(([127, 0, 0, 1], tls_port)));
        config.tls.acme.enabled = true;
        config.tls.acme.directory_url = pebble.directory_url.clone();
        config.tls.acme.directory_ca_file = Some(pebble.ca_file.clone());
        config.tls.acme.domains = vec!["localhost".to_owned()];
        config.tls.acme.contact = vec!["mailto:admin@example.org".to_owned()];
    })
    .await;
    // Until the certificate is issued there is none to serve.
    let issued = wait_for_certificate(&server, None).await;

    // A client trusting pebble's root reaches Rhizome by that name.
    let client = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(pebble.root_pem().await.as_bytes()).unwrap()
        ])
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], tls_port)))
        .build()
        .unwrap();
    let by_name = format!("https://localhost:{tls_port}/_matrix/client/versions");
    let by_address = format!("https://127.0.0.1:{tls_port}/_matrix/client/versions");
    assert!(client.get(&by_name).send().await.unwrap().status().is_success());
    assert!(client.get(&by_address).send().await.is_err(), "the address is not covered yet");

    // Account, certificate and key are stored in <data_dir>/acme/, the secrets private.
    let acme_dir = server.config.data_dir.join("acme");
    for file in ["account.json", "certificate.pem", "private_key.pem"] {
        let metadata = std::fs::metadata(acme_dir.join(file)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(metadata.permissions().mode() & 0o077, 0, "{file} is private");
        }
        assert!(metadata.len() > 0);
    }

    // After a restart the stored certificate is served at once and kept (not due).
    server.restart().await;
    assert_eq!(wait_for_certificate(&server, None).await, issued);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(wait_for_certificate(&server, None).await, issued);
    assert!(client.get(&by_name).send().await.unwrap().status().is_success());

    // A name added to the configuration (here an IP address, RFC 8738) needs a new
    // certificate, obtained at the next start.
    server.config.tls.acme.domains.push("127.0.0.1".to_owned());
    server.restart().await;
    wait_for_certificate(&server, Some(&issued)).await;
    let client = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(pebble.root_pem().await.as_bytes()).unwrap()
        ])
        .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], tls_port)))
        .build()
        .unwrap();
    for url in [&by_name, &by_address] {
        let response = client.get(url).send().await.unwrap();
        assert!(response.status().is_success(), "{url}: {}", response.status());
    }
    server.stop().await;
    drop(pebble);
}
