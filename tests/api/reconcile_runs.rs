//! The reconciliation reports the admin API returns: `GET /v1/reconcile/runs`, the latest started first and paged
//! by cursor, and `GET /v1/reconcile/runs/{id}`, one run with its report as recorded.

use std::collections::BTreeSet;

use grantbridge::reconcile::{Action, Counts, Finding, NotReconciled, ReconcileReport, TargetReport};
use grantbridge::store::{ReconcileRun, Store};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::admin::{assert_walks, get, send};
use crate::both_backends;
use crate::helpers::*;
use crate::openapi::assert_documented;
use crate::openapi::spec;

/// A run that `every_admin_route_needs_a_valid_token_and_the_role` seeds and reads.
pub(crate) const SEEDED_RUN: &str = "019ac9f2-4b7e-7c31-9d2a-5e8f1b3c6d70";
const GROUP: &str = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90";
const LINGERING: &str = "10000000-0000-4000-8000-000000000003";
const UNKNOWN: &str = "10000000-0000-4000-8000-000000000006";

/// One group with a lingering member (removed, or would be in a dry run) and an unknown one reported, a PIM
/// target not reconciled.
fn report(id: &str, started_at_ms: i64, dry_run: bool) -> ReconcileReport {
    let finding = |principal: &str, grant_ids: &[&str], action| Finding {
        principal_id: principal.into(),
        grant_ids: grant_ids.iter().map(|g| g.to_string()).collect(),
        action,
        error: None,
    };
    let removed = if dry_run { 0 } else { 1 };
    let counts = Counts { missing: 0, lingering: 1, unknown: 1, restored: 0, removed, errors: 0 };
    let lingering = finding(LINGERING, &["g-7"], if dry_run { Action::WouldRemove } else { Action::Removed });
    ReconcileReport {
        id: id.into(),
        started_at_ms,
        finished_at_ms: started_at_ms + 1500,
        dry_run,
        totals: counts,
        targets: vec![TargetReport {
            kind: "group_member",
            group_id: GROUP.into(),
            label: "EPM - User Portal Access".into(),
            authoritative: false,
            members: 4,
            ledger_grants: 3,
            counts,
            missing: Vec::new(),
            lingering: vec![lingering],
            unknown: vec![finding(UNKNOWN, &[], Action::Reported)],
            error: None,
        }],
        not_reconciled: vec![NotReconciled {
            kind: "pim_group",
            label: "Billing Administrators".into(),
            reason: "only group_member targets are reconciled: PIM and Azure RBAC keep their own assignments",
        }],
    }
}

/// Records a run as reconciliation does; returns its report.
pub(crate) async fn seed_run(
    store: &Store,
    id: &str,
    started_at_ms: i64,
    started_by: &str,
    dry_run: bool,
) -> ReconcileReport {
    let report = report(id, started_at_ms, dry_run);
    let run = ReconcileRun {
        id: id.into(),
        started_at_ms,
        finished_at_ms: report.finished_at_ms,
        started_by: started_by.into(),
        dry_run,
        drift: 2,
        errors: 0,
        report: serde_json::to_string(&report).unwrap(),
    };
    store.insert_reconcile_run(&run).await.unwrap();
    report
}

