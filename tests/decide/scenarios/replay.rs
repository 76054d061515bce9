//! An operator's replay, end to end: a processed event replayed changes nothing upstream or on the ticket; an
//! event whose grant failed on a fault since fixed is granted after a replay. Each replay is in the audit trail
//! with who asked.

use grantbridge::audit::AuditRecord;
use grantbridge::domain::EventId;
use grantbridge::store::{AuditFilter, Store};
use serde_json::{Value, json};
use sha2::Digest;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use super::*;

const OPERATE_TOKEN: &str = "scenario-operate-token-5d2a9c41";
const READ_TOKEN: &str = "scenario-read-token-1f7e3b20";

/// The portal rule, and an operator (`on-call`) and an auditor (`auditor`) with static admin tokens.
fn portal_with_admins() -> String {
    let hash = |token: &str| hex::encode(sha2::Sha256::digest(token.as_bytes()));
    format!(
        r#"{portal}
[[admin.tokens]]
name = "on-call"
sha256 = "{}"
role = "operate"

[[admin.tokens]]
name = "auditor"
sha256 = "{}"
role = "read"
"#,
        hash(OPERATE_TOKEN),
        hash(READ_TOKEN),
        portal = portal(),
    )
}

/// Every audit entry about one event, in order.
pub(super) async fn audit_of(store: &Store, event_id: &str) -> Vec<AuditRecord> {
    let filter = AuditFilter { event_id: Some(event_id.to_string()), ..AuditFilter::default() };
    store.list_audit(&filter, None, 200).await.unwrap().entries
}

fn kinds(trail: &[AuditRecord]) -> Vec<&str> {
    trail.iter().map(|r| r.kind.as_str()).collect()
}

async fn replay(app: &TestApp, event_id: &str, token: &str) -> reqwest::Response {
    let url = format!("{}/v1/events/{event_id}/replay", app.address);
    app.client.post(url).bearer_auth(token).send().await.unwrap()
}

both_backends! {
    async fn replaying_a_processed_event_changes_nothing_in_effect(backend: Backend) {
        let fakes = fakes().await;
        servicenow_says(&fakes, "servicenow/table-ritm-approved.json").await;
        group_member_writes_accepted(&fakes).await;
        let app = spawn(backend, &fakes, &portal_with_admins()).await;
        let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        app.settle().await;
        assert_riley_added_once(&fakes).await;
        let event = EventId::parse(&id).unwrap();
        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        let first = app.store.decision(event).await.unwrap().unwrap();

        let answer = replay(&app, &id, OPERATE_TOKEN).await;
        assert_eq!(answer.status(), 202);
        let body: Value = answer.json().await.unwrap();
        assert_eq!((body["event"]["id"].as_str(), body["event"]["state"].as_str()), (Some(id.as_str()), Some("received")));
        assert_eq!(body["rearmed_grants"], json!([]));
        app.settle().await;
        app.callbacks_due_now().await;
        app.settle().await;

        // Decided again, and nothing else: one Graph write, one ticket update, the same ledger.
        let again = app.store.decision(event).await.unwrap().unwrap();
        assert_eq!((again.outcome.as_str(), again.ticket_key.as_deref()), ("plan", Some("RITM0010001")));
        assert!(again.decided_at_ms >= first.decided_at_ms);
        assert_eq!(app.store.event(event).await.unwrap().unwrap().state, "decided");
        assert_riley_added_once(&fakes).await;
        assert_servicenow_closed_complete_once(&fakes, &app.store).await;
        assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap(), ledger, "grants unchanged");

        let trail = audit_of(&app.store, &id).await;
        assert_eq!(
            kinds(&trail),
            ["received", "decided", "granted", "callback_delivered", "operator_action", "decided"]
        );
        let replayed = &trail[4];
        assert_eq!((replayed.actor.as_str(), replayed.ticket_key.as_deref()), ("on-call", Some("RITM0010001")));
        let detail: Value = serde_json::from_str(&replayed.detail).unwrap();
        assert_eq!(detail, json!({"action": "replay", "via": "static_token", "previous_state": "decided", "rearmed_grants": []}));
        assert!(app.store.verify_audit(None).await.unwrap().is_ok());
    }
}

both_backends! {
    async fn a_grant_refused_by_graph_is_made_when_replayed_after_the_fix(backend: Backend) {
        let fakes = fakes().await;
        servicenow_says(&fakes, "servicenow/table-ritm-approved.json").await;
        // The app registration lacks GroupMember.ReadWrite.All until an administrator grants it.
        Mock::given(method("PATCH"))
            .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
            .respond_with(ResponseTemplate::new(403).set_body_json(json!({"error": {
                "code": "Authorization_RequestDenied",
                "message": "Insufficient privileges to complete the operation.",
                "innerError": {"date": "2026-11-28T08:00:00", "request-id": "5e0f3c1a-0000-4000-8000-000000000001"}
            }})))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&fakes.entra)
            .await;
        Mock::given(method("PATCH"))
            .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
            .respond_with(ResponseTemplate::new(204))
            .with_priority(2)
            .mount(&fakes.entra)
            .await;
        let app = spawn(backend, &fakes, &portal_with_admins()).await;
        let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        app.settle().await;
        let failed = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!(failed[0].state, "failed", "{failed:?}");
        assert!(failed[0].last_error.as_deref().unwrap().contains("Authorization_RequestDenied"), "{failed:?}");
        assert_eq!(graph_writes(&fakes).await.len(), 1);

        // An auditor may not replay; the operator may.
        assert_eq!(replay(&app, &id, READ_TOKEN).await.status(), 403);
        let answer = replay(&app, &id, OPERATE_TOKEN).await;
        assert_eq!(answer.status(), 202);
        let answer: Value = answer.json().await.unwrap();
        assert_eq!(answer["rearmed_grants"], json!([failed[0].id]));
        app.settle().await;

        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!((ledger.len(), ledger[0].state.as_str()), (1, "active"), "{ledger:?}");
        assert_eq!(graph_writes(&fakes).await.len(), 2, "the refused write, then the one that went through");
        let callbacks = app.store.callbacks_for_ticket("servicenow", "RITM0010001").await.unwrap();
        let posted: Vec<(&str, &str)> = callbacks.iter().map(|c| (c.kind.as_str(), c.state.as_str())).collect();
        assert_eq!(posted, [("failed", "done"), ("granted", "done")]);
        let updates = writes(&fakes.servicenow).await;
        assert_eq!(updates.len(), 2, "the failure, then the grant: {updates:?}");
        assert!(body(&updates[1])["work_notes"].as_str().unwrap().starts_with("Access granted for RITM0010001."));

        let trail = audit_of(&app.store, &id).await;
        assert_eq!(
            kinds(&trail),
            ["received", "decided", "failed", "callback_delivered", "operator_action", "decided", "granted", "callback_delivered"]
        );
        let failure: Value = serde_json::from_str(&trail[2].detail).unwrap();
        assert_eq!(failure["code"], "forbidden", "the stable code the ledger's error starts with");
        assert!(!trail[2].detail.contains("Insufficient privileges"));
        assert_eq!(trail[4].actor, "on-call");
        assert!(app.store.verify_audit(None).await.unwrap().is_ok());
    }
}
