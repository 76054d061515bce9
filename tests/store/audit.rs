//! The audit trail: appended in the transactions of the steps it records, one unbroken chain under concurrent
//! writers, and every kind of tampering named at the entry where it happened.

use std::time::Duration;

use grantbridge::audit::{Anchor, AuditEntry, AuditKind, AuditRecord, Broken, GENESIS_HASH, Problem};
use grantbridge::domain::EventId;
use grantbridge::store::{
    CallbackResult, DecisionRecord, JobResult, NewGrant, ReplayBy, Replayed, Store, StoredDecision,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::callbacks::new_callback;
use super::{Maker, count, new_grant};
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

fn stored(outcome: &str, code: Option<&str>, ticket: Option<&str>, detail: &str, at: i64) -> StoredDecision {
    StoredDecision {
        outcome: outcome.into(),
        code: code.map(Into::into),
        ticket_key: ticket.map(Into::into),
        detail: detail.into(),
        decided_at_ms: at,
    }
}

fn record(event: EventId, state: &'static str, decision: StoredDecision, grants: Vec<NewGrant>) -> DecisionRecord {
    DecisionRecord { event, state, decision, grants, callbacks: Vec::new(), withdraw: None }
}

fn detail(r: &AuditRecord) -> Value {
    serde_json::from_str(&r.detail).unwrap()
}

/// The entries after the first `skip`, as (kind, event id, grant id).
async fn steps(store: &Store, skip: usize) -> Vec<AuditRecord> {
    store.audit_entries(0, 1_000).await.unwrap().into_iter().skip(skip).collect()
}

const LEASE: Duration = Duration::from_secs(30);

both_backends! {
    async fn decisions_grant_jobs_and_callbacks_are_audited_with_their_outcome(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let plan = maker.event(Some("p-1"), r#"{"n": 1}"#);
        let refused = maker.event(Some("r-1"), r#"{"n": 2}"#);
        let ignored = maker.event(Some("i-1"), r#"{"n": 3}"#);
        store.insert_events(&[&plan, &refused, &ignored]).await.unwrap();
        assert_eq!(store.claim_events("w", 1_000, LEASE, 10).await.unwrap().len(), 3);
        let records = [
            record(plan.id(), "decided", stored("plan", None, Some("ACC-1"), r#"{"decision":{"outcome":"plan","dry_run":false}}"#, 2_000),
                vec![new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-1")]),
            record(refused.id(), "refused",
                stored("refused", Some("not_approved"), Some("ACC-2"), r#"{"decision":{"message":"Avery declined it"}}"#, 2_000),
                Vec::new()),
            record(ignored.id(), "ignored", stored("ignored", None, None, "{}", 2_000), Vec::new()),
        ];
        assert_eq!(store.record_decisions(&records, "w").await.unwrap(), [true, true, true]);

        // g-1 is made; g-2 is retried (no entry) and then given up.
        let jobs = store.claim_jobs("x", 3_000, LEASE, 20).await.unwrap();
        assert_eq!(jobs.len(), 2);
        let (g1, g2) = if jobs[0].grant.id == "g-1" { (&jobs[0], &jobs[1]) } else { (&jobs[1], &jobs[0]) };
        let done = JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms: Some(9_999) };
        let retry = JobResult::Retry { at_ms: 3_500, error: "retryable: 503".into() };
        assert_eq!(store.finish_jobs(&[(g1, done), (g2, retry)], "x", 3_100).await.unwrap(), [true, true]);
        let again = store.claim_job("x", 3_500, LEASE).await.unwrap().unwrap();
        let dead = JobResult::Dead {
            error: "Authorization_RequestDenied: Insufficient privileges to complete the operation.".into(),
        };
        assert!(store.finish_job(&again, "x", &dead, 3_600).await.unwrap());

        // One callback posted, one retried (no entry) and then given up.
        store.enqueue_callbacks(&[new_callback("ACC-1", "granted"), new_callback("ACC-1", "failed")], 4_000).await.unwrap();
        let first = store.claim_callback("c", 4_000, LEASE).await.unwrap().unwrap();
        let delivered = CallbackResult::Delivered { remote_id: Some("10001".into()) };
        assert!(store.finish_callback(&first, "c", &delivered, 4_100).await.unwrap());
        let second = store.claim_callback("c", 4_000, LEASE).await.unwrap().unwrap();
        let retry = CallbackResult::Retry { at_ms: 4_500, error: "http_503: unavailable".into() };
        assert!(store.finish_callback(&second, "c", &retry, 4_200).await.unwrap());
        let second = store.claim_callback("c", 4_500, LEASE).await.unwrap().unwrap();
        let gave_up = CallbackResult::Dead { error: "http_403: You do not have permission, user token abc".into() };
        assert!(store.finish_callback(&second, "c", &gave_up, 4_600).await.unwrap());

        let entries = steps(&store, 3).await;
        let kinds: Vec<&str> = entries.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["decided", "refused", "decided", "granted", "failed", "callback_delivered", "callback_failed"]
        );
        assert!(entries.iter().all(|r| r.actor == "grantbridge"));

        let (plan_id, refused_id) = (plan.id().to_string(), refused.id().to_string());
        let decided = &entries[0];
        assert_eq!((decided.event_id.as_deref(), decided.ticket_key.as_deref()), (Some(plan_id.as_str()), Some("ACC-1")));
        assert_eq!((decided.source.as_deref(), decided.at_ms), (Some("src"), 2_000));
        let d = detail(decided);
        assert_eq!((d["outcome"].as_str(), d["dry_run"].as_bool()), (Some("plan"), Some(false)));
        let planned: Vec<&str> = d["grants"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
        assert_eq!(planned, ["g-1", "g-2"]);
        assert_eq!(d["grants"][0]["principal_id"], "aaaaaaaa-1111-4111-8111-111111111111");
        assert_eq!(d["grants"][0]["kind"], "group_member");
        assert_eq!(d["grants"][0]["target"]["group_id"], "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90");

        let refusal = &entries[1];
        assert_eq!((refusal.event_id.as_deref(), refusal.ticket_key.as_deref()), (Some(refused_id.as_str()), Some("ACC-2")));
        assert_eq!(detail(refusal)["code"], "not_approved");
        assert!(!refusal.detail.contains("Avery declined"), "the refusal's sentence stays in the decision");
        assert_eq!((detail(&entries[2])["outcome"].as_str(), entries[2].ticket_key.as_deref()), (Some("ignored"), None));

        let granted = &entries[3];
        assert_eq!((granted.grant_id.as_deref(), granted.event_id.as_deref()), (Some("g-1"), Some(plan_id.as_str())));
        assert_eq!((granted.ticket_key.as_deref(), granted.at_ms), (Some("ACC-1"), 3_100));
        assert_eq!(detail(granted)["expires_at_ms"], 9_999);
        let failed = &entries[4];
        assert_eq!(failed.grant_id.as_deref(), Some("g-2"));
        assert_eq!((detail(failed)["code"].as_str(), detail(failed)["attempts"].as_i64()), (Some("Authorization_RequestDenied"), Some(2)));
        assert!(!failed.detail.contains("Insufficient privileges"), "only the stable code: {}", failed.detail);

        let posted = &entries[5];
        assert_eq!(detail(posted)["callback_id"], first.id());
        assert_eq!(detail(posted)["remote_id"], "10001");
        assert_eq!(posted.ticket_key.as_deref(), Some("ACC-1"));
        let lost = &entries[6];
        assert_eq!(detail(lost)["callback_id"], second.id());
        assert_eq!(detail(lost)["code"], "http_403");
        assert!(!lost.detail.contains("token abc"));
        for r in &entries {
            assert!(!r.detail.contains("for ACC-1"), "a callback's message is not recorded: {}", r.detail);
        }

        // A stale lease finishing records nothing.
        assert!(!store.finish_job(&again, "x", &JobResult::Dead { error: "late".into() }, 5_000).await.unwrap());
        assert_eq!(steps(&store, 3).await.len(), 7);
        assert_eq!(store.verify_audit(None).await.unwrap().unwrap().checked, 10);
    }
}

both_backends! {
    async fn a_replay_decides_again_and_rearms_only_failed_grants(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let event = maker.event(Some("p-1"), r#"{"n": 1}"#);
        let busy = maker.event(Some("b-1"), r#"{"n": 2}"#);
        store.insert_events(&[&event]).await.unwrap();
        store.claim_event("w", 1_000, LEASE).await.unwrap().unwrap();
        let grants = vec![new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-1")];
        let first = stored("plan", None, Some("ACC-1"), r#"{"n":"first"}"#, 2_000);
        assert!(store.record_decisions(&[record(event.id(), "decided", first, grants.clone())], "w").await.unwrap()[0]);
        let jobs = store.claim_jobs("x", 3_000, LEASE, 20).await.unwrap();
        let (g1, g2) = if jobs[0].grant.id == "g-1" { (&jobs[0], &jobs[1]) } else { (&jobs[1], &jobs[0]) };
        let done = JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms: None };
        let dead = JobResult::Dead { error: "Authorization_RequestDenied: denied".into() };
        store.finish_jobs(&[(g1, done), (g2, dead)], "x", 3_100).await.unwrap();
        // g-1 has been revoked since (by an operator, or because it expired): a replay must not grant it again.
        sql(&store, "UPDATE grants SET state = 'revoked' WHERE id = 'g-1'").await.unwrap();

        let by = ReplayBy { actor: "on-call", via: "static_token" };
        let unknown = EventId::parse("0190a5b2-0000-7000-8000-0000000000ff").unwrap();
        assert_eq!(store.replay_event(unknown, by, 5_000).await.unwrap(), Replayed::UnknownEvent);
        store.insert_events(&[&busy]).await.unwrap();
        store.claim_event("w2", 5_000, LEASE).await.unwrap().unwrap();
        assert_eq!(store.replay_event(busy.id(), by, 6_000).await.unwrap(), Replayed::BeingDecided);
        let head = store.audit_head().await.unwrap();

        assert_eq!(
            store.replay_event(event.id(), by, 10_000).await.unwrap(),
            Replayed::Queued { rearmed: vec!["g-2".to_string()] }
        );
        let replayed = store.event(event.id()).await.unwrap().unwrap();
        assert_eq!(replayed.state, "received");
        let ledger = store.grants_for_ticket("src", "ACC-1").await.unwrap();
        let states: Vec<(&str, &str)> = ledger.iter().map(|g| (g.id.as_str(), g.state.as_str())).collect();
        assert!(states.contains(&("g-1", "revoked")) && states.contains(&("g-2", "pending")), "{states:?}");

        let entries = store.audit_entries(head.map_or(0, |h| h.seq), 10).await.unwrap();
        assert_eq!(entries.len(), 1, "one entry for the replay");
        let op = &entries[0];
        assert_eq!((op.kind.as_str(), op.actor.as_str()), ("operator_action", "on-call"));
        assert_eq!((op.event_id.as_deref(), op.ticket_key.as_deref()), (Some(event.id().to_string().as_str()), Some("ACC-1")));
        let d = detail(op);
        assert_eq!((d["action"].as_str(), d["via"].as_str(), d["previous_state"].as_str()), (Some("replay"), Some("static_token"), Some("decided")));
        assert_eq!(d["rearmed_grants"], serde_json::json!(["g-2"]));

        // Decided again: the decision is replaced, nothing new is asked for.
        let claimed = store.claim_event("w3", 10_000, LEASE).await.unwrap().unwrap();
        assert_eq!((claimed.id, claimed.attempts), (event.id(), 1), "attempts counted from zero again");
        let second = stored("plan", None, Some("ACC-1"), r#"{"n":"second"}"#, 11_000);
        assert!(store.record_decisions(&[record(event.id(), "decided", second, grants)], "w3").await.unwrap()[0]);
        let decision = store.decision(event.id()).await.unwrap().unwrap();
        assert_eq!((decision.detail.as_str(), decision.decided_at_ms), (r#"{"n":"second"}"#, 11_000));
        assert_eq!((count(&store, "grants").await, count(&store, "jobs").await, count(&store, "decisions").await), (2, 2, 1));

        // Only the re-armed job is due, with its attempts reset; the revoked grant's job stays done.
        let job = store.claim_job("x", 11_000, LEASE).await.unwrap().unwrap();
        assert_eq!((job.grant.id.as_str(), job.attempts), ("g-2", 1));
        assert!(store.claim_job("x2", 11_000, LEASE).await.unwrap().is_none());
        assert_eq!(store.grant("g-1").await.unwrap().unwrap().state, "revoked");
        assert!(store.verify_audit(None).await.unwrap().is_ok());
    }
}

both_backends! {
    async fn a_large_batch_is_appended_in_chunks_as_one_chain(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let filler = "x".repeat(300);
        let entries: Vec<AuditEntry> = (0..500)
            .map(|n| operator(n).detail(serde_json::json!({ "action": "revoke", "n": n, "note": filler })))
            .collect();
        let head = store.append_audit(&entries).await.unwrap().unwrap();
        assert_eq!(head.seq, 500);
        store.append_audit(&[operator(900)]).await.unwrap();
        let stored = store.audit_entries(0, 1_000).await.unwrap();
        assert_eq!(stored.len(), 501);
        assert_eq!(stored.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..=501).collect::<Vec<i64>>());
        assert_eq!(stored[499].detail, entries[499].detail_text(), "entries stored in their order");
        assert_eq!(store.verify_audit(None).await.unwrap().unwrap().checked, 501);
    }
}

both_backends! {
    async fn the_admin_lists_have_their_indexes(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let sql = match store {
            Store::Sqlite(_) => "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'admin_%'",
            Store::Postgres(_) => "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'admin_%'",
        };
        let mut names: Vec<String> = match &store {
            Store::Sqlite(sqlite) => sqlx::query_scalar(sql).fetch_all(&sqlite.pool).await.unwrap(),
            Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await.unwrap(),
        };
        names.sort();
        assert_eq!(
            names,
            [
                "admin_audit_by_event",
                "admin_audit_by_kind",
                "admin_events_by_received",
                "admin_events_by_source",
                "admin_grants_by_created",
                "admin_grants_by_event",
                "admin_grants_by_expiry",
                "admin_jobs_by_state_updated",
            ]
        );
    }
}
