//! Device keys, one-time and fallback keys: `/keys/upload`, `/keys/query` and `/keys/claim`.

use std::collections::BTreeMap;

use rhizome_core::{Error, Result};
use rhizome_storage::e2ee::{CrossSigningKeyRecord, OneTimeKeyRecord, SignatureRecord};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId,
    OwnedServerName, OwnedUserId, UInt, UserId,
    api::client::keys::{claim_keys, get_keys},
    encryption::{CrossSigningKey, DeviceKeys, OneTimeKey},
    serde::Raw,
};
use serde_json::{Value, json, value::to_raw_value};

use crate::{
    Requester, Services,
    e2ee::signed::{canonical_object, stored_form},
};

/// The most one-time or fallback keys one upload may carry.
const MAX_KEYS_PER_UPLOAD: usize = 1_000;

/// Keys as a device uploads them.
pub struct KeyUpload<'a> {
    /// Identity keys.
    pub device_keys: Option<&'a Raw<DeviceKeys>>,
    /// One-time keys.
    pub one_time_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
    /// Fallback keys.
    pub fallback_keys: &'a BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
}

/// Checks device keys for the requester's device: well formed, and the uploading device's.
/// Signatures are the clients' to verify (the spec asks no more of the server). Returns the
/// stored form.
pub(crate) fn validate_device_keys(
    raw: &Raw<DeviceKeys>,
    user_id: &UserId,
    device_id: &ruma::DeviceId,
) -> Result<String> {
    let keys: DeviceKeys = raw
        .deserialize()
        .map_err(|error| Error::bad_json(format!("Invalid device keys: {error}")))?;
    if keys.user_id != user_id || keys.device_id != device_id {
        return Err(Error::invalid_param(
            "The device keys' user_id and device_id must be those of the uploading device",
        ));
    }
    Ok(stored_form(canonical_object(raw.json(), "device_keys")?))
}

/// Checks one-time or fallback keys: well formed (their signatures are for the claiming
/// clients to verify).
fn validate_one_time_keys(
    keys: &BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>,
) -> Result<Vec<OneTimeKeyRecord>> {
    if keys.len() > MAX_KEYS_PER_UPLOAD {
        return Err(Error::invalid_param(format!(
            "At most {MAX_KEYS_PER_UPLOAD} keys may be uploaded at once"
        )));
    }
    let mut records = Vec::with_capacity(keys.len());
    for (key_id, raw) in keys {
        let key = raw
            .deserialize()
            .map_err(|_| Error::bad_json(format!("The key {key_id} is malformed")))?;
        let json = match key {
            OneTimeKey::SignedKey(_) => stored_form(canonical_object(raw.json(), "A signed key")?),
            OneTimeKey::Key(key) => Value::String(key).to_string(),
            _ => return Err(Error::bad_json(format!("The key {key_id} is malformed"))),
        };
        records.push(OneTimeKeyRecord { key_id: key_id.to_string(), json });
    }
    Ok(records)
}

/// Merges stored signatures into a key object's `signatures`.
pub(crate) fn merge_signatures<'a>(
    object: &mut Value,
    signatures: impl IntoIterator<Item = &'a SignatureRecord>,
) {
    for signature in signatures {
        let Some(map) = object.as_object_mut() else { return };
        let by_signer =
            map.entry("signatures").or_insert_with(|| json!({})).as_object_mut().map(|all| {
                all.entry(signature.signer_user_id.as_str()).or_insert_with(|| json!({}))
            });
        if let Some(Value::Object(by_key)) = by_signer {
            by_key.insert(signature.signer_key_id.clone(), json!(signature.signature));
        }
    }
}

pub(crate) fn raw_json<T>(value: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(to_raw_value(value)?))
}

