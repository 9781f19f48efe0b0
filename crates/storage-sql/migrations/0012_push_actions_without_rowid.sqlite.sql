-- SQLite only. Moving the staged push actions of a big room inserts rows for every member at
-- once, and each insert into `event_push_actions` touched three b-trees (the table, the index of
-- its key (user, position), and the (user, room, position) index), each on a page of its own per
-- user. Kept as one b-tree ordered by (user, room, position), the rows themselves are that
-- index: a move dirties a third of the pages. Reads filter by user and room (unread counts)
-- or by user alone (the notification list), which this order serves.
DROP VIEW push_actions;
CREATE TABLE event_push_actions_by_user (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    notify BIGINT NOT NULL,
    highlight BIGINT NOT NULL,
    thread_id TEXT,
    actions TEXT,
    PRIMARY KEY (user_id, room_id, stream_pos)
) WITHOUT ROWID;
INSERT INTO event_push_actions_by_user
    SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions
    FROM event_push_actions WHERE true
    ON CONFLICT DO NOTHING;
DROP TABLE event_push_actions;
ALTER TABLE event_push_actions_by_user RENAME TO event_push_actions;
CREATE VIEW push_actions AS
    SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions
    FROM event_push_actions
    UNION ALL
    SELECT user_id, room_id, stream_pos, notify, highlight, thread_id, actions
    FROM event_push_actions_staged;
