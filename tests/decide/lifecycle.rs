//! Access that ends, end to end: expiry on a manual clock, the notice before it, withdrawal by a later event,
//! access shared by two tickets, a revocation taken over after a crash, PIM expiry checks and an operator's
//! revocation through the admin API. The fakes answer as Graph, ARM and Jira Service Management document.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grantbridge::clock::ManualClock;
use grantbridge::store::{GrantRecord, SharedAccess, Store};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, Request, ResponseTemplate};

use crate::both_backends;
use crate::common::Backend;
use crate::common::entra::{PORTAL_LABEL, assigned_group};
use crate::harness::{
    Fakes, PORTAL_GROUP, RILEY_ID, TestApp, comment_created, group_member_writes_accepted, jira_callbacks_answered,
    json_fixture, spawn_with_clock,
};

const PIM_GROUP: &str = "7a4d2b63-1e4f-4c9d-8a1b-3c8e5f6d2b01";

/// Granted outcomes resolve the Jira request, as in the scenarios.
const CALLBACKS: &str = r#"
[callbacks.sources.jira.granted]
transition = "Resolve this issue"
"#;

/// Riley and Avery in Entra, and both groups (assigned membership).
async fn fakes() -> Fakes {
    let fakes = crate::harness::fakes().await;
    assigned_group(&fakes.entra, PORTAL_GROUP, PORTAL_LABEL).await;
    assigned_group(&fakes.entra, PIM_GROUP, "Billing Administrators").await;
    fakes
}

/// Every request to `server` other than a GET.
async fn writes(server: &wiremock::MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.method.as_str() != "GET").collect()
}

const HOUR: Duration = Duration::from_secs(3600);

/// Eight hours of portal access, with a notice an hour before it ends.
const EIGHT_HOURS: &str = r#"
[[policy.rules]]
name = "portal-8h"
request_types = ["Permissions portal access"]
default_duration = "8h"
notify_before_expiry = "1h"
[[policy.rules.grants]]
kind = "group_member"
group_id = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"
label = "EPM - User Portal Access"
"#;

