//! Reconciliation of a seeded ledger with a fake Graph that lists the group's members over three pages, with
//! drift of every kind: in a dry run and for real, with and without `authoritative` and `restore_missing`.

use std::collections::BTreeSet;
use std::sync::Arc;

use grantbridge::domain::GrantTarget;
use grantbridge::metrics::Metrics;
use grantbridge::providers::{GROUP_SELECT, Providers};
use grantbridge::reconcile::{Action, Clock, ReconcileReport, Reconciler, STARTED_BY_CLI, TargetReport};
use grantbridge::store::Store;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::both_backends;
use crate::common::entra::{PORTAL_GROUP as GROUP, entra_table, group_resource, portal_rule};
use crate::common::ledger::{Ledger, Seeded};
use crate::common::{Backend, TempDir, TestDb, settings_from};

/// A second managed group, whose members Graph refuses to list.
const BROKEN_GROUP: &str = "0b9e7c31-5a4f-4e2d-8c1b-7a6f3e2d1c0b";
const PIM_GROUP: &str = "5a1c2e3f-7b8d-4e9f-a0b1-c2d3e4f5a6b7";
/// A group the policy does not manage.
const ELSEWHERE: &str = "2d7e9f14-6b3a-4c8d-9e0f-1a2b3c4d5e6f";

/// The time the reconciliation judges expiry by.
const NOW: i64 = 1_900_000_000_000;

/// Member, active grant: in order.
const OK: &str = "10000000-0000-4000-8000-000000000001";
/// Not a member, active grant that expires in an hour: missing.
const MISSING: &str = "10000000-0000-4000-8000-000000000002";
/// Member, revoked grant: lingering.
const REVOKED: &str = "10000000-0000-4000-8000-000000000003";
/// Member, active grant that expired at `NOW`: lingering.
const EXPIRED: &str = "10000000-0000-4000-8000-000000000004";
/// Member, one revoked and one active grant (two tickets): kept.
const SHARED: &str = "10000000-0000-4000-8000-000000000005";
/// Member, no grant at all: unknown.
const UNKNOWN: &str = "10000000-0000-4000-8000-000000000006";
/// Member, failed grant: lingering.
const FAILED: &str = "10000000-0000-4000-8000-000000000007";
/// Member, grant still pending (its job will add it): kept.
const PENDING: &str = "10000000-0000-4000-8000-000000000008";

struct FixedClock(i64);

impl Clock for FixedClock {
    fn now_ms(&self) -> i64 {
        self.0
    }
}

/// The policy: the portal group with the flags given, a second group, and a PIM target that is not reconciled.
fn config(entra: &MockServer, dir: &TempDir, flags: &str) -> String {
    let client_secret = dir.write("client-secret", "entra-client-secret").display().to_string();
    let webhook_secret = dir.write("webhook-secret", "jira-secret").display().to_string();
    format!(
        r#"
[sources.jira]
kind = "jira"
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{{ file = "{webhook_secret}" }}]

{entra}{portal}[[policy.rules.grants]]
kind = "group_member"
group_id = "{BROKEN_GROUP}"
label = "Broken"

[[policy.rules]]
name = "billing-admin"
request_types = ["Billing admin"]
default_duration = "8h"
[[policy.rules.grants]]
kind = "pim_group"
group_id = "{PIM_GROUP}"
access = "member"
label = "Billing Administrators"
"#,
        entra = entra_table(&entra.uri(), &client_secret),
        portal = portal_rule("", flags),
    )
}

/// The ledger every test starts from.
async fn seed(store: &Store) {
    let portal = GrantTarget::GroupMember { group_id: GROUP.into() };
    let rule = "portal-access";
    let mut ledger = Ledger::new(store.clone());
    ledger.grant(rule, &portal, OK, Seeded::Active { expires_at_ms: None }).await;
    ledger.grant(rule, &portal, MISSING, Seeded::Active { expires_at_ms: Some(NOW + 3_600_000) }).await;
    ledger.grant(rule, &portal, REVOKED, Seeded::Revoked).await;
    ledger.grant(rule, &portal, EXPIRED, Seeded::Active { expires_at_ms: Some(NOW) }).await;
    ledger.grant(rule, &portal, SHARED, Seeded::Revoked).await;
    ledger.grant(rule, &portal, SHARED, Seeded::Active { expires_at_ms: Some(NOW + 60_000) }).await;
    ledger.grant(rule, &portal, FAILED, Seeded::Failed).await;
    // A grant of another group to the unknown member: it does not make them known in this one.
    let other = GrantTarget::GroupMember { group_id: ELSEWHERE.into() };
    ledger.grant(rule, &other, UNKNOWN, Seeded::Active { expires_at_ms: None }).await;
    ledger.grant(rule, &portal, PENDING, Seeded::Pending).await;
}

fn page(ids: &[&str], next: Option<String>) -> Value {
    let value: Vec<Value> = ids.iter().map(|id| json!({"@odata.type": "#microsoft.graph.user", "id": id})).collect();
    let mut body =
        json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id)", "value": value});
    if let Some(next) = next {
        body["@odata.nextLink"] = json!(next);
    }
    body
}

