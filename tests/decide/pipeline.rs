//! Stored webhook -> worker -> decision, with Jira, ServiceNow, the token endpoint and Graph as local fakes.

use grantbridge::startup::Application;
use serde_json::{Value, json};
use sha2::Digest;
use wiremock::matchers::{body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::both_backends;
use crate::common::entra::{entra_table, portal_rule, token_endpoint};
use crate::common::{Backend, TempDir, fixture, settings_from};
use crate::harness::{
    AVERY_ID, Fakes, PORTAL_GROUP, RILEY_ID, TestApp, bare_fakes, config, fakes, group_member_writes_accepted,
    group_member_writes_throttled, jira_issue, jira_reads, json_fixture, servicenow_reads, writable_group,
};

const APPROVERS_GROUP: &str = "11111111-2222-4333-8444-555555555555";

async fn mount_not_found_users(fakes: &Fakes) {
    Mock::given(method("GET"))
        .and(path_regex("^/v1.0/users/.+"))
        .respond_with(ResponseTemplate::new(404).set_body_json(
            json!({"error": {"code": "Request_ResourceNotFound", "message": "Resource does not exist."}}),
        ))
        .mount(&fakes.entra)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .mount(&fakes.entra)
        .await;
}

/// The admin token that may call `/v1/plan`; the config holds only its SHA-256.
const PLAN_TOKEN: &str = "pipeline-plan-token-7b1e4c";

/// What follows `[entra]` in these tests' config: the planner's admin token and the portal rule, `rule_extra` in it.
fn policy(rule_extra: &str) -> String {
    format!(
        "\n[[admin.tokens]]\nname = \"planner\"\nsha256 = \"{planner}\"\nrole = \"read\"\n{rule}",
        planner = hex::encode(sha2::Sha256::digest(PLAN_TOKEN.as_bytes())),
        rule = portal_rule(rule_extra, ""),
    )
}

async fn spawn(backend: Backend, fakes: &Fakes, rule_extra: &str, workers_extra: &str) -> TestApp {
    crate::harness::spawn(backend, fakes, workers_extra, &policy(rule_extra)).await
}

async fn jira_says(fakes: &Fakes, approvals: &str, issue: Value) {
    jira_reads(fakes, json_fixture(approvals), issue).await;
}

both_backends! {
    async fn servicenow_approval_confirmed_becomes_a_plan_for_the_resolved_user(backend: Backend) {
        let fakes = fakes().await;
        servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
        let app = spawn(backend, &fakes, "", "").await;
        let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        let detail = app.decision(&id).await;
        let plan = &detail["decision"];
        assert_eq!(plan["outcome"], "plan", "{detail}");
        assert_eq!(plan["confirmation"]["status"], "confirmed");
        assert_eq!(plan["principal"]["object_id"], RILEY_ID);
        assert_eq!(plan["grants"][0]["target"], json!({"kind": "group_member", "group_id": PORTAL_GROUP}));
        assert_eq!(plan["dry_run"], false);
        assert_eq!(detail["ticket"]["ticket_key"], "RITM0010001");
        let event = app.store.event(grantbridge::domain::EventId::parse(&id).unwrap()).await.unwrap().unwrap();
        assert_eq!(event.state, "decided");
        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!(ledger.len(), 1, "the plan's grant is queued with the decision");
        assert_eq!((ledger[0].state.as_str(), ledger[0].principal_id.as_str()), ("pending", RILEY_ID));
        assert!(ledger[0].target.contains(PORTAL_GROUP));
    }
}

#[tokio::test]
async fn servicenow_read_back_still_pending_refuses() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-requested.json").await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["outcome"], "refused", "{detail}");
    assert_eq!(detail["decision"]["code"], "not_approved");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("`requested`"), "{detail}");
    let requests = fakes.entra.received_requests().await.unwrap();
    assert!(requests.is_empty(), "nobody is looked up in Entra for a refused ticket");
}

#[tokio::test]
async fn jira_pending_approval_refuses_and_confirmed_one_plans() {
    let fakes = fakes().await;
    jira_says(&fakes, "jira/approvals-pending.json", jira_issue()).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "not_approved", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("still pending"));

    let fakes = fakes_with_jira("jira/approvals-approved.json", jira_issue()).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["outcome"], "plan", "{detail}");
    assert_eq!(detail["decision"]["principal"]["object_id"], RILEY_ID);
    assert!(detail["decision"]["confirmation"]["detail"].as_str().unwrap().contains("Avery Approver"));
}

