//! The audit trail: appended in the transactions of the steps it records, one unbroken chain under concurrent
//! writers, and every kind of tampering named at the entry where it happened.

use grantbridge::audit::{Anchor, AuditEntry, AuditKind, AuditRecord, Broken, GENESIS_HASH, Problem};
use grantbridge::store::Store;
use sha2::{Digest, Sha256};

use super::{Maker, count};
use crate::both_backends;
use crate::common::{Backend, TestDb};

/// The hash as the module documentation of `grantbridge::audit` describes it, written from that text alone.
fn documented_hash(r: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(b"grantbridge-audit-v1\n");
    let (seq, at) = (r.seq.to_string(), r.at_ms.to_string());
    for field in [
        Some(seq.as_str()),
        Some(at.as_str()),
        Some(r.kind.as_str()),
        Some(r.actor.as_str()),
        r.source.as_deref(),
        r.ticket_key.as_deref(),
        r.event_id.as_deref(),
        r.grant_id.as_deref(),
        Some(r.detail.as_str()),
        Some(r.prev_hash.as_str()),
    ] {
        match field {
            None => h.update([0u8]),
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v.as_bytes());
            }
        }
    }
    hex::encode(h.finalize())
}

/// Runs one statement as someone with direct database access would.
async fn sql(store: &Store, statement: &str) -> Result<u64, sqlx::Error> {
    let statement = sqlx::AssertSqlSafe(statement.to_string());
    match store {
        Store::Sqlite(sqlite) => sqlx::raw_sql(statement).execute(&sqlite.pool).await.map(|r| r.rows_affected()),
        Store::Postgres(pool) => sqlx::raw_sql(statement).execute(pool).await.map(|r| r.rows_affected()),
    }
}

/// What a tamperer does first: the table refuses changes until its triggers are gone.
async fn drop_protection(store: &Store) {
    let statement = match store {
        Store::Sqlite(_) => "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;",
        Store::Postgres(_) => {
            "DROP TRIGGER audit_log_no_change ON audit_log; DROP TRIGGER audit_log_no_truncate ON audit_log;"
        }
    };
    sql(store, statement).await.unwrap();
}

/// Writes `from`'s fields (all but seq) into the entry at `seq`.
async fn overwrite(store: &Store, seq: i64, from: &AuditRecord) {
    let statement = "UPDATE audit_log SET at_ms = $1, kind = $2, actor = $3, source = $4, ticket_key = $5,
        event_id = $6, grant_id = $7, detail = $8, prev_hash = $9, hash = $10 WHERE seq = $11";
    macro_rules! run {
        ($pool:expr) => {
            sqlx::query(statement)
                .bind(from.at_ms)
                .bind(&from.kind)
                .bind(&from.actor)
                .bind(&from.source)
                .bind(&from.ticket_key)
                .bind(&from.event_id)
                .bind(&from.grant_id)
                .bind(&from.detail)
                .bind(&from.prev_hash)
                .bind(&from.hash)
                .bind(seq)
                .execute($pool)
                .await
                .unwrap()
        };
    }
    let done = match store {
        Store::Sqlite(sqlite) => run!(&sqlite.pool).rows_affected(),
        Store::Postgres(pool) => run!(pool).rows_affected(),
    };
    assert_eq!(done, 1);
}

fn operator(n: usize) -> AuditEntry {
    AuditEntry::operator(AuditKind::OperatorAction, "alice@example.com")
        .source("src")
        .ticket(format!("ACC-{n}"))
        .grant(format!("g-{n}"))
        .detail(serde_json::json!({ "action": "revoke", "n": n }))
}

