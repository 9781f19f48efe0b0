-- Several processes on one database. Singleton work (the push worker, media clean-up, …) runs
-- under a lease: one holder at a time, renewed while it lives, taken over once it lapses.
CREATE TABLE job_leases (
    job TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
