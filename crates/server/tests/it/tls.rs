//! `rhizome serve` with its own TLS listener: SIGHUP re-reads the certificate files without
//! dropping connections, and a broken file leaves the old certificate in service.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use super::{free_port, serve};

/// A self-signed certificate for 127.0.0.1 and its key, PEM.
fn certificate() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

fn client(trusted: &[&str]) -> reqwest::Client {
    let roots = trusted.iter().map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    reqwest::Client::builder().tls_certs_only(roots).tls_info(true).build().unwrap()
}

/// The status and the DER certificate of a request over TLS.
async fn get(client: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let response = client.get(url).send().await.unwrap();
    let certificate = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(reqwest::tls::TlsInfo::peer_certificate)
        .unwrap()
        .to_vec();
    (response.status().as_u16(), certificate)
}

fn hangup(pid: u32) {
    let status = Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap();
    assert!(status.success());
}

fn write(dir: &Path, (certificate, key): &(String, String)) {
    std::fs::write(dir.join("tls.crt"), certificate).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
}

#[tokio::test]
async fn sighup_swaps_the_certificate_and_keeps_connections() {
    let data = tempfile::tempdir().unwrap();
    let certificates = tempfile::tempdir().unwrap();
    let (old, new) = (certificate(), certificate());
    write(certificates.path(), &old);
    let tls_port = free_port();
    let listen = format!("127.0.0.1:{tls_port}");
    let certificate_file = certificates.path().join("tls.crt");
    let key_file = certificates.path().join("tls.key");
    let mut server = serve(
        data.path(),
        free_port(),
        &[
            ("RHIZOME_TLS__LISTEN", &listen),
            ("RHIZOME_TLS__CERTIFICATE_FILE", certificate_file.to_str().unwrap()),
            ("RHIZOME_TLS__PRIVATE_KEY_FILE", key_file.to_str().unwrap()),
        ],
    )
    .await;
    let url = format!("https://{listen}/_matrix/client/versions");
    let kept_alive = client(&[&old.0, &new.0]);
    let (status, old_der) = get(&kept_alive, &url).await;
    assert_eq!(status, 200);

    // Both listeners answer the same.
    let plain = reqwest::get(format!("{}/_matrix/client/versions", server.base)).await.unwrap();
    let secure = kept_alive.get(&url).send().await.unwrap();
    assert_eq!(plain.text().await.unwrap(), secure.text().await.unwrap());

    write(certificates.path(), &new);
    hangup(server.child.id());
    let started = Instant::now();
    let new_der = loop {
        let (status, der) = get(&client(&[&old.0, &new.0]), &url).await;
        assert_eq!(status, 200);
        if der != old_der {
            break der;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The connection opened before the reload is still served, with its certificate.
    assert_eq!(get(&kept_alive, &url).await, (200, old_der.clone()));

    // A broken file on SIGHUP: the server goes on with the certificate it has.
    std::fs::write(&certificate_file, "-----BEGIN CERTIFICATE-----\nnot base64!\n").unwrap();
    hangup(server.child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(server.child.try_wait().unwrap().is_none(), "the server still runs");
    assert_eq!(get(&client(&[&new.0]), &url).await, (200, new_der));
}