/// Five entries: received, duplicate, received (from one intake batch), then two operator actions.
async fn five_entries(store: &Store) -> Vec<AuditRecord> {
    let maker = Maker::new();
    let first = maker.event(Some("d-1"), r#"{"secret_looking_body": "body-text-never-audited"}"#);
    let again = maker.event(Some("d-1"), r#"{"secret_looking_body": "body-text-never-audited"}"#);
    let other = maker.event(Some("d-2"), r#"{"n": 2}"#);
    store.insert_events(&[&first, &again, &other]).await.unwrap();
    store.append_audit(&[operator(1), operator(2)]).await.unwrap();
    store.audit_entries(0, 100).await.unwrap()
}

async fn broken(store: &Store, anchor: Option<Anchor>) -> Broken {
    match store.verify_audit(anchor).await.unwrap() {
        Err(broken) => broken,
        Ok(verified) => panic!("expected a broken chain, got {verified:?}"),
    }
}

both_backends! {
    async fn steps_are_chained_and_the_chain_verifies(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let first = maker.event(Some("d-1"), r#"{"secret_looking_body": "body-text-never-audited"}"#);
        let again = maker.event(Some("d-1"), r#"{"secret_looking_body": "body-text-never-audited"}"#);
        let other = maker.event(Some("d-2"), r#"{"n": 2}"#);
        store.insert_events(&[&first, &again, &other]).await.unwrap();
        let head = store.append_audit(&[operator(1), AuditEntry::service(AuditKind::Expired).at(42)]).await.unwrap();

        let records = store.audit_entries(0, 100).await.unwrap();
        let kinds: Vec<&str> = records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "duplicate", "received", "operator_action", "expired"]);
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5], "numbered without gaps");
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
        for pair in records.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "entry {} links to the one before", pair[1].seq);
        }
        for r in &records {
            assert_eq!(documented_hash(r), r.hash, "entry {}: the documented encoding gives the stored hash", r.seq);
            assert!(!r.detail.contains("body-text-never-audited"), "a webhook body never reaches the trail");
        }

        // The intake entries: the event, the repeat naming the stored event, the delivery and the body's hash.
        let id = first.id().to_string();
        assert_eq!((records[0].event_id.as_deref(), records[0].source.as_deref()), (Some(id.as_str()), Some("src")));
        assert_eq!(records[1].event_id.as_deref(), Some(id.as_str()), "a duplicate names the stored event");
        assert_eq!(records[0].at_ms, first.received_at_ms());
        let detail: serde_json::Value = serde_json::from_str(&records[1].detail).unwrap();
        assert_eq!(detail["delivery_id"], "d-1");
        assert_eq!(detail["body_sha256"], again.body_sha256());
        assert_eq!(records[0].actor, "grantbridge");
        assert_eq!((records[3].actor.as_str(), records[3].ticket_key.as_deref()), ("alice@example.com", Some("ACC-1")));
        assert_eq!((records[3].grant_id.as_deref(), records[4].grant_id.as_deref()), (Some("g-1"), None));
        assert_eq!(records[4].at_ms, 42);

        let verified = store.verify_audit(None).await.unwrap().unwrap();
        assert_eq!(verified.checked, 5);
        assert_eq!(verified.head, head);
        assert_eq!(store.audit_head().await.unwrap(), head);
        assert_eq!(store.audit_entries(3, 1).await.unwrap(), records[3..4].to_vec(), "pages start after a seq");
    }
}

both_backends! {
    async fn the_table_refuses_changes_and_deletions(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        five_entries(&store).await;
        assert!(sql(&store, "UPDATE audit_log SET detail = '{}' WHERE seq = 2").await.is_err());
        assert!(sql(&store, "DELETE FROM audit_log WHERE seq = 5").await.is_err());
        if backend == Backend::Postgres {
            assert!(sql(&store, "TRUNCATE audit_log").await.is_err());
        }
        assert_eq!(count(&store, "audit_log").await, 5);
        assert!(store.verify_audit(None).await.unwrap().is_ok());
    }
}

