//! Read-only queries for the admin API: filtered lists, newest first, one page at a time, and one event with
//! everything that followed from it.
//!
//! Pages use keyset pagination on (time, id): a page starts strictly after the last row of the one before, so
//! rows that arrive meanwhile never shift a page, and no row is returned twice.

use super::audit::{COLUMNS as AUDIT_COLUMNS, Row as AuditRow, record as audit_record};
use super::grants::{GRANT_COLUMNS, GrantRow, grant_from};
use super::{GrantRecord, ReconcileRunSummary, Store, StoreError, on_pool};
use crate::audit::AuditRecord;
use crate::domain::EventId;

/// Where a page ends: the sort time and the id of its last row. The next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageKey {
    pub at_ms: i64,
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Set when more rows follow.
    pub next: Option<PageKey>,
}

#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    /// The ticket key its decision recorded.
    pub ticket: Option<String>,
    /// The event's state: `received`, `deciding`, `decided`, `refused` or `ignored`.
    pub state: Option<String>,
    /// Received at or after (Unix ms).
    pub received_after_ms: Option<i64>,
    /// Received strictly before (Unix ms).
    pub received_before_ms: Option<i64>,
}

/// An event as listed: what arrived, and how it was decided, if it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub id: String,
    pub source: String,
    pub delivery_id: Option<String>,
    pub scheme: String,
    pub received_at_ms: i64,
    pub state: String,
    pub attempts: i64,
    pub ticket_key: Option<String>,
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub decided_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    pub ticket: Option<String>,
    pub source: Option<String>,
    pub principal: Option<String>,
    /// A value of the target: a group id, role definition id or scope (case-insensitive, whole value).
    pub target: Option<String>,
    pub kind: Option<String>,
    pub state: Option<String>,
    /// Expiring strictly before (Unix ms); grants without an expiry never match.
    pub expiring_before_ms: Option<i64>,
}

/// A job of the grant queue, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub id: String,
    pub grant_id: String,
    pub kind: String,
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A job that gave up, with its grant.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub job: JobRecord,
    pub grant: GrantRecord,
}

/// One event as stored, without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: String,
    pub source: String,
    pub delivery_id: Option<String>,
    pub scheme: String,
    pub body_sha256: String,
    /// JSON: what the request said about itself (content type, user agent, Jira's retry count and flow).
    pub meta: String,
    pub received_at_ms: i64,
    pub state: String,
    pub attempts: i64,
    /// A postponed event is not decided again before this time (Unix ms).
    pub next_attempt_at_ms: i64,
}

type EventRecordRow = (String, String, Option<String>, String, String, String, i64, String, i64, i64);
type EventRow = (
    String,
    String,
    Option<String>,
    String,
    i64,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
);
type JobRow = (String, String, String, String, i64, i64, Option<String>, i64, i64);

const JOB_COLUMNS: &str = "j.id, j.grant_id, j.kind, j.state, j.attempts, j.next_attempt_at_ms, j.last_error,
    j.created_at_ms, j.updated_at_ms";

fn job_from(row: JobRow) -> JobRecord {
    let (id, grant_id, kind, state, attempts, next_attempt_at_ms, last_error, created_at_ms, updated_at_ms) = row;
    JobRecord { id, grant_id, kind, state, attempts, next_attempt_at_ms, last_error, created_at_ms, updated_at_ms }
}

/// A bound value of a query built from optional filters.
enum Arg {
    Text(String),
    Int(i64),
}

/// `WHERE` clauses and their values, numbered `$1, $2, ...` in the order they are added.
#[derive(Default)]
struct Conditions {
    clauses: Vec<String>,
    args: Vec<Arg>,
}

impl Conditions {
    /// Adds `template` with each `{}` replaced by the placeholder of `arg`.
    fn add(&mut self, template: &str, arg: Arg) {
        self.args.push(arg);
        self.clauses.push(template.replace("{}", &format!("${}", self.args.len())));
    }

    fn text(&mut self, template: &str, value: &Option<String>) {
        if let Some(value) = value {
            self.add(template, Arg::Text(value.clone()));
        }
    }

    fn int(&mut self, template: &str, value: Option<i64>) {
        if let Some(value) = value {
            self.add(template, Arg::Int(value));
        }
    }

