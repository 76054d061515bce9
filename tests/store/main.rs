//! The storage contract, run unchanged against SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/mod.rs"]
mod common;
mod reconcile;

mod callbacker;
mod callbacks;
mod lifecycle;

mod audit;

use std::time::SystemTime;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use common::{Backend, TempDir, TestDb};
use grantbridge::config::{EnvOverrides, Settings};
use grantbridge::domain::IncomingEvent;
use grantbridge::inbound::schemes::RawRequest;
use grantbridge::store::{Inserted, Store, StoreError, StoredDecision};

/// Events can only be made by verifying a request, so the tests do exactly that, with a static-secret source.
struct Maker {
    settings: Settings,
    _dir: TempDir,
}

impl Maker {
    fn new() -> Maker {
        let dir = TempDir::new();
        let secret = dir.write("token", "store-test-token");
        let text = format!(
            "[sources.src]\nkind = \"jira\"\n[[sources.src.verify]]\nscheme = \"shared_secret_header\"\nheader = \"X-Token\"\nsecrets = [{{ file = \"{}\" }}]\n",
            secret.display()
        );
        Maker { settings: Settings::parse(&text, "store.toml", &EnvOverrides::none()).unwrap(), _dir: dir }
    }

    fn event(&self, delivery: Option<&str>, body: &str) -> IncomingEvent {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-token"), HeaderValue::from_static("store-test-token"));
        if let Some(id) = delivery {
            headers
                .insert(HeaderName::from_static("x-atlassian-webhook-identifier"), HeaderValue::from_str(id).unwrap());
        }
        let request =
            RawRequest { method: "POST", path: "/webhooks/src", query: "", headers: &headers, body: body.as_bytes() };
        let source = self.settings.source("src").unwrap();
        source.verify(request, SystemTime::now()).unwrap().parse(SystemTime::now()).unwrap()
    }
}

both_backends! {
    async fn migrations_are_idempotent(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new(), "a second run applies nothing");
        assert_eq!(store.count_events().await.unwrap(), 0);
    }
}

both_backends! {
    async fn a_migration_numbered_below_the_newest_applied_is_still_applied(backend: Backend) {
        // A database that has the newest migration but not an older one (merged after it was released).
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        for sql in ["DROP TABLE reconcile_runs", "DELETE FROM schema_migrations WHERE version = 8"] {
            match &store {
                Store::Sqlite(sqlite) => sqlx::query(sql).execute(&sqlite.pool).await.map(|_| ()).unwrap(),
                Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()).unwrap(),
            }
        }
        assert_eq!(store.migrate().await.unwrap(), vec![8]);
        assert!(store.latest_reconcile_run().await.unwrap().is_none(), "the table is back");
        assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new());
    }
}