/// Portal access until revoked.
const UNTIL_REVOKED: &str = r#"
[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"
label = "EPM - User Portal Access"
"#;

const PIM_8H: &str = r#"
[[policy.rules]]
name = "billing-admins-pim"
request_types = ["Permissions portal access"]
default_duration = "8h"
[[policy.rules.grants]]
kind = "pim_group"
group_id = "7a4d2b63-1e4f-4c9d-8a1b-3c8e5f6d2b01"
access = "member"
label = "Billing Administrators (PIM)"
"#;

const OPERATE_TOKEN: &str = "lifecycle-operate-token-5d1e";
const READ_TOKEN: &str = "lifecycle-read-token-9a7c";

fn admin_tokens() -> String {
    let hash = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    format!(
        "\n[[admin.tokens]]\nname = \"on-call\"\nsha256 = \"{}\"\nrole = \"operate\"\n\n[[admin.tokens]]\nname = \"reader\"\nsha256 = \"{}\"\nrole = \"read\"\n",
        hash(OPERATE_TOKEN),
        hash(READ_TOKEN)
    )
}

/// A Jira `issue_updated` webhook for `key` (issue id `id`) whose status became `status`.
fn jira_event(key: &str, id: &str, status: &str) -> String {
    let mut event = json_fixture("jira/issue-updated-approved.json");
    event["issue"]["key"] = json!(key);
    event["issue"]["id"] = json!(id);
    event["issue"]["fields"]["status"]["name"] = json!(status);
    event["changelog"]["items"][0]["toString"] = json!(status);
    event["timestamp"] = json!(1_764_316_800_000i64 + i64::from(status.len() as u32));
    event.to_string()
}

/// JSM and Jira for tickets ACCESS-42 (issue 10042) and ACCESS-43 (10043): approved on read-back, comments and
/// transitions accepted.
async fn jira_approves(fakes: &Fakes) {
    for (key, id) in [("ACCESS-42", "10042"), ("ACCESS-43", "10043")] {
        Mock::given(method("GET"))
            .and(path(format!("/rest/servicedeskapi/request/{key}/approval")))
            .respond_with(ResponseTemplate::new(200).set_body_json(json_fixture("jira/approvals-approved.json")))
            .mount(&fakes.jira)
            .await;
        let mut issue = json_fixture("jira/issue-updated-approved.json")["issue"].clone();
        issue["key"] = json!(key);
        issue["id"] = json!(id);
        Mock::given(method("GET"))
            .and(path(format!("/rest/api/3/issue/{key}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(issue))
            .mount(&fakes.jira)
            .await;
    }
    jira_callbacks_answered(fakes).await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/servicedeskapi/request/[^/]+/comment$"))
        .respond_with(comment_created())
        .mount(&fakes.jira)
        .await;
}

/// Graph removes Riley from the portal group: `204 No Content`.
async fn removal_accepted(fakes: &Fakes) {
    Mock::given(method("DELETE"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}/members/{RILEY_ID}/$ref")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.entra)
        .await;
}

/// Graph's answer to removing someone who is not (or no longer) a member.
fn not_a_member() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({"error": {
        "code": "Request_ResourceNotFound",
        "message": format!("Resource '{RILEY_ID}' does not exist or one of its queried reference-property objects are not present."),
        "innerError": {"date": "2026-11-28T09:00:00", "request-id": "4f0e2a1c-0000-4000-8000-000000000001"}
    }}))
}

async fn membership_deletes(fakes: &Fakes) -> Vec<Request> {
    writes(&fakes.entra).await.into_iter().filter(|r| r.method.as_str() == "DELETE").collect()
}

async fn membership_adds(fakes: &Fakes) -> Vec<Request> {
    writes(&fakes.entra)
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == "PATCH" && r.url.path().starts_with("/v1.0/groups/"))
        .collect()
}

/// The comments posted to tickets, as text.
async fn comments(fakes: &Fakes) -> Vec<String> {
    writes(&fakes.jira)
        .await
        .into_iter()
        .filter(|r| r.url.path().ends_with("/comment"))
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn containing<'a>(all: &'a [String], text: &str) -> Vec<&'a String> {
    all.iter().filter(|c| c.contains(text)).collect()
}

async fn only_grant(store: &Store, ticket: &str) -> GrantRecord {
    let grants = store.grants_for_ticket("jira", ticket).await.unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    grants.into_iter().next().unwrap()
}

/// Decides, executes and calls back until nothing is due at the clock's time.
async fn run_all(app: &TestApp) {
    app.worker.run_pending().await.unwrap();
    app.executor.run_pending().await.unwrap();
    app.callbacker.run_pending().await.unwrap();
}

async fn audit_kinds(store: &Store, grant_id: &str) -> Vec<(String, String, Value)> {
    store
        .audit_entries(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.grant_id.as_deref() == Some(grant_id))
        .map(|e| (e.kind, e.actor, serde_json::from_str(&e.detail).unwrap()))
        .collect()
}

async fn app_at(backend: Backend, fakes: &Fakes, policy: &str) -> (TestApp, Arc<ManualClock>) {
    let clock = ManualClock::starting_now();
    let rest = format!("{CALLBACKS}\n{policy}{}", admin_tokens());
    let app = spawn_with_clock(backend, fakes, "", &rest, clock.clone()).await;
    (app, clock)
}

both_backends! {
    async fn an_eight_hour_membership_is_noticed_then_removed_once_when_the_clock_passes_eight_hours(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, clock) = app_at(backend, &fakes, EIGHT_HOURS).await;
        let granted_at = grantbridge::clock::Clock::now_ms(&*clock);
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        assert_eq!(membership_adds(&fakes).await.len(), 1);
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(grant.state, "active");
        assert_eq!(grant.expires_at_ms, Some(granted_at + 8 * 3600 * 1000), "eight hours from the clock's time");

        // Six hours in: nothing ends, no notice yet.
        clock.advance(6 * HOUR);
        run_all(&app).await;
        assert!(membership_deletes(&fakes).await.is_empty());
        assert!(containing(&comments(&fakes).await, "ends soon").is_empty(), "the notice waits for its window");

        // Seven and a half hours in: inside the hour before the end, the notice is posted, once.
        clock.advance(HOUR + HOUR / 2);
        run_all(&app).await;
        let posted = comments(&fakes).await;
        let notices = containing(&posted, "ends soon");
        assert_eq!(notices.len(), 1, "{posted:?}");
        assert!(notices[0].contains("new approval") && notices[0].contains("never automatic"), "{}", notices[0]);
        assert!(membership_deletes(&fakes).await.is_empty());

        // Past eight hours: Riley is removed from the group once, and the ticket is told once.
        clock.advance(HOUR);
        run_all(&app).await;
        let deletes = membership_deletes(&fakes).await;
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        let posted = comments(&fakes).await;
        let removed = containing(&posted, "has been removed");
        assert_eq!(removed.len(), 1, "{posted:?}");
        assert!(removed[0].contains("expired"), "{}", removed[0]);
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(grant.state, "expired");
        assert_eq!(grant.ended_reason.as_deref(), Some("expired"));
        assert_eq!(grant.ended_by.as_deref(), Some("grantbridge"));
        let audit = audit_kinds(&app.store, &grant.id).await;
        assert_eq!(audit.iter().filter(|(k, _, _)| k == "expired").count(), 1, "{audit:?}");

        // Running everything again, even much later and on another replica, sends nothing more.
        clock.advance(24 * HOUR);
        run_all(&app).await;
        app.others.1.run_pending().await.unwrap();
        app.others.2.run_pending().await.unwrap();
        assert_eq!(membership_deletes(&fakes).await.len(), 1);
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1);
        assert_eq!(containing(&comments(&fakes).await, "ends soon").len(), 1);
    }
}