async fn fakes_with_jira(approvals: &str, issue: Value) -> Fakes {
    let fakes = fakes().await;
    jira_says(&fakes, approvals, issue).await;
    fakes
}

#[tokio::test]
async fn jira_read_back_naming_another_person_refuses() {
    let mut issue = jira_issue();
    issue["fields"]["reporter"] = json!({"accountId": "557058:someone-else", "displayName": "Someone Else"});
    let fakes = fakes_with_jira("jira/approvals-approved.json", issue).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "confirmation_failed", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("Someone Else"), "{detail}");
}

#[tokio::test]
async fn an_unknown_receiver_is_refused_not_retried() {
    let fakes = bare_fakes().await;
    mount_not_found_users(&fakes).await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "principal_not_found", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("riley.requester@example.com"));
}

#[tokio::test]
async fn an_approver_outside_the_required_group_is_refused() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    Mock::given(method("POST"))
        .and(path(format!("/v1.0/users/{AVERY_ID}/checkMemberGroups")))
        .and(body_string_contains(APPROVERS_GROUP))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": []})))
        .mount(&fakes.entra)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, &format!("approver_group = \"{APPROVERS_GROUP}\""), "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "approver_not_authorized", "{detail}");
}

#[tokio::test]
async fn an_unreachable_ticketing_system_is_retried_then_refused() {
    let fakes = fakes().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
        .mount(&fakes.servicenow)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, "", "max_attempts = 1").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "confirmation_unavailable", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("gave up after 1 attempts"), "{detail}");
    let calls = fakes.servicenow.received_requests().await.unwrap().len();
    assert!(calls >= 2, "the client retried the 503 before the worker gave up ({calls} calls)");
}

#[tokio::test]
async fn plan_over_http_offline_and_confirmed() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let payload = json_fixture("servicenow/ritm-approved.json");
    let ask = |confirm: bool| {
        app.client
            .post(format!("{}/v1/plan", app.address))
            .bearer_auth(PLAN_TOKEN)
            .json(&json!({"source": "servicenow", "payload": payload, "confirm": confirm}))
            .send()
    };
    let offline: Value = ask(false).await.unwrap().json().await.unwrap();
    assert_eq!(offline["decision"]["outcome"], "plan", "{offline}");
    assert_eq!(offline["decision"]["confirmation"]["status"], "skipped");
    assert_eq!(offline["decision"]["dry_run"], true, "an offline plan is only a preview");
    assert!(fakes.servicenow.received_requests().await.unwrap().is_empty(), "offline means no network");

    let confirmed: Value = ask(true).await.unwrap().json().await.unwrap();
    assert_eq!(confirmed["decision"]["confirmation"]["status"], "confirmed", "{confirmed}");
    assert_eq!(confirmed["decision"]["principal"]["object_id"], RILEY_ID);
    assert_eq!(app.store.count_events().await.unwrap(), 0, "planning stores nothing");

    let anonymous = app.client.post(format!("{}/v1/plan", app.address)).json(&json!({})).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "planning needs an admin token");
    let unknown = app
        .client
        .post(format!("{}/v1/plan", app.address))
        .bearer_auth(PLAN_TOKEN)
        .json(&json!({"source": "nope", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let bad = app
        .client
        .post(format!("{}/v1/plan", app.address))
        .bearer_auth(PLAN_TOKEN)
        .body("{\"source\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["error"]["code"], "malformed_payload");
}

async fn load_with_group_name(entra: &MockServer, groups: Value) -> Result<grantbridge::config::Settings, String> {
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "value": groups })))
        .mount(entra)
        .await;
    let dir = TempDir::new();
    let secret = dir.write("c", "entra-client-secret");
    let hub = dir.write("h", "hub-secret");
    let config = dir.write(
        "named.toml",
        format!(
            r#"
[sources.jira]
kind = "jira"
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{{ file = "{hub}" }}]

{entra}
[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
[[policy.rules.grants]]
kind = "group_member"
group_name = "EPM - User Portal Access"
"#,
            hub = hub.display(),
            entra = entra_table(&entra.uri(), &secret.display().to_string()),
        ),
    );
    grantbridge::config::Settings::load_online(&config).await.map_err(|e| e.to_string())
}

