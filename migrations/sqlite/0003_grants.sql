-- The grant ledger: one row per grant a plan asked for. Its id is derived from ticket, rule, kind, target and
-- principal, so a replayed event or a duplicate delivery can never ask for the same grant twice.
CREATE TABLE grants (
    id                       TEXT   PRIMARY KEY NOT NULL,
    event_id                 TEXT   NOT NULL REFERENCES events (id),
    source                   TEXT   NOT NULL,
    ticket_key               TEXT   NOT NULL,
    rule                     TEXT   NOT NULL,
    kind                     TEXT   NOT NULL,
    target                   TEXT   NOT NULL,
    label                    TEXT   NOT NULL,
    principal_id             TEXT   NOT NULL,
    requested_duration_secs  BIGINT,
    expires_at_ms            BIGINT,
    state                    TEXT   NOT NULL,
    upstream_id              TEXT,
    last_error               TEXT,
    created_at_ms            BIGINT NOT NULL,
    updated_at_ms            BIGINT NOT NULL
);

CREATE INDEX grants_by_ticket ON grants (source, ticket_key);
CREATE INDEX grants_by_principal ON grants (principal_id);

-- Work to do against Entra, claimed with a lease like events; at most one job of a kind per grant.
CREATE TABLE jobs (
    id                  TEXT   PRIMARY KEY NOT NULL,
    grant_id            TEXT   NOT NULL REFERENCES grants (id),
    kind                TEXT   NOT NULL,
    state               TEXT   NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    lease_owner         TEXT,
    lease_until_ms      BIGINT,
    last_error          TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL,
    UNIQUE (grant_id, kind)
);

CREATE INDEX jobs_due ON jobs (state, next_attempt_at_ms);