both_backends! {
    async fn a_ticket_cancelled_after_its_grant_takes_the_access_back_and_says_so(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, _clock) = app_at(backend, &fakes, EIGHT_HOURS).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "active");

        let (cancel, _) = app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        run_all(&app).await;

        assert_eq!(membership_deletes(&fakes).await.len(), 1);
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(grant.state, "revoked");
        assert_eq!(grant.ended_reason.as_deref(), Some("withdrawn: cancelled"));
        let posted = comments(&fakes).await;
        let removed = containing(&posted, "has been removed");
        assert_eq!(removed.len(), 1, "{posted:?}");
        assert!(removed[0].contains("withdrawn") && removed[0].contains("cancelled"), "{}", removed[0]);
        assert!(containing(&posted, "ends soon").is_empty(), "the queued notice was cancelled: {posted:?}");
        let id = grantbridge::domain::EventId::parse(&cancel).unwrap();
        let decision: Value = serde_json::from_str(&app.store.decision(id).await.unwrap().unwrap().detail).unwrap();
        assert_eq!(decision["withdrawn"]["action"], "cancelled", "{decision}");
        assert_eq!(decision["withdrawn"]["grants"][0]["grant_id"], grant.id.as_str(), "{decision}");
        let audit = audit_kinds(&app.store, &grant.id).await;
        assert_eq!(audit.iter().filter(|(k, _, _)| k == "revoked").count(), 1, "{audit:?}");
    }
}

both_backends! {
    async fn a_ticket_cancelled_before_its_grant_ran_never_reaches_entra(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, _clock) = app_at(backend, &fakes, EIGHT_HOURS).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        app.worker.run_pending().await.unwrap();
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "pending");

        app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        run_all(&app).await;

        assert!(membership_adds(&fakes).await.is_empty(), "never added");
        assert!(membership_deletes(&fakes).await.is_empty(), "nothing to remove");
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!((grant.state.as_str(), grant.ended_reason.as_deref()), ("revoked", Some("withdrawn: cancelled")));
    }
}

