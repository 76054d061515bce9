-- Verified webhook events, stored before the sender is answered.
CREATE TABLE events (
    id             TEXT    PRIMARY KEY NOT NULL,
    source         TEXT    NOT NULL,
    dedup_key      TEXT    NOT NULL,
    replay_key     TEXT,
    delivery_id    TEXT,
    scheme         TEXT    NOT NULL,
    body_sha256    TEXT    NOT NULL,
    body           TEXT    NOT NULL,
    meta           TEXT    NOT NULL,
    received_at_ms INTEGER NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'received',
    UNIQUE (source, dedup_key),
    -- Body hash, set when the delivery id is not covered by the signature (Jira): a captured request
    -- replayed under a new id is still a duplicate.
    UNIQUE (source, replay_key)
);

CREATE INDEX events_by_state ON events (state, received_at_ms);
