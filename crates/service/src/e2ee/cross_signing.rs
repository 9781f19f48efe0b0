//! Cross-signing: `/keys/device_signing/upload` (with user-interactive authentication when
//! keys are replaced, none for the first upload as MSC3967 allows) and
//! `/keys/signatures/upload` (each signature checked; bad ones reported in `failures`).

use std::collections::BTreeMap;

use rhizome_core::{Error, Result};
use rhizome_storage::e2ee::{
    CrossSigningKeyRecord, CrossSigningKeyType, CrossSigningKeys, SignatureRecord,
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, UserId,
    api::client::{
        keys::upload_signatures::v3::{Failure, SignedKeys},
        uiaa::{AuthData, AuthFlow, AuthType},
    },
    encryption::CrossSigningKey,
    serde::Raw,
};
use serde_json::{json, value::RawValue};

use crate::{
    Requester, Services,
    e2ee::{
        keys::string_field,
        signed::{
            canonical_object, is_ed25519_key, is_signed_by, signature_of, signatures_by,
            stored_form, verify,
        },
    },
    users::uia::UiaPurpose,
};

/// Cross-signing keys as a client uploads them.
#[derive(Clone, Copy, Debug, Default)]
pub struct SigningKeysUpload<'a> {
    /// The master key.
    pub master_key: Option<&'a Raw<CrossSigningKey>>,
    /// The self-signing key.
    pub self_signing_key: Option<&'a Raw<CrossSigningKey>>,
    /// The user-signing key.
    pub user_signing_key: Option<&'a Raw<CrossSigningKey>>,
}

/// A checked cross-signing key and its canonical object.
pub(crate) struct CheckedKey {
    /// The key as stored.
    pub(crate) record: CrossSigningKeyRecord,
    object: CanonicalJsonObject,
}

/// Checks a cross-signing key of a type: the user's, for that usage, one ed25519 key named by
/// itself.
pub(crate) fn check_key(
    raw: &Raw<CrossSigningKey>,
    user_id: &UserId,
    key_type: CrossSigningKeyType,
) -> Result<CheckedKey> {
    let name = key_type.as_str();
    let key: CrossSigningKey = raw
        .deserialize()
        .map_err(|error| Error::bad_json(format!("Invalid {name} key: {error}")))?;
    if key.user_id != user_id {
        return Err(Error::invalid_param(format!("The {name} key belongs to another user")));
    }
    if !key.usage.iter().any(|usage| usage.as_str() == name) {
        return Err(Error::invalid_param(format!("The {name} key's usage must include {name}")));
    }
    let mut keys = key.keys.iter();
    let (Some((key_id, public_key)), None) = (keys.next(), keys.next()) else {
        return Err(Error::invalid_param(format!("The {name} key must hold exactly one key")));
    };
    if key_id.as_str() != format!("ed25519:{public_key}") || !is_ed25519_key(public_key) {
        return Err(Error::invalid_param(format!(
            "The {name} key must be an ed25519 key named by its public key"
        )));
    }
    let object = canonical_object(raw.json(), name)?;
    let json = stored_form(object.clone());
    let record = CrossSigningKeyRecord { key_type, public_key: public_key.clone(), json };
    Ok(CheckedKey { record, object })
}

fn failure(errcode: &str, error: &str) -> Failure {
    serde_json::from_value(json!({ "errcode": errcode, "error": error }))
        .expect("invariant: a failure is an errcode and a message")
}

/// The signature checks one uploaded signed key needs.
struct Target {
    /// The stored object the signatures must verify against.
    stored: CanonicalJsonObject,
    /// Keys of the uploader that may sign it: key ID and public key.
    signers: Vec<(String, String)>,
}