both_backends! {
    async fn a_membership_two_tickets_granted_is_removed_only_when_both_have_ended(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, _clock) = app_at(backend, &fakes, UNTIL_REVOKED).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        app.send("jira", jira_event("ACCESS-43", "10043", "Approved")).await;
        run_all(&app).await;
        let first = only_grant(&app.store, "ACCESS-42").await;
        let second = only_grant(&app.store, "ACCESS-43").await;
        assert_ne!(first.id, second.id);
        assert_eq!((first.state.as_str(), second.state.as_str()), ("active", "active"));

        app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        run_all(&app).await;
        assert!(membership_deletes(&fakes).await.is_empty(), "ACCESS-43 still needs the membership");
        let first = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(first.state, "revoked");
        let reason = first.ended_reason.clone().unwrap();
        assert!(reason.contains(&format!("kept for grant {} of ticket ACCESS-43", second.id)), "{reason}");
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1, "ACCESS-42 is told");
        let audit = audit_kinds(&app.store, &first.id).await;
        let revoked: Vec<_> = audit.iter().filter(|(k, _, _)| k == "revoked").collect();
        assert_eq!(revoked.len(), 1, "{audit:?}");
        assert_eq!(revoked[0].2["removed_upstream"], false);

        app.send("jira", jira_event("ACCESS-43", "10043", "Cancelled")).await;
        run_all(&app).await;
        assert_eq!(membership_deletes(&fakes).await.len(), 1, "the last grant ended: removed once");
        assert_eq!(only_grant(&app.store, "ACCESS-43").await.state, "revoked");
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 2);
    }
}

/// Graph answers the first removal `204` and any later one `404` (the membership is gone).
struct GoneAfterFirst(Arc<AtomicUsize>);

impl wiremock::Respond for GoneAfterFirst {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.0.fetch_add(1, Ordering::SeqCst) == 0 { ResponseTemplate::new(204) } else { not_a_member() }
    }
}

both_backends! {
    async fn a_revocation_abandoned_by_a_crashed_executor_is_finished_by_another_once(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        let (app, clock) = app_at(backend, &fakes, UNTIL_REVOKED).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        app.worker.run_pending().await.unwrap();

        // A replica claims the revocation, removes the membership itself, and dies before recording it.
        let lease = Duration::from_secs(30);
        let now = grantbridge::clock::Clock::now_ms(&*clock);
        let crashed = app.store.claim_job("crashed-replica", now, lease).await.unwrap().expect("the revoke job is due");
        assert_eq!(crashed.kind, "revoke");
        let calls = Arc::new(AtomicUsize::new(0));
        Mock::given(method("DELETE"))
            .and(path(format!("/v1.0/groups/{PORTAL_GROUP}/members/{RILEY_ID}/$ref")))
            .respond_with(GoneAfterFirst(calls.clone()))
            .mount(&fakes.entra)
            .await;
        let removed = reqwest::Client::new()
            .delete(format!("{}/v1.0/groups/{PORTAL_GROUP}/members/{RILEY_ID}/$ref", fakes.entra.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 204, "the crashed replica's removal went through");

        // While its lease holds, nobody else touches the job.
        app.executor.run_pending().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "active");

        // After the lease: another executor takes it over; Graph's 404 "not a member" counts as done.
        clock.advance(lease + Duration::from_secs(1));
        app.others.1.run_pending().await.unwrap();
        app.callbacker.run_pending().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one retry of the removal");
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(grant.state, "revoked");
        let result = grantbridge::store::JobResult::Done { grant_state: "revoked", upstream_id: None, expires_at_ms: None };
        let kept = app.store.finish_job(&crashed, "crashed-replica", &result, now).await.unwrap();
        assert!(!kept, "the crashed replica's late answer is discarded");
        run_all(&app).await;
        clock.advance(HOUR);
        run_all(&app).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1, "one comment");
        let audit = audit_kinds(&app.store, &grant.id).await;
        assert_eq!(audit.iter().filter(|(k, _, _)| k == "revoked").count(), 1, "ended once: {audit:?}");
    }
}

/// PIM's schedule instances for Riley's membership: still listed on the first look, gone afterwards.
struct ListedOnce(Arc<AtomicUsize>);

impl wiremock::Respond for ListedOnce {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let value = if self.0.fetch_add(1, Ordering::SeqCst) == 0 {
            json!([{"id": "instance-1", "groupId": PIM_GROUP, "principalId": RILEY_ID, "accessId": "member",
                    "memberType": "direct", "assignmentType": "assigned"}])
        } else {
            json!([])
        };
        ResponseTemplate::new(200).set_body_json(json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identityGovernance/privilegedAccess/group/assignmentScheduleInstances",
            "value": value
        }))
    }
}

