//! The outbound federation queue survives `kill -9` of the sending server: events a client
//! was told are sent reach the other server exactly once after the restart.

use std::time::{Duration, Instant};

use rhizome_testkit::{Api, TestServer, certs::TestCertificate, encode};
use serde_json::json;

use super::{admin, serve};

/// The environment that makes `rhizome serve` federate over loopback as `ip:tls_port`.
fn federating_env(dir: &std::path::Path, ip: &str, tls_port: u16) -> Vec<(String, String)> {
    let certificate = TestCertificate::self_signed(&[ip]);
    let (certificate_file, key_file) = certificate.write_to(dir, "tls");
    let name = format!("{ip}:{tls_port}");
    vec![
        ("RHIZOME_SERVER_NAME".into(), name.clone()),
        ("RHIZOME_TLS__LISTEN".into(), name),
        ("RHIZOME_TLS__CERTIFICATE_FILE".into(), certificate_file.display().to_string()),
        ("RHIZOME_TLS__PRIVATE_KEY_FILE".into(), key_file.display().to_string()),
        ("RHIZOME_REGISTRATION__MODE".into(), "open".into()),
        ("RHIZOME_FEDERATION__VERIFY_CERTIFICATES".into(), "false".into()),
        ("RHIZOME_FEDERATION__ALLOWED_ADDRESSES".into(), "[\"127.0.0.0/8\"]".into()),
        ("RHIZOME_FEDERATION__MIN_RETRY_INTERVAL_SECS".into(), "1".into()),
        ("RHIZOME_FEDERATION__MAX_RETRY_INTERVAL_SECS".into(), "2".into()),
    ]
}

/// A free port on `ip`.
fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_events_arrive_once_after_the_sender_is_killed() {
    // B, the receiving server, in process; A, the sender, the real binary.
    let mut b = TestServer::start_federating("127.0.0.121").await;
    let data = tempfile::tempdir().unwrap();
    let certificates = tempfile::tempdir().unwrap();
    let ip = "127.0.0.122";
    let tls_port = free_port_on(ip);
    let port = super::free_port();
    let env = federating_env(certificates.path(), ip, tls_port);
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut env_refs = env_refs;
    env_refs.push(("RHIZOME_LOG", "rhizome_service=debug,info"));
    let mut a = serve(data.path(), port, &env_refs).await;

    let alice = Api::new_user(&a.base, "alice").await;
    let bob = Api::new_user(&b.base_url, "bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?via={ip}:{tls_port}", encode(&room)), json!({}))
        .await
        .ok();

    // B goes down; A accepts 20 messages it cannot deliver, then is killed.
    b.stop_for_now().await;
    for index in 0..20 {
        alice.send_text(&room, &format!("queued {index}")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.child.kill().unwrap(); // SIGKILL: no orderly shutdown.
    a.child.wait().unwrap();

    // Both come back; A sends what was queued.
    b.start_again().await;
    let a = serve(data.path(), port, &env_refs).await;
    let started = Instant::now();
    let mut since: Option<String> = None;
    'wait: loop {
        let query = match &since {
            Some(since) => format!("timeout=2000&since={since}"),
            None => "timeout=0".to_owned(),
        };
        let sync = bob.sync(&query).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        for event in
            sync["rooms"]["join"][&room]["timeline"]["events"].as_array().into_iter().flatten()
        {
            if event["content"]["body"] == "queued 19" {
                break 'wait;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the queued events never arrived; the sender's log:\n{}",
            std::fs::read_to_string(data.path().join("serve.log")).unwrap_or_default()
        );
    }
    // The whole history on B: each queued message once, in order.
    let messages = bob
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100", encode(&room)))
        .await
        .ok();
    let mut seen: Vec<String> = messages["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|event| event["content"]["body"].as_str().map(str::to_owned))
        .collect();
    seen.reverse();
    let expected: Vec<String> = (0..20).map(|index| format!("queued {index}")).collect();
    assert_eq!(seen, expected, "every queued event once, in order");
    // The administrator sees the destination, caught up and healthy.
    let destinations = admin(data.path(), &["federation", "destinations"]);
    let line = destinations
        .lines()
        .find(|line| line.starts_with(b.config.server_name.as_str()))
        .unwrap_or_else(|| panic!("no line for B in:\n{destinations}"));
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!((fields[2], fields[3], fields[4], fields[5]), ("0", "-", "0", "0"), "{line}");
    assert!(
        admin(data.path(), &["federation", "retry", b.config.server_name.as_str()])
            .contains("tried again")
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_published_as_old_beside_the_new_one() {
    let data = tempfile::tempdir().unwrap();
    let port = super::free_port();
    let server = serve(data.path(), port, &[]).await;
    let before: serde_json::Value = reqwest::get(format!("{}/_matrix/key/v2/server", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_key = before["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    // The server holds its key in memory: rotating needs it stopped.
    let refused = super::command(data.path(), 0).args(["admin", "key", "rotate"]).output().unwrap();
    assert!(!refused.status.success());
    drop(server);
    let rotated = admin(data.path(), &["key", "rotate"]);
    assert!(rotated.contains(&old_key), "{rotated}");
    let server = serve(data.path(), port, &[]).await;
    let after: serde_json::Value = reqwest::get(format!("{}/_matrix/key/v2/server", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_key = after["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert_ne!(new_key, old_key);
    assert_eq!(after["old_verify_keys"][&old_key]["key"], before["verify_keys"][&old_key]["key"]);
    assert!(after["old_verify_keys"][&old_key]["expired_ts"].as_i64().unwrap() > 0);
    assert!(after["signatures"][after["server_name"].as_str().unwrap()][&new_key].is_string());
}
