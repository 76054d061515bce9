//! The `audit_log` table: entries appended inside the transaction of the step they record, so that a step and
//! its entry commit together or not at all; read back in pages for export and verification.
//!
//! The chain has one head, so appends are serialized. SQLite writers already are (BEGIN IMMEDIATE and the
//! write gate). On PostgreSQL, replicas append concurrently: each append takes a transaction-level advisory
//! lock before it reads the head, and holds it until its transaction ends. Append last in a transaction,
//! after every other write: the lock is then held only for the append and the commit, and a transaction
//! holding it never waits for a row another one has locked.

use std::future::Future;

use sqlx::{PgConnection, SqliteConnection};

use super::{Inserted, Store, StoreError, on_pool};
use crate::audit::{Anchor, AuditEntry, AuditKind, AuditRecord, Broken, Head, Verified, Verifier, link};
use crate::domain::IncomingEvent;
use crate::inbound::unix_millis;

/// The advisory lock key that serializes appends on PostgreSQL (the migration lock is 7342016331).
const CHAIN_LOCK: i64 = 7_342_016_332;

/// Rows per SQLite INSERT: 11 parameters each, well under SQLite's limit of 32,766.
const SQLITE_CHUNK: usize = 500;

/// Entries read per query when verifying or exporting.
pub const PAGE: i64 = 1000;

pub(super) const COLUMNS: &str =
    "seq, at_ms, kind, actor, source, ticket_key, event_id, grant_id, detail, prev_hash, hash";

const HEAD: &str = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1";

pub(super) type Row =
    (i64, i64, String, String, Option<String>, Option<String>, Option<String>, Option<String>, String, String, String);

pub(super) fn record(
    (seq, at_ms, kind, actor, source, ticket_key, event_id, grant_id, detail, prev_hash, hash): Row,
) -> AuditRecord {
    AuditRecord { seq, at_ms, kind, actor, source, ticket_key, event_id, grant_id, detail, prev_hash, hash }
}

/// Appends entries to the chain on a connection that is inside a write transaction, for both backends:
/// `tx.append_audit(now_ms, &entries).await?` in either arm of `on_pool!`. Entries without a time of their
/// own get `now_ms`. Returns the new head (None when `entries` is empty).
pub(crate) trait AppendAudit {
    fn append_audit(
        &mut self,
        now_ms: i64,
        entries: &[AuditEntry],
    ) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send;
}

impl AppendAudit for SqliteConnection {
    fn append_audit(
        &mut self,
        now_ms: i64,
        entries: &[AuditEntry],
    ) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send {
        append_sqlite(self, now_ms, entries)
    }
}

impl AppendAudit for PgConnection {
    fn append_audit(
        &mut self,
        now_ms: i64,
        entries: &[AuditEntry],
    ) -> impl Future<Output = Result<Option<Head>, StoreError>> + Send {
        append_postgres(self, now_ms, entries)
    }
}

/// The caller's transaction began with BEGIN IMMEDIATE: no other writer can move the head under it.
pub(crate) async fn append_sqlite(
    conn: &mut SqliteConnection,
    now_ms: i64,
    entries: &[AuditEntry],
) -> Result<Option<Head>, StoreError> {
    if entries.is_empty() {
        return Ok(None);
    }
    let head: Option<(i64, String)> = sqlx::query_as(HEAD).fetch_optional(&mut *conn).await?;
    let records = link(head.map(|(seq, hash)| Head { seq, hash }).as_ref(), now_ms, entries);
    for chunk in records.chunks(SQLITE_CHUNK) {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert_sql(chunk.len())));
        for r in chunk {
            query = query
                .bind(r.seq)
                .bind(r.at_ms)
                .bind(&r.kind)
                .bind(&r.actor)
                .bind(&r.source)
                .bind(&r.ticket_key)
                .bind(&r.event_id)
                .bind(&r.grant_id)
                .bind(&r.detail)
                .bind(&r.prev_hash)
                .bind(&r.hash);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(records.last().map(AuditRecord::head))
}