fn group(id: &str, types: &[&str], synced: Option<bool>) -> Value {
    json!({"id": id, "displayName": "EPM - User Portal Access", "groupTypes": types, "onPremisesSyncEnabled": synced, "isAssignableToRole": false})
}

#[tokio::test]
async fn a_group_named_in_the_policy_is_resolved_and_checked_at_load() {
    let fakes = fakes().await;
    let settings = load_with_group_name(&fakes.entra, json!([group(PORTAL_GROUP, &[], None)])).await.unwrap();
    let targets = settings.policy.declared_targets();
    assert_eq!(targets[0].target, grantbridge::domain::GrantTarget::GroupMember { group_id: PORTAL_GROUP.into() });
    assert_eq!(targets[0].label, "EPM - User Portal Access");
    let asked = fakes.entra.received_requests().await.unwrap();
    let query = asked.iter().find(|r| r.url.path() == "/v1.0/groups").unwrap().url.query().unwrap_or("").to_string();
    assert!(query.contains("displayName"), "{query}");

    let cases = [
        (json!([]), "no Entra group has this display name"),
        (json!([group(PORTAL_GROUP, &[], None), group(RILEY_ID, &[], None)]), "2 Entra groups have this display name"),
        (json!([group(PORTAL_GROUP, &["DynamicMembership"], None)]), "has dynamic membership"),
        (json!([group(PORTAL_GROUP, &[], Some(true))]), "is synced from on-premises"),
    ];
    for (groups, expected) in cases {
        let fresh = MockServer::start().await;
        token_endpoint(&fresh).await;
        let err = load_with_group_name(&fresh, groups).await.unwrap_err();
        assert!(err.contains("group_name `EPM - User Portal Access`") && err.contains(expected), "{err}");
    }
}

#[test]
fn a_group_name_without_entra_is_refused_offline() {
    let text = "[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"shared_secret_header\"\nheader = \"X-T\"\nsecrets = [{ env = \"PATH\" }]\n[[policy.rules]]\nname = \"r\"\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_name = \"Some Group\"\n";
    let err = grantbridge::config::Settings::parse(text, "offline.toml", &grantbridge::config::EnvOverrides::none())
        .unwrap_err();
    assert!(err.to_string().contains("needs [entra]"), "{err}");
}

#[tokio::test]
async fn an_approval_revoked_after_the_webhook_is_refused() {
    let mut declined = json_fixture("jira/approvals-approved.json");
    declined["values"][0]["finalDecision"] = json!("declined");
    declined["values"][0]["approvers"][0]["approverDecision"] = json!("declined");
    let fakes = fakes().await;
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACCESS-42/approval"))
        .respond_with(ResponseTemplate::new(200).set_body_json(declined))
        .mount(&fakes.jira)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "not_approved", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("declined"), "{detail}");
    assert!(fakes.entra.received_requests().await.unwrap().is_empty(), "nothing is looked up for a refusal");
}

async fn member_writes(fakes: &Fakes) -> Vec<wiremock::Request> {
    let requests = fakes.entra.received_requests().await.unwrap();
    requests.into_iter().filter(|r| r.method.as_str() != "GET" && r.url.path().starts_with("/v1.0/groups/")).collect()
}

both_backends! {
    async fn an_approved_request_ends_as_an_active_group_membership(backend: Backend) {
        let fakes = fakes().await;
        servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
        writable_group(&fakes, json!([])).await;
        group_member_writes_accepted(&fakes).await;
        let app = spawn(backend, &fakes, "", "").await;
        let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        assert_eq!(app.decision(&id).await["decision"]["outcome"], "plan");
        assert_eq!(app.executor.run_pending().await.unwrap(), 1);

        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!(ledger[0].state, "active", "{ledger:?}");
        assert_eq!(ledger[0].expires_at_ms, None, "no duration: until revoked");
        let writes = member_writes(&fakes).await;
        assert_eq!(writes.len(), 1);
        let body: Value = serde_json::from_slice(&writes[0].body).unwrap();
        let bound = body["members@odata.bind"].as_array().unwrap();
        assert_eq!(bound.len(), 1);
        assert!(bound[0].as_str().unwrap().ends_with(&format!("/directoryObjects/{RILEY_ID}")), "{body}");
        assert_eq!(app.executor.run_pending().await.unwrap(), 0, "nothing left to do");
    }
}

