-- Push actions are written here first, in the order events come. A big room's event adds a
-- row per member, and in `event_push_actions` (ordered by user) each of those rows lands on a
-- page of its own, which SQLite then writes to its WAL whole: a page per member per event.
-- Here they are appended together; SQLite's store moves them over in bulk from time to time,
-- so a user's page takes many events' rows at once. Reads see both tables (`push_actions`).
CREATE TABLE event_push_actions_staged (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    notify BIGINT NOT NULL,
    highlight BIGINT NOT NULL,
    thread_id TEXT,
    actions TEXT
);
CREATE VIEW push_actions AS
    SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions
    FROM event_push_actions
    UNION ALL
    SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions
    FROM event_push_actions_staged;
