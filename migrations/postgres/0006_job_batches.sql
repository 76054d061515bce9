-- Grant jobs that one upstream call can serve together (adds to one group: up to 20 members per PATCH) share a
-- batch key, so that an executor claims a whole batch in one transaction and sends one write for it.
ALTER TABLE jobs ADD COLUMN batch_key TEXT;

CREATE INDEX jobs_batch_due ON jobs (batch_key, state, next_attempt_at_ms);
