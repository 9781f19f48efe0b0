//! The peer's key document (`/_matrix/key/v2/server`), signed with its current key, and the
//! knobs tests turn on it: validity, old keys, rotation.

use std::{collections::BTreeMap, sync::Arc};

use rhizome_room::SigningKey;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, signatures};
use serde_json::Value;

use super::{State, TestPeer, lock};

/// The signed key document as the peer serves it now.
pub(super) fn key_document(state: &State) -> Value {
    let keys = lock(&state.keys);
    let mut verify_keys = CanonicalJsonObject::new();
    verify_keys.insert(keys.current.key_id(), key_object(&keys.current.public_key_base64(), None));
    let mut old_verify_keys = CanonicalJsonObject::new();
    for (key_id, (public_key, expired)) in &keys.old_keys {
        old_verify_keys.insert(key_id.clone(), key_object(public_key, Some(*expired)));
    }
    let mut document = CanonicalJsonObject::from([
        ("server_name".to_owned(), CanonicalJsonValue::String(state.server_name.to_string())),
        ("valid_until_ts".to_owned(), CanonicalJsonValue::Integer(keys.valid_until.0.into())),
        ("verify_keys".to_owned(), CanonicalJsonValue::Object(verify_keys)),
        ("old_verify_keys".to_owned(), CanonicalJsonValue::Object(old_verify_keys)),
    ]);
    signatures::sign_json(state.server_name.as_str(), keys.current.pair(), &mut document)
        .expect("invariant: a key document can be signed");
    serde_json::to_value(&document).expect("invariant: canonical JSON serialises")
}

fn key_object(public_key: &str, expired: Option<MilliSecondsSinceUnixEpoch>) -> CanonicalJsonValue {
    let mut object =
        BTreeMap::from([("key".to_owned(), CanonicalJsonValue::String(public_key.to_owned()))]);
    if let Some(expired) = expired {
        object.insert("expired_ts".to_owned(), CanonicalJsonValue::Integer(expired.0.into()));
    }
    CanonicalJsonValue::Object(object)
}

impl TestPeer {
    /// The key it signs with now.
    pub fn signing_key(&self) -> Arc<SigningKey> {
        Arc::clone(&lock(&self.state.keys).current)
    }

    /// The ID of the key it signs with now (`ed25519:…`).
    pub fn key_id(&self) -> String {
        lock(&self.state.keys).current.key_id()
    }

    /// The signed key document it serves now.
    pub fn key_document(&self) -> Value {
        key_document(&self.state)
    }

    /// Sets the document's `valid_until_ts` (a past time presents an expired key).
    pub fn set_valid_until(&self, valid_until: MilliSecondsSinceUnixEpoch) {
        lock(&self.state.keys).valid_until = valid_until;
    }

    /// Lists a key in the document's `old_verify_keys`.
    pub fn add_old_verify_key(
        &self,
        key_id: &str,
        public_key_base64: &str,
        expired: MilliSecondsSinceUnixEpoch,
    ) {
        lock(&self.state.keys)
            .old_keys
            .insert(key_id.to_owned(), (public_key_base64.to_owned(), expired));
    }

    /// Replaces the signing key by a fresh one; the old one moves to `old_verify_keys`, expired
    /// now, and is returned (to sign with it on purpose).
    pub fn rotate_key(&self) -> Arc<SigningKey> {
        let mut keys = lock(&self.state.keys);
        let old = std::mem::replace(&mut keys.current, Arc::new(SigningKey::generate()));
        keys.old_keys
            .insert(old.key_id(), (old.public_key_base64(), MilliSecondsSinceUnixEpoch::now()));
        old
    }
}
