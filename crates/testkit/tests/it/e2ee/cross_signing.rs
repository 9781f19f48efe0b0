//! Cross-signing over HTTP: the first upload needs no user-interactive authentication
//! (MSC3967), replacing keys does; signatures are checked, shown to whom the spec says, and bad
//! ones reported in `failures` without being stored.

use rhizome_testkit::TestServer;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use super::{Device, PASSWORD, named_key_pair, sign};

const UPLOAD: &str = "/_matrix/client/v3/keys/device_signing/upload";
const SIGNATURES: &str = "/_matrix/client/v3/keys/signatures/upload";

/// A user's cross-signing key pairs.
struct CrossSigning {
    user_id: String,
    master: (Ed25519KeyPair, String),
    self_signing: (Ed25519KeyPair, String),
    user_signing: (Ed25519KeyPair, String),
}

impl CrossSigning {
    fn new(user_id: &str) -> Self {
        Self {
            user_id: user_id.to_owned(),
            master: named_key_pair(),
            self_signing: named_key_pair(),
            user_signing: named_key_pair(),
        }
    }

    fn unsigned_key(&self, usage: &str, public: &str) -> Value {
        json!({
            "user_id": self.user_id,
            "usage": [usage],
            "keys": { format!("ed25519:{public}"): public },
        })
    }

    fn master_key(&self) -> Value {
        self.unsigned_key("master", &self.master.1)
    }

    fn self_signing_key(&self) -> Value {
        sign(&self.master.0, &self.user_id, self.unsigned_key("self_signing", &self.self_signing.1))
    }

    fn user_signing_key(&self) -> Value {
        sign(&self.master.0, &self.user_id, self.unsigned_key("user_signing", &self.user_signing.1))
    }

    fn upload_body(&self) -> Value {
        json!({
            "master_key": self.master_key(),
            "self_signing_key": self.self_signing_key(),
            "user_signing_key": self.user_signing_key(),
        })
    }
}

/// A device with its keys and cross-signing keys uploaded.
async fn set_up(server: &TestServer, name: &str) -> (Device, CrossSigning) {
    let device = Device::register(server, name).await;
    device.upload_all(1).await;
    let cross = CrossSigning::new(&device.user_id);
    device.api.post(UPLOAD, cross.upload_body()).await.ok();
    (device, cross)
}

fn password_auth(user_id: &str, session: &str, password: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user_id },
        "password": password,
        "session": session,
    })
}

fn no_failures(response: &Value) -> bool {
    response.get("failures").is_none_or(|failures| failures == &json!({}))
}

