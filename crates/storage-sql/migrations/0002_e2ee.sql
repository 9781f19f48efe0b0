-- End-to-end encryption: device keys, one-time and fallback keys, cross-signing, to-device
-- messages, device-list changes and key backups.

-- A device's identity keys (canonical JSON as the device signed it).
CREATE TABLE e2ee_device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- One-time keys, each handed out once and then deleted. `key_row` orders them (oldest first).
CREATE TABLE e2ee_one_time_keys (
    key_row {{id}},
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL
);
CREATE UNIQUE INDEX e2ee_one_time_keys_key ON e2ee_one_time_keys (user_id, device_id, key_id);
CREATE INDEX e2ee_one_time_keys_claim ON e2ee_one_time_keys (user_id, device_id, algorithm, key_row);

-- One fallback key per device and algorithm; `used` once it was handed out.
CREATE TABLE e2ee_fallback_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id TEXT NOT NULL,
    json TEXT NOT NULL,
    used BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- Cross-signing keys: `key_type` is master, self_signing or user_signing.
CREATE TABLE e2ee_cross_signing_keys (
    user_id TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public_key TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded after the key they sign: on a device (`target_key_id` is the device ID)
-- or on a master key (`target_key_id` is its public key).
CREATE TABLE e2ee_signatures (
    target_user_id TEXT NOT NULL,
    target_key_id TEXT NOT NULL,
    signer_user_id TEXT NOT NULL,
    signer_key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
);
CREATE INDEX e2ee_signatures_signer ON e2ee_signatures (signer_user_id);

-- The latest change of each user's devices: seen by everyone sharing a room (`viewer` = '')
-- or by one user only (a signature only its signer sees).
CREATE TABLE e2ee_device_list_changes (
    user_id TEXT NOT NULL,
    viewer TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, viewer)
);
CREATE INDEX e2ee_device_list_changes_pos ON e2ee_device_list_changes (stream_pos);

-- To-device messages waiting until their device has received them.
CREATE TABLE e2ee_to_device (
    message_id {{id}},
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX e2ee_to_device_device ON e2ee_to_device (user_id, device_id, stream_pos, message_id);

-- Transaction IDs of sendToDevice requests, per sending device, so a retry sends nothing twice.
CREATE TABLE e2ee_to_device_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

-- Key backup versions; deleted versions stay (marked) so their numbers are never reused.
CREATE TABLE e2ee_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE e2ee_backup_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BIGINT NOT NULL,
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);

-- Each user's dehydrated device (MSC3814): a device in `devices` plus its encrypted pickle.
CREATE TABLE e2ee_dehydrated_devices (
    user_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    device_data TEXT NOT NULL
);
