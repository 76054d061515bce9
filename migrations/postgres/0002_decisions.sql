-- Deciding an event: workers lease it, do their network reads outside any transaction, then record the
-- decision together with the event's new state.
ALTER TABLE events ADD COLUMN lease_owner TEXT;
ALTER TABLE events ADD COLUMN lease_until_ms BIGINT;
ALTER TABLE events ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN next_attempt_at_ms BIGINT NOT NULL DEFAULT 0;

CREATE TABLE decisions (
    event_id       TEXT    PRIMARY KEY NOT NULL REFERENCES events (id),
    outcome        TEXT    NOT NULL,
    code           TEXT,
    ticket_key     TEXT,
    detail         TEXT    NOT NULL,
    decided_at_ms  BIGINT    NOT NULL
);

CREATE INDEX decisions_by_ticket ON decisions (ticket_key);