both_backends! {
    async fn a_pim_assignment_is_checked_and_marked_expired_without_a_removal(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        Mock::given(method("POST"))
            .and(path("/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleRequests"))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({
                "id": "9f1c7d52-4a3b-4e6c-8d2f-1a0b9c8e7d65", "status": "Provisioned", "action": "adminAssign",
                "accessId": "member", "principalId": RILEY_ID, "groupId": PIM_GROUP
            })))
            .mount(&fakes.entra)
            .await;
        let looks = Arc::new(AtomicUsize::new(0));
        Mock::given(method("GET"))
            .and(path("/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleInstances"))
            .respond_with(ListedOnce(looks.clone()))
            .mount(&fakes.entra)
            .await;
        let (app, clock) = app_at(backend, &fakes, PIM_8H).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "active");

        clock.advance(8 * HOUR + Duration::from_secs(1));
        run_all(&app).await;
        assert_eq!(looks.load(Ordering::SeqCst), 1);
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "active", "still listed: looked at again later");

        clock.advance(Duration::from_secs(120));
        run_all(&app).await;
        assert_eq!(looks.load(Ordering::SeqCst), 2);
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!((grant.state.as_str(), grant.ended_reason.as_deref()), ("expired", Some("expired")));
        let requests = app_writes_to_pim(&fakes).await;
        assert_eq!(requests.len(), 1, "the assignment only, no adminRemove: {requests:?}");
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1);
        let audit = audit_kinds(&app.store, &grant.id).await;
        assert_eq!(audit.iter().filter(|(k, _, _)| k == "expired").count(), 1, "{audit:?}");
    }
}

async fn app_writes_to_pim(fakes: &Fakes) -> Vec<Value> {
    writes(&fakes.entra)
        .await
        .into_iter()
        .filter(|r| r.url.path().contains("assignmentScheduleRequests"))
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap())
        .collect()
}

async fn post_revoke(app: &TestApp, grant: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = app.client.post(format!("{}/v1/grants/{grant}/revoke", app.address)).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

both_backends! {
    async fn an_operator_revokes_a_grant_through_the_admin_api_once(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, _clock) = app_at(backend, &fakes, EIGHT_HOURS).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        app.worker.run_pending().await.unwrap();
        let pending = only_grant(&app.store, "ACCESS-42").await;
        let reason = json!({"reason": "left the billing team"});
        let (status, answer) = post_revoke(&app, &pending.id, Some(OPERATE_TOKEN), reason.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (409, Some("grant_not_active")), "{answer}");
        run_all(&app).await;
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(grant.state, "active");

        let (status, answer) = post_revoke(&app, &grant.id, None, reason.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (401, Some("unauthorized")));
        let (status, answer) = post_revoke(&app, &grant.id, Some(READ_TOKEN), reason.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("insufficient_role")));
        for bad in [json!({}), json!({"reason": "  "}), json!({"reason": "x".repeat(501)}), json!({"reason": 3})] {
            let (status, answer) = post_revoke(&app, &grant.id, Some(OPERATE_TOKEN), bad.clone()).await;
            assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_body")), "{bad}");
        }
        let (status, answer) = post_revoke(&app, "no-such-grant", Some(OPERATE_TOKEN), reason.clone()).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (404, Some("unknown_grant")));
        assert!(membership_deletes(&fakes).await.is_empty(), "refused requests change nothing");

        let (status, answer) = post_revoke(&app, &grant.id, Some(OPERATE_TOKEN), reason.clone()).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!((answer["revocation"].as_str(), answer["grant"]["id"].as_str()), (Some("queued"), Some(&*grant.id)));
        let (status, answer) = post_revoke(&app, &grant.id, Some(OPERATE_TOKEN), reason.clone()).await;
        assert_eq!((status, answer["revocation"].as_str()), (200, Some("unchanged")), "{answer}");
        run_all(&app).await;

        assert_eq!(membership_deletes(&fakes).await.len(), 1);
        let revoked = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!(revoked.state, "revoked");
        assert_eq!(revoked.ended_reason.as_deref(), Some("operator: left the billing team"));
        assert_eq!(revoked.ended_by.as_deref(), Some("on-call"));
        let posted = comments(&fakes).await;
        let removed = containing(&posted, "has been removed");
        assert_eq!(removed.len(), 1, "{posted:?}");
        assert!(removed[0].contains("left the billing team"), "{}", removed[0]);

        let (status, answer) = post_revoke(&app, &grant.id, Some(OPERATE_TOKEN), reason).await;
        assert_eq!((status, answer["revocation"].as_str()), (200, Some("unchanged")));
        assert_eq!(answer["grant"]["ended_by"], "on-call", "{answer}");
        run_all(&app).await;
        assert_eq!(membership_deletes(&fakes).await.len(), 1);
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1);
        let audit = audit_kinds(&app.store, &grant.id).await;
        let operator: Vec<_> = audit.iter().filter(|(k, _, _)| k == "operator_action").collect();
        assert_eq!(operator.len(), 1, "{audit:?}");
        assert_eq!(operator[0].1, "on-call");
        assert_eq!(operator[0].2["reason"], "left the billing team");
        assert_eq!(audit.iter().filter(|(k, _, _)| k == "revoked").count(), 1, "{audit:?}");

        // Later approval events of the same ticket (Jira repeats them) never grant it again.
        app.send("jira", jira_event("ACCESS-42", "10042", "approved")).await;
        run_all(&app).await;
        assert_eq!(membership_adds(&fakes).await.len(), 1, "the revoked grant is not made again");
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "revoked");
    }
}

