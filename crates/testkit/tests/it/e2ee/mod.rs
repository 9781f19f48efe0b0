//! End-to-end encryption over HTTP: keys, claims under concurrency, cross-signing and
//! signatures, to-device delivery, device lists, key backup, dehydrated devices, and the
//! errors bad input gets. Devices here sign their keys with real ed25519 keys.

mod backup;
mod cross_signing;
mod dehydrated;
mod device_lists;
mod keys;
mod to_device;

use rhizome_testkit::{Api, TestServer};
use ruma::{
    CanonicalJsonObject,
    serde::{Base64, base64::Standard},
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

/// The password test users share.
pub const PASSWORD: &str = "a-long-password";

fn encode(bytes: &[u8]) -> String {
    Base64::<Standard, _>::new(bytes.to_vec()).encode()
}

/// An ed25519 key pair named `version`, with its public key in unpadded base64.
pub fn key_pair(version: &str) -> (Ed25519KeyPair, String) {
    let pair = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.to_owned()).unwrap();
    let public = encode(&pair.public_key());
    (pair, public)
}

/// An ed25519 key pair named by its own public key, as cross-signing keys are.
pub fn named_key_pair() -> (Ed25519KeyPair, String) {
    let document = Ed25519KeyPair::generate();
    let probe = Ed25519KeyPair::from_der(&document, "probe".to_owned()).unwrap();
    let public = encode(&probe.public_key());
    (Ed25519KeyPair::from_der(&document, public.clone()).unwrap(), public)
}

/// Signs a JSON object as `user_id` with the key pair (key ID `ed25519:<version>`).
pub fn sign(pair: &Ed25519KeyPair, user_id: &str, value: Value) -> Value {
    let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    sign_json(user_id, pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

/// A logged-in device with its own identity keys.
pub struct Device {
    pub api: Api,
    pub user_id: String,
    pub device_id: String,
    pub pair: Ed25519KeyPair,
    pub ed25519: String,
    pub curve25519: String,
}

impl Device {
    fn new(api: Api, device_id: &str) -> Self {
        let (pair, ed25519) = key_pair(device_id);
        let (_, curve25519) = key_pair("curve");
        let user_id = api.user().to_owned();
        Self { api, user_id, device_id: device_id.to_owned(), pair, ed25519, curve25519 }
    }

    /// Registers a user; the device is the one registration made.
    pub async fn register(server: &TestServer, name: &str) -> Self {
        let mut api = Api::new(&server.base_url);
        let body = api.register(name, PASSWORD).await;
        Self::new(api, body["device_id"].as_str().unwrap())
    }

    /// Logs in again as the same user: a new device.
    pub async fn login(&self, server: &TestServer) -> Self {
        let mut api = Api::new(&server.base_url);
        let body = api
            .post(
                "/_matrix/client/v3/login",
                json!({
                    "type": "m.login.password",
                    "identifier": { "type": "m.id.user", "user": self.user_id },
                    "password": PASSWORD,
                }),
            )
            .await
            .ok();
        api.token = body["access_token"].as_str().map(str::to_owned);
        api.user_id = Some(self.user_id.clone());
        Self::new(api, body["device_id"].as_str().unwrap())
    }

    /// The device's signed identity keys.
    pub fn device_keys(&self) -> Value {
        sign(
            &self.pair,
            &self.user_id,
            json!({
                "user_id": self.user_id,
                "device_id": self.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
                "keys": {
                    format!("ed25519:{}", self.device_id): self.ed25519,
                    format!("curve25519:{}", self.device_id): self.curve25519,
                },
            }),
        )
    }

    /// A signed curve25519 key (one-time or, with `fallback`, a fallback key).
    pub fn signed_key(&self, fallback: bool) -> Value {
        let (_, key) = key_pair("otk");
        let mut value = json!({ "key": key });
        if fallback {
            value["fallback"] = json!(true);
        }
        sign(&self.pair, &self.user_id, value)
    }

    /// `n` signed one-time keys named `<prefix><index>`.
    pub fn one_time_keys(&self, prefix: &str, n: usize) -> Value {
        let keys: serde_json::Map<String, Value> = (0..n)
            .map(|index| (format!("signed_curve25519:{prefix}{index:04}"), self.signed_key(false)))
            .collect();
        Value::Object(keys)
    }

    /// Uploads keys and returns the response.
    pub async fn upload(&self, body: Value) -> rhizome_testkit::Response {
        self.api.post("/_matrix/client/v3/keys/upload", body).await
    }

    /// Uploads the identity keys, `n` one-time keys (`K0000`, …) and a fallback key (`FB`).
    pub async fn upload_all(&self, n: usize) -> Value {
        let body = json!({
            "device_keys": self.device_keys(),
            "one_time_keys": self.one_time_keys("K", n),
            "fallback_keys": { "signed_curve25519:FB": self.signed_key(true) },
        });
        self.upload(body).await.ok()
    }

    /// `/keys/query` for all devices of the given users.
    pub async fn query(&self, users: &[&str]) -> Value {
        let wanted: serde_json::Map<String, Value> =
            users.iter().map(|user| ((*user).to_owned(), json!([]))).collect();
        self.api.post("/_matrix/client/v3/keys/query", json!({ "device_keys": wanted })).await.ok()
    }

    /// A sync from `since` (an initial one when `None`) that returns at once.
    pub async fn sync(&self, since: Option<&str>) -> Value {
        match since {
            Some(since) => self.api.sync(&format!("since={since}&timeout=0")).await,
            None => self.api.sync("timeout=0").await,
        }
    }
}

/// The `next_batch` of a sync response.
pub fn next_batch(sync: &Value) -> String {
    sync["next_batch"].as_str().unwrap().to_owned()
}

/// The to-device events of a sync response.
pub fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"].as_array().cloned().unwrap_or_default()
}

/// The users in a sync's `device_lists` field (`changed` or `left`).
pub fn device_list(sync: &Value, field: &str) -> Vec<String> {
    sync["device_lists"][field]
        .as_array()
        .map(|users| users.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}