/// Must run inside a transaction: the advisory lock is released when it ends. Entries go in statements of about
/// [`PG_CHUNK_BYTES`] of parameters each (arrays unnested, so every statement has the same text and PostgreSQL
/// plans it once): a single large statement spans several TCP packets, and without TCP_NODELAY (which sqlx does
/// not set) the last one waits for the delayed ACK of the ones before, about 40 ms per append.
pub(crate) async fn append_postgres(
    conn: &mut PgConnection,
    now_ms: i64,
    entries: &[AuditEntry],
) -> Result<Option<Head>, StoreError> {
    if entries.is_empty() {
        return Ok(None);
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *conn).await?;
    let head: Option<(i64, String)> = sqlx::query_as(HEAD).fetch_optional(&mut *conn).await?;
    let records = link(head.map(|(seq, hash)| Head { seq, hash }).as_ref(), now_ms, entries);
    for chunk in pg_chunks(&records) {
        let column =
            |f: fn(&AuditRecord) -> Option<String>| chunk.iter().map(|r| f(r)).collect::<Vec<Option<String>>>();
        let text = |f: fn(&AuditRecord) -> String| chunk.iter().map(|r| f(r)).collect::<Vec<String>>();
        sqlx::query(
            "INSERT INTO audit_log (seq, at_ms, kind, actor, source, ticket_key, event_id, grant_id, detail, prev_hash, hash)
             SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[],
                                  $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[])",
        )
        .bind(chunk.iter().map(|r| r.seq).collect::<Vec<i64>>())
        .bind(chunk.iter().map(|r| r.at_ms).collect::<Vec<i64>>())
        .bind(text(|r| r.kind.clone()))
        .bind(text(|r| r.actor.clone()))
        .bind(column(|r| r.source.clone()))
        .bind(column(|r| r.ticket_key.clone()))
        .bind(column(|r| r.event_id.clone()))
        .bind(column(|r| r.grant_id.clone()))
        .bind(text(|r| r.detail.clone()))
        .bind(text(|r| r.prev_hash.clone()))
        .bind(text(|r| r.hash.clone()))
        .execute(&mut *conn)
        .await?;
    }
    Ok(records.last().map(AuditRecord::head))
}

/// Parameter bytes per PostgreSQL audit INSERT: a few TCP segments at most.
pub const PG_CHUNK_BYTES: usize = 8 * 1024;

/// What an entry adds to a statement's parameters in PostgreSQL's binary format: each array element is a 4-byte
/// length and its bytes.
fn param_bytes(r: &AuditRecord) -> usize {
    let text = |s: &str| 4 + s.len();
    let optional = |s: &Option<String>| 4 + s.as_deref().map_or(0, str::len);
    2 * (4 + 8)
        + text(&r.kind)
        + text(&r.actor)
        + optional(&r.source)
        + optional(&r.ticket_key)
        + optional(&r.event_id)
        + optional(&r.grant_id)
        + text(&r.detail)
        + text(&r.prev_hash)
        + text(&r.hash)
}