#[tokio::test]
async fn graph_throttling_is_waited_out_and_the_grant_made_once() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    writable_group(&fakes, json!([])).await;
    group_member_writes_throttled(&fakes, 1).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    app.decision(&id).await;
    let started = std::time::Instant::now();
    app.executor.run_pending().await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "Retry-After was honoured");
    assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap()[0].state, "active");
    assert_eq!(member_writes(&fakes).await.len(), 2, "one throttled write, one that went through");
}

#[tokio::test]
async fn a_dynamic_group_is_refused_before_any_write() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    writable_group(&fakes, json!(["DynamicMembership", "Unified"])).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    app.decision(&id).await;
    app.executor.run_pending().await.unwrap();
    let grant = &app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap()[0];
    assert_eq!(grant.state, "failed");
    assert!(grant.last_error.as_deref().unwrap().contains("dynamic membership"), "{grant:?}");
    assert!(member_writes(&fakes).await.is_empty(), "nothing was written");
    let letters = app.store.dead_jobs(10).await.unwrap();
    assert_eq!(letters.len(), 1);
}

#[tokio::test]
async fn the_same_ticket_decided_twice_is_granted_once() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    writable_group(&fakes, json!([])).await;
    group_member_writes_accepted(&fakes).await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let body = std::fs::read_to_string(fixture("servicenow/ritm-approved.json")).unwrap();
    // ServiceNow sends the record again after an unrelated update: a new event, the same ticket.
    let again = body.replace("2026-11-28 07:00:00", "2026-11-28 07:05:00");
    let (a, b) = tokio::join!(app.deliver_body("servicenow", body), app.deliver_body("servicenow", again));
    assert_ne!(a, b, "two events");
    app.decision(&a).await;
    app.decision(&b).await;
    app.executor.run_pending().await.unwrap();
    assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap().len(), 1);
    assert_eq!(member_writes(&fakes).await.len(), 1, "one write to Graph");
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
async fn a_replica_is_woken_by_work_stored_by_another() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    let app = spawn(Backend::Postgres, &fakes, "", "").await;
    // A second replica on the same database, deciding in the background, polling only once a minute.
    let dir = TempDir::new();
    let other = settings_from(&config(&fakes, &dir, "count = 1\npoll_ms = 60000", &policy("")), &app.db);
    let other = Application::build(other).await.unwrap();
    let handle = other.handle();
    tokio::spawn(other.run_until_stopped());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await; // its LISTEN is in place

    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let event = grantbridge::domain::EventId::parse(&id).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.store.decision(event).await.unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "the other replica was not woken by the notification");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    handle.stop(true).await;
}

#[tokio::test]
async fn a_disabled_entra_account_does_not_receive_access() {
    let fakes = bare_fakes().await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/riley.requester@example.com"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": RILEY_ID, "userPrincipalName": "riley.requester@example.com", "displayName": "Riley",
            "mail": "riley.requester@example.com", "accountEnabled": false
        })))
        .mount(&fakes.entra)
        .await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    let app = spawn(Backend::Sqlite, &fakes, "", "").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let detail = app.decision(&id).await;
    assert_eq!(detail["decision"]["code"], "principal_not_found", "{detail}");
    assert!(detail["decision"]["message"].as_str().unwrap().contains("disabled"), "{detail}");
}

#[tokio::test]
async fn a_slow_grant_keeps_its_lease_and_is_not_taken_over() {
    let fakes = fakes().await;
    servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
    writable_group(&fakes, json!([])).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(ResponseTemplate::new(204).set_delay(std::time::Duration::from_millis(2500)))
        .mount(&fakes.entra)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, "", "lease_secs = 1").await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    app.decision(&id).await;
    let app = std::sync::Arc::new(app);
    let first = tokio::spawn({
        let app = app.clone();
        async move { app.executor.run_once().await.unwrap() }
    });
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    // Past the 1 s lease, but the first executor renewed it while Graph was answering.
    assert!(!app.executor.run_once().await.unwrap(), "the job in progress was taken over");
    assert!(first.await.unwrap());
    assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap()[0].state, "active");
    assert_eq!(member_writes(&fakes).await.len(), 1);
}