both_backends! {
    async fn a_modified_entry_is_named(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        five_entries(&store).await;
        drop_protection(&store).await;
        sql(&store, r#"UPDATE audit_log SET detail = '{"action":"nothing to see"}' WHERE seq = 4"#).await.unwrap();
        let b = broken(&store, None).await;
        assert_eq!((b.seq, b.kind.as_deref()), (4, Some("operator_action")));
        assert!(matches!(b.problem, Problem::Modified { .. }), "{b}");
        assert!(b.to_string().contains("modified"), "{b}");
    }
}

both_backends! {
    async fn a_deleted_entry_is_named(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        five_entries(&store).await;
        drop_protection(&store).await;
        assert_eq!(sql(&store, "DELETE FROM audit_log WHERE seq = 3").await.unwrap(), 1);
        let b = broken(&store, None).await;
        assert_eq!(b.seq, 4, "the entry after the gap");
        assert_eq!(b.problem, Problem::Gap { expected: 3 });
        assert!(b.to_string().contains("entries 3 to 3 are missing"), "{b}");

        // Renumbering to close the gap does not help: the link to the entry before is gone.
        sql(&store, "UPDATE audit_log SET seq = seq - 1 WHERE seq = 4").await.unwrap();
        let b = broken(&store, None).await;
        assert_eq!(b.seq, 3);
        assert!(matches!(b.problem, Problem::Unlinked { .. }), "{b}");
    }
}

both_backends! {
    async fn reordered_entries_are_named(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let records = five_entries(&store).await;
        drop_protection(&store).await;
        overwrite(&store, 2, &records[2]).await;
        overwrite(&store, 3, &records[1]).await;
        let b = broken(&store, None).await;
        assert_eq!(b.seq, 2, "the first entry out of place");
        assert!(matches!(b.problem, Problem::Unlinked { .. }), "{b}");
    }
}

both_backends! {
    async fn a_shortened_chain_is_caught_against_a_recorded_head(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        five_entries(&store).await;
        let recorded = store.audit_head().await.unwrap().unwrap();
        let anchor: Anchor = recorded.to_string().parse().unwrap();
        // The chain grows after the head was recorded: still fine.
        store.append_audit(&[operator(3)]).await.unwrap();
        assert_eq!(store.verify_audit(Some(anchor.clone())).await.unwrap().unwrap().checked, 6);

        drop_protection(&store).await;
        sql(&store, "DELETE FROM audit_log WHERE seq >= 5").await.unwrap();
        // What is left is a whole chain: without the recorded head, nothing shows.
        assert_eq!(store.verify_audit(None).await.unwrap().unwrap().checked, 4);
        let b = broken(&store, Some(anchor.clone())).await;
        assert_eq!((b.seq, b.kind.as_deref()), (5, None));
        assert!(matches!(b.problem, Problem::AnchorMissing { last: Some(4), .. }), "{b}");
        let by_hash = Anchor { seq: None, hash: anchor.hash.clone() };
        assert!(matches!(broken(&store, Some(by_hash)).await.problem, Problem::AnchorMissing { .. }));

        // Re-appending entries with recomputed hashes gives a whole chain again, but not the recorded head.
        store.append_audit(&[operator(7)]).await.unwrap();
        let b = broken(&store, Some(anchor)).await;
        assert_eq!(b.seq, 5);
        assert!(matches!(b.problem, Problem::AnchorMismatch { .. }), "{b}");
    }
}

both_backends! {
    async fn long_chains_are_verified_page_by_page(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let entries: Vec<AuditEntry> = (0..2_500).map(operator).collect();
        let head = store.append_audit(&entries).await.unwrap().unwrap();
        assert_eq!(head.seq, 2_500);
        let verified = store.verify_audit(None).await.unwrap().unwrap();
        assert_eq!((verified.checked, verified.head), (2_500, Some(head)));
        drop_protection(&store).await;
        sql(&store, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 1700").await.unwrap();
        assert_eq!(broken(&store, None).await.seq, 1_700);
    }
}

both_backends! {
    async fn concurrent_writers_make_one_unbroken_chain(backend: Backend) {
        let db = TestDb::new(backend).await;
        // Two stores: two pools, as two replicas (PostgreSQL) or two processes (SQLite) would have.
        let stores = [db.store().await, db.store().await];
        let maker = std::sync::Arc::new(Maker::new());
        let mut tasks = Vec::new();
        for task in 0..16usize {
            let store = stores[task % 2].clone();
            let maker = maker.clone();
            tasks.push(tokio::spawn(async move {
                let mut appended = 0;
                for round in 0..8usize {
                    if round % 4 == 0 {
                        let e = maker.event(Some(&format!("t{task}-r{round}")), &format!(r#"{{"t": {task}, "r": {round}}}"#));
                        store.insert_events(&[&e]).await.unwrap();
                        appended += 1;
                    } else {
                        let entries: Vec<AuditEntry> = (0..1 + round % 3).map(|i| operator(task * 100 + i)).collect();
                        store.append_audit(&entries).await.unwrap();
                        appended += entries.len();
                    }
                }
                appended
            }));
        }
        let mut expected = 0;
        for t in tasks {
            expected += t.await.unwrap();
        }
        let verified = stores[1].verify_audit(None).await.unwrap().unwrap();
        assert_eq!(verified.checked as usize, expected);
        assert_eq!(verified.head.map(|h| h.seq), Some(expected as i64));
        assert_eq!(count(&stores[0], "audit_log").await as usize, expected);
    }
}
