-- Indexes for the admin API's lists (src/store/queries.rs): each list is read newest first by (time, id), after a
-- cursor on the same pair, so an index on that pair serves a page without sorting the table.

-- GET /v1/events: ORDER BY received_at_ms DESC, id DESC; with `source`, the same order within one source.
CREATE INDEX admin_events_by_received ON events (received_at_ms, id);
CREATE INDEX admin_events_by_source ON events (source, received_at_ms, id);

-- GET /v1/grants: ORDER BY created_at_ms DESC, id DESC; `expiring_before` is a range on expires_at_ms.
CREATE INDEX admin_grants_by_created ON grants (created_at_ms, id);
CREATE INDEX admin_grants_by_expiry ON grants (expires_at_ms);
-- GET /v1/events/{id} (grants and jobs of an event), and settling an event's grants when its jobs finish.
CREATE INDEX admin_grants_by_event ON grants (event_id, created_at_ms, id);

-- GET /v1/dead-letters: state = 'dead' ORDER BY updated_at_ms DESC, id DESC.
CREATE INDEX admin_jobs_by_state_updated ON jobs (state, updated_at_ms, id);

-- GET /v1/audit: entries of one event or of one kind, in seq order.
CREATE INDEX admin_audit_by_event ON audit_log (event_id, seq);
CREATE INDEX admin_audit_by_kind ON audit_log (kind, seq);
