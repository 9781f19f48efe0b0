//! The `rhizome` binary itself: starting with no configuration, the admin commands, refusing
//! unknown configuration keys, surviving a crash in the middle of writes, stopping in order,
//! and reloading its TLS certificate on SIGHUP; several processes serving one homeserver from
//! one PostgreSQL database.

// Test code: a failed step fails the test at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod cluster;
mod federation;
mod migrate_db;
mod s3_media;
mod scale_out;
mod scale_out_kill;
mod shutdown;
mod tls;

const BINARY: &str = env!("CARGO_BIN_EXE_rhizome");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn command(data_dir: &Path, port: u16) -> Command {
    let mut command = Command::new(BINARY);
    command
        .env("RHIZOME_DATA_DIR", data_dir)
        .env("RHIZOME_LISTEN", format!("127.0.0.1:{port}"))
        .env("RHIZOME_RATE_LIMITS__ENABLED", "false")
        .env_remove("RHIZOME_CONFIG")
        .env_remove("RHIZOME_TEST_LOG")
        .current_dir(data_dir);
    command
}

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(data_dir: &Path, port: u16, extra: &[(&str, &str)]) -> Server {
    let mut command = command(data_dir, port);
    for (key, value) in extra {
        command.env(key, value);
    }
    // The server's log goes to `serve.log` in its data directory, for a failing test to show.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("serve.log"))
        .unwrap();
    let child = command.arg("serve").stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if reqwest::get(format!("{base}/_matrix/client/versions"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server { child, base }
}

fn admin(data_dir: &Path, args: &[&str]) -> String {
    let output = command(data_dir, 0).arg("admin").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "admin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = client.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn register(client: &reqwest::Client, base: &str, name: &str, stage: Value) -> (u16, Value) {
    let url = format!("{base}/_matrix/client/v3/register");
    let (status, first) =
        post(client, url.clone(), None, json!({ "username": name, "password": "a-long-password" }))
            .await;
    assert_eq!(status, 401, "{first}");
    let mut auth = stage;
    auth["session"] = first["session"].clone();
    post(
        client,
        url,
        None,
        json!({ "username": name, "password": "a-long-password", "auth": auth }),
    )
    .await
}

/// Registers alice (open registration) and creates a room named `name`: her token and the
/// room's ID.
async fn alice_with_room(client: &reqwest::Client, base: &str, name: &str) -> (String, String) {
    let (_, alice) = register(client, base, "alice", json!({ "type": "m.login.dummy" })).await;
    let token = alice["access_token"].as_str().unwrap().to_owned();
    let (_, room) = post(
        client,
        format!("{base}/_matrix/client/v3/createRoom"),
        Some(&token),
        json!({ "name": name }),
    )
    .await;
    (token, room["room_id"].as_str().unwrap().to_owned())
}

/// Uploads a text file and returns its `mxc://` URI.
async fn upload_text(client: &reqwest::Client, base: &str, token: &str, text: &str) -> String {
    let uploaded: Value = client
        .post(format!("{base}/_matrix/media/v3/upload"))
        .bearer_auth(token)
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    uploaded["content_uri"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn starts_with_no_configuration_and_signs_up_with_admin_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, &[]).await;
    assert!(dir.path().join("signing.key").exists() && dir.path().join("rhizome.db").exists());
    let client = reqwest::Client::new();

    // Invite-only by default.
    let (status, body) =
        register(&client, &server.base, "alice", json!({ "type": "m.login.dummy" })).await;
    assert_eq!(status, 401, "open sign-up on a default server: {body}");
    let token =
        admin(dir.path(), &["token", "create", "--uses", "1", "--expires", "7d"]).trim().to_owned();
    assert!(!token.is_empty());
    let listed = admin(dir.path(), &["token", "list"]);
    assert!(listed.contains(&token) && listed.contains("0/1 used"), "{listed}");
    let (status, body) = register(
        &client,
        &server.base,
        "alice",
        json!({ "type": "m.login.registration_token", "token": token }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user_id"], "@alice:localhost");
    let listed = admin(dir.path(), &["token", "list"]);
    assert!(listed.contains("1/1 used"), "{listed}");
    admin(dir.path(), &["token", "revoke", &token]);
    assert!(!admin(dir.path(), &["token", "list"]).contains(&token));

    // The key is published.
    let keys: Value = client
        .get(format!("{}/_matrix/key/v2/server", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys["server_name"], "localhost");
    assert!(keys["verify_keys"].as_object().unwrap().keys().all(|id| id.starts_with("ed25519:")));
}

#[test]
fn unknown_configuration_keys_stop_the_server_and_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(dir.path(), free_port())
        .env("RHIZOME_REGISTRATON__MODE", "open")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("registraton.mode"), "{stderr}");
    std::fs::write(dir.path().join("rhizome.toml"), "sever_name = \"x\"\n").unwrap();
    let output = command(dir.path(), free_port()).arg("serve").output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("sever_name"));
}

#[test]
fn the_example_configuration_is_what_the_binary_prints() {
    let output = Command::new(BINARY).args(["config", "example"]).output().unwrap();
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../rhizome.example.toml"))
            .unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), committed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let open = [("RHIZOME_REGISTRATION__MODE", "open")];
    let mut server = serve(dir.path(), port, &open).await;
    let client = reqwest::Client::new();
    let (token, room_id) = alice_with_room(&client, &server.base, "crash").await;

    // Four senders write as fast as they can; the server is killed under them.
    let mut senders = Vec::new();
    for sender in 0..4 {
        let client = client.clone();
        let base = server.base.clone();
        let token = token.clone();
        let room_id = room_id.clone();
        senders.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for index in 0.. {
                let url = format!(
                    "{base}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/s{sender}-{index}"
                );
                let body = json!({ "msgtype": "m.text", "body": format!("{sender}-{index}") });
                let Ok(response) = client.put(url).bearer_auth(&token).json(&body).send().await
                else {
                    break;
                };
                let Ok(value) = response.json::<Value>().await else { break };
                match value["event_id"].as_str() {
                    Some(event_id) => acknowledged.push(event_id.to_owned()),
                    None => break,
                }
                if sender == 0 && index % 10 == 0 {
                    // State changes too, so state groups are written mid-crash as well.
                    let url =
                        format!("{base}/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/");
                    let _ = client
                        .put(url)
                        .bearer_auth(&token)
                        .json(&json!({ "topic": format!("t{index}") }))
                        .send()
                        .await;
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut acknowledged = Vec::new();
    for sender in senders {
        acknowledged.extend(sender.await.unwrap());
    }
    assert!(acknowledged.len() > 20, "too few writes before the crash to mean anything");

    drop(server);
    let server = serve(dir.path(), port, &open).await;
    for event_id in &acknowledged {
        let url = format!("{}/_matrix/client/v3/rooms/{room_id}/event/{event_id}", server.base);
        let response = client.get(url).bearer_auth(&token).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "an acknowledged event was lost in the crash");
    }
    // The room is consistent: it takes new events, state reads and a full sync.
    let url =
        format!("{}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/after", server.base);
    let response = client
        .put(url)
        .bearer_auth(&token)
        .json(&json!({ "msgtype": "m.text", "body": "after" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let url = format!("{}/_matrix/client/v3/rooms/{room_id}/state/m.room.name/", server.base);
    let name: Value =
        client.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(name["name"], "crash");
    let url = format!("{}/_matrix/client/v3/sync", server.base);
    let sync = client.get(url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(sync.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_deleted_and_purged_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(dir.path(), port, &[("RHIZOME_REGISTRATION__MODE", "open")]).await;
    let client = reqwest::Client::new();
    let (_, alice) =
        register(&client, &server.base, "alice", json!({ "type": "m.login.dummy" })).await;
    let token = alice["access_token"].as_str().unwrap().to_owned();
    let mut uris = Vec::new();
    for body in ["first file", "second file"] {
        uris.push(upload_text(&client, &server.base, &token, body).await);
    }
    let download = |mxc: &str| {
        let url = format!(
            "{}/_matrix/client/v1/media/download/{}",
            server.base,
            mxc.trim_start_matches("mxc://")
        );
        let request = client.get(url).bearer_auth(&token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(download(&uris[0]).await, 200);

    let deleted = admin(dir.path(), &["media", "delete", &uris[0]]);
    assert!(!deleted.is_empty());
    assert_eq!(download(&uris[0]).await, 404);
    assert_eq!(download(&uris[1]).await, 200);
    // Nothing has gone unused for a day; everything has for no time at all.
    let kept = admin(dir.path(), &["media", "purge", "--older-than", "1d"]);
    assert!(kept.starts_with("deleted 0 media items"), "{kept}");
    let purged = admin(dir.path(), &["media", "purge", "--older-than", "0s"]);
    assert!(purged.starts_with("deleted 1 media items (1 files)"), "{purged}");
    assert_eq!(download(&uris[1]).await, 404);
    let files = walk(&dir.path().join("media"));
    assert!(files.is_empty(), "files left behind: {files:?}");
}

fn walk(path: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(path) else { return Vec::new() };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_made_while_serving_starts_a_server_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let backup_dir = tempfile::tempdir().unwrap();
    let open = [("RHIZOME_REGISTRATION__MODE", "open")];
    let server = serve(dir.path(), free_port(), &open).await;
    let client = reqwest::Client::new();
    let (token, room_id) = alice_with_room(&client, &server.base, "archive").await;
    let send = format!("{}/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1", server.base);
    let sent = client
        .put(send)
        .bearer_auth(&token)
        .json(&json!({ "msgtype": "m.text", "body": "minutes of the meeting" }))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let mxc = upload_text(&client, &server.base, &token, "the agenda").await;

    // Backed up while the server runs, twice: the second copies no media again.
    let target = backup_dir.path().join("copy");
    let first = admin(dir.path(), &["backup", target.to_str().unwrap()]);
    assert!(first.contains("1 new media files") && first.contains("database"), "{first}");
    let second = admin(dir.path(), &["backup", target.to_str().unwrap()]);
    assert!(second.contains("0 new media files"), "{second}");
    let inside = dir.path().join("backups");
    let refused = command(dir.path(), 0)
        .args(["admin", "backup", inside.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success(), "a backup inside the data directory was made");
    drop(server);

    // A server on the copy has the account, the room, the message and the file.
    let restored = serve(&target, free_port(), &open).await;
    let (status, login) = post(
        &client,
        format!("{}/_matrix/client/v3/login", restored.base),
        None,
        json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" },
                "password": "a-long-password" }),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let page: Value = client
        .get(format!("{}/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=5", restored.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["chunk"][0]["content"]["body"], "minutes of the meeting", "{page}");
    let file = client
        .get(format!(
            "{}/_matrix/client/v1/media/download/{}",
            restored.base,
            mxc.trim_start_matches("mxc://")
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.text().await.unwrap(), "the agenda");
    // The same signing key: the server is still itself to others.
    assert_eq!(
        std::fs::read(dir.path().join("signing.key")).unwrap(),
        std::fs::read(target.join("signing.key")).unwrap()
    );
}