#[tokio::test]
async fn cross_signing_keys_need_authentication_only_to_replace_them() {
    let server = TestServer::start().await;
    let alice = Device::register(&server, "alice").await;
    let bob = Device::register(&server, "bob").await;
    alice.upload_all(1).await;
    let first = CrossSigning::new(&alice.user_id);
    // The first upload needs no authentication, and repeating it neither.
    alice.api.post(UPLOAD, first.upload_body()).await.ok();
    alice.api.post(UPLOAD, first.upload_body()).await.ok();
    alice.api.post(UPLOAD, json!({ "master_key": first.master_key() })).await.ok();

    let seen_by_bob = bob.query(&[&alice.user_id]).await;
    assert_eq!(seen_by_bob["master_keys"][&alice.user_id], first.master_key());
    assert_eq!(seen_by_bob["self_signing_keys"][&alice.user_id], first.self_signing_key());
    assert!(seen_by_bob["user_signing_keys"].get(&alice.user_id).is_none(), "{seen_by_bob}");
    let seen_by_alice = alice.query(&[&alice.user_id]).await;
    assert_eq!(seen_by_alice["user_signing_keys"][&alice.user_id], first.user_signing_key());

    // Bad keys are refused before any authentication, and change nothing.
    let mut not_signed = first.unsigned_key("self_signing", &named_key_pair().1);
    not_signed["signatures"] = json!({});
    let mut wrong_user = first.master_key();
    wrong_user["user_id"] = json!(bob.user_id);
    let mut wrong_usage = first.master_key();
    wrong_usage["usage"] = json!(["self_signing"]);
    let mut two_keys = first.master_key();
    let extra = named_key_pair().1;
    two_keys["keys"][format!("ed25519:{extra}")] = json!(extra);
    let mut misnamed = first.master_key();
    misnamed["keys"] = json!({ "ed25519:name": first.master.1 });
    for (body, errcode) in [
        (json!({ "self_signing_key": not_signed }), "M_INVALID_PARAM"),
        (json!({ "master_key": wrong_user }), "M_INVALID_PARAM"),
        (json!({ "master_key": wrong_usage }), "M_INVALID_PARAM"),
        (json!({ "master_key": two_keys }), "M_INVALID_PARAM"),
        (json!({ "master_key": misnamed }), "M_INVALID_PARAM"),
        (json!({ "master_key": { "user_id": alice.user_id } }), "M_BAD_JSON"),
    ] {
        alice.api.post(UPLOAD, body).await.expect_error(400, errcode);
    }
    // A self-signing key with no master key to sign it.
    let bobs = CrossSigning::new(&bob.user_id);
    bob.api
        .post(UPLOAD, json!({ "self_signing_key": bobs.self_signing_key() }))
        .await
        .expect_error(400, "M_INVALID_PARAM");
    assert_eq!(bob.query(&[&alice.user_id]).await, seen_by_bob, "nothing changed");

    // Replacing the keys asks for the password.
    let second = CrossSigning::new(&alice.user_id);
    let challenge = alice.api.post(UPLOAD, second.upload_body()).await;
    assert_eq!(challenge.status.as_u16(), 401, "{}", challenge.body);
    assert_eq!(challenge.body["flows"][0]["stages"], json!(["m.login.password"]));
    let session = challenge.body["session"].as_str().unwrap().to_owned();
    let mut wrong = second.upload_body();
    wrong["auth"] = password_auth(&alice.user_id, &session, "not-the-password");
    let refused = alice.api.post(UPLOAD, wrong).await;
    assert_eq!((refused.status.as_u16(), refused.errcode()), (401, Some("M_FORBIDDEN")));
    assert_eq!(bob.query(&[&alice.user_id]).await, seen_by_bob, "nothing changed");
    let mut right = second.upload_body();
    right["auth"] = password_auth(&alice.user_id, &session, PASSWORD);
    alice.api.post(UPLOAD, right).await.ok();
    let now = bob.query(&[&alice.user_id]).await;
    assert_eq!(now["master_keys"][&alice.user_id], second.master_key());
    assert_eq!(now["self_signing_keys"][&alice.user_id], second.self_signing_key());
}

