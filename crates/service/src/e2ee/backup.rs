//! Server-side key backups (`/room_keys/…`): versions with their algorithm data, `etag` and
//! `count`, and the encrypted room keys in them, a better key replacing a worse one as the spec
//! describes.

use std::collections::BTreeMap;

use rhizome_core::{Error, Result};
use rhizome_storage::e2ee::{BackupCounts, BackupKeyRecord, BackupVersionRecord};
use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::backup::{BackupAlgorithm, KeyBackupData, RoomKeyBackup},
    serde::Raw,
};
use serde_json::{Map, Value, json, value::to_raw_value};

use crate::Services;

/// Checks backup algorithm data (`{"algorithm": …, "auth_data": {…}}`) and returns it as
/// stored, with the algorithm's name.
fn algorithm_json(raw: &Raw<BackupAlgorithm>) -> Result<(String, String)> {
    let value: Map<String, Value> = serde_json::from_str(raw.json().get())
        .map_err(|_| Error::bad_json("The backup algorithm data must be a JSON object"))?;
    let Some(Value::String(algorithm)) = value.get("algorithm") else {
        return Err(Error::bad_json("The backup needs an algorithm"));
    };
    if !value.get("auth_data").is_some_and(Value::is_object) {
        return Err(Error::bad_json("The backup needs auth_data"));
    }
    let stored = json!({ "algorithm": algorithm, "auth_data": value["auth_data"] });
    Ok((algorithm.clone(), stored.to_string()))
}

/// Checks one backed-up key and returns it as stored.
fn key_record(
    room_id: &RoomId,
    session_id: &str,
    raw: &Raw<KeyBackupData>,
) -> Result<BackupKeyRecord> {
    let invalid =
        || Error::bad_json(format!("The backed-up key for session {session_id} is malformed"));
    let value: Map<String, Value> =
        serde_json::from_str(raw.json().get()).map_err(|_| invalid())?;
    let number = |field: &str| {
        value
            .get(field)
            .and_then(Value::as_u64)
            .and_then(|n| i64::try_from(n).ok())
            .ok_or_else(invalid)
    };
    let session_data =
        value.get("session_data").filter(|data| data.is_object()).ok_or_else(invalid)?;
    Ok(BackupKeyRecord {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: number("first_message_index")?,
        forwarded_count: number("forwarded_count")?,
        is_verified: value.get("is_verified").and_then(Value::as_bool).ok_or_else(invalid)?,
        session_data: session_data.to_string(),
    })
}

/// A stored key as the API returns it.
pub fn key_data(record: &BackupKeyRecord) -> Result<Raw<KeyBackupData>> {
    let session_data: Value = serde_json::from_str(&record.session_data)?;
    let value = json!({
        "first_message_index": record.first_message_index,
        "forwarded_count": record.forwarded_count,
        "is_verified": record.is_verified,
        "session_data": session_data,
    });
    Ok(Raw::from_json(to_raw_value(&value)?))
}

/// Stored keys grouped by room, as `GET /room_keys/keys` returns them.
pub fn rooms_of(records: &[BackupKeyRecord]) -> Result<BTreeMap<OwnedRoomId, RoomKeyBackup>> {
    let mut sessions: BTreeMap<OwnedRoomId, BTreeMap<String, Raw<KeyBackupData>>> = BTreeMap::new();
    for record in records {
        sessions
            .entry(record.room_id.clone())
            .or_default()
            .insert(record.session_id.clone(), key_data(record)?);
    }
    Ok(sessions.into_iter().map(|(room, sessions)| (room, RoomKeyBackup::new(sessions))).collect())
}

impl Services {
    /// Creates a backup version, which becomes the current one.
    pub async fn create_backup_version(
        &self,
        user_id: &UserId,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<String> {
        let (_, stored) = algorithm_json(algorithm)?;
        self.store.create_backup_version(user_id, &stored).await
    }

    /// A backup version (the current one when `version` is `None`); `M_NOT_FOUND` otherwise.
    pub async fn backup_version(
        &self,
        user_id: &UserId,
        version: Option<&str>,
    ) -> Result<BackupVersionRecord> {
        self.store
            .backup_version(user_id, version)
            .await?
            .ok_or_else(|| Error::not_found("No such backup version"))
    }

    /// Replaces a version's algorithm data; the algorithm itself (and the version, when the
    /// body names one) must stay the same.
    pub async fn update_backup_version(
        &self,
        user_id: &UserId,
        version: &str,
        algorithm: &Raw<BackupAlgorithm>,
    ) -> Result<()> {
        let (name, stored) = algorithm_json(algorithm)?;
        let body: Map<String, Value> = serde_json::from_str(algorithm.json().get())?;
        if body.get("version").is_some_and(|body_version| body_version.as_str() != Some(version)) {
            return Err(Error::invalid_param("The version in the body does not match the path"));
        }
        let existing = self.backup_version(user_id, Some(version)).await?;
        let existing_name: Value = serde_json::from_str(&existing.algorithm)?;
        if existing_name["algorithm"].as_str() != Some(name.as_str()) {
            return Err(Error::invalid_param("A backup's algorithm cannot change"));
        }
        if !self.store.update_backup_version(user_id, version, &stored).await? {
            return Err(Error::not_found("No such backup version"));
        }
        Ok(())
    }

    /// Deletes a backup version and its keys.
    pub async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<()> {
        if !self.store.delete_backup_version(user_id, version).await? {
            return Err(Error::not_found("No such backup version"));
        }
        Ok(())
    }

    /// Stores keys in the current backup version (all checked before any is stored).
    pub async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        rooms: &BTreeMap<OwnedRoomId, RoomKeyBackup>,
    ) -> Result<BackupCounts> {
        let mut records = Vec::new();
        for (room_id, backup) in rooms {
            for (session_id, raw) in &backup.sessions {
                records.push(key_record(room_id, session_id, raw)?);
            }
        }
        self.store.put_backup_keys(user_id, version, &records).await
    }

    /// Stores one room's keys.
    pub async fn put_backup_room_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: &RoomId,
        sessions: &BTreeMap<String, Raw<KeyBackupData>>,
    ) -> Result<BackupCounts> {
        let records = sessions
            .iter()
            .map(|(session_id, raw)| key_record(room_id, session_id, raw))
            .collect::<Result<Vec<_>>>()?;
        self.store.put_backup_keys(user_id, version, &records).await
    }

    /// Stores one session's key.
    pub async fn put_backup_session_key(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: &RoomId,
        session_id: &str,
        key: &Raw<KeyBackupData>,
    ) -> Result<BackupCounts> {
        let record = key_record(room_id, session_id, key)?;
        self.store.put_backup_keys(user_id, version, &[record]).await
    }

    /// Keys of an existing backup version, optionally of one room and one session.
    pub async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKeyRecord>> {
        self.backup_version(user_id, Some(version)).await?;
        self.store.backup_keys(user_id, version, room_id, session_id).await
    }

    /// Deletes keys of a backup version, optionally of one room and one session.
    pub async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&RoomId>,
        session_id: Option<&str>,
    ) -> Result<BackupCounts> {
        self.store.delete_backup_keys(user_id, version, room_id, session_id).await
    }
}