/// Token endpoint; both groups assigned (not dynamic); the portal group's members over three pages (one id in
/// upper case); the broken group's listing refused; every membership write answered 204.
async fn graph() -> MockServer {
    let entra = crate::common::entra::entra().await;
    for group in [GROUP, BROKEN_GROUP] {
        Mock::given(method("GET"))
            .and(path(format!("/v1.0/groups/{group}")))
            .and(query_param("$select", GROUP_SELECT))
            .respond_with(ResponseTemplate::new(200).set_body_json(group_resource(group, "Group", json!([]))))
            .mount(&entra)
            .await;
    }
    let members = format!("/v1.0/groups/{GROUP}/members");
    let link = |token: &str| format!("{}{members}?$select=id&$top=999&$skiptoken={token}", entra.uri());
    let pages = [
        (None, page(&[OK, REVOKED, SHARED], Some(link("page-2")))),
        (Some("page-2"), page(&[UNKNOWN, &EXPIRED.to_ascii_uppercase()], Some(link("page-3")))),
        (Some("page-3"), page(&[FAILED, PENDING], None)),
    ];
    for (token, body) in pages {
        let mock = Mock::given(method("GET")).and(path(members.as_str())).and(query_param("$select", "id"));
        let mock = match token {
            None => mock.and(query_param_is_missing("$skiptoken")),
            Some(token) => mock.and(query_param("$skiptoken", token)),
        };
        mock.respond_with(ResponseTemplate::new(200).set_body_json(body)).mount(&entra).await;
    }
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{BROKEN_GROUP}/members")))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"error": {
            "code": "Authorization_RequestDenied", "message": "Insufficient privileges to complete the operation."
        }})))
        .mount(&entra)
        .await;
    Mock::given(method("DELETE"))
        .and(path_regex(format!("^/v1.0/groups/{GROUP}/members/[0-9a-f-]+/\\$ref$")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&entra)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("{members}/$ref")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&entra)
        .await;
    entra
}

struct Run {
    report: ReconcileReport,
    /// Membership writes that reached the fake Graph.
    writes: Vec<Request>,
    metrics: String,
    store: Store,
    _db: TestDb,
}

/// Seeds a fresh database, reconciles once with the portal group's `flags`, and returns what happened.
async fn reconcile(backend: Backend, flags: &str, dry_run: bool) -> Run {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    seed(&store).await;
    let entra = graph().await;
    let dir = TempDir::new();
    let settings = settings_from(&config(&entra, &dir, flags), &db);
    let tenant = settings.entra.as_ref().unwrap();
    let groups = Providers::from_entra(tenant, tenant.arm_url.clone()).groups;
    let metrics = Arc::new(Metrics::default());
    let reconciler = Reconciler::new(store.clone(), groups, &settings.policy)
        .with_clock(Arc::new(FixedClock(NOW)))
        .with_metrics(metrics.clone());
    let report = reconciler.run_and_record(dry_run, STARTED_BY_CLI).await.unwrap();
    let writes = entra
        .received_requests()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.method.as_str() != "GET" && r.url.path().starts_with("/v1.0/"))
        .collect();
    Run { report, writes, metrics: metrics.render(), store, _db: db }
}

fn portal(report: &ReconcileReport) -> &TargetReport {
    report.targets.iter().find(|t| t.group_id == GROUP).unwrap()
}

/// `(principal, action)` of each finding.
fn actions(findings: &[grantbridge::reconcile::Finding]) -> Vec<(&str, Action)> {
    findings.iter().map(|f| (f.principal_id.as_str(), f.action)).collect()
}