/// Consecutive runs of `records` of at most [`PG_CHUNK_BYTES`] of parameters each (at least one entry each),
/// in order.
pub(crate) fn pg_chunks(records: &[AuditRecord]) -> Vec<Vec<&AuditRecord>> {
    let mut chunks: Vec<Vec<&AuditRecord>> = Vec::new();
    let mut current: Vec<&AuditRecord> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = param_bytes(record);
        if !current.is_empty() && bytes + size > PG_CHUNK_BYTES {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(record);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// SQLite only, with anonymous `?` parameters: SQLite looks a numbered parameter's name up in a list, so
/// binding hundreds of `$N` costs time quadratic in their number.
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_log ({COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,?,?,?)");
    }
    sql
}

/// The entries intake records for a batch: `received` for each stored event, `duplicate` (naming the stored
/// event) for each repeat. The body is never recorded, only its hash.
pub(crate) fn intake_entries(events: &[&IncomingEvent], outcomes: &[Inserted]) -> Vec<AuditEntry> {
    events
        .iter()
        .zip(outcomes)
        .map(|(e, outcome)| {
            let (kind, id) = match outcome {
                Inserted::Accepted(id) => (AuditKind::Received, id),
                Inserted::Duplicate(id) => (AuditKind::Duplicate, id),
            };
            AuditEntry::service(kind).at(e.received_at_ms()).source(e.source()).event(id).detail(serde_json::json!({
                "delivery_id": e.delivery_id(),
                "scheme": e.scheme(),
                "body_sha256": e.body_sha256(),
            }))
        })
        .collect()
}

impl Store {
    /// Records steps that have no transaction of their own, in a durable (fsynced) transaction of their own.
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> Result<Option<Head>, StoreError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let now = unix_millis(std::time::SystemTime::now());
        on_pool!(
            self,
            write | pool,
            begin | {
                let mut tx = pool.begin_with(begin).await?;
                let head = tx.append_audit(now, entries).await?;
                tx.commit().await?;
                Ok(head)
            }
        )
    }

    /// Up to `limit` entries with seq greater than `after_seq`, in ascending seq.
    pub async fn audit_entries(&self, after_seq: i64, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let sql = sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"));
        let rows: Vec<Row> =
            on_pool!(self, |pool, _begin| sqlx::query_as(sql).bind(after_seq).bind(limit).fetch_all(pool).await?);
        Ok(rows.into_iter().map(record).collect())
    }

    /// The last entry, or None for an empty chain.
    pub async fn audit_head(&self) -> Result<Option<Head>, StoreError> {
        let row: Option<(i64, String)> =
            on_pool!(self, |pool, _begin| sqlx::query_as(HEAD).fetch_optional(pool).await?);
        Ok(row.map(|(seq, hash)| Head { seq, hash }))
    }

    /// Checks the whole chain, a page at a time, and, when given, that it still contains a head recorded
    /// earlier. The outer error is the database's; the inner one, the first entry at which the chain breaks.
    pub async fn verify_audit(&self, anchor: Option<Anchor>) -> Result<Result<Verified, Broken>, StoreError> {
        let mut verifier = Verifier::new(anchor);
        let mut after = 0;
        loop {
            let page = self.audit_entries(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                if let Err(broken) = verifier.check(record) {
                    return Ok(Err(broken));
                }
            }
        }
        Ok(verifier.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_chunks_hold_about_8_kib_of_parameters_each_in_order() {
        let entries: Vec<AuditEntry> = (0..500)
            .map(|n| {
                AuditEntry::service(AuditKind::Decided)
                    .source("jira")
                    .ticket(format!("ACC-{n}"))
                    .detail(serde_json::json!({ "n": n, "note": "x".repeat(n % 400) }))
            })
            .collect();
        let records = link(None, 1, &entries);
        let chunks = pg_chunks(&records);
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        let size = |chunk: &[&AuditRecord]| chunk.iter().map(|r| param_bytes(r)).sum::<usize>();
        for chunk in &chunks {
            assert!(size(chunk) <= PG_CHUNK_BYTES, "{} bytes", size(chunk));
        }
        for pair in chunks.windows(2) {
            // Full: the next entry would not have fitted.
            assert!(size(&pair[0]) + param_bytes(pair[1][0]) > PG_CHUNK_BYTES);
        }
        let seqs: Vec<i64> = chunks.iter().flatten().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<i64>>(), "every entry once, in order");

        // An entry larger than a chunk goes alone, not nowhere.
        let big = link(
            None,
            1,
            &[AuditEntry::service(AuditKind::Failed).detail(serde_json::json!({"x": "y".repeat(20_000)}))],
        );
        assert_eq!(pg_chunks(&big).len(), 1);
        assert!(pg_chunks(&[]).is_empty());
    }
}