impl Services {
    /// `/keys/device_signing/upload`: checks and stores the user's cross-signing keys.
    /// Replacing existing keys needs user-interactive authentication (the password); the first
    /// upload and a repeat of the stored keys do not (MSC3967).
    pub async fn upload_signing_keys(
        &self,
        requester: &Requester,
        upload: SigningKeysUpload<'_>,
        auth: Option<&AuthData>,
    ) -> Result<()> {
        let user_id = &requester.user_id;
        let existing = self.store.cross_signing_keys(user_id).await?;
        let uploaded = [
            (CrossSigningKeyType::Master, upload.master_key),
            (CrossSigningKeyType::SelfSigning, upload.self_signing_key),
            (CrossSigningKeyType::UserSigning, upload.user_signing_key),
        ];
        let mut checked = Vec::new();
        for (key_type, raw) in uploaded {
            if let Some(raw) = raw {
                checked.push(check_key(raw, user_id, key_type)?);
            }
        }
        if checked.is_empty() {
            return Ok(());
        }
        let master = checked
            .iter()
            .find(|key| key.record.key_type == CrossSigningKeyType::Master)
            .map(|key| key.record.public_key.clone())
            .or_else(|| existing.master.as_ref().map(|key| key.public_key.clone()));
        for key in checked.iter().filter(|key| key.record.key_type != CrossSigningKeyType::Master) {
            let name = key.record.key_type.as_str();
            let Some(master) = &master else {
                return Err(Error::invalid_param(format!(
                    "The {name} key needs a master key to sign it"
                )));
            };
            if !is_signed_by(&key.object, user_id.as_str(), master, master) {
                return Err(Error::invalid_param(format!(
                    "The {name} key is not signed by the master key"
                )));
            }
        }
        let replaces = existing.master.is_some()
            && checked.iter().any(|key| {
                existing
                    .get(key.record.key_type)
                    .is_none_or(|stored| stored.public_key != key.record.public_key)
            });
        if replaces {
            self.check_uia(
                auth,
                vec![AuthFlow::new(vec![AuthType::Password])],
                UiaPurpose::Account(user_id.clone()),
            )
            .await?;
        }
        let records: Vec<_> = checked.into_iter().map(|key| key.record).collect();
        self.store.set_cross_signing_keys(user_id, &records).await?;
        self.notify_device_list_watchers(user_id).await
    }

    /// `/keys/signatures/upload`: stores the requester's new signatures on their own devices
    /// and master key and on other users' master keys. Each signature must verify against the
    /// stored key with one of the requester's keys; the others are reported in `failures` and
    /// not stored.
    pub async fn upload_signatures(
        &self,
        requester: &Requester,
        signed_keys: &BTreeMap<OwnedUserId, SignedKeys>,
    ) -> Result<BTreeMap<OwnedUserId, BTreeMap<String, Failure>>> {
        let me = &requester.user_id;
        let my_keys = self.store.cross_signing_keys(me).await?;
        let mut accepted = Vec::new();
        let mut failures: BTreeMap<OwnedUserId, BTreeMap<String, Failure>> = BTreeMap::new();
        for (target_user, keys) in signed_keys {
            let target_keys = if target_user == me {
                my_keys.clone()
            } else if target_user.server_name() == self.server_name() {
                self.store.cross_signing_keys(target_user).await?
            } else {
                match self.remote_cross_signing_keys(target_user).await {
                    Ok(keys) => keys,
                    Err(error) => {
                        let unreachable = failure("M_UNKNOWN", error.message());
                        let user_failures = failures.entry(target_user.clone()).or_default();
                        for (key_id, _) in keys.iter() {
                            user_failures.insert(key_id.to_owned(), unreachable.clone());
                        }
                        continue;
                    }
                }
            };
            for (key_id, raw) in keys {
                match self
                    .check_signed_key(me, &my_keys, target_user, &target_keys, key_id, raw)
                    .await
                {
                    Ok(mut signatures) => accepted.append(&mut signatures),
                    Err(error) => {
                        failures
                            .entry(target_user.clone())
                            .or_default()
                            .insert(key_id.to_owned(), error);
                    }
                }
            }
        }
        if !accepted.is_empty() {
            self.store.add_signatures(me, &accepted).await?;
            if accepted.iter().any(|signature| signature.target_user_id == *me) {
                self.notify_device_list_watchers(me).await?;
            } else {
                self.notifier.notify([me.as_ref()]);
            }
        }
        Ok(failures)
    }

