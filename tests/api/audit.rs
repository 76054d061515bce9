//! What the webhook route leaves in the audit trail: the stored event, the repeat, and every refusal for a
//! configured source, each with its reason and never the body.

use std::time::{Duration, Instant};

use grantbridge::audit::AuditRecord;
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::both_backends;
use crate::common::sign;
use crate::helpers::*;
use crate::webhooks::{JIRA_EVENT, bad_requests, jira_headers, post};

/// Refusals are written by the intake writer after the answer: wait until `n` entries are there.
async fn entries_once_there_are(app: &TestApp, n: usize) -> Vec<AuditRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = app.store.audit_entries(0, 1_000).await.unwrap();
        if entries.len() >= n || Instant::now() > deadline {
            return entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn detail(record: &AuditRecord) -> Value {
    serde_json::from_str(&record.detail).unwrap()
}

both_backends! {
    async fn accepted_duplicate_and_forged_deliveries_each_leave_their_entry(backend: Backend) {
        // No workers: deciding the event would add its own entry between the intake's.
        let app = spawn_app_with(backend, "[workers]\ncount = 0\n").await;
        let body = JIRA_EVENT.as_bytes();
        let body_sha256 = hex::encode(Sha256::digest(body));

        let first: Value = post(&app, "jira", &jira_headers(body, "audit-1"), JIRA_EVENT).await.json().await.unwrap();
        // Written in the transaction that stores the event: there before the 202.
        let entries = app.store.audit_entries(0, 10).await.unwrap();
        assert_eq!(entries.len(), 1);
        let received = &entries[0];
        assert_eq!((received.kind.as_str(), received.source.as_deref()), ("received", Some("jira")));
        assert_eq!(received.event_id.as_deref(), first["event_id"].as_str());
        assert_eq!(detail(received)["delivery_id"], "audit-1");
        assert_eq!(detail(received)["scheme"], "jira_hub_signature");
        assert_eq!(detail(received)["body_sha256"], body_sha256.as_str());

        let again: Value = post(&app, "jira", &jira_headers(body, "audit-1"), JIRA_EVENT).await.json().await.unwrap();
        assert_eq!(again["status"], "duplicate");
        let entries = app.store.audit_entries(0, 10).await.unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].kind, "duplicate");
        assert_eq!(entries[1].event_id.as_deref(), first["event_id"].as_str(), "names the stored event");

        let forged = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Hub-Signature".to_string(), sign::hub_signature("not-the-secret", body)),
            ("X-Atlassian-Webhook-Identifier".to_string(), "audit-2".to_string()),
        ];
        assert_eq!(post(&app, "jira", &forged, JIRA_EVENT).await.status(), StatusCode::UNAUTHORIZED);
        let entries = entries_once_there_are(&app, 3).await;
        assert_eq!(entries.len(), 3, "{entries:?}");
        let rejected = &entries[2];
        assert_eq!((rejected.kind.as_str(), rejected.source.as_deref()), ("rejected", Some("jira")));
        assert_eq!((rejected.event_id.as_deref(), rejected.actor.as_str()), (None, "grantbridge"));
        let d = detail(rejected);
        assert_eq!(d["code"], "invalid_signature");
        assert_eq!(d["reason"], "signature_mismatch", "the reason the sender is not told is in the trail");
        assert_eq!(d["remote_addr"], "127.0.0.1");
        assert_eq!(d["body_sha256"], body_sha256.as_str());
        assert_eq!(d["body_bytes"], body.len());
        for e in &entries {
            assert!(!e.detail.contains("JRA-20002") && !e.detail.contains("webhookEvent"), "no body in {e:?}");
        }
        assert_eq!(app.store.verify_audit(None).await.unwrap().unwrap().checked, 3);
        app.stop().await;
    }
}

both_backends! {
    async fn every_refusal_for_a_configured_source_is_recorded_with_its_code(backend: Backend) {
        let app = spawn_app(backend).await;
        let mut expected = Vec::new();
        for case in bad_requests() {
            let response = post(&app, case.source, &case.headers, case.body).await;
            assert_eq!(response.status(), case.status, "{}", case.what);
            // An unconfigured source is an attacker's choice of path: nothing to attribute, nothing recorded.
            if case.code != "unknown_source" {
                expected.push((case.source.to_string(), case.code.to_string()));
            }
        }
        let entries = entries_once_there_are(&app, expected.len()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let entries_later = app.store.audit_entries(0, 1_000).await.unwrap();
        assert_eq!(entries.len(), entries_later.len(), "one entry per refusal, no more");
        // Requests were sent one after the other, and each queued its entry before it was answered.
        let recorded: Vec<(String, String)> = entries
            .iter()
            .map(|e| {
                assert_eq!(e.kind, "rejected");
                (e.source.clone().unwrap_or_default(), detail(e)["code"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        assert_eq!(recorded, expected);
        assert_eq!(app.event_count().await, 0, "refusals leave nothing but their audit entries");
        assert!(app.store.verify_audit(None).await.unwrap().is_ok());
        app.stop().await;
    }
}
