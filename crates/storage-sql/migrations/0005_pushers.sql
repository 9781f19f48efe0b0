-- Pushers belong to the device that set them, so they end with its session (logging out,
-- deleting the device) and notifications never reach a phone that signed out.
-- NULL for pushers set before this migration.
ALTER TABLE pushers ADD COLUMN device_id TEXT;
ALTER TABLE pushers ADD COLUMN created_ts BIGINT;
CREATE INDEX pushers_app_key ON pushers (app_id, pushkey);
