-- Thread subscriptions (MSC4306): one row per user and thread, kept after an unsubscription
-- (its stream position then refuses automatic subscriptions caused by earlier events).
CREATE TABLE thread_subscriptions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_root_id TEXT NOT NULL,
    subscribed BIGINT NOT NULL,
    automatic BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_root_id)
);
CREATE INDEX thread_subscriptions_by_pos ON thread_subscriptions (user_id, stream_pos);

-- Delayed events (MSC4140): events a client scheduled, sent when their delay runs out unless
-- restarted or cancelled first.
CREATE TABLE delayed_events (
    delay_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT,
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    content TEXT NOT NULL,
    delay_ms BIGINT NOT NULL,
    send_ts BIGINT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX delayed_events_by_user ON delayed_events (user_id);
CREATE INDEX delayed_events_by_time ON delayed_events (send_ts);