    /// Rows strictly after `key` in `ORDER BY {at} DESC, {id} DESC`.
    fn after(&mut self, at: &str, id: &str, key: Option<&PageKey>) {
        if let Some(key) = key {
            self.args.push(Arg::Int(key.at_ms));
            self.args.push(Arg::Text(key.id.clone()));
            let (a, i) = (self.args.len() - 1, self.args.len());
            self.clauses.push(format!("({at} < ${a} OR ({at} = ${a} AND {id} < ${i}))"));
        }
    }

    /// `WHERE ...` (or nothing), then the order and a limit one above the page size, to see whether more follow.
    fn finish(mut self, select: &str, order: &str, limit: usize) -> (String, Vec<Arg>) {
        let mut sql = select.to_string();
        if !self.clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.clauses.join(" AND "));
        }
        self.args.push(Arg::Int(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)));
        sql.push_str(&format!(" ORDER BY {order} LIMIT ${}", self.args.len()));
        (sql, self.args)
    }
}

/// Runs `$sql` with `$args` bound in order, as `query_as` of `$row`, on `$store`'s read pool.
macro_rules! fetch_all {
    ($store:expr, $row:ty, $sql:expr, $args:expr) => {{
        let args: &[Arg] = $args;
        let sql: String = $sql;
        on_pool!($store, |pool, _begin| {
            let mut query = sqlx::query_as::<_, $row>(sqlx::AssertSqlSafe(sql));
            for arg in args {
                query = match arg {
                    Arg::Text(value) => query.bind(value.as_str()),
                    Arg::Int(value) => query.bind(*value),
                };
            }
            query.fetch_all(pool).await?
        })
    }};
}

/// Splits `limit + 1` fetched rows into a page and the key of its last row when more follow.
fn paged<R, T>(mut rows: Vec<R>, limit: usize, key: impl Fn(&R) -> PageKey, to: impl FnMut(R) -> T) -> Page<T> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(&key) } else { None };
    Page { items: rows.into_iter().map(to).collect(), next }
}