/// The writes as `METHOD principal`.
fn writes(run: &Run) -> BTreeSet<String> {
    run.writes
        .iter()
        .map(|r| {
            let principal = match r.method.as_str() {
                "POST" => {
                    let body: Value = r.body_json().unwrap();
                    body["@odata.id"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
                }
                _ => r.url.path().trim_end_matches("/$ref").rsplit('/').next().unwrap().to_string(),
            };
            format!("{} {principal}", r.method)
        })
        .collect()
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

fn assert_the_other_targets(report: &ReconcileReport) {
    let broken = report.targets.iter().find(|t| t.group_id == BROKEN_GROUP).unwrap();
    let error = broken.error.as_deref().unwrap();
    assert!(error.contains("Authorization_RequestDenied"), "{error}");
    assert_eq!(broken.counts.errors, 1);
    assert_eq!(report.not_reconciled.len(), 1, "{:?}", report.not_reconciled);
    assert_eq!(
        (report.not_reconciled[0].kind, report.not_reconciled[0].label.as_str()),
        ("pim_group", "Billing Administrators")
    );
}

both_backends! {
    async fn a_dry_run_reports_each_kind_of_drift_and_writes_nothing(backend: Backend) {
        let run = reconcile(backend, "", true).await;

        let target = portal(&run.report);
        assert_eq!((target.members, target.ledger_grants), (7, 8), "three pages read; the other group's grant is not counted");
        assert_eq!(actions(&target.missing), vec![(MISSING, Action::Reported)], "restore_missing is off");
        assert_eq!(
            actions(&target.lingering),
            vec![(REVOKED, Action::WouldRemove), (EXPIRED, Action::WouldRemove), (FAILED, Action::WouldRemove)]
        );
        assert_eq!(actions(&target.unknown), vec![(UNKNOWN, Action::Reported)], "the group is not authoritative");
        assert_eq!((target.counts.restored, target.counts.removed, target.counts.errors), (0, 0, 0));
        assert!(run.writes.is_empty(), "a dry run writes nothing: {:?}", writes(&run));
        assert_eq!(run.report.totals.drift(), 5);
        assert_eq!(run.report.totals.errors, 1, "the broken group");
        assert!(run.report.dry_run);
        assert_the_other_targets(&run.report);

        let recorded = run.store.latest_reconcile_run().await.unwrap().unwrap();
        assert_eq!(recorded.id, run.report.id);
        assert_eq!((recorded.started_by.as_str(), recorded.dry_run, recorded.drift, recorded.errors), ("cli", true, 5, 1));
        assert_eq!(recorded.started_at_ms, NOW, "the injected clock");
        let stored: Value = serde_json::from_str(&recorded.report).unwrap();
        assert_eq!(stored, serde_json::to_value(&run.report).unwrap());
        assert_eq!(stored["targets"][0]["lingering"][0]["action"], "would_remove");
        assert_eq!(run.store.reconcile_run(&recorded.id).await.unwrap().unwrap(), recorded);

        assert!(run.metrics.contains("grantbridge_reconcile_drift_total{kind=\"lingering\"} 3"), "{}", run.metrics);
        assert!(run.metrics.contains("grantbridge_reconcile_drift_total{kind=\"unknown\"} 1"), "{}", run.metrics);
        assert!(run.metrics.contains("grantbridge_reconcile_actions_total{action=\"removed\"} 0"), "{}", run.metrics);
    }
}

both_backends! {
    async fn a_real_run_removes_lingering_memberships_and_nothing_else(backend: Backend) {
        let run = reconcile(backend, "", false).await;

        let expected = set(&[format!("DELETE {REVOKED}"), format!("DELETE {EXPIRED}"), format!("DELETE {FAILED}")]);
        assert_eq!(writes(&run), expected, "the shared, pending, unknown and in-order members stay");
        assert_eq!(run.writes.len(), 3, "one DELETE each");
        let target = portal(&run.report);
        assert_eq!(
            actions(&target.lingering),
            vec![(REVOKED, Action::Removed), (EXPIRED, Action::Removed), (FAILED, Action::Removed)]
        );
        assert_eq!(actions(&target.missing), vec![(MISSING, Action::Reported)]);
        assert_eq!(actions(&target.unknown), vec![(UNKNOWN, Action::Reported)]);
        assert_eq!((target.counts.removed, target.counts.restored), (3, 0));
        assert!(!run.report.dry_run);
        assert_the_other_targets(&run.report);
        let lingering = &target.lingering[0];
        assert_eq!(lingering.grant_ids.len(), 1, "the ended grant behind it is named");
        assert!(run.metrics.contains("grantbridge_reconcile_actions_total{action=\"removed\"} 3"), "{}", run.metrics);
        assert!(!run.store.latest_reconcile_run().await.unwrap().unwrap().dry_run);
    }
}

both_backends! {
    async fn authoritative_and_restore_missing_repair_every_kind(backend: Backend) {
        let run = reconcile(backend, "authoritative = true\nrestore_missing = true", false).await;

        let expected = set(&[
            format!("DELETE {REVOKED}"),
            format!("DELETE {EXPIRED}"),
            format!("DELETE {FAILED}"),
            format!("DELETE {UNKNOWN}"),
            format!("POST {MISSING}"),
        ]);
        assert_eq!(writes(&run), expected);
        assert_eq!(run.writes.len(), 5);
        let target = portal(&run.report);
        assert!(target.authoritative);
        assert_eq!(actions(&target.missing), vec![(MISSING, Action::Restored)]);
        assert_eq!(actions(&target.unknown), vec![(UNKNOWN, Action::Removed)]);
        assert_eq!((target.counts.restored, target.counts.removed), (1, 4));
        assert!(run.metrics.contains("grantbridge_reconcile_actions_total{action=\"restored\"} 1"), "{}", run.metrics);
    }
}

both_backends! {
    async fn a_dry_run_says_what_the_flags_would_repair(backend: Backend) {
        let run = reconcile(backend, "authoritative = true\nrestore_missing = true", true).await;

        assert!(run.writes.is_empty(), "{:?}", writes(&run));
        let target = portal(&run.report);
        assert_eq!(actions(&target.missing), vec![(MISSING, Action::WouldRestore)]);
        assert_eq!(actions(&target.unknown), vec![(UNKNOWN, Action::WouldRemove)]);
        assert_eq!((target.counts.restored, target.counts.removed), (0, 0));
    }
}
