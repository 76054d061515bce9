-- Ticket callbacks: the outbox of comments, work notes, transitions and states to post back to tickets. A row is
-- written in the transaction that records the outcome it reports. Its id is derived from source, ticket, kind and
-- outcome, so enqueueing the same outcome again is a no-op. Callbacks are leased, retried and dead-lettered like
-- grant jobs.
CREATE TABLE callbacks (
    id                  TEXT   PRIMARY KEY NOT NULL,
    event_id            TEXT   NOT NULL,
    grant_id            TEXT,
    source              TEXT   NOT NULL,
    -- `jira` or `servicenow`: how the ticket is reached.
    system              TEXT   NOT NULL,
    ticket_key          TEXT   NOT NULL,
    -- Jira issue id, or ServiceNow sys_id; `ticket_table` is the ServiceNow table.
    ticket_id           TEXT   NOT NULL,
    ticket_table        TEXT,
    -- granted, refused, failed, dry_run, revoked, expiring (open: new kinds need no migration).
    kind                TEXT   NOT NULL,
    message             TEXT   NOT NULL,
    -- `internal` (Jira Service Management internal comment, ServiceNow work note) or `public`.
    visibility          TEXT   NOT NULL,
    -- The Jira transition to make, by name, and the ServiceNow state to set.
    transition          TEXT,
    ticket_state        TEXT,
    -- queued, running, done or dead.
    state               TEXT   NOT NULL,
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_at_ms  BIGINT NOT NULL,
    lease_owner         TEXT,
    lease_until_ms      BIGINT,
    last_error          TEXT,
    delivered_at_ms     BIGINT,
    -- The Jira comment id, or the ServiceNow sys_id that was updated.
    remote_id           TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL
);

CREATE INDEX callbacks_due ON callbacks (state, next_attempt_at_ms);
CREATE INDEX callbacks_by_ticket ON callbacks (source, ticket_key);