impl Services {
    /// `/keys/upload`: stores the device's identity, one-time and fallback keys (everything is
    /// checked before anything is stored) and returns its one-time key counts.
    pub async fn upload_keys(
        &self,
        requester: &Requester,
        upload: KeyUpload<'_>,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let (user_id, device_id) = (&requester.user_id, &requester.device_id);
        let device_keys = upload
            .device_keys
            .map(|raw| validate_device_keys(raw, user_id, device_id))
            .transpose()?;
        let one_time = validate_one_time_keys(upload.one_time_keys)?;
        let fallback = validate_one_time_keys(upload.fallback_keys)?;
        let mut algorithms: Vec<&str> = fallback.iter().map(OneTimeKeyRecord::algorithm).collect();
        algorithms.sort_unstable();
        if algorithms.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Error::invalid_param("At most one fallback key per algorithm"));
        }
        // One-time keys first: a conflicting key ID refuses the upload before anything else.
        self.store.add_one_time_keys(user_id, device_id, &one_time).await?;
        self.store.set_fallback_keys(user_id, device_id, &fallback).await?;
        if let Some(json) = device_keys
            && self.store.set_device_keys(user_id, device_id, &json).await?.is_some()
        {
            self.notify_device_list_watchers(user_id).await?;
        }
        self.one_time_key_counts(user_id, device_id).await
    }

    /// The device's one-time key counts; `signed_curve25519` is always present so clients
    /// know to upload more.
    pub async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let mut counts = BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::MIN)]);
        for (algorithm, count) in self.store.one_time_key_counts(user_id, device_id).await? {
            counts.insert(
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::new_saturating(count.max(0).unsigned_abs()),
            );
        }
        Ok(counts)
    }

    /// `/keys/query`: device keys and cross-signing keys, with the signatures the requester
    /// may see (the owner's, and the requester's own). Other servers' users are asked of
    /// their servers (or answered from the tracked device lists), concurrently; a server that
    /// does not answer in time is reported in `failures`.
    pub async fn query_keys(
        &self,
        requester: &Requester,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v3::Response> {
        let mut response = get_keys::v3::Response::new();
        let mut remote: RemoteQuery = BTreeMap::new();
        for (user_id, device_ids) in wanted {
            if user_id.server_name() != self.server_name() {
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id.clone(), device_ids.clone());
                continue;
            }
            let keys = self.local_user_keys(user_id, device_ids, Some(&requester.user_id)).await?;
            keys.insert_into(user_id, &mut response);
        }
        if !remote.is_empty() {
            self.query_remote_keys(requester, remote, &mut response).await?;
        }
        Ok(response)
    }

    /// A local user's keys as `viewer` may see them: the owner's signatures and the
    /// viewer's own, the devices' display names and, for the owner, the user-signing key.
    /// Without a viewer (another server asking): the owner's signatures only, no names.
    pub(crate) async fn local_user_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
        viewer: Option<&UserId>,
    ) -> Result<UserKeys> {
        let mut signers = vec![user_id];
        if let Some(viewer) = viewer.filter(|viewer| *viewer != user_id) {
            signers.push(viewer);
        }
        let signatures = self.store.signatures_on(user_id, &signers).await?;
        let mut keys = UserKeys::default();
        for record in self.store.device_keys(user_id, device_ids).await? {
            let mut object: Value = serde_json::from_str(&record.json)?;
            merge_signatures(
                &mut object,
                signatures.iter().filter(|s| s.target_key_id == record.device_id.as_str()),
            );
            if let (Some(name), Some(map), Some(_)) =
                (&record.display_name, object.as_object_mut(), viewer)
            {
                map.insert("unsigned".into(), json!({ "device_display_name": name }));
            }
            keys.devices.insert(record.device_id, raw_json(&object)?);
        }
        let cross = self.store.cross_signing_keys(user_id).await?;
        if let Some(master) = &cross.master {
            let mut object: Value = serde_json::from_str(&master.json)?;
            merge_signatures(
                &mut object,
                signatures.iter().filter(|s| s.target_key_id == master.public_key),
            );
            keys.master = Some(raw_json(&object)?);
        }
        let parse = |key: &CrossSigningKeyRecord| -> Result<_> {
            raw_json(&serde_json::from_str::<Value>(&key.json)?)
        };
        if let Some(key) = &cross.self_signing {
            keys.self_signing = Some(parse(key)?);
        }
        if let Some(key) = cross.user_signing.as_ref().filter(|_| viewer == Some(user_id)) {
            keys.user_signing = Some(parse(key)?);
        }
        Ok(keys)
    }

    /// `/keys/claim`: one key per requested device, a one-time key when one is left (each is
    /// handed out once), else the device's fallback key. Other servers' users' keys are
    /// claimed from their servers, concurrently; a server that does not answer in time is
    /// reported in `failures`.
    pub async fn claim_keys(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<claim_keys::v3::Response> {
        let mut claimed = BTreeMap::new();
        let mut remote: RemoteClaim = BTreeMap::new();
        for (user_id, devices) in wanted {
            if user_id.server_name() != self.server_name() {
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id.clone(), devices.clone());
                continue;
            }
            let user_keys = self.claim_local_keys(user_id, devices).await?;
            if !user_keys.is_empty() {
                claimed.insert(user_id.clone(), user_keys);
            }
        }
        let mut response = claim_keys::v3::Response::new(claimed);
        if !remote.is_empty() {
            self.claim_remote_keys(remote, &mut response).await;
        }
        Ok(response)
    }

    /// Claims one key of each device of a local user.
    pub(crate) async fn claim_local_keys(
        &self,
        user_id: &UserId,
        devices: &BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>,
    ) -> Result<ClaimedKeys> {
        let mut user_keys = BTreeMap::new();
        for (device_id, algorithm) in devices {
            let Some(key) = self.store.claim_key(user_id, device_id, algorithm.as_str()).await?
            else {
                continue;
            };
            let key_id = OwnedOneTimeKeyId::try_from(key.key_id.as_str())
                .map_err(|error| Error::bug(format!("stored key ID is invalid: {error}")))?;
            let value: CanonicalJsonValue = serde_json::from_str(&key.json)?;
            user_keys
                .entry(device_id.clone())
                .or_insert_with(BTreeMap::new)
                .insert(key_id, Raw::from_json(to_raw_value(&value)?));
        }
        Ok(user_keys)
    }
}