both_backends! {
    async fn a_batch_is_stored_and_read_back_exactly(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let a = maker.event(Some("d-1"), r#"{"n": 1, "text": "caf\u00e9 \u2603"}"#);
        let b = maker.event(None, r#"{"n": 2}"#);
        let outcomes = store.insert_events(&[&a, &b]).await.unwrap();
        assert_eq!(outcomes, vec![Inserted::Accepted(a.id()), Inserted::Accepted(b.id())]);
        let stored = store.event(a.id()).await.unwrap().unwrap();
        assert_eq!(stored.body, a.body());
        assert_eq!(stored.delivery_id.as_deref(), Some("d-1"));
        assert_eq!(stored.dedup_key, "id:d-1");
        assert_eq!(stored.received_at_ms, a.received_at_ms());
        assert_eq!(stored.state, "received");
        let stored_b = store.event(b.id()).await.unwrap().unwrap();
        assert!(stored_b.dedup_key.starts_with("sha256:"), "no delivery id: keyed by the body hash");
        assert_eq!(store.count_events().await.unwrap(), 2);
    }
}

both_backends! {
    async fn duplicates_inside_and_across_batches_name_the_first_event(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let first = maker.event(Some("same"), r#"{"n": 1}"#);
        let again = maker.event(Some("same"), r#"{"n": 1, "retry": true}"#);
        let other = maker.event(Some("other"), r#"{"n": 3}"#);
        let outcomes = store.insert_events(&[&first, &again, &other]).await.unwrap();
        assert_eq!(
            outcomes,
            vec![Inserted::Accepted(first.id()), Inserted::Duplicate(first.id()), Inserted::Accepted(other.id())]
        );
        let later = maker.event(Some("same"), r#"{"n": 9}"#);
        assert_eq!(store.insert_events(&[&later]).await.unwrap(), vec![Inserted::Duplicate(first.id())]);
        assert!(store.event(later.id()).await.unwrap().is_none());
        assert_eq!(store.count_events().await.unwrap(), 2);
    }
}

both_backends! {
    async fn concurrent_writers_never_store_a_duplicate(backend: Backend) {
        let db = TestDb::new(backend).await;
        let stores = [db.store().await, db.store().await, db.store().await];
        let maker = Maker::new();
        let events: Vec<IncomingEvent> = (0..3).map(|_| maker.event(Some("contended"), r#"{"x": 1}"#)).collect();
        let batches: Vec<[&IncomingEvent; 1]> = events.iter().map(|e| [e]).collect();
        let (a, b, c) = tokio::join!(
            stores[0].insert_events(&batches[0]),
            stores[1].insert_events(&batches[1]),
            stores[2].insert_events(&batches[2]),
        );
        let outcomes: Vec<Inserted> = [a, b, c].into_iter().flat_map(|r| r.unwrap()).collect();
        let accepted = outcomes.iter().filter(|o| matches!(o, Inserted::Accepted(_))).count();
        assert_eq!(accepted, 1, "{outcomes:?}");
        assert_eq!(stores[0].count_events().await.unwrap(), 1);
    }
}

both_backends! {
    async fn a_newer_schema_is_refused(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        match &store {
            Store::Sqlite(sqlite) => {
                let pool = &sqlite.pool;
                sqlx::query("INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (999, 'future', 0)")
                    .execute(pool)
                    .await
                    .unwrap();
            }
            Store::Postgres(pool) => {
                sqlx::query("INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (999, 'future', 0)")
                    .execute(pool)
                    .await
                    .unwrap();
            }
        }
        match store.migrate().await {
            Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn sqlite_is_in_wal_mode_with_full_sync() {
    let db = TestDb::new(Backend::Sqlite).await;
    let Store::Sqlite(sqlite) = db.store().await else { unreachable!() };
    let pool = sqlite.pool;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(&pool).await.unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(sync, 2, "synchronous=FULL: acknowledged events survive power loss");
}

both_backends! {
    async fn one_refused_event_does_not_fail_the_rest_of_its_batch(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        common::refuse_inserts(&store, "events", "NEW.body LIKE '%poison%'").await;
        let settings = grantbridge::config::IntakeSettings {
            max_batch: 64,
            queue_capacity: 64,
            store_timeout: std::time::Duration::from_secs(10),
        };
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let (intake, writer) = grantbridge::intake::Intake::start(store.clone(), &settings, wake);
        let maker = Maker::new();
        let good: Vec<IncomingEvent> =
            (0..5).map(|i| maker.event(Some(&format!("good-{i}")), &format!(r#"{{"ok": {i}}}"#))).collect();
        let poison = maker.event(Some("bad"), r#"{"poison": true}"#);
        // Queued together before the writer runs, so they share one batch.
        let (g0, g1, p, g2, g3, g4) = tokio::join!(
            intake.submit(good[0].clone()),
            intake.submit(good[1].clone()),
            intake.submit(poison),
            intake.submit(good[2].clone()),
            intake.submit(good[3].clone()),
            intake.submit(good[4].clone()),
        );
        assert!(p.is_err(), "the refused event is not acknowledged");
        for (i, r) in [g0, g1, g2, g3, g4].into_iter().enumerate() {
            assert_eq!(r.unwrap(), Inserted::Accepted(good[i].id()));
        }
        assert_eq!(store.count_events().await.unwrap(), 5);
        drop(intake);
        writer.await.unwrap();
    }
}

fn decision(outcome: &str) -> StoredDecision {
    StoredDecision {
        outcome: outcome.to_string(),
        code: None,
        ticket_key: Some("ACC-1".into()),
        detail: "{}".into(),
        decided_at_ms: 1,
    }
}

both_backends! {
    async fn events_are_leased_to_one_worker_and_decided_once(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let first = maker.event(Some("q-1"), r#"{"n": 1}"#);
        let second = maker.event(Some("q-2"), r#"{"n": 2}"#);
        store.insert_events(&[&first, &second]).await.unwrap();
        let lease = std::time::Duration::from_secs(30);

        let a = store.claim_event("worker-a", 1_000, lease).await.unwrap().unwrap();
        assert_eq!(a.id, first.id(), "oldest first");
        assert_eq!((a.attempts, a.body.as_str()), (1, first.body()));
        let b = store.claim_event("worker-b", 1_000, lease).await.unwrap().unwrap();
        assert_eq!(b.id, second.id(), "a leased event is not handed out twice");
        assert!(store.claim_event("worker-c", 1_000, lease).await.unwrap().is_none());

        // worker-a stalls; after its lease expires worker-c takes the event over.
        let c = store.claim_event("worker-c", 1_000 + 30_001, lease).await.unwrap().unwrap();
        assert_eq!((c.id, c.attempts), (first.id(), 2));
        assert!(!store.record_decision(first.id(), "worker-a", "decided", &decision("plan"), &[]).await.unwrap(),
            "the stale worker's decision is discarded");
        assert!(store.record_decision(first.id(), "worker-c", "decided", &decision("plan"), &[]).await.unwrap());
        assert!(!store.record_decision(first.id(), "worker-c", "decided", &decision("plan"), &[]).await.unwrap(),
            "decided once");
        assert_eq!(store.decision(first.id()).await.unwrap().unwrap().outcome, "plan");
        assert_eq!(store.event(first.id()).await.unwrap().unwrap().state, "decided");

        // worker-b cannot decide now: it gives the event back, to be retried later.
        store.release_event(second.id(), "worker-b", 5_000).await.unwrap();
        assert!(store.claim_event("worker-b", 4_999, lease).await.unwrap().is_none(), "not before its retry time");
        let again = store.claim_event("worker-b", 5_000, lease).await.unwrap().unwrap();
        assert_eq!((again.id, again.attempts), (second.id(), 2));
    }
}

both_backends! {
    async fn concurrent_claims_never_share_an_event(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let events: Vec<IncomingEvent> = (0..20).map(|i| maker.event(Some(&format!("c-{i}")), &format!(r#"{{"n": {i}}}"#))).collect();
        let refs: Vec<&IncomingEvent> = events.iter().collect();
        store.insert_events(&refs).await.unwrap();
        let lease = std::time::Duration::from_secs(30);
        let claim_all = |owner: &'static str| {
            let store = store.clone();
            async move {
                let mut got = Vec::new();
                while let Some(e) = store.claim_event(owner, 1_000, lease).await.unwrap() {
                    got.push(e.id);
                }
                got
            }
        };
        let (a, b, c) = tokio::join!(claim_all("a"), claim_all("b"), claim_all("c"));
        let mut all: Vec<_> = a.into_iter().chain(b).chain(c).collect();
        assert_eq!(all.len(), 20);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "no event was claimed twice");
    }
}

fn new_grant(id: &str, ticket: &str) -> grantbridge::store::NewGrant {
    grantbridge::store::NewGrant {
        id: id.to_string(),
        source: "src".into(),
        ticket_key: ticket.into(),
        rule: "portal-access".into(),
        kind: "group_member".into(),
        target: r#"{"kind":"group_member","group_id":"6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"}"#.into(),
        label: "EPM - User Portal Access".into(),
        principal_id: "aaaaaaaa-1111-4111-8111-111111111111".into(),
        requested_duration_secs: Some(8 * 3600),
        notify_before_secs: None,
        batch_key: Some("group_member:6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90".into()),
    }
}

async fn count(store: &Store, table: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}"));
    match store {
        Store::Sqlite(sqlite) => sqlx::query_scalar(sql).fetch_one(&sqlite.pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Stores an event, claims it and records a plan asking for `grants`.
async fn planned(store: &Store, maker: &Maker, delivery: &str, grants: &[grantbridge::store::NewGrant]) -> bool {
    let e = maker.event(Some(delivery), &format!(r#"{{"delivery": "{delivery}"}}"#));
    store.insert_events(&[&e]).await.unwrap();
    let lease = std::time::Duration::from_secs(30);
    let claimed = store.claim_event("w", 1_000, lease).await.unwrap().unwrap();
    store.record_decision(claimed.id, "w", "decided", &decision("plan"), grants).await.unwrap()
}

both_backends! {
    async fn a_plan_queues_each_grant_once_however_often_it_is_decided(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let grants = [new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-1")];
        assert!(planned(&store, &maker, "first", &grants).await);
        assert_eq!((count(&store, "grants").await, count(&store, "jobs").await), (2, 2));
        // The same ticket decided again (a replayed or re-sent event) asks for the same grants: nothing new.
        assert!(planned(&store, &maker, "again", &grants).await);
        assert_eq!((count(&store, "grants").await, count(&store, "jobs").await), (2, 2));
        let ledger = store.grants_for_ticket("src", "ACC-1").await.unwrap();
        assert_eq!(ledger.iter().map(|g| g.state.as_str()).collect::<Vec<_>>(), ["pending", "pending"]);
        assert_eq!(ledger[0].requested_duration_secs, Some(8 * 3600));
    }
}

both_backends! {
    async fn jobs_are_leased_retried_and_finished_once(backend: Backend) {
        use grantbridge::store::JobResult;
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        planned(&store, &maker, "p", &[new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-2")]).await;
        let lease = std::time::Duration::from_secs(30);

        let a = store.claim_job("a", 2_000, lease).await.unwrap().unwrap();
        let b = store.claim_job("b", 2_000, lease).await.unwrap().unwrap();
        assert_ne!(a.id, b.id, "a leased job is not handed out twice");
        assert!(store.claim_job("c", 2_000, lease).await.unwrap().is_none());
        assert_eq!((a.kind.as_str(), a.attempts), ("grant", 1));

        let done = JobResult::Done { grant_state: "active", upstream_id: Some("req-1".into()), expires_at_ms: Some(900_000) };
        assert!(!store.finish_job(&a, "b", &done, 2_500).await.unwrap(), "only the lease holder finishes a job");
        assert!(store.finish_job(&a, "a", &done, 2_500).await.unwrap());
        assert!(!store.finish_job(&a, "a", &done, 2_600).await.unwrap(), "finished once");
        let granted = store.grant(&a.grant.id).await.unwrap().unwrap();
        assert_eq!((granted.state.as_str(), granted.upstream_id.as_deref(), granted.expires_at_ms), ("active", Some("req-1"), Some(900_000)));

        let retry = JobResult::Retry { at_ms: 5_000, error: "429 TooManyRequests".into() };
        assert!(store.finish_job(&b, "b", &retry, 2_500).await.unwrap());
        assert!(store.claim_job("b", 4_999, lease).await.unwrap().is_none(), "not before its retry time");
        let again = store.claim_job("b", 5_000, lease).await.unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempts), (b.id.as_str(), 2));
        assert_eq!(again.grant.last_error.as_deref(), Some("429 TooManyRequests"));

        // A worker that dies holding a job loses it when the lease runs out.
        let taken = store.claim_job("c", 5_000 + 30_001, lease).await.unwrap().unwrap();
        assert_eq!((taken.id.as_str(), taken.attempts), (b.id.as_str(), 3));
        let dead = JobResult::Dead { error: "403 Authorization_RequestDenied".into() };
        assert!(store.finish_job(&taken, "c", &dead, 40_000).await.unwrap());
        assert_eq!(store.grant(&b.grant.id).await.unwrap().unwrap().state, "failed");
        let letters = store.dead_jobs(10).await.unwrap();
        assert_eq!(letters, vec![(b.id.clone(), b.grant.id.clone(), Some("403 Authorization_RequestDenied".into()))]);
        assert!(store.claim_job("d", 100_000, lease).await.unwrap().is_none(), "done and dead jobs are never claimed");
        // The grant's end was queued with it: a revoke job due at its expiry.
        let end = store.claim_job("d", 900_000, lease).await.unwrap().expect("the revoke job, due at the expiry");
        assert_eq!((end.kind.as_str(), end.grant.id.as_str(), end.reason.as_deref()), ("revoke", a.grant.id.as_str(), Some("expired")));
    }
}

both_backends! {
    async fn events_are_claimed_and_recorded_in_batches(backend: Backend) {
        use grantbridge::store::DecisionRecord;
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let events: Vec<_> = (0..5).map(|n| maker.event(Some(&format!("b-{n}")), &format!(r#"{{"n": {n}}}"#))).collect();
        store.insert_events(&events.iter().collect::<Vec<_>>()).await.unwrap();
        let lease = std::time::Duration::from_secs(30);

        let a = store.claim_events("worker-a", 1_000, lease, 3).await.unwrap();
        assert_eq!(a.iter().map(|e| e.id).collect::<Vec<_>>(), events[..3].iter().map(|e| e.id()).collect::<Vec<_>>(), "the three oldest, in order");
        let b = store.claim_events("worker-b", 20_000, lease, 3).await.unwrap();
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), events[3..].iter().map(|e| e.id()).collect::<Vec<_>>(), "the rest, nothing twice");
        assert!(store.claim_events("worker-c", 20_000, lease, 3).await.unwrap().is_empty());

        // worker-a stalls and loses its batch; worker-b records its own batch plus one of a's events.
        let c = store.claim_events("worker-c", 40_000, lease, 10).await.unwrap();
        assert_eq!(c.iter().map(|e| e.id).collect::<Vec<_>>(), a.iter().map(|e| e.id).collect::<Vec<_>>(), "the expired batch is taken over whole");
        let mut records: Vec<DecisionRecord> = b
            .iter()
            .map(|e| DecisionRecord { event: e.id, state: "decided", decision: decision("plan"), grants: vec![new_grant(&format!("g-{}", e.id), "ACC-1")], callbacks: vec![], withdraw: None })
            .collect();
        records.push(DecisionRecord { event: c[0].id, state: "decided", decision: decision("plan"), grants: vec![], callbacks: vec![], withdraw: None });
        let kept = store.record_decisions(&records, "worker-b").await.unwrap();
        assert_eq!(kept, [true, true, false]);
        assert_eq!(count(&store, "decisions").await, 2);
        assert_eq!((count(&store, "grants").await, count(&store, "jobs").await), (2, 2));
        assert_eq!(store.event(c[0].id).await.unwrap().unwrap().state, "deciding", "the lost decision changed nothing");
    }
}

both_backends! {
    async fn jobs_for_one_group_are_claimed_as_one_batch(backend: Backend) {
        use grantbridge::store::JobResult;
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let maker = Maker::new();
        let mut grants: Vec<_> = (0..25).map(|n| new_grant(&format!("g-{n:02}"), &format!("ACC-{n}"))).collect();
        // One grant to another group, and one that cannot be batched at all.
        grants[5].batch_key = Some("group_member:another".into());
        grants[7].batch_key = None;
        planned(&store, &maker, "p", &grants).await;
        let lease = std::time::Duration::from_secs(30);

        let first = store.claim_jobs("x1", 2_000, lease, 20).await.unwrap();
        assert_eq!(first.len(), 20, "a full batch of the first job's group");
        assert!(first.iter().all(|j| j.grant.id != "g-05" && j.grant.id != "g-07"), "only jobs of the same batch");
        let second = store.claim_jobs("x2", 2_000, lease, 20).await.unwrap();
        let third = store.claim_jobs("x3", 2_000, lease, 20).await.unwrap();
        let fourth = store.claim_jobs("x4", 2_000, lease, 20).await.unwrap();
        let mut sizes = [second.len(), third.len(), fourth.len()];
        sizes.sort();
        assert_eq!(sizes, [1, 1, 3], "the rest of the group, the other group, the unbatched job");
        assert!(store.claim_jobs("x5", 2_000, lease, 20).await.unwrap().is_empty());
        let mut all: Vec<&str> = first.iter().chain(&second).chain(&third).chain(&fourth).map(|j| j.id.as_str()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 25, "no job claimed twice");

        // The batch is finished in one transaction; a lost lease keeps its job out of it.
        let done = JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms: None };
        let mut outcomes: Vec<_> = first.iter().map(|j| (j, done.clone())).collect();
        outcomes.push((&second[0], done.clone()));
        let kept = store.finish_jobs(&outcomes, "x1", 3_000).await.unwrap();
        assert_eq!(kept.iter().filter(|k| **k).count(), 20);
        assert!(!kept[20], "x1 does not hold x2's job");
        assert!(store.extend_lease(grantbridge::store::Leased::JobsOf("x2"), "x2", 99_000).await.unwrap());
        assert!(!store.extend_lease(grantbridge::store::Leased::JobsOf("x1"), "x1", 99_000).await.unwrap(), "x1 holds nothing now");
    }
}
