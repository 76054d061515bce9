//! Access that ends, as the store keeps it: when an idle executor must look again, the decision a revocation takes
//! under lock about access shared by two grants, and an operator's revocation, on both backends.

use std::time::Duration;

use grantbridge::store::{JobResult, OperatorRevoke, SharedAccess};

use crate::common::TestDb;
use crate::{Maker, both_backends, new_grant, planned};

const LEASE: Duration = Duration::from_secs(30);

fn active(expires_at_ms: Option<i64>) -> JobResult {
    JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms }
}

both_backends! {
    async fn the_next_due_time_is_the_earliest_queued_job_or_running_lease(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        assert_eq!(store.next_job_due_ms().await.unwrap(), None, "no jobs: nothing to wake for");
        planned(&store, &Maker::new(), "p", &[new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-2")]).await;
        assert_eq!(store.next_job_due_ms().await.unwrap(), Some(1), "both grant jobs are due since the decision");

        let job = store.claim_job("x", 2_000, LEASE).await.unwrap().unwrap();
        assert_eq!(store.next_job_due_ms().await.unwrap(), Some(1), "the other grant job is still due");
        let other = store.claim_job("y", 2_000, LEASE).await.unwrap().unwrap();
        assert_ne!(other.id, job.id);
        assert_eq!(store.next_job_due_ms().await.unwrap(), Some(32_000), "nothing queued: the leases run out then");
        assert!(store.finish_job(&job, "x", &active(Some(8 * 3_600_000)), 3_000).await.unwrap());
        assert!(store.finish_job(&other, "y", &active(None), 3_000).await.unwrap());
        assert_eq!(store.next_job_due_ms().await.unwrap(), Some(8 * 3_600_000), "the expiry's revoke job");
    }
}

both_backends! {
    async fn a_revocation_keeps_access_another_grant_needs_and_removes_it_for_the_last(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        // Two tickets, the same membership.
        planned(&store, &Maker::new(), "p", &[new_grant("g-1", "ACC-1"), new_grant("g-2", "ACC-2")]).await;
        for _ in 0..2 {
            let job = store.claim_job("x", 2_000, LEASE).await.unwrap().unwrap();
            assert!(store.finish_job(&job, "x", &active(Some(5_000)), 3_000).await.unwrap());
        }

        let first = store.claim_job("x", 5_000, LEASE).await.unwrap().unwrap();
        assert_eq!((first.kind.as_str(), first.reason.as_deref()), ("revoke", Some("expired")));
        let kept = store.check_shared_access(&first, "x", 5_000).await.unwrap();
        let SharedAccess::Kept { note } = kept else { panic!("the other grant needs the access: {kept:?}") };
        let keeper = if first.grant.id == "g-1" { "g-2" } else { "g-1" };
        assert!(note.starts_with(&format!("kept for grant {keeper} of ticket ")), "{note}");
        assert_eq!(store.check_shared_access(&first, "y", 5_000).await.unwrap(), SharedAccess::LeaseLost);
        let ended = JobResult::Done { grant_state: "expired", upstream_id: None, expires_at_ms: Some(5_000) };
        assert!(store.finish_job(&first, "x", &ended, 5_000).await.unwrap());
        let first_grant = store.grant(&first.grant.id).await.unwrap().unwrap();
        assert_eq!(first_grant.state, "expired");
        assert_eq!(first_grant.ended_reason, Some(format!("expired; {note}")));

        let last = store.claim_job("x", 5_000, LEASE).await.unwrap().unwrap();
        assert_eq!(last.grant.id, keeper);
        assert_eq!(store.check_shared_access(&last, "x", 5_000).await.unwrap(), SharedAccess::Remove, "nobody else needs it");
    }
}

both_backends! {
    async fn an_operator_revocation_is_queued_once_and_audited(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        planned(&store, &Maker::new(), "p", &[new_grant("g-1", "ACC-1")]).await;
        assert_eq!(store.revoke_by_operator("nope", "on-call", "why", 2_000).await.unwrap(), OperatorRevoke::UnknownGrant);
        let pending = store.revoke_by_operator("g-1", "on-call", "why", 2_000).await.unwrap();
        assert!(matches!(pending, OperatorRevoke::NotActive(ref g) if g.state == "pending"), "{pending:?}");

        let job = store.claim_job("x", 2_000, LEASE).await.unwrap().unwrap();
        assert!(store.finish_job(&job, "x", &active(Some(900_000)), 3_000).await.unwrap());
        let queued = store.revoke_by_operator("g-1", "on-call", "left the team", 4_000).await.unwrap();
        assert!(matches!(queued, OperatorRevoke::Queued(_)), "{queued:?}");
        let again = store.revoke_by_operator("g-1", "someone-else", "again", 4_500).await.unwrap();
        assert!(matches!(again, OperatorRevoke::Already(_)), "{again:?}");

        let revoke = store.claim_job("x", 4_000, LEASE).await.unwrap().expect("brought forward from the expiry");
        assert_eq!(
            (revoke.kind.as_str(), revoke.reason.as_deref(), revoke.requested_by.as_deref()),
            ("revoke", Some("operator: left the team"), Some("on-call"))
        );
        let audit = store.audit_entries(0, 100).await.unwrap();
        let operator: Vec<_> = audit.iter().filter(|e| e.kind == "operator_action").collect();
        assert_eq!(operator.len(), 1, "the repeated call changed nothing");
        assert_eq!((operator[0].actor.as_str(), operator[0].grant_id.as_deref()), ("on-call", Some("g-1")));

        // The removal gives up: the access is still there, so the grant stays active and can be revoked again.
        let refused = JobResult::Dead { error: "Authorization_RequestDenied: insufficient privileges".into() };
        assert!(store.finish_job(&revoke, "x", &refused, 5_000).await.unwrap());
        let grant = store.grant("g-1").await.unwrap().unwrap();
        assert_eq!((grant.state.as_str(), grant.ended_at_ms), ("active", None), "{grant:?}");
        let retried = store.revoke_by_operator("g-1", "on-call", "second try", 6_000).await.unwrap();
        assert!(matches!(retried, OperatorRevoke::Queued(_)), "{retried:?}");
        let revoke = store.claim_job("x", 6_000, LEASE).await.unwrap().expect("queued again");
        assert_eq!((revoke.attempts, revoke.reason.as_deref()), (1, Some("operator: second try")));
    }
}