both_backends! {
    async fn a_ticket_cancelled_while_its_grant_runs_is_revoked_right_after_it(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, clock) = app_at(backend, &fakes, UNTIL_REVOKED).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        app.worker.run_pending().await.unwrap();
        // Another replica is adding Riley to the group right now.
        let now = grantbridge::clock::Clock::now_ms(&*clock);
        let adding = app.store.claim_job("slow-replica", now, Duration::from_secs(600)).await.unwrap().unwrap();
        assert_eq!(adding.kind, "grant");

        app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        app.worker.run_pending().await.unwrap();
        app.executor.run_pending().await.unwrap();
        assert!(membership_deletes(&fakes).await.is_empty(), "nothing to remove while the add is under way");
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "pending");

        // The add lands; the revocation, looking again shortly after, removes it.
        let added = grantbridge::store::JobResult::Done { grant_state: "active", upstream_id: None, expires_at_ms: None };
        assert!(app.store.finish_job(&adding, "slow-replica", &added, now).await.unwrap());
        clock.advance(Duration::from_secs(6));
        run_all(&app).await;
        assert_eq!(membership_deletes(&fakes).await.len(), 1);
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!((grant.state.as_str(), grant.ended_reason.as_deref()), ("revoked", Some("withdrawn: cancelled")));
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1);
    }
}

both_backends! {
    async fn a_membership_removed_while_another_ticket_granted_it_is_added_back(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        group_member_writes_accepted(&fakes).await;
        removal_accepted(&fakes).await;
        let (app, clock) = app_at(backend, &fakes, UNTIL_REVOKED).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Cancelled")).await;
        app.worker.run_pending().await.unwrap();

        // A replica takes the revocation and finds nobody else needing the membership...
        let now = grantbridge::clock::Clock::now_ms(&*clock);
        let revoking = app.store.claim_job("replica", now, Duration::from_secs(600)).await.unwrap().unwrap();
        assert_eq!(revoking.kind, "revoke");
        assert_eq!(app.store.check_shared_access(&revoking, "replica", now).await.unwrap(), SharedAccess::Remove);
        // ...while ACCESS-43, for the same membership, is granted (Graph: already a member)...
        app.send("jira", jira_event("ACCESS-43", "10043", "Approved")).await;
        run_all(&app).await;
        let second = only_grant(&app.store, "ACCESS-43").await;
        assert_eq!(second.state, "active");
        assert_eq!(membership_adds(&fakes).await.len(), 2);
        // ...and then removes it.
        let removed = reqwest::Client::new()
            .delete(format!("{}/v1.0/groups/{PORTAL_GROUP}/members/{RILEY_ID}/$ref", fakes.entra.uri()))
            .send()
            .await
            .unwrap();
        assert_eq!(removed.status(), 204);
        let done = grantbridge::store::JobResult::Done { grant_state: "revoked", upstream_id: None, expires_at_ms: None };
        assert!(app.store.finish_job(&revoking, "replica", &done, now).await.unwrap());

        // ACCESS-43's grant is executed again: Riley is a member again.
        run_all(&app).await;
        let adds = membership_adds(&fakes).await;
        assert_eq!(adds.len(), 3, "added back once: {adds:?}");
        assert_eq!(only_grant(&app.store, "ACCESS-43").await.state, "active");
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "revoked");
        run_all(&app).await;
        assert_eq!(membership_adds(&fakes).await.len(), 3);
    }
}

