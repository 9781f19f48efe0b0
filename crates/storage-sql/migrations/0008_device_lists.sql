-- Device lists across servers: what was last published to other servers of each local user's
-- devices and cross-signing keys, and the cached device lists of other servers' users.

-- A local user's sequence of m.device_list_update stream IDs and published cross-signing keys.
CREATE TABLE e2ee_published_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    master_key TEXT,
    self_signing_key TEXT
);

-- Each local device as last published (keys with the owner's signatures, or none yet).
CREATE TABLE e2ee_published_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- Other servers' users whose device lists are tracked: the latest update applied, whether one
-- was missed (stale), when (time and stream position) the list was last fetched whole, and
-- their cross-signing keys.
CREATE TABLE e2ee_remote_device_lists (
    user_id TEXT PRIMARY KEY,
    stream_id BIGINT NOT NULL,
    stale BIGINT NOT NULL DEFAULT 0,
    fetched_ts BIGINT NOT NULL,
    fetched_pos BIGINT NOT NULL,
    master_key TEXT,
    self_signing_key TEXT
);
CREATE INDEX e2ee_remote_device_lists_stale ON e2ee_remote_device_lists (stale);

-- The devices of tracked remote users.
CREATE TABLE e2ee_remote_devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys TEXT,
    display_name TEXT,
    PRIMARY KEY (user_id, device_id)
);
