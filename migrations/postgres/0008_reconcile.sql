-- Reconciliations of the grant ledger with the directory: one row per run, with its report (JSON) for people and
-- the admin API. The periodic job schedules its next run from the latest scheduled one, across replicas.
CREATE TABLE reconcile_runs (
    id              TEXT    PRIMARY KEY NOT NULL,
    started_at_ms   BIGINT  NOT NULL,
    finished_at_ms  BIGINT  NOT NULL,
    -- `schedule` (the periodic job) or `cli` (`grantbridge reconcile`).
    started_by      TEXT    NOT NULL,
    dry_run         BOOLEAN NOT NULL,
    drift           BIGINT  NOT NULL,
    errors          BIGINT  NOT NULL,
    report          TEXT    NOT NULL
);

CREATE INDEX reconcile_runs_by_start ON reconcile_runs (started_by, started_at_ms);
CREATE INDEX reconcile_runs_latest ON reconcile_runs (started_at_ms);
