-- Moderation and notifications: reports users make for the server's administrator, rooms the
-- administrator shut down, and the actions of each stored notification (for /notifications).

-- The actions of the push rule that matched (a JSON array); NULL for older rows.
ALTER TABLE event_push_actions ADD COLUMN actions TEXT;

-- When the administrator shut the room down; NULL while it is open.
ALTER TABLE rooms ADD COLUMN shut_down_ts BIGINT;

-- Reports of rooms (event_id NULL) and events. The reported content is not copied.
CREATE TABLE reports (
    report_id {{id}},
    reporter TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT,
    reason TEXT,
    score BIGINT,
    received_ts BIGINT NOT NULL,
    resolved_ts BIGINT
);
CREATE INDEX reports_resolved ON reports (resolved_ts, report_id);
