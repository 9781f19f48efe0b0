-- Rhizome's first schema. Portable SQL: `{{id}}` is an auto-incrementing BIGINT primary key,
-- everything else is spelled the same on SQLite and PostgreSQL. Booleans are BIGINT 0/1.

CREATE TABLE stream_counter (
    id BIGINT PRIMARY KEY,
    pos BIGINT NOT NULL
);
INSERT INTO stream_counter (id, pos) VALUES (1, 0);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    displayname TEXT,
    avatar_url TEXT,
    is_admin BIGINT NOT NULL DEFAULT 0,
    deactivated BIGINT NOT NULL DEFAULT 0,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    refresh_token_hash TEXT UNIQUE,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    expires_ts BIGINT
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    completed BIGINT NOT NULL DEFAULT 0,
    expiry_ts BIGINT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    published BIGINT NOT NULL DEFAULT 0,
    current_state_group BIGINT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE events (
    stream_pos BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,
    rejected BIGINT NOT NULL DEFAULT 0,
    state_before BIGINT NOT NULL,
    state_after BIGINT NOT NULL,
    txn_user TEXT,
    txn_device TEXT,
    txn_id TEXT,
    redacted_by TEXT,
    body TEXT
);
CREATE INDEX events_room_pos ON events (room_id, stream_pos);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
CREATE UNIQUE INDEX events_txn ON events (txn_user, txn_device, txn_id);

CREATE TABLE event_auth_edges (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    aggregation_key TEXT,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    event_type TEXT NOT NULL,
    stream_pos BIGINT NOT NULL
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type, stream_pos);
CREATE INDEX event_relations_room ON event_relations (room_id, rel_type, stream_pos);

CREATE TABLE forward_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State groups: a full snapshot (prev_group NULL) or a delta on prev_group. A NULL event_id
-- in a delta removes the slot.
CREATE TABLE state_groups (
    group_id {{id}},
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    delta_depth BIGINT NOT NULL
);

CREATE TABLE state_group_entries (
    group_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT,
    PRIMARY KEY (group_id, event_type, state_key)
);

CREATE TABLE room_memberships (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    displayname TEXT,
    avatar_url TEXT,
    forgotten BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_memberships_user ON room_memberships (user_id, membership);
CREATE INDEX room_memberships_user_pos ON room_memberships (user_id, stream_pos);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_pos ON account_data (user_id, stream_pos);

CREATE TABLE filters (
    filter_id {{id}},
    user_id TEXT NOT NULL,
    json TEXT NOT NULL
);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    user_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_stream_pos BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
);
CREATE INDEX receipts_room_pos ON receipts (room_id, stream_pos);

CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    notify BIGINT NOT NULL,
    highlight BIGINT NOT NULL,
    thread_id TEXT,
    PRIMARY KEY (user_id, stream_pos)
);
CREATE INDEX event_push_actions_room ON event_push_actions (user_id, room_id, stream_pos);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    json TEXT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);
