-- Access that ends: why and when a grant ended, and who ended it (`grantbridge` or the operator's identity).
-- `notify_before_secs` is the rule's lead time for the notice before expiry, kept with the grant at decision time.
ALTER TABLE grants ADD COLUMN ended_reason TEXT;
ALTER TABLE grants ADD COLUMN ended_by TEXT;
ALTER TABLE grants ADD COLUMN ended_at_ms BIGINT;
ALTER TABLE grants ADD COLUMN notify_before_secs BIGINT;

-- Why a revoke job was queued (`expired`, `withdrawn: cancelled`, `operator: ...`) and by whom.
ALTER TABLE jobs ADD COLUMN reason TEXT;
ALTER TABLE jobs ADD COLUMN requested_by TEXT;

-- Grants of the same access (two tickets, same person and target): a revocation looks at all of them.
CREATE INDEX grants_by_access ON grants (kind, target, principal_id);
-- The earliest lease to run out: when an idle executor must look again.
CREATE INDEX jobs_lease ON jobs (state, lease_until_ms);
