-- The stream position at each run of the notification pruner, with the time: a push action
-- is as old as the first mark at or after its position (positions have no time of their own,
-- and an event's `origin_server_ts` is what its sender claims). Marks are kept as long as the
-- longest retention needs them.
CREATE TABLE push_action_marks (
    ts BIGINT PRIMARY KEY,
    stream_pos BIGINT NOT NULL
);