const SUBSCRIPTION: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// Reader.
const READER: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn rbac_8h() -> String {
    format!(
        r#"
[[policy.rules]]
name = "rg-reader-8h"
request_types = ["Permissions portal access"]
default_duration = "8h"
[[policy.rules.grants]]
kind = "azure_rbac"
scope = "/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-portal"
role_definition_id = "{READER}"
label = "Reader on rg-portal"
"#
    )
}

/// ARM's role assignments on the Entra fake (the config's `arm_url`): PUT answers 201 with the assignment, DELETE
/// answers 200 with the assignment it deleted, as documented for `Role Assignments - Delete`.
async fn arm_accepts_assignments(fakes: &Fakes) {
    let assignment = json!({
        "type": "Microsoft.Authorization/roleAssignments",
        "properties": {
            "roleDefinitionId": format!("/subscriptions/{SUBSCRIPTION}/providers/Microsoft.Authorization/roleDefinitions/{READER}"),
            "principalId": RILEY_ID, "principalType": "User",
            "scope": format!("/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-portal"),
        }
    });
    for (verb, status) in [("PUT", 201), ("DELETE", 200)] {
        Mock::given(method(verb))
            .and(path_regex(r"^/subscriptions/.+/providers/Microsoft\.Authorization/roleAssignments/[0-9a-f-]{36}$"))
            .respond_with(ResponseTemplate::new(status).set_body_json(assignment.clone()))
            .mount(&fakes.entra)
            .await;
    }
}

async fn arm_writes(fakes: &Fakes, verb: &str) -> Vec<Request> {
    writes(&fakes.entra)
        .await
        .into_iter()
        .filter(|r| r.method.as_str() == verb && r.url.path().contains("/roleAssignments/"))
        .collect()
}

both_backends! {
    async fn an_eight_hour_azure_role_assignment_is_deleted_once_when_the_clock_passes_eight_hours(backend: Backend) {
        let fakes = fakes().await;
        jira_approves(&fakes).await;
        arm_accepts_assignments(&fakes).await;
        let (app, clock) = app_at(backend, &fakes, &rbac_8h()).await;
        app.send("jira", jira_event("ACCESS-42", "10042", "Approved")).await;
        run_all(&app).await;
        let put = arm_writes(&fakes, "PUT").await;
        assert_eq!(put.len(), 1);
        assert_eq!(only_grant(&app.store, "ACCESS-42").await.state, "active");

        clock.advance(8 * HOUR - HOUR / 60);
        run_all(&app).await;
        assert!(arm_writes(&fakes, "DELETE").await.is_empty(), "not before its end");

        clock.advance(HOUR / 30);
        run_all(&app).await;
        let deletes = arm_writes(&fakes, "DELETE").await;
        assert_eq!(deletes.len(), 1, "{deletes:?}");
        assert_eq!(deletes[0].url.path(), put[0].url.path(), "the assignment that was made is the one deleted");
        let grant = only_grant(&app.store, "ACCESS-42").await;
        assert_eq!((grant.state.as_str(), grant.ended_reason.as_deref()), ("expired", Some("expired")));
        assert_eq!(containing(&comments(&fakes).await, "has been removed").len(), 1);

        clock.advance(24 * HOUR);
        run_all(&app).await;
        app.others.1.run_pending().await.unwrap();
        assert_eq!(arm_writes(&fakes, "DELETE").await.len(), 1, "deleted once");
    }
}
