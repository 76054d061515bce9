//! What reconciliation reads and writes: the grants of one group, found whatever their stored JSON looks like;
//! the recorded runs; the lock that lets one replica reconcile at a time.

use grantbridge::domain::{GrantTarget, PimAccess};
use grantbridge::store::{ReconcileRun, Store};

use crate::both_backends;
use crate::common::ledger::{Ledger, Seeded};
use crate::common::{Backend, TestDb};

const GROUP: &str = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90";
const OTHER: &str = "5a1c2e3f-7b8d-4e9f-a0b1-c2d3e4f5a6b7";
const ROLE: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

/// `(grant, principal, kind, state, expires_at_ms, revoking)`.
type Found<'a> = (&'a str, &'a str, &'a str, &'a str, Option<i64>, bool);

fn user(n: u32) -> String {
    format!("30000000-0000-4000-8000-{n:012}")
}

async fn execute(store: &Store, sql: &str, binds: &[&str]) {
    match store {
        Store::Sqlite(sqlite) => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for b in binds {
                query = query.bind(b.to_string());
            }
            query.execute(&sqlite.pool).await.unwrap();
        }
        Store::Postgres(pool) => {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
            for b in binds {
                query = query.bind(b.to_string());
            }
            query.execute(pool).await.unwrap();
        }
    }
}

both_backends! {
    async fn the_grants_of_a_group_are_found_by_the_group_id_in_their_target(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let mut ledger = Ledger::new(store.clone());
        let member = GrantTarget::GroupMember { group_id: GROUP.into() };
        let plain = ledger.grant("portal", &member, &user(1), Seeded::Active { expires_at_ms: Some(5) }).await;
        let rewritten = ledger.grant("portal", &member, &user(2).to_ascii_uppercase(), Seeded::Revoked).await;
        let pim = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Member };
        let pim_member = ledger.grant("pim", &pim, &user(3), Seeded::Active { expires_at_ms: None }).await;
        let owner = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Owner };
        ledger.grant("pim", &owner, &user(4), Seeded::Active { expires_at_ms: None }).await;
        ledger.grant("portal", &GrantTarget::GroupMember { group_id: OTHER.into() }, &user(5), Seeded::Failed).await;
        // The group's id inside another kind's target passes a text search, not the comparison.
        let rbac = GrantTarget::AzureRbac { scope: format!("/subscriptions/{GROUP}"), role_definition_id: ROLE.into() };
        ledger.grant("rbac", &rbac, &user(6), Seeded::Active { expires_at_ms: None }).await;
        // Another writer's JSON: keys reordered, spaced, the id in upper case.
        let reordered = format!(r#"{{ "group_id" : "{}", "kind" : "group_member" }}"#, GROUP.to_ascii_uppercase());
        execute(&store, "UPDATE grants SET target = $1 WHERE id = $2", &[&reordered, &rewritten]).await;
        // A revocation under way: the revoke job queued for the grant's expiry, brought forward by a withdrawal.
        execute(
            &store,
            "UPDATE jobs SET reason = 'withdrawn: cancelled', next_attempt_at_ms = 0 WHERE grant_id = $1 AND kind = $2",
            &[&plain, "revoke"],
        )
        .await;
        let pending = ledger.grant("portal", &member, &user(7), Seeded::Pending).await;

        let grants = store.grants_for_group(&GROUP.to_ascii_uppercase()).await.unwrap();

        let found: Vec<Found<'_>> = grants
            .iter()
            .map(|g| (g.grant_id.as_str(), g.principal_id.as_str(), g.kind.as_str(), g.state.as_str(), g.expires_at_ms, g.revoking))
            .collect();
        let (u1, u2, u3, u7) = (user(1), user(2), user(3), user(7));
        assert_eq!(
            found,
            vec![
                (plain.as_str(), u1.as_str(), "group_member", "active", Some(5), true),
                (rewritten.as_str(), u2.as_str(), "group_member", "revoked", None, false),
                (pim_member.as_str(), u3.as_str(), "pim_group", "active", None, false),
                (pending.as_str(), u7.as_str(), "group_member", "pending", None, false),
            ],
            "principal ids lower-cased; PIM owners, other groups and other kinds left out"
        );
        assert_eq!(grants[0].rule, "portal");
        assert!(store.grants_for_group(ROLE).await.unwrap().is_empty());
    }
}

both_backends! {
    async fn a_target_that_cannot_be_read_fails_the_read(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let mut ledger = Ledger::new(store.clone());
        let member = GrantTarget::GroupMember { group_id: GROUP.into() };
        let id = ledger.grant("portal", &member, &user(1), Seeded::Revoked).await;
        execute(&store, "UPDATE grants SET target = $1 WHERE id = $2", &[&format!("{{\"group_id\": \"{GROUP}\""), &id]).await;
        let err = store.grants_for_group(GROUP).await.unwrap_err();
        assert!(err.to_string().contains(&id), "{err}");
    }
}

fn recorded_run(id: &str, started_at_ms: i64, started_by: &str) -> ReconcileRun {
    ReconcileRun {
        id: id.into(),
        started_at_ms,
        finished_at_ms: started_at_ms + 10,
        started_by: started_by.into(),
        dry_run: started_by == "cli",
        drift: 3,
        errors: 0,
        report: format!(r#"{{"id":"{id}"}}"#),
    }
}

both_backends! {
    async fn runs_are_recorded_read_back_and_pruned(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        assert!(store.latest_reconcile_run().await.unwrap().is_none());
        assert_eq!(store.last_reconcile_started_at("schedule").await.unwrap(), None);
        for r in [recorded_run("a", 1_000, "schedule"), recorded_run("b", 2_000, "schedule"), recorded_run("c", 3_000, "cli")] {
            store.insert_reconcile_run(&r).await.unwrap();
        }
        assert_eq!(store.latest_reconcile_run().await.unwrap().unwrap(), recorded_run("c", 3_000, "cli"));
        assert_eq!(store.reconcile_run("a").await.unwrap().unwrap(), recorded_run("a", 1_000, "schedule"));
        assert!(store.reconcile_run("zzz").await.unwrap().is_none());
        assert_eq!(store.last_reconcile_started_at("schedule").await.unwrap(), Some(2_000));

        store.prune_reconcile_runs(2).await.unwrap();
        assert!(store.reconcile_run("a").await.unwrap().is_none(), "the oldest is forgotten");
        assert!(store.reconcile_run("b").await.unwrap().is_some());
        assert!(store.reconcile_run("c").await.unwrap().is_some());
    }
}

both_backends! {
    async fn one_holder_of_the_reconciliation_lock_at_a_time(backend: Backend) {
        let db = TestDb::new(backend).await;
        let (a, b) = (db.store().await, db.store().await);
        let held = a.try_lock_reconcile().await.unwrap().expect("free");
        match backend {
            // SQLite serves one process: there is nothing to share.
            Backend::Sqlite => assert!(b.try_lock_reconcile().await.unwrap().is_some()),
            Backend::Postgres => {
                assert!(b.try_lock_reconcile().await.unwrap().is_none(), "held by the other replica");
                held.release().await;
                let again = b.try_lock_reconcile().await.unwrap().expect("released");
                // Dropped without a release, the lock still ends: its connection is closed, not pooled.
                drop(again);
                let mut taken = None;
                for _ in 0..50 {
                    taken = a.try_lock_reconcile().await.unwrap();
                    if taken.is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                assert!(taken.is_some(), "the dropped lock was released");
            }
        }
    }
}
