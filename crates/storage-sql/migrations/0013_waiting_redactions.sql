-- Redactions stored before their target (history fetched later, an event of another server
-- still on its way): the target is stored redacted when it comes, if the redaction may apply
-- to it. A redaction of an event already stored changes that event at once and waits for
-- nothing.
CREATE TABLE redactions_waiting (
    target_id TEXT NOT NULL,
    redaction_id TEXT NOT NULL,
    PRIMARY KEY (target_id, redaction_id)
);
