-- PostgreSQL only: stream positions shared by every process.
--
-- A writer takes its position from a sequence and holds a transaction-level advisory lock on
-- it (the one-bigint form, which nothing else in Rhizome uses) until its transaction ends. The
-- highest position every reader may read ("persisted up to") is the lowest position still
-- locked, minus one, or the sequence's last value when none is. A shared session lock around
-- taking a position and locking it, and an exclusive one around reading the watermark, make
-- sure a reader never sees a position taken but not yet locked.
CREATE SEQUENCE rhizome_stream_seq;
SELECT setval('rhizome_stream_seq', (SELECT pos FROM stream_counter WHERE id = 1) + 1, false);

CREATE FUNCTION rhizome_take_stream_pos() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    taken BIGINT;
BEGIN
    PERFORM pg_advisory_lock_shared(1380473393, 1);
    BEGIN
        taken := nextval('rhizome_stream_seq');
        PERFORM pg_advisory_xact_lock(taken);
    EXCEPTION WHEN OTHERS THEN
        PERFORM pg_advisory_unlock_shared(1380473393, 1);
        RAISE;
    END;
    PERFORM pg_advisory_unlock_shared(1380473393, 1);
    RETURN taken;
END
$$;

CREATE FUNCTION rhizome_stream_watermark() RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    last_taken BIGINT;
    lowest_in_flight BIGINT;
BEGIN
    PERFORM pg_advisory_xact_lock(1380473393, 1);
    SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
        INTO last_taken FROM rhizome_stream_seq;
    SELECT min((classid::BIGINT << 32) | objid::BIGINT) INTO lowest_in_flight
        FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 1 AND granted
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database());
    IF lowest_in_flight IS NULL THEN
        RETURN last_taken;
    END IF;
    RETURN least(last_taken, lowest_in_flight - 1);
END
$$;

-- The per-room event lock: held by the transaction that builds and persists an event, so two
-- processes never build events on the same forward extremities at once.
CREATE FUNCTION rhizome_lock_room(room TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(1380473394, hashtext(room));
    RETURN 1;
END
$$;
