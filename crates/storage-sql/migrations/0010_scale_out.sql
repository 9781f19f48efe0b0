-- Several processes on one database. Singleton work (the push worker, media clean-up, …) runs
-- under a lease: one holder at a time, renewed while it lives, taken over once it lapses.
CREATE TABLE job_leases (
    job TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);

-- What a process keeps for a client between two requests that may reach different processes
-- (user-interactive authentication sessions, sliding sync connections), until it expires.
CREATE TABLE client_sessions (
    kind TEXT NOT NULL,
    session_id TEXT NOT NULL,
    data TEXT NOT NULL,
    expires_ts BIGINT NOT NULL,
    PRIMARY KEY (kind, session_id)
);
CREATE INDEX client_sessions_expiry ON client_sessions (expires_ts);

-- Notifications for push gateways, queued by the transaction that persists the event and
-- deleted once sent, so a process that dies loses none: the one that takes the push worker's
-- lease over sends them.
CREATE TABLE push_queue (
    id {{id}},
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    users TEXT NOT NULL,
    queued_ts BIGINT NOT NULL
);