/// One user's keys as a query answers them.
#[derive(Default)]
pub(crate) struct UserKeys {
    /// Device keys, by device.
    pub(crate) devices: BTreeMap<OwnedDeviceId, Raw<DeviceKeys>>,
    /// The master key.
    pub(crate) master: Option<Raw<CrossSigningKey>>,
    /// The self-signing key.
    pub(crate) self_signing: Option<Raw<CrossSigningKey>>,
    /// The user-signing key (for its owner only).
    pub(crate) user_signing: Option<Raw<CrossSigningKey>>,
}

impl UserKeys {
    /// Adds the keys to a `/keys/query` response.
    pub(crate) fn insert_into(self, user_id: &UserId, response: &mut get_keys::v3::Response) {
        response.device_keys.insert(user_id.to_owned(), self.devices);
        if let Some(key) = self.master {
            response.master_keys.insert(user_id.to_owned(), key);
        }
        if let Some(key) = self.self_signing {
            response.self_signing_keys.insert(user_id.to_owned(), key);
        }
        if let Some(key) = self.user_signing {
            response.user_signing_keys.insert(user_id.to_owned(), key);
        }
    }
}

/// Claimed keys of one user: by device, by key ID.
pub(crate) type ClaimedKeys = BTreeMap<OwnedDeviceId, BTreeMap<OwnedOneTimeKeyId, Raw<OneTimeKey>>>;

/// Other servers' users to query, by server.
pub(crate) type RemoteQuery = BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>>;

/// Other servers' users' keys to claim, by server.
pub(crate) type RemoteClaim =
    BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>>;

/// A canonical object's string field.
pub(crate) fn string_field<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field)? {
        CanonicalJsonValue::String(value) => Some(value),
        _ => None,
    }
}
