//! The key ring: this server's key document (current and old keys, self-signed), and other
//! servers' keys, fetched directly from them or through the notaries the organiser trusts,
//! verified, cached in memory and in the database, and served back as a notary.
//!
//! A key is usable for a signature made at time `t` when the server vouched for it until at
//! least `t` (`valid_until_ts`, capped at a week after fetching), or, for a key the server
//! lists as old, when `t` is before it expired. Request signatures are checked at the present
//! time; event signatures at the event's `origin_server_ts` from room version 5 on, and with
//! any known key before it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use rhizome_core::{Error, Result, clock::now_millis, error::MatrixErrorKind};
use rhizome_storage::{ServerKeyRecord, ServerKeyResponse};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedServerName,
    ServerName,
    api::federation::discovery::{get_remote_server_keys_batch, get_server_keys},
    serde::Base64,
    signatures::{PublicKeyMap, sign_json, verify_json},
};

use super::client::RequestLimits;
use crate::Services;

/// How long this server vouches for its own keys.
const OWN_KEY_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;
/// The longest validity trusted from a key document (spec: at most a week ahead).
const MAX_TRUSTED_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;
/// How long a failed fetch of a server's keys is not repeated.
const FAILED_FETCH_BACKOFF: Duration = Duration::from_secs(30);
/// The largest key document read.
const MAX_KEY_RESPONSE_BYTES: usize = 256 * 1024;
/// How long this server's signed key document is reused.
const OWN_DOCUMENT_REUSE_MS: i64 = 3600 * 1000;

/// The key ring's memory: keys by server, failed fetches, and one fetch at a time per server.
#[derive(Default)]
pub(crate) struct KeyRing {
    keys: Mutex<HashMap<OwnedServerName, Arc<Vec<ServerKeyRecord>>>>,
    failures: Mutex<HashMap<OwnedServerName, Instant>>,
    fetches: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<()>>>>,
    own_document: Mutex<Option<(i64, CanonicalJsonObject)>>,
}

/// Whether a key may verify a signature made at `at` (ms); `None`: any time.
fn usable_at(key: &ServerKeyRecord, at: Option<i64>) -> bool {
    match (at, key.expired_ts) {
        (None, _) => true,
        (Some(at), Some(expired)) => at < expired,
        (Some(at), None) => key.valid_until_ts >= at,
    }
}

/// Why a key document was refused.
fn bad_document(reason: &str) -> Error {
    Error::matrix(MatrixErrorKind::Unauthorized, format!("Invalid server key document: {reason}"))
}

fn integer(object: &CanonicalJsonObject, field: &str) -> Option<i64> {
    match object.get(field) {
        Some(CanonicalJsonValue::Integer(value)) => Some(i64::from(*value)),
        _ => None,
    }
}

/// The keys a key document lists, current and old, with their validity capped at a week
/// after `now`.
fn keys_of_document(object: &CanonicalJsonObject, now: i64) -> Result<Vec<ServerKeyRecord>> {
    let valid_until = integer(object, "valid_until_ts")
        .ok_or_else(|| bad_document("no valid_until_ts"))?
        .min(now + MAX_TRUSTED_VALIDITY_MS);
    let mut keys = Vec::new();
    let mut collect = |field: &str, old: bool| -> Result<()> {
        let Some(map) = object.get(field) else { return Ok(()) };
        let CanonicalJsonValue::Object(map) = map else { return Err(bad_document(field)) };
        for (key_id, entry) in map {
            let CanonicalJsonValue::Object(entry) = entry else { return Err(bad_document(field)) };
            let Some(CanonicalJsonValue::String(key)) = entry.get("key") else {
                return Err(bad_document("a key without `key`"));
            };
            let expired_ts = if old {
                Some(integer(entry, "expired_ts").ok_or_else(|| bad_document("expired_ts"))?)
            } else {
                None
            };
            keys.push(ServerKeyRecord {
                key_id: key_id.clone(),
                public_key: key.clone(),
                valid_until_ts: valid_until,
                expired_ts,
            });
        }
        Ok(())
    };
    collect("verify_keys", false)?;
    collect("old_verify_keys", true)?;
    Ok(keys)
}

/// Checks that `object` carries a valid signature of `entity` by one of `keys`.
fn verify_signature_of(
    object: &CanonicalJsonObject,
    entity: &str,
    keys: &BTreeMap<String, Base64>,
) -> Result<()> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return Err(bad_document("unsigned"));
    };
    let Some(own) = signatures.get(entity) else {
        return Err(bad_document("not signed by the expected server"));
    };
    let mut only = object.clone();
    only.insert(
        "signatures".to_owned(),
        CanonicalJsonValue::Object([(entity.to_owned(), own.clone())].into_iter().collect()),
    );
    let map: PublicKeyMap = [(entity.to_owned(), keys.clone())].into_iter().collect();
    verify_json(&map, &only).map_err(|_| bad_document("bad signature"))
}

