-- Media: uploads, thumbnails, quotas and URL previews. File bytes live under
-- <data_dir>/media/, named by SHA-256; these tables hold what points at them.

-- A media item. `sha256` (and the content columns) stay NULL while an asynchronous upload is
-- pending; `expires_ts` is then when the reservation lapses.
CREATE TABLE media (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    uploader TEXT NOT NULL,
    content_type TEXT,
    filename TEXT,
    size BIGINT,
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    uploaded_ts BIGINT,
    last_access_ts BIGINT NOT NULL,
    expires_ts BIGINT,
    quota_counted BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX media_sha256 ON media (sha256);
CREATE INDEX media_uploader ON media (uploader, expires_ts);
CREATE INDEX media_last_access ON media (origin, last_access_ts);

-- Thumbnails, keyed by the size and method asked for.
CREATE TABLE media_thumbnails (
    origin TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    method TEXT NOT NULL,
    animated BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);

-- Bytes of media counting towards each user's quota.
CREATE TABLE media_usage (
    user_id TEXT NOT NULL PRIMARY KEY,
    bytes BIGINT NOT NULL
);

-- Cached URL previews, by SHA-256 of the URL (the URL itself is not kept).
CREATE TABLE url_previews (
    url_hash TEXT NOT NULL PRIMARY KEY,
    json TEXT NOT NULL,
    fetched_ts BIGINT NOT NULL
);
CREATE INDEX url_previews_fetched ON url_previews (fetched_ts);