    /// The requester's devices as signers of their master key.
    async fn device_signers(&self, me: &UserId) -> Result<Vec<(String, String)>, Failure> {
        let devices = self
            .store
            .device_keys(me, &[])
            .await
            .map_err(|_| failure("M_UNKNOWN", "Could not load the devices"))?;
        Ok(devices
            .iter()
            .filter_map(|device| {
                let object: serde_json::Value = serde_json::from_str(&device.json).ok()?;
                let id = format!("ed25519:{}", device.device_id);
                let key = object["keys"][&id].as_str()?.to_owned();
                Some((id, key))
            })
            .collect())
    }

    /// Finds the signatures in one uploaded key that are new and valid.
    async fn check_signed_key(
        &self,
        me: &UserId,
        my_keys: &CrossSigningKeys,
        target_user: &UserId,
        target_keys: &CrossSigningKeys,
        key_id: &str,
        raw: &RawValue,
    ) -> Result<Vec<SignatureRecord>, Failure> {
        let uploaded = canonical_object(raw, "A signed key")
            .map_err(|error| failure("M_BAD_JSON", error.message()))?;
        if string_field(&uploaded, "user_id").is_some_and(|owner| owner != target_user.as_str()) {
            return Err(failure("M_INVALID_PARAM", "The key belongs to another user"));
        }
        let target = match &target_keys.master {
            Some(master) if master.public_key == key_id => Target {
                stored: parse_stored(&master.json)?,
                signers: if target_user == me {
                    // Devices sign their owner's master key.
                    self.device_signers(me).await?
                } else {
                    user_key(my_keys, CrossSigningKeyType::UserSigning)
                },
            },
            _ if target_user == me => {
                let records = self
                    .store
                    .device_keys(me, &[key_id.into()])
                    .await
                    .map_err(|_| failure("M_UNKNOWN", "Could not load the device"))?;
                let Some(device) = records.first() else {
                    return Err(failure("M_NOT_FOUND", "No such device or master key"));
                };
                Target {
                    stored: parse_stored(&device.json)?,
                    signers: user_key(my_keys, CrossSigningKeyType::SelfSigning),
                }
            }
            _ => {
                return Err(failure(
                    "M_NOT_FOUND",
                    "Only master keys of other users can be signed",
                ));
            }
        };
        let signatures = signatures_by(&uploaded, me.as_str());
        if signatures.is_empty() {
            return Err(failure("M_INVALID_SIGNATURE", "The key carries no signature of yours"));
        }
        let mut accepted = Vec::new();
        for (signer_key_id, signature) in signatures {
            if signature_of(&target.stored, me.as_str(), &signer_key_id) == Some(signature.as_str())
            {
                continue;
            }
            let Some((_, public_key)) = target.signers.iter().find(|(id, _)| *id == signer_key_id)
            else {
                return Err(failure(
                    "M_INVALID_SIGNATURE",
                    "The signature is not made by a key that may sign this key",
                ));
            };
            if !verify(&target.stored, public_key, &signature) {
                return Err(failure("M_INVALID_SIGNATURE", "The signature does not verify"));
            }
            accepted.push(SignatureRecord {
                target_user_id: target_user.to_owned(),
                target_key_id: key_id.to_owned(),
                signer_user_id: me.to_owned(),
                signer_key_id,
                signature,
            });
        }
        Ok(accepted)
    }
}

fn parse_stored(json: &str) -> Result<CanonicalJsonObject, Failure> {
    match serde_json::from_str(json) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(failure("M_UNKNOWN", "The stored key is unreadable")),
    }
}

/// The requester's cross-signing key of a type, as a signer.
fn user_key(keys: &CrossSigningKeys, key_type: CrossSigningKeyType) -> Vec<(String, String)> {
    keys.get(key_type)
        .map(|key| (format!("ed25519:{}", key.public_key), key.public_key.clone()))
        .into_iter()
        .collect()
}
