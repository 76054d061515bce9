//! The callback outbox on both backends: idempotent enqueueing, leases, retries, dead letters, due order.

use std::time::Duration;

use grantbridge::callbacks::callback_id;
use grantbridge::store::{CallbackResult, Leased, NewCallback};

use crate::both_backends;
use crate::common::TestDb;

pub fn new_callback(ticket: &str, kind: &str) -> NewCallback {
    NewCallback {
        id: callback_id("jira", ticket, kind, "event-1"),
        event_id: "0190a5b2-0000-7000-8000-000000000001".into(),
        grant_id: Some("g-1".into()),
        source: "jira".into(),
        system: "jira".into(),
        ticket_key: ticket.into(),
        ticket_id: "10042".into(),
        ticket_table: None,
        kind: kind.into(),
        message: format!("{kind} for {ticket}"),
        visibility: "public".into(),
        transition: Some("Done".into()),
        ticket_state: None,
    }
}

const LEASE: Duration = Duration::from_secs(30);

both_backends! {
    async fn the_same_outcome_enqueued_twice_is_one_callback(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let callback = new_callback("ACC-1", "granted");

        assert_eq!(store.enqueue_callbacks(&[callback.clone(), callback.clone()], 1_000).await.unwrap(), 1);
        let mut changed = callback.clone();
        changed.message = "a second rendering of the same outcome".into();
        assert_eq!(store.enqueue_callbacks(&[changed], 2_000).await.unwrap(), 0);

        let stored = store.callbacks_for_ticket("jira", "ACC-1").await.unwrap();
        assert_eq!(stored.len(), 1);
        let row = &stored[0];
        assert_eq!((row.state.as_str(), row.attempts, row.next_attempt_at_ms), ("queued", 0, 1_000));
        assert_eq!(row.message, "granted for ACC-1", "the first enqueue stands");
        assert_eq!((row.transition.as_deref(), row.grant_id.as_deref(), row.ticket_table.as_deref()), (Some("Done"), Some("g-1"), None));
        assert_eq!(store.callback(&callback.id).await.unwrap().as_ref(), Some(row));
    }
}

both_backends! {
    async fn callbacks_are_leased_retried_and_finished_once(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        store.enqueue_callbacks(&[new_callback("ACC-1", "granted"), new_callback("ACC-2", "refused")], 1_000).await.unwrap();

        let a = store.claim_callback("a", 2_000, LEASE).await.unwrap().unwrap();
        let b = store.claim_callback("b", 2_000, LEASE).await.unwrap().unwrap();
        assert_ne!(a.id(), b.id(), "a leased callback is not handed out twice");
        assert!(store.claim_callback("c", 2_000, LEASE).await.unwrap().is_none());
        assert_eq!((a.attempts(), a.callback.state.as_str(), a.callback.lease_owner.as_deref()), (1, "running", Some("a")));

        let done = CallbackResult::Delivered { remote_id: Some("10001".into()) };
        assert!(!store.finish_callback(&a, "b", &done, 2_500).await.unwrap(), "only the lease holder finishes");
        assert!(store.finish_callback(&a, "a", &done, 2_500).await.unwrap());
        assert!(!store.finish_callback(&a, "a", &done, 2_600).await.unwrap(), "finished once");
        let delivered = store.callback(a.id()).await.unwrap().unwrap();
        assert_eq!((delivered.state.as_str(), delivered.remote_id.as_deref(), delivered.delivered_at_ms), ("done", Some("10001"), Some(2_500)));
        assert_eq!((delivered.lease_owner, delivered.last_error), (None, None));

        let retry = CallbackResult::Retry { at_ms: 5_000, error: "jira answered 429".into() };
        assert!(store.finish_callback(&b, "b", &retry, 2_500).await.unwrap());
        assert!(store.claim_callback("b", 4_999, LEASE).await.unwrap().is_none(), "not before its retry time");
        let again = store.claim_callback("b", 5_000, LEASE).await.unwrap().unwrap();
        assert_eq!((again.id(), again.attempts()), (b.id(), 2));
        assert_eq!(again.callback.last_error.as_deref(), Some("jira answered 429"));

        // A callbacker that dies holding a callback loses it when the lease runs out; its late result is refused.
        assert!(store.extend_lease(Leased::Callback(b.id()), "b", 5_000 + 60_000).await.unwrap());
        assert!(store.claim_callback("c", 5_000 + 30_001, LEASE).await.unwrap().is_none(), "an extended lease holds");
        let taken = store.claim_callback("c", 5_000 + 60_001, LEASE).await.unwrap().unwrap();
        assert_eq!((taken.id(), taken.attempts()), (b.id(), 3));
        assert!(!store.extend_lease(Leased::Callback(b.id()), "b", 200_000).await.unwrap());
        assert!(!store.finish_callback(&again, "b", &done, 70_000).await.unwrap());

        let dead = CallbackResult::Dead { error: "Jira offers no transition named `Done` on ACC-2".into() };
        assert!(store.finish_callback(&taken, "c", &dead, 70_000).await.unwrap());
        let letters = store.dead_callbacks(10).await.unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!((letters[0].id.as_str(), letters[0].state.as_str(), letters[0].attempts), (b.id(), "dead", 3));
        assert_eq!(letters[0].last_error.as_deref(), Some("Jira offers no transition named `Done` on ACC-2"));
        assert!(store.claim_callback("d", 10_000_000, LEASE).await.unwrap().is_none(), "done and dead callbacks are never claimed");
    }
}

both_backends! {
    async fn due_callbacks_are_claimed_in_the_order_they_fall_due(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        store.enqueue_callbacks(&[new_callback("ACC-3", "granted")], 3_000).await.unwrap();
        store.enqueue_callbacks(&[new_callback("ACC-1", "granted")], 1_000).await.unwrap();
        store.enqueue_callbacks(&[new_callback("ACC-2", "granted")], 2_000).await.unwrap();

        let first = store.claim_callback("w", 10_000, LEASE).await.unwrap().unwrap();
        assert_eq!(first.callback.ticket_key, "ACC-1");
        // Retried to later than the others: it goes to the back.
        let later = CallbackResult::Retry { at_ms: 9_000, error: "503".into() };
        store.finish_callback(&first, "w", &later, 10_000).await.unwrap();

        let mut order = Vec::new();
        while let Some(c) = store.claim_callback("w", 10_000, LEASE).await.unwrap() {
            order.push(c.callback.ticket_key.clone());
        }
        assert_eq!(order, ["ACC-2", "ACC-3", "ACC-1"]);
    }
}

both_backends! {
    async fn concurrent_callbackers_never_share_a_callback(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let many: Vec<NewCallback> = (0..20).map(|i| new_callback(&format!("ACC-{i}"), "granted")).collect();
        assert_eq!(store.enqueue_callbacks(&many, 1_000).await.unwrap(), 20);
        let claim_all = |owner: &'static str| {
            let store = store.clone();
            async move {
                let mut got = Vec::new();
                while let Some(c) = store.claim_callback(owner, 2_000, LEASE).await.unwrap() {
                    got.push(c.callback.id);
                }
                got
            }
        };
        let (a, b, c) = tokio::join!(claim_all("a"), claim_all("b"), claim_all("c"));
        let mut all: Vec<String> = a.into_iter().chain(b).chain(c).collect();
        assert_eq!(all.len(), 20);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20, "no callback was claimed twice");
    }
}
