//! Key backup over HTTP: versions with `etag` and `count`, keys by room and session, the better
//! key kept on conflict, the current version enforced, and bad input refused.

use rhizome_testkit::{TestServer, encode};
use serde_json::{Value, json};

use super::Device;

const ALGORITHM: &str = "m.megolm_backup.v1.curve25519-aes-sha2";

fn algorithm(public_key: &str) -> Value {
    json!({ "algorithm": ALGORITHM, "auth_data": { "public_key": public_key, "signatures": {} } })
}

fn key(index: u64, forwarded: u64, verified: bool) -> Value {
    json!({
        "first_message_index": index,
        "forwarded_count": forwarded,
        "is_verified": verified,
        "session_data": { "ephemeral": "ZXBo", "ciphertext": format!("c{index}{forwarded}{verified}"), "mac": "bWFj" },
    })
}

#[tokio::test]
async fn backups_keep_the_better_key_in_the_current_version() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    let api = &alice.api;
    api.get("/_matrix/client/v3/room_keys/version").await.expect_error(404, "M_NOT_FOUND");
    let created = api.post("/_matrix/client/v3/room_keys/version", algorithm("a2V5")).await.ok();
    let v1 = created["version"].as_str().unwrap().to_owned();
    let info = api.get("/_matrix/client/v3/room_keys/version").await.ok();
    assert_eq!(info["version"], v1);
    assert_eq!(info["algorithm"], ALGORITHM);
    assert_eq!(info["auth_data"]["public_key"], "a2V5");
    assert_eq!(info["count"], 0);
    let first_etag = info["etag"].clone();
    // Other users see none of it.
    bob.api
        .get(&format!("/_matrix/client/v3/room_keys/version/{v1}"))
        .await
        .expect_error(404, "M_NOT_FOUND");

    let room = "!room:example.org";
    let keys_path = |version: &str| format!("/_matrix/client/v3/room_keys/keys?version={version}");
    let session_path = |version: &str, session: &str| {
        format!("/_matrix/client/v3/room_keys/keys/{}/{session}?version={version}", encode(room))
    };
    let put = api
        .put(&keys_path(&v1), json!({ "rooms": { room: { "sessions": { "s1": key(5, 1, false), "s2": key(0, 0, false) } } } }))
        .await
        .ok();
    assert_eq!(put["count"], 2);
    assert_ne!(put["etag"], first_etag);
    // Worse keys change nothing, not even the etag.
    for worse in [key(6, 0, false), key(5, 2, false)] {
        let again = api.put(&session_path(&v1, "s1"), worse).await.ok();
        assert_eq!(again, put);
    }
    // Better keys replace: fewer forwards, a lower index, then verified over everything.
    for better in [key(5, 0, false), key(1, 4, false), key(9, 9, true)] {
        let changed = api.put(&session_path(&v1, "s1"), better.clone()).await.ok();
        assert_ne!(changed["etag"], put["etag"]);
        assert_eq!(api.get(&session_path(&v1, "s1")).await.ok(), better);
    }
    let room_put = api
        .put(
            &format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", encode(room)),
            json!({ "sessions": { "s3": key(0, 0, true) } }),
        )
        .await
        .ok();
    assert_eq!(room_put["count"], 3);
    let all = api.get(&keys_path(&v1)).await.ok();
    assert_eq!(all["rooms"][room]["sessions"]["s1"], key(9, 9, true));
    assert_eq!(all["rooms"][room]["sessions"].as_object().unwrap().len(), 3);
    let in_room = api
        .get(&format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", encode(room)))
        .await
        .ok();
    assert_eq!(in_room["sessions"].as_object().unwrap().len(), 3);
    api.get(&session_path(&v1, "nosuchsession")).await.expect_error(404, "M_NOT_FOUND");

    // Bad input.
    api.put(&session_path(&v1, "s4"), json!({ "first_message_index": 0 }))
        .await
        .expect_error(400, "M_BAD_JSON");
    api.post("/_matrix/client/v3/room_keys/version", json!({ "auth_data": {} }))
        .await
        .expect_error(400, "M_BAD_JSON");
    api.put(&keys_path("99"), json!({ "rooms": {} })).await.expect_error(404, "M_NOT_FOUND");
    api.get(&keys_path("99")).await.expect_error(404, "M_NOT_FOUND");

    // A new version becomes current; the old one takes no more keys.
    let v2 =
        api.post("/_matrix/client/v3/room_keys/version", algorithm("bmV3")).await.ok()["version"]
            .as_str()
            .unwrap()
            .to_owned();
    assert_ne!(v1, v2);
    let wrong = api.put(&session_path(&v1, "s5"), key(0, 0, false)).await;
    wrong.expect_error(403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(wrong.body["current_version"], v2);
    assert_eq!(api.get("/_matrix/client/v3/room_keys/version").await.ok()["version"], v2);

    // Updating a version's auth data, but not its algorithm or version.
    let version_path = format!("/_matrix/client/v3/room_keys/version/{v2}");
    api.put(&version_path, algorithm("dXBkYXRlZA")).await.ok();
    assert_eq!(api.get(&version_path).await.ok()["auth_data"]["public_key"], "dXBkYXRlZA");
    api.put(&version_path, json!({ "algorithm": "other", "auth_data": {} }))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    let mut other_version = algorithm("eA");
    other_version["version"] = json!(v1);
    api.put(&version_path, other_version).await.expect_error(400, "M_INVALID_PARAM");

    // Deleting keys (session, room, all) and versions.
    let deleted = api.delete(&session_path(&v1, "s1")).await.ok();
    assert_eq!(deleted["count"], 2);
    let deleted = api
        .delete(&format!("/_matrix/client/v3/room_keys/keys/{}?version={v1}", encode(room)))
        .await
        .ok();
    assert_eq!(deleted["count"], 0);
    api.delete(&keys_path(&v1)).await.ok();
    api.delete(&version_path).await.ok();
    api.get(&version_path).await.expect_error(404, "M_NOT_FOUND");
    api.delete(&version_path).await.expect_error(404, "M_NOT_FOUND");
    assert_eq!(api.get("/_matrix/client/v3/room_keys/version").await.ok()["version"], v1);
}