#[tokio::test]
async fn signatures_are_checked_and_shown_to_whom_they_concern() {
    let server = TestServer::start().await;
    let (alice, alice_cross) = set_up(&server, "alice").await;
    let (bob, bob_cross) = set_up(&server, "bob").await;
    let carol = Device::register(&server, "carol").await;
    let signatures_of = |query: &Value, user: &str| -> Value {
        query["master_keys"][user]["signatures"][&alice.user_id].clone()
    };

    // Alice signs her device with her self-signing key, and her master key with her device.
    let signed_device = sign(&alice_cross.self_signing.0, &alice.user_id, alice.device_keys());
    let signed_master = sign(&alice.pair, &alice.user_id, alice_cross.master_key());
    let body = json!({ &alice.user_id: {
        &alice.device_id: signed_device,
        &alice_cross.master.1: signed_master,
    } });
    let response = alice.api.post(SIGNATURES, body).await.ok();
    assert!(no_failures(&response), "{response}");
    let seen = carol.query(&[&alice.user_id]).await;
    let device = &seen["device_keys"][&alice.user_id][&alice.device_id];
    let device_signatures = &device["signatures"][&alice.user_id];
    assert!(device_signatures[format!("ed25519:{}", alice_cross.self_signing.1)].is_string());
    assert!(device_signatures[format!("ed25519:{}", alice.device_id)].is_string(), "{seen}");
    let master_signatures = signatures_of(&seen, &alice.user_id);
    assert!(master_signatures[format!("ed25519:{}", alice.device_id)].is_string(), "{seen}");

    // Alice verifies Bob: only Alice sees her signature on Bob's master key.
    let bob_master = alice.query(&[&bob.user_id]).await["master_keys"][&bob.user_id].clone();
    assert_eq!(bob_master, bob_cross.master_key());
    let verified = sign(&alice_cross.user_signing.0, &alice.user_id, bob_master.clone());
    let body = json!({ &bob.user_id: { &bob_cross.master.1: verified } });
    let response = alice.api.post(SIGNATURES, body).await.ok();
    assert!(no_failures(&response), "{response}");
    let usk = format!("ed25519:{}", alice_cross.user_signing.1);
    let by_alice = alice.query(&[&bob.user_id]).await;
    assert!(signatures_of(&by_alice, &bob.user_id)[&usk].is_string(), "{by_alice}");
    for viewer in [&bob, &carol] {
        let other = viewer.query(&[&bob.user_id]).await;
        assert!(signatures_of(&other, &bob.user_id).is_null(), "{other}");
    }

    // Signatures that do not verify are reported and not stored: by a key that may not sign,
    // over other content, or not made by the key they name.
    let (impostor, impostor_public) = named_key_pair();
    let by_carol = sign(&impostor, &carol.user_id, bob_master.clone());
    let body = json!({ &bob.user_id: { &bob_cross.master.1: by_carol } });
    let response = carol.api.post(SIGNATURES, body).await.ok();
    let failure = &response["failures"][&bob.user_id][&bob_cross.master.1];
    assert_eq!(failure["errcode"], "M_INVALID_SIGNATURE", "{response}");
    let mut other_content = bob_master.clone();
    other_content["usage"] = json!(["master", "extra"]);
    let other_content = sign(&alice_cross.user_signing.0, &alice.user_id, other_content);
    let forged_value = sign(&impostor, &alice.user_id, bob_master.clone())["signatures"]
        [&alice.user_id][format!("ed25519:{impostor_public}")]
    .clone();
    let mut forged = bob_master.clone();
    forged["signatures"] = json!({ &alice.user_id: { &usk: forged_value } });
    for bad in [other_content, forged] {
        let body = json!({ &bob.user_id: { &bob_cross.master.1: bad } });
        let response = alice.api.post(SIGNATURES, body).await.ok();
        let failure = &response["failures"][&bob.user_id][&bob_cross.master.1];
        assert_eq!(failure["errcode"], "M_INVALID_SIGNATURE", "{response}");
        assert!(failure["error"].is_string());
    }
    // Keys that cannot be signed: another user's self-signing key or device, an unknown device.
    let usk_pair = &alice_cross.user_signing.0;
    let body = json!({
        &bob.user_id: {
            &bob_cross.self_signing.1: sign(usk_pair, &alice.user_id, bob_cross.self_signing_key()),
            &bob.device_id: sign(usk_pair, &alice.user_id, bob.device_keys()),
        },
        &alice.user_id: {
            "NOSUCHDEVICE": sign(&alice_cross.self_signing.0, &alice.user_id, alice.device_keys()),
        },
    });
    let response = alice.api.post(SIGNATURES, body).await.ok();
    let failures = &response["failures"];
    assert_eq!(failures[&bob.user_id][&bob_cross.self_signing.1]["errcode"], "M_NOT_FOUND");
    assert_eq!(failures[&bob.user_id][&bob.device_id]["errcode"], "M_NOT_FOUND", "{response}");
    assert_eq!(failures[&alice.user_id]["NOSUCHDEVICE"]["errcode"], "M_NOT_FOUND");
    assert_eq!(alice.query(&[&bob.user_id]).await, by_alice, "failed signatures change nothing");
    assert_eq!(carol.query(&[&bob.user_id]).await["master_keys"][&bob.user_id], bob_master);
}