/// Verifies a server's self-signed key document and returns its keys.
fn verify_document(
    object: &CanonicalJsonObject,
    server_name: &ServerName,
    now: i64,
) -> Result<Vec<ServerKeyRecord>> {
    match object.get("server_name") {
        Some(CanonicalJsonValue::String(name)) if name == server_name.as_str() => {}
        _ => return Err(bad_document("server_name does not match")),
    }
    let keys = keys_of_document(object, now)?;
    let current: BTreeMap<String, Base64> = keys
        .iter()
        .filter(|key| key.expired_ts.is_none())
        .filter_map(|key| Some((key.key_id.clone(), Base64::parse(&key.public_key).ok()?)))
        .collect();
    if current.is_empty() {
        return Err(bad_document("no verify_keys"));
    }
    verify_signature_of(object, server_name.as_str(), &current)?;
    Ok(keys)
}

impl Services {
    /// This server's key document: current key, old keys, valid for a week, self-signed.
    pub async fn own_key_document(&self) -> Result<CanonicalJsonObject> {
        let now = now_millis();
        if let Some((made, document)) = &*self.federation.keys.own_document.lock()
            && now - made < OWN_DOCUMENT_REUSE_MS
        {
            return Ok(document.clone());
        }
        let key = &self.signing_key;
        let mut old_keys = serde_json::Map::new();
        for (key_id, public_key, expired_ts) in self.store.local_old_keys().await? {
            if key_id != key.key_id() {
                old_keys.insert(
                    key_id,
                    serde_json::json!({ "key": public_key, "expired_ts": expired_ts }),
                );
            }
        }
        let mut document: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "server_name": self.server_name(),
            "valid_until_ts": now + OWN_KEY_VALIDITY_MS,
            "verify_keys": { key.key_id(): { "key": key.public_key_base64() } },
            "old_verify_keys": old_keys,
        }))
        .map_err(Error::internal)?;
        sign_json(self.server_name().as_str(), key.pair(), &mut document)
            .map_err(Error::internal)?;
        *self.federation.keys.own_document.lock() = Some((now, document.clone()));
        Ok(document)
    }

    /// This server's own keys, as records.
    async fn own_keys(&self) -> Result<Vec<ServerKeyRecord>> {
        let mut keys = vec![ServerKeyRecord {
            key_id: self.signing_key.key_id(),
            public_key: self.signing_key.public_key_base64(),
            valid_until_ts: i64::MAX,
            expired_ts: None,
        }];
        for (key_id, public_key, expired_ts) in self.store.local_old_keys().await? {
            keys.push(ServerKeyRecord {
                key_id,
                public_key,
                valid_until_ts: expired_ts,
                expired_ts: Some(expired_ts),
            });
        }
        Ok(keys)
    }

    /// The keys known for a server, from memory or the database.
    async fn known_keys(&self, server_name: &ServerName) -> Result<Arc<Vec<ServerKeyRecord>>> {
        if server_name == self.server_name() {
            return Ok(Arc::new(self.own_keys().await?));
        }
        if let Some(keys) = self.federation.keys.keys.lock().get(server_name) {
            return Ok(keys.clone());
        }
        let keys = Arc::new(self.store.server_keys(server_name).await?);
        self.federation.keys.keys.lock().insert(server_name.to_owned(), keys.clone());
        Ok(keys)
    }

    /// The public keys of `server_name` with the given IDs that may verify a signature made
    /// at `at` (ms since the epoch; `None`: any known key), fetching the server's keys when
    /// some are missing or too old. Keys that cannot be found are left out.
    pub async fn server_verify_keys(
        &self,
        server_name: &ServerName,
        key_ids: &[String],
        at: Option<i64>,
    ) -> Result<BTreeMap<String, Base64>> {
        let pick = |keys: &[ServerKeyRecord]| -> BTreeMap<String, Base64> {
            keys.iter()
                .filter(|key| key_ids.contains(&key.key_id) && usable_at(key, at))
                .filter_map(|key| Some((key.key_id.clone(), Base64::parse(&key.public_key).ok()?)))
                .collect()
        };
        let known = self.known_keys(server_name).await?;
        let found = pick(&known);
        if found.len() == key_ids.len() || server_name == self.server_name() {
            return Ok(found);
        }
        // Fetch once at a time per server, and not again right after a failure.
        let lock =
            self.federation.keys.fetches.lock().entry(server_name.to_owned()).or_default().clone();
        let _guard = lock.lock().await;
        let known = self.known_keys(server_name).await?;
        let found = pick(&known);
        if found.len() == key_ids.len() {
            return Ok(found);
        }
        let recently_failed = self
            .federation
            .keys
            .failures
            .lock()
            .get(server_name)
            .is_some_and(|when| when.elapsed() < FAILED_FETCH_BACKOFF);
        if recently_failed {
            return Ok(found);
        }
        let minimum_valid_until = at.unwrap_or_else(now_millis);
        match self.fetch_server_keys(server_name, key_ids, minimum_valid_until).await {
            Ok(()) => {
                self.federation.keys.failures.lock().remove(server_name);
            }
            Err(error) => {
                tracing::debug!(%error, "could not fetch a server's keys");
                self.federation.keys.failures.lock().insert(server_name.to_owned(), Instant::now());
            }
        }
        Ok(pick(&self.known_keys(server_name).await?))
    }

    /// Stores a verified key document and its keys, and refreshes the memory.
    async fn store_key_document(
        &self,
        server_name: &ServerName,
        object: &CanonicalJsonObject,
        keys: &[ServerKeyRecord],
        now: i64,
    ) -> Result<()> {
        let valid_until_ts = integer(object, "valid_until_ts").unwrap_or(0);
        let response = ServerKeyResponse {
            server_name: server_name.to_owned(),
            json: serde_json::to_string(object).map_err(Error::internal)?,
            valid_until_ts,
            fetched_ts: now,
        };
        self.store.store_server_keys(&response, keys).await?;
        self.federation.keys.keys.lock().remove(server_name);
        Ok(())
    }

    /// Fetches a server's keys: from the server itself, then from each trusted notary.
    async fn fetch_server_keys(
        &self,
        server_name: &ServerName,
        key_ids: &[String],
        minimum_valid_until: i64,
    ) -> Result<()> {
        let client = self.federation_client()?;
        let now = now_millis();
        let direct = client
            .send_raw(
                server_name,
                get_server_keys::v2::Request::new(),
                RequestLimits::small().with_max_body_bytes(MAX_KEY_RESPONSE_BYTES),
            )
            .await;
        let mut last_error = None;
        match direct {
            Ok(body) => match serde_json::from_slice::<CanonicalJsonObject>(&body)
                .map_err(|_| bad_document("not JSON"))
                .and_then(|object| verify_document(&object, server_name, now).map(|k| (object, k)))
            {
                Ok((object, keys)) => {
                    self.store_key_document(server_name, &object, &keys, now).await?;
                    let satisfied = key_ids.iter().all(|wanted| {
                        keys.iter().any(|key| {
                            &key.key_id == wanted && usable_at(key, Some(minimum_valid_until))
                        })
                    });
                    if satisfied {
                        return Ok(());
                    }
                }
                Err(error) => last_error = Some(error),
            },
            Err(error) => last_error = Some(Error::from(error)),
        }
        for notary in &self.config.federation.trusted_key_servers {
            match self.query_notary(notary, server_name, key_ids, minimum_valid_until, now).await {
                Ok(()) => return Ok(()),
                Err(error) => last_error = Some(error),
            }
        }
        match last_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Asks a trusted notary for a server's keys; its answer must carry the notary's
    /// signature by a configured key and the server's own signature.
    async fn query_notary(
        &self,
        notary: &rhizome_core::config::TrustedKeyServer,
        server_name: &ServerName,
        key_ids: &[String],
        minimum_valid_until: i64,
        now: i64,
    ) -> Result<()> {
        let client = self.federation_client()?;
        let mut criteria = get_remote_server_keys_batch::v2::QueryCriteria::new();
        criteria.minimum_valid_until_ts = Some(MilliSecondsSinceUnixEpoch(
            ruma::UInt::try_from(minimum_valid_until.max(0)).unwrap_or_default(),
        ));
        let wanted = key_ids
            .iter()
            .filter_map(|key_id| ruma::OwnedServerSigningKeyId::try_from(key_id.as_str()).ok())
            .map(|key_id| (key_id, criteria.clone()))
            .collect();
        let request = get_remote_server_keys_batch::v2::Request::new(
            [(server_name.to_owned(), wanted)].into_iter().collect(),
        );
        let body = client
            .send_raw(&notary.server_name, request, RequestLimits::small())
            .await
            .map_err(Error::from)?;
        let response: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| bad_document("not JSON"))?;
        let notary_keys: BTreeMap<String, Base64> = notary
            .verify_keys
            .iter()
            .filter_map(|(id, key)| Some((id.clone(), Base64::parse(key).ok()?)))
            .collect();
        let documents = response
            .get("server_keys")
            .and_then(|keys| keys.as_array())
            .ok_or_else(|| bad_document("no server_keys"))?;
        let mut stored = false;
        for document in documents {
            let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(document.clone()) else {
                continue;
            };
            if verify_signature_of(&object, notary.server_name.as_str(), &notary_keys).is_err() {
                tracing::debug!("a notary's answer is not signed by its configured key");
                continue;
            }
            let Ok(keys) = verify_document(&object, server_name, now) else { continue };
            let mut own = object.clone();
            // Keep the server's document as it signed it (without the notary's signature).
            if let Some(CanonicalJsonValue::Object(signatures)) = own.get_mut("signatures") {
                signatures.retain(|entity, _| entity == server_name.as_str());
            }
            self.store_key_document(server_name, &own, &keys, now).await?;
            stored = true;
        }
        if stored { Ok(()) } else { Err(bad_document("the notary knew no valid keys")) }
    }

    /// As a notary: the key documents of `server_name` valid until at least
    /// `minimum_valid_until` (fetched if needed), counter-signed by this server.
    pub async fn notary_key_documents(
        &self,
        server_name: &ServerName,
        minimum_valid_until: Option<i64>,
    ) -> Result<Vec<CanonicalJsonObject>> {
        let mut document = if server_name == self.server_name() {
            Some(self.own_key_document().await?)
        } else {
            let wanted = minimum_valid_until.unwrap_or_else(now_millis);
            let stored = self.store.server_key_response(server_name).await?;
            let fresh = stored.as_ref().is_some_and(|stored| stored.valid_until_ts >= wanted);
            if !fresh
                && self.config.federation.enabled
                && let Err(error) = self.fetch_server_keys(server_name, &[], wanted).await
            {
                tracing::debug!(%error, "could not fetch keys for a notary request");
            }
            match self.store.server_key_response(server_name).await? {
                Some(stored) => serde_json::from_str(&stored.json).ok(),
                None => None,
            }
        };
        let Some(document) = document.as_mut() else { return Ok(Vec::new()) };
        if server_name != self.server_name() {
            sign_json(self.server_name().as_str(), self.signing_key.pair(), document)
                .map_err(Error::internal)?;
        }
        Ok(vec![document.clone()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(valid_until_ts: i64, expired_ts: Option<i64>) -> ServerKeyRecord {
        ServerKeyRecord {
            key_id: "ed25519:k".into(),
            public_key: "AAAA".into(),
            valid_until_ts,
            expired_ts,
        }
    }

    #[test]
    fn keys_are_usable_while_vouched_for_or_before_they_expired() {
        assert!(usable_at(&key(100, None), Some(100)));
        assert!(!usable_at(&key(100, None), Some(101)));
        assert!(usable_at(&key(100, None), None));
        assert!(usable_at(&key(0, Some(50)), Some(49)));
        assert!(!usable_at(&key(0, Some(50)), Some(50)));
    }

    #[test]
    fn documents_verify_and_their_validity_is_capped() {
        let signing = rhizome_room::SigningKey::generate();
        let server = ruma::server_name!("remote.example");
        let now = 1_000_000;
        let mut object: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "server_name": server,
            "valid_until_ts": now + 30 * 24 * 3600 * 1000_i64,
            "verify_keys": { signing.key_id(): { "key": signing.public_key_base64() } },
            "old_verify_keys": { "ed25519:old": { "key": "b2xk", "expired_ts": 5 } },
        }))
        .unwrap();
        sign_json(server.as_str(), signing.pair(), &mut object).unwrap();
        let keys = verify_document(&object, server, now).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].valid_until_ts, now + MAX_TRUSTED_VALIDITY_MS);
        assert_eq!(keys[1].expired_ts, Some(5));
        // Another server's name, a tampered document, a foreign signature: refused.
        assert!(verify_document(&object, ruma::server_name!("other.example"), now).is_err());
        let mut tampered = object.clone();
        tampered.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(ruma::Int::MAX));
        assert!(verify_document(&tampered, server, now).is_err());
        let mut foreign: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
            "server_name": server,
            "valid_until_ts": now + 1000,
            "verify_keys": { signing.key_id(): { "key": signing.public_key_base64() } },
        }))
        .unwrap();
        let other = rhizome_room::SigningKey::generate();
        sign_json(server.as_str(), other.pair(), &mut foreign).unwrap();
        assert!(verify_document(&foreign, server, now).is_err());
    }
}