both_backends! {
    async fn runs_are_listed_latest_first_and_walk_every_page_exactly_once(backend: Backend) {
        let app = spawn_app_with(backend, "[workers]\ncount = 0\n").await;
        let spec = spec();
        let empty = get(&app, "/v1/reconcile/runs", READ_TOKEN).await;
        assert_eq!(empty.status, StatusCode::OK, "{}", empty.body);
        assert_eq!(empty.json(), json!({"runs": [], "next_cursor": null}));
        assert_documented(&spec, "get", "/v1/reconcile/runs", &empty);

        // Two runs start in the same millisecond: the id breaks the tie.
        let starts = [1_000, 2_000, 2_000, 3_000, 4_000, 5_000];
        let mut expected = BTreeSet::new();
        for (n, at) in starts.into_iter().enumerate() {
            let id = uuid::Uuid::now_v7().to_string();
            let by = if n % 2 == 0 { "schedule" } else { "cli" };
            seed_run(&app.store, &id, at, by, n == 5).await;
            expected.insert(id);
        }
        assert_walks(&app, "/v1/reconcile/runs", "runs", "/id", "/started_at_ms", &expected).await;

        let page = get(&app, "/v1/reconcile/runs?limit=2", READ_TOKEN).await;
        assert_documented(&spec, "get", "/v1/reconcile/runs", &page);
        let body = page.json();
        let latest = &body["runs"][0];
        assert_eq!(latest["started_at_ms"], 5_000);
        assert_eq!(latest["finished_at_ms"], 6_500);
        assert_eq!((latest["started_by"].as_str(), latest["dry_run"].as_bool()), (Some("cli"), Some(true)));
        assert_eq!((latest["drift"].as_i64(), latest["errors"].as_i64()), (Some(2), Some(0)));
        assert!(latest.get("report").is_none(), "the list leaves the reports out: {latest}");
        assert!(body["next_cursor"].is_string());

        // A cursor of another list is refused here, and this list's cursor elsewhere.
        let events_cursor = {
            for i in 0..2 {
                let headers = [("Content-Type", "application/json"), ("X-Automation-Token", AUTOMATION_TOKEN)];
                let delivery = format!("r-{i}");
                let headers = [headers[0], headers[1], ("X-Delivery", delivery.as_str())];
                assert_eq!(app.post("automation", &headers, json!({"n": i}).to_string()).await.status(), 202);
            }
            get(&app, "/v1/events?limit=1", READ_TOKEN).await.json()["next_cursor"].as_str().unwrap().to_string()
        };
        let refused = get(&app, &format!("/v1/reconcile/runs?cursor={events_cursor}"), READ_TOKEN).await;
        assert_eq!((refused.status, refused.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_cursor"));
        assert_documented(&spec, "get", "/v1/reconcile/runs", &refused);
        let runs_cursor = body["next_cursor"].as_str().unwrap();
        let refused = get(&app, &format!("/v1/events?cursor={runs_cursor}"), READ_TOKEN).await;
        assert_eq!(refused.code(), "invalid_cursor");
        app.stop().await;
    }
}

both_backends! {
    async fn one_run_is_returned_with_its_report_and_drift(backend: Backend) {
        let app = spawn_app_with(backend, "[workers]\ncount = 0\n").await;
        let spec = spec();
        let id = uuid::Uuid::now_v7().to_string();
        let report = seed_run(&app.store, &id, 1_764_316_800_000, "schedule", false).await;
        seed_run(&app.store, &uuid::Uuid::now_v7().to_string(), 1_764_316_900_000, "cli", true).await;

        let answer = get(&app, &format!("/v1/reconcile/runs/{id}"), READ_TOKEN).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_documented(&spec, "get", "/v1/reconcile/runs/{id}", &answer);
        let body = answer.json();
        assert_eq!(
            body["run"],
            json!({
                "id": id, "started_at_ms": 1_764_316_800_000i64, "finished_at_ms": 1_764_316_801_500i64,
                "started_by": "schedule", "dry_run": false, "drift": 2, "errors": 0
            })
        );
        assert_eq!(body["report"], serde_json::to_value(&report).unwrap(), "the report as recorded");
        let target = &body["report"]["targets"][0];
        assert_eq!(target["lingering"][0], json!({"principal_id": LINGERING, "grant_ids": ["g-7"], "action": "removed"}));
        assert_eq!(target["unknown"][0]["action"], "reported");

        // The id in upper case names the same run.
        let upper = get(&app, &format!("/v1/reconcile/runs/{}", id.to_ascii_uppercase()), READ_TOKEN).await;
        assert_eq!(upper.json()["run"]["id"], id.as_str());

        let unknown = uuid::Uuid::now_v7().to_string();
        for path in [
            format!("/v1/reconcile/runs/{unknown}"),
            "/v1/reconcile/runs/not-a-run".to_string(),
            "/v1/reconcile/runs/%00".to_string(),
            format!("/v1/reconcile/runs/{}", "9".repeat(400)),
        ] {
            let answer = get(&app, &path, READ_TOKEN).await;
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (StatusCode::NOT_FOUND, "unknown_reconcile_run"),
                "{path}: {}",
                answer.body
            );
            assert_documented(&spec, "get", "/v1/reconcile/runs/{id}", &answer);
        }
        let with_query = get(&app, &format!("/v1/reconcile/runs/{id}?include=body"), READ_TOKEN).await;
        assert_eq!((with_query.status, with_query.code().as_str()), (StatusCode::BAD_REQUEST, "invalid_parameter"));
        assert_documented(&spec, "get", "/v1/reconcile/runs/{id}", &with_query);

        for path in ["/v1/reconcile/runs".to_string(), format!("/v1/reconcile/runs/{id}")] {
            let answer = send(&app, &Method::DELETE, &path, Some(OPERATE_TOKEN), None).await;
            assert_eq!((answer.status, answer.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
            assert_eq!(answer.headers.get("allow").unwrap(), "GET");
            let anonymous = send(&app, &Method::GET, &path, None, None).await;
            assert_eq!((anonymous.status, anonymous.code().as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
        }
        let bad_limit = get(&app, "/v1/reconcile/runs?limit=0", READ_TOKEN).await;
        assert_eq!(bad_limit.code(), "invalid_parameter");
        let unknown_param = get(&app, "/v1/reconcile/runs?started_by=cli", READ_TOKEN).await;
        assert_eq!(unknown_param.code(), "invalid_parameter");
        assert_documented(&spec, "get", "/v1/reconcile/runs", &unknown_param);
        app.stop().await;
    }
}

/// What a stored report looks like to a client that never saw the Rust types: the fields `openapi.yaml` names.
#[test]
fn the_report_schema_names_the_report_fields() {
    let spec = spec();
    let value: Value = serde_json::to_value(report(SEEDED_RUN, 0, false)).unwrap();
    let schemas = &spec["components"]["schemas"];
    let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<BTreeSet<_>>();
    let documented = |name: &str| keys(&schemas[name]["properties"]);
    assert_eq!(keys(&value), documented("ReconcileReport"));
    assert_eq!(keys(&value["totals"]), documented("ReconcileCounts"));
    let mut target = keys(&value["targets"][0]);
    target.insert("error".into());
    assert_eq!(target, documented("ReconcileTarget"));
    let mut finding = keys(&value["targets"][0]["lingering"][0]);
    finding.insert("error".into());
    assert_eq!(finding, documented("ReconcileFinding"));
}
