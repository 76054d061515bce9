-- The audit trail: append-only, each entry carrying the SHA-256 of the one before (src/audit.rs describes the
-- hash). seq is assigned by the writer as the previous seq + 1, so a deleted entry leaves a visible gap.
CREATE TABLE audit_log (
    seq         BIGINT PRIMARY KEY NOT NULL,
    at_ms       BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    actor       TEXT   NOT NULL,
    source      TEXT,
    ticket_key  TEXT,
    event_id    TEXT,
    grant_id    TEXT,
    detail      TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL
);

-- Changing or removing an entry takes a deliberate act (dropping these triggers), and the chain shows it.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
