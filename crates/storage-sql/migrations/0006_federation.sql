-- Federation: other servers' signing keys, this server's earlier keys, the durable outbound
-- queue with each destination's backoff and lease, and inbound transactions already processed.

-- Keys of other servers, verified from their key documents. expired_ts is set for keys the
-- server listed as old (no longer used since then).
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    expired_ts BIGINT,
    PRIMARY KEY (server_name, key_id)
);

-- The latest signed key document of each server, served again (counter-signed) as a notary.
CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY,
    json TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL
);

-- This server's earlier signing keys, published as old_verify_keys after a rotation.
CREATE TABLE local_old_signing_keys (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    expired_ts BIGINT NOT NULL
);

-- Every server this one sends to. retry_at is 0 without backoff. The pending transaction is
-- retried with the same ID and contents until accepted. The lease names the process sending.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failures BIGINT NOT NULL DEFAULT 0,
    retry_at BIGINT NOT NULL DEFAULT 0,
    retry_interval_ms BIGINT NOT NULL DEFAULT 0,
    last_success_ts BIGINT,
    last_failure_ts BIGINT,
    pending_txn_id TEXT,
    pending_max_pdu_pos BIGINT NOT NULL DEFAULT 0,
    pending_max_edu_id BIGINT NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL DEFAULT 0
);

-- PDUs waiting to be sent, in stream order.
CREATE TABLE federation_outbound_pdus (
    destination TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (destination, stream_pos)
);

-- Durable EDUs (to-device messages, device-list updates) waiting to be sent.
CREATE TABLE federation_outbound_edus (
    id {{id}},
    destination TEXT NOT NULL,
    edu_type TEXT NOT NULL,
    content TEXT NOT NULL
);
CREATE INDEX federation_outbound_edus_destination ON federation_outbound_edus (destination, id);

-- Inbound transactions already processed, with the answer given, for de-duplication.
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_ts ON federation_inbound_txns (received_ts);