/// Answers `GET /users/{upn}` for anyone, with an object id derived from the UPN.
struct AnyUser;

impl wiremock::Respond for AnyUser {
    fn respond(&self, request: &wiremock::Request) -> ResponseTemplate {
        let upn = request.url.path().rsplit('/').next().unwrap_or_default().to_string();
        let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, upn.as_bytes()).to_string();
        ResponseTemplate::new(200).set_body_json(
            json!({"id": id, "userPrincipalName": upn, "displayName": upn, "mail": upn, "accountEnabled": true}),
        )
    }
}

both_backends! {
    async fn thirty_queued_grants_to_one_group_go_out_as_two_patches(backend: Backend) {
        let fakes = bare_fakes().await;
        Mock::given(method("GET")).and(path_regex("^/v1.0/users/[^/]+$")).respond_with(AnyUser).mount(&fakes.entra).await;
        writable_group(&fakes, json!([])).await;
        group_member_writes_accepted(&fakes).await;
        servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
        let app = spawn(backend, &fakes, "", "").await;
        let template = json_fixture("servicenow/ritm-approved.json");
        // One ticket asking access for thirty people: thirty grants.
        for n in 0..30 {
            let mut ritm = template.clone();
            ritm["requested_for"]["email"] = json!(format!("person{n}@example.com"));
            let id = app.deliver_body("servicenow", ritm.to_string()).await;
            if n == 0 {
                let decided = app.decision(&id).await;
                assert_eq!(decided["decision"]["outcome"], "plan", "{decided}");
            }
        }
        app.worker.run_pending().await.unwrap();

        assert_eq!(app.executor.run_pending().await.unwrap(), 2, "two batches");

        let patches = member_writes(&fakes).await;
        let sizes: Vec<usize> = patches
            .iter()
            .map(|w| serde_json::from_slice::<Value>(&w.body).unwrap()["members@odata.bind"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [20, 10]);
        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!(ledger.len(), 30);
        assert!(ledger.iter().all(|g| g.state == "active"), "{ledger:?}");
    }
}

both_backends! {
    async fn a_body_holding_a_nul_is_ignored_and_does_not_hold_up_its_batch(backend: Backend) {
        // PostgreSQL cannot store a NUL in a text column: a ticket key holding one must not fail the transaction
        // that records the whole batch of decisions, again and again.
        let fakes = fakes().await;
        servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
        let app = spawn(backend, &fakes, "", "").await;
        let mut hostile = json_fixture("servicenow/ritm-approved.json");
        hostile["number"] = json!("RITM0010001\u{0}");
        hostile["sys_id"] = json!("9d385017c611228701d22104cc95c372");
        let hostile = app.deliver_body("servicenow", hostile.to_string()).await;
        let fine = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        let ignored = app.decision(&hostile).await;
        assert_eq!(ignored["decision"]["outcome"], "ignored", "{ignored}");
        assert!(ignored["decision"]["reason"].as_str().unwrap().contains("NUL"), "{ignored}");
        assert_eq!(app.outcome(&fine).await["outcome"], "plan");
    }
}

both_backends! {
    async fn a_decision_the_store_refuses_does_not_hold_up_its_batch(backend: Backend) {
        let fakes = fakes().await;
        servicenow_reads(&fakes, "servicenow/table-ritm-approved.json").await;
        let app = spawn(backend, &fakes, "", "").await;
        crate::common::refuse_inserts(&app.store, "decisions", "NEW.ticket_key LIKE '%POISON%'").await;
        let mut poisoned = json_fixture("servicenow/ritm-approved.json");
        poisoned["number"] = json!("RITM-POISON-1");
        let poisoned = app.deliver_body("servicenow", poisoned.to_string()).await;
        let fine = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        app.worker.run_pending().await.unwrap();
        assert_eq!(app.outcome(&fine).await["outcome"], "plan", "the other decision of the batch is recorded");
        let id = grantbridge::domain::EventId::parse(&poisoned).unwrap();
        assert!(app.store.decision(id).await.unwrap().is_none());
        let event = app.store.event(id).await.unwrap().unwrap();
        assert_eq!(event.state, "received", "released to be decided again after a back-off");
        assert_eq!(app.worker.run_pending().await.unwrap(), 0, "not due again at once");
    }
}
