-- Events from other servers. events.rejected now reads 0 (accepted), 1 (rejected by the auth
-- rules) or 2 (soft-failed: accepted into the room graph, never shown to clients).

-- Events known outside the timeline: auth events and state fetched from other servers, and
-- invites to rooms this server is not in (with the room's stripped state).
CREATE TABLE event_outliers (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    json TEXT NOT NULL,
    rejected BIGINT NOT NULL DEFAULT 0,
    invite_state TEXT
);

-- History fetched from other servers takes positions below every earlier one, counting down.
INSERT INTO stream_counter (id, pos) VALUES (2, 0);