/// `%"value"%` for `LIKE ... ESCAPE '\'`: the value as it appears, quoted, in the target's JSON.
fn target_pattern(value: &str) -> String {
    let quoted = serde_json::to_string(&value.to_lowercase()).unwrap_or_default();
    let mut pattern = String::from("%");
    for c in quoted.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

impl Store {
    /// Events matching `filter`, newest first, after `after`.
    pub async fn list_events(
        &self,
        filter: &EventFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<EventSummary>, StoreError> {
        let mut c = Conditions::default();
        c.text("e.source = {}", &filter.source);
        c.text("d.ticket_key = {}", &filter.ticket);
        c.text("e.state = {}", &filter.state);
        c.int("e.received_at_ms >= {}", filter.received_after_ms);
        c.int("e.received_at_ms < {}", filter.received_before_ms);
        c.after("e.received_at_ms", "e.id", after);
        let (sql, args) = c.finish(
            "SELECT e.id, e.source, e.delivery_id, e.scheme, e.received_at_ms, e.state, e.attempts,
                    d.ticket_key, d.outcome, d.code, d.decided_at_ms
             FROM events e LEFT JOIN decisions d ON d.event_id = e.id",
            "e.received_at_ms DESC, e.id DESC",
            limit,
        );
        let rows: Vec<EventRow> = fetch_all!(self, EventRow, sql, &args);
        Ok(paged(
            rows,
            limit,
            |r| PageKey { at_ms: r.4, id: r.0.clone() },
            |(id, source, delivery_id, scheme, received_at_ms, state, attempts, ticket_key, outcome, code, decided)| {
                EventSummary {
                    id,
                    source,
                    delivery_id,
                    scheme,
                    received_at_ms,
                    state,
                    attempts,
                    ticket_key,
                    outcome,
                    code,
                    decided_at_ms: decided,
                }
            },
        ))
    }

    /// Grants matching `filter`, newest first, after `after`.
    pub async fn list_grants(
        &self,
        filter: &GrantFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<GrantRecord>, StoreError> {
        let mut c = Conditions::default();
        c.text("ticket_key = {}", &filter.ticket);
        c.text("source = {}", &filter.source);
        c.text("principal_id = {}", &filter.principal);
        c.text("LOWER(target) LIKE {} ESCAPE '\\'", &filter.target.as_deref().map(target_pattern));
        c.text("kind = {}", &filter.kind);
        c.text("state = {}", &filter.state);
        c.int("expires_at_ms < {}", filter.expiring_before_ms);
        c.after("created_at_ms", "id", after);
        let (sql, args) =
            c.finish(&format!("SELECT {GRANT_COLUMNS} FROM grants"), "created_at_ms DESC, id DESC", limit);
        let rows: Vec<GrantRow> = fetch_all!(self, GrantRow, sql, &args);
        Ok(paged(rows, limit, |r| PageKey { at_ms: r.0.created_at_ms, id: r.0.id.clone() }, grant_from))
    }

    pub async fn event_record(&self, id: EventId) -> Result<Option<EventRecord>, StoreError> {
        let sql = "SELECT id, source, delivery_id, scheme, body_sha256, meta, received_at_ms, state, attempts,
                          next_attempt_at_ms
                   FROM events WHERE id = $1"
            .to_string();
        let rows: Vec<EventRecordRow> = fetch_all!(self, EventRecordRow, sql, &[Arg::Text(id.to_string())]);
        Ok(rows.into_iter().next().map(
            |(id, source, delivery_id, scheme, body_sha256, meta, received_at_ms, state, attempts, next)| EventRecord {
                id,
                source,
                delivery_id,
                scheme,
                body_sha256,
                meta,
                received_at_ms,
                state,
                attempts,
                next_attempt_at_ms: next,
            },
        ))
    }

    /// The grants an event's plan created, oldest first.
    pub async fn grants_of_event(&self, event: EventId) -> Result<Vec<GrantRecord>, StoreError> {
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE event_id = $1 ORDER BY created_at_ms, id");
        let rows: Vec<GrantRow> = fetch_all!(self, GrantRow, sql, &[Arg::Text(event.to_string())]);
        Ok(rows.into_iter().map(grant_from).collect())
    }

    /// The jobs of the grants an event's plan created, oldest first.
    pub async fn jobs_of_event(&self, event: EventId) -> Result<Vec<JobRecord>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs j JOIN grants g ON g.id = j.grant_id
             WHERE g.event_id = $1 ORDER BY j.created_at_ms, j.id"
        );
        let rows: Vec<JobRow> = fetch_all!(self, JobRow, sql, &[Arg::Text(event.to_string())]);
        Ok(rows.into_iter().map(job_from).collect())
    }

    /// Jobs that gave up, with their grants, the most recent failure first, after `after`.
    pub async fn list_dead_letters(
        &self,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<DeadLetter>, StoreError> {
        let mut c = Conditions::default();
        c.clauses.push("j.state = 'dead'".to_string());
        c.after("j.updated_at_ms", "j.id", after);
        let (sql, args) =
            c.finish(&format!("SELECT {JOB_COLUMNS} FROM jobs j"), "j.updated_at_ms DESC, j.id DESC", limit);
        let rows: Vec<JobRow> = fetch_all!(self, JobRow, sql, &args);
        let page = paged(rows, limit, |r| PageKey { at_ms: r.8, id: r.0.clone() }, job_from);
        if page.items.is_empty() {
            return Ok(Page { items: Vec::new(), next: page.next });
        }
        let placeholders: Vec<String> = (1..=page.items.len()).map(|n| format!("${n}")).collect();
        let sql = format!("SELECT {GRANT_COLUMNS} FROM grants WHERE id IN ({})", placeholders.join(", "));
        let ids: Vec<Arg> = page.items.iter().map(|job| Arg::Text(job.grant_id.clone())).collect();
        let grants: Vec<GrantRow> = fetch_all!(self, GrantRow, sql, &ids);
        let grants: std::collections::HashMap<String, GrantRecord> =
            grants.into_iter().map(grant_from).map(|g| (g.id.clone(), g)).collect();
        let mut items = Vec::with_capacity(page.items.len());
        for job in page.items {
            // Several dead jobs (a grant and its revoke) can share a grant.
            let grant = grants.get(&job.grant_id).cloned().ok_or_else(|| {
                StoreError::Corrupt(format!("job {} names grant {}, which does not exist", job.id, job.grant_id))
            })?;
            items.push(DeadLetter { job, grant });
        }
        Ok(Page { items, next: page.next })
    }
}

type RunSummaryRow = (String, i64, i64, String, bool, i64, i64);

impl Store {
    /// Recorded reconciliation runs without their reports, the latest started first, after `after`.
    pub async fn list_reconcile_runs(
        &self,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Page<ReconcileRunSummary>, StoreError> {
        let mut c = Conditions::default();
        c.after("started_at_ms", "id", after);
        let (sql, args) = c.finish(
            "SELECT id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors FROM reconcile_runs",
            "started_at_ms DESC, id DESC",
            limit,
        );
        let rows: Vec<RunSummaryRow> = fetch_all!(self, RunSummaryRow, sql, &args);
        Ok(paged(
            rows,
            limit,
            |r| PageKey { at_ms: r.1, id: r.0.clone() },
            |(id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors)| ReconcileRunSummary {
                id,
                started_at_ms,
                finished_at_ms,
                started_by,
                dry_run,
                drift,
                errors,
            },
        ))
    }
}

/// Which audit entries `GET /v1/audit` lists; every given field must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub kind: Option<String>,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub ticket: Option<String>,
    pub event_id: Option<String>,
    pub grant_id: Option<String>,
    /// At or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Strictly before (Unix ms).
    pub until_ms: Option<i64>,
}

/// A page of audit entries, in sequence order.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub entries: Vec<AuditRecord>,
    /// The seq of the last entry, when more follow: the next page starts after it.
    pub next_after_seq: Option<i64>,
}

impl Store {
    /// Audit entries matching `filter` in ascending seq, strictly after `after_seq`.
    pub async fn list_audit(
        &self,
        filter: &AuditFilter,
        after_seq: Option<i64>,
        limit: usize,
    ) -> Result<AuditPage, StoreError> {
        let mut c = Conditions::default();
        c.text("kind = {}", &filter.kind);
        c.text("actor = {}", &filter.actor);
        c.text("source = {}", &filter.source);
        c.text("ticket_key = {}", &filter.ticket);
        c.text("event_id = {}", &filter.event_id);
        c.text("grant_id = {}", &filter.grant_id);
        c.int("at_ms >= {}", filter.since_ms);
        c.int("at_ms < {}", filter.until_ms);
        c.int("seq > {}", after_seq);
        let (sql, args) = c.finish(&format!("SELECT {AUDIT_COLUMNS} FROM audit_log"), "seq", limit);
        let mut rows: Vec<AuditRow> = fetch_all!(self, AuditRow, sql, &args);
        let more = rows.len() > limit;
        rows.truncate(limit);
        let entries: Vec<AuditRecord> = rows.into_iter().map(audit_record).collect();
        let next_after_seq = if more { entries.last().map(|e| e.seq) } else { None };
        Ok(AuditPage { entries, next_after_seq })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_number_their_placeholders_in_order() {
        let mut c = Conditions::default();
        c.text("a = {}", &Some("x".into()));
        c.text("b = {}", &None);
        c.int("t >= {}", Some(5));
        c.after("t", "id", Some(&PageKey { at_ms: 9, id: "k".into() }));
        let (sql, args) = c.finish("SELECT * FROM x", "t DESC, id DESC", 50);
        assert_eq!(
            sql,
            "SELECT * FROM x WHERE a = $1 AND t >= $2 AND (t < $3 OR (t = $3 AND id < $4)) ORDER BY t DESC, id DESC LIMIT $5"
        );
        assert_eq!(args.len(), 5);
        assert!(matches!(args[4], Arg::Int(51)), "one row more than the page, to know whether more follow");
        let (sql, _) = Conditions::default().finish("SELECT 1", "t", 1);
        assert_eq!(sql, "SELECT 1 ORDER BY t LIMIT $1");
    }

    #[test]
    fn target_patterns_match_a_whole_quoted_value_literally() {
        assert_eq!(target_pattern("6F3C-aa"), "%\"6f3c-aa\"%");
        assert_eq!(target_pattern("/subscriptions/x_y%"), "%\"/subscriptions/x\\_y\\%\"%");
        assert_eq!(target_pattern("a\"b"), "%\"a\\\\\"b\"%");
    }

    #[test]
    fn pages_end_with_the_key_of_their_last_row_only_when_more_follow() {
        let key = |r: &(i64, &str)| PageKey { at_ms: r.0, id: r.1.to_string() };
        let full = paged(vec![(3, "c"), (2, "b"), (1, "a")], 2, key, |r| r.1);
        assert_eq!(full.items, ["c", "b"]);
        assert_eq!(full.next, Some(PageKey { at_ms: 2, id: "b".into() }));
        let last = paged(vec![(1, "a")], 2, key, |r| r.1);
        assert_eq!((last.items, last.next), (vec!["a"], None));
    }
}
