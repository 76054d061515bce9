//! End-to-end scenarios, black box: the service on a random port, real signed webhooks over HTTP, and fakes on
//! loopback for the token endpoint, Graph, Jira Service Management and ServiceNow. Each scenario checks what the
//! fakes received: the writes to Graph, the comments and work notes, the transitions and states.

use grantbridge::store::Store;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::both_backends;
use crate::common::entra::{assigned_group, portal_rule};
use crate::common::{Backend, fixture};
use crate::harness::{
    Fakes, PORTAL_GROUP, RILEY_ID, SYS_ID, TestApp, comment_created, group_member_writes_accepted,
    group_member_writes_throttled, jira_callbacks_answered, jira_issue, jira_reads, json_fixture, servicenow_reads,
};

mod replay;

const PIM_GROUP: &str = "7a4d2b63-1e4f-4c9d-8a1b-3c8e5f6d2b01";
/// The Jira issue id of ACCESS-42 in the fixtures: callbacks address the issue by id, which survives a move.
const ISSUE_ID: &str = "10042";

const PIM_RULE: &str = r#"
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

/// Granted outcomes go to the ticket as internal notes; Jira requests are then resolved.
const CALLBACKS: &str = r#"
[callbacks.granted]
visibility = "internal"
[callbacks.sources.jira.granted]
transition = "Resolve this issue"
"#;

/// The portal rule.
fn portal() -> String {
    portal_rule("", "")
}

/// Riley and Avery in Entra, and both groups (assigned membership).
async fn fakes() -> Fakes {
    let fakes = crate::harness::fakes().await;
    assigned_group(&fakes.entra, PORTAL_GROUP, "EPM - User Portal Access").await;
    assigned_group(&fakes.entra, PIM_GROUP, "Billing Administrators").await;
    fakes
}

/// The app with callbacks on and `policy`.
async fn spawn(backend: Backend, fakes: &Fakes, policy: &str) -> TestApp {
    crate::harness::spawn(backend, fakes, "", &format!("{CALLBACKS}\n{policy}")).await
}

/// ServiceNow's Table API: the RITM read back as `record`, Avery's approval, and updates of the RITM.
async fn servicenow_says(fakes: &Fakes, record: &str) {
    servicenow_reads(fakes, record).await;
    // The Table API answers an update with the record's fields asked for in sysparm_fields.
    Mock::given(method("PATCH"))
        .and(path(format!("/api/now/table/sc_req_item/{SYS_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})))
        .mount(&fakes.servicenow)
        .await;
}

/// Jira: the request's approvals and the issue read back, the comments, transitions offered and made.
async fn jira_says(fakes: &Fakes, approvals: Value, issue: Value) {
    jira_reads(fakes, approvals, issue).await;
    jira_callbacks_answered(fakes).await;
}

async fn jsm_comments_accepted(fakes: &Fakes) {
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/servicedeskapi/request/(10042|ACCESS-42)/comment$"))
        .respond_with(comment_created())
        .mount(&fakes.jira)
        .await;
}

/// Jira Service Management down (`503`) until the flag is set, then taking comments.
struct DownUntil(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl wiremock::Respond for DownUntil {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            comment_created()
        } else {
            ResponseTemplate::new(503).set_body_string("Service Unavailable")
        }
    }
}

/// Every request to `server` other than a GET.
async fn writes(server: &MockServer) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.method.as_str() != "GET").collect()
}

/// Writes to Graph (the token endpoint aside).
async fn graph_writes(fakes: &Fakes) -> Vec<Request> {
    writes(&fakes.entra).await.into_iter().filter(|r| r.url.path().starts_with("/v1.0/")).collect()
}

fn body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

/// The one Graph write: Riley added to the portal group with `members@odata.bind`.
async fn assert_riley_added_once(fakes: &Fakes) {
    let writes = graph_writes(fakes).await;
    assert_eq!(writes.len(), 1, "{writes:?}");
    assert_eq!((writes[0].method.as_str(), writes[0].url.path()), ("PATCH", &*format!("/v1.0/groups/{PORTAL_GROUP}")));
    let bound = body(&writes[0])["members@odata.bind"].clone();
    assert_eq!(bound.as_array().map(Vec::len), Some(1), "{bound}");
    assert!(bound[0].as_str().unwrap().ends_with(&format!("/directoryObjects/{RILEY_ID}")), "{bound}");
}

/// The one ServiceNow update: a work note saying who got what, and the RITM closed complete.
async fn assert_servicenow_closed_complete_once(fakes: &Fakes, store: &Store) {
    let updates = writes(&fakes.servicenow).await;
    assert_eq!(updates.len(), 1, "one update of the RITM: {updates:?}");
    assert_eq!(updates[0].method.as_str(), "PATCH");
    assert_eq!(updates[0].url.path(), format!("/api/now/table/sc_req_item/{SYS_ID}"));
    let update = body(&updates[0]);
    assert_eq!(update["state"], "3", "Closed Complete: {update}");
    assert!(update.get("comments").is_none(), "an internal note, not a customer comment: {update}");
    let note = update["work_notes"].as_str().unwrap();
    assert!(note.starts_with("Access granted for RITM0010001."), "{note}");
    assert!(note.contains("riley.requester@example.com"), "{note}");
    assert!(note.contains("EPM - User Portal Access"), "{note}");
    assert!(note.contains("portal-access"), "the rule is named: {note}");
    let callbacks = store.callbacks_for_ticket("servicenow", "RITM0010001").await.unwrap();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    assert_eq!((callbacks[0].kind.as_str(), callbacks[0].state.as_str()), ("granted", "done"));
    assert!(note.ends_with(&format!("(grantbridge ref: {})", callbacks[0].id)), "{note}");
}

both_backends! {
    async fn servicenow_approved_ritm_adds_the_user_and_closes_the_ritm(backend: Backend) {
        let fakes = fakes().await;
        servicenow_says(&fakes, "servicenow/table-ritm-approved.json").await;
        group_member_writes_accepted(&fakes).await;
        let app = spawn(backend, &fakes, &portal()).await;
        let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
        app.settle().await;

        assert_eq!(app.outcome(&id).await["outcome"], "plan");
        assert_riley_added_once(&fakes).await;
        let ledger = app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap();
        assert_eq!(ledger.len(), 1);
        assert_eq!(ledger[0].state, "active");
        assert_servicenow_closed_complete_once(&fakes, &app.store).await;

        // The audit trail holds every step of the event, in order, in one unbroken chain.
        let verified = app.store.verify_audit(None).await.unwrap().expect("the chain verifies");
        let trail = replay::audit_of(&app.store, &id).await;
        let kinds: Vec<&str> = trail.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["received", "decided", "granted", "callback_delivered"]);
        assert_eq!(verified.head.map(|h| h.seq), Some(4));
        assert_eq!(trail[2].grant_id.as_deref(), Some(ledger[0].id.as_str()));
        assert!(trail.iter().all(|r| r.actor == "grantbridge" && !r.detail.contains("sn-password")));
    }
}

#[tokio::test]
async fn jsm_approved_request_gets_a_time_bound_pim_membership_and_is_resolved() {
    let fakes = fakes().await;
    jira_says(&fakes, json_fixture("jira/approvals-approved.json"), jira_issue()).await;
    jsm_comments_accepted(&fakes).await;
    Mock::given(method("POST"))
        .and(path("/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleRequests"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "id": "9f1c7d52-4a3b-4e6c-8d2f-1a0b9c8e7d65", "status": "Provisioned", "action": "adminAssign",
            "accessId": "member", "principalId": RILEY_ID, "groupId": PIM_GROUP
        })))
        .mount(&fakes.entra)
        .await;
    let app = spawn(Backend::Sqlite, &fakes, PIM_RULE).await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    app.settle().await;
    assert_eq!(app.outcome(&id).await["outcome"], "plan");

    let writes_to_graph = graph_writes(&fakes).await;
    assert_eq!(writes_to_graph.len(), 1, "{writes_to_graph:?}");
    assert_eq!(writes_to_graph[0].method.as_str(), "POST");
    let request = body(&writes_to_graph[0]);
    assert_eq!(request["action"], "adminAssign");
    assert_eq!(request["accessId"], "member");
    assert_eq!(request["principalId"], RILEY_ID);
    assert_eq!(request["groupId"], PIM_GROUP);
    assert_eq!(request["ticketInfo"]["ticketNumber"], "ACCESS-42", "{request}");
    assert_eq!(request["ticketInfo"]["ticketSystem"], "Jira", "{request}");
    assert_eq!(request["scheduleInfo"]["expiration"], json!({"type": "afterDuration", "duration": "PT8H"}));
    assert!(request["scheduleInfo"]["startDateTime"].as_str().unwrap().ends_with('Z'), "{request}");
    let grant = &app.store.grants_for_ticket("jira", "ACCESS-42").await.unwrap()[0];
    assert_eq!(grant.state, "active");
    assert!(grant.expires_at_ms.is_some(), "time-bound");

    let to_jira = writes(&fakes.jira).await;
    let paths: Vec<&str> = to_jira.iter().map(|r| r.url.path()).collect();
    assert_eq!(
        paths,
        [
            format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment"),
            format!("/rest/api/3/issue/{ISSUE_ID}/transitions"),
        ],
        "the comment, then the transition"
    );
    let comment = body(&to_jira[0]);
    assert_eq!(comment["public"], false, "an internal comment: {comment}");
    let text = comment["body"].as_str().unwrap();
    assert!(text.starts_with("Access granted for ACCESS-42."), "{text}");
    assert!(text.contains("riley.requester@example.com"), "{text}");
    assert!(text.contains("Billing Administrators (PIM)") && text.contains("until "), "{text}");
    assert!(text.contains("(grantbridge ref: "), "{text}");
    assert_eq!(body(&to_jira[1]), json!({"transition": {"id": "31"}}));
    let looked_up = fakes.jira.received_requests().await.unwrap();
    assert!(
        looked_up.iter().any(|r| r.method.as_str() == "GET" && r.url.path().ends_with("/transitions")),
        "the transition id was looked up by name"
    );
}

#[tokio::test]
async fn a_self_approved_request_is_refused_on_the_ticket_and_nothing_granted() {
    let fakes = fakes().await;
    let mut approvals = json_fixture("jira/approvals-approved.json");
    approvals["values"][0]["approvers"][0]["approver"] = json!({
        "accountId": "5b10a2844c20165700ede21g", "emailAddress": "riley.requester@example.com",
        "displayName": "Riley Requester", "active": true
    });
    let mut issue = jira_issue();
    issue["fields"]["customfield_10020"][0]["approvers"][0]["approver"] =
        approvals["values"][0]["approvers"][0]["approver"].clone();
    jira_says(&fakes, approvals, issue).await;
    jsm_comments_accepted(&fakes).await;
    group_member_writes_accepted(&fakes).await;
    let app = spawn(Backend::Sqlite, &fakes, &portal()).await;
    let id = app.deliver("jira", "jira/issue-updated-self-approved.json").await;
    app.settle().await;

    let decision = app.outcome(&id).await;
    assert_eq!(decision["code"], "self_approval", "{decision}");
    assert!(graph_writes(&fakes).await.is_empty(), "nothing granted");
    assert!(app.store.grants_for_ticket("jira", "ACCESS-42").await.unwrap().is_empty());
    let to_jira = writes(&fakes.jira).await;
    assert_eq!(to_jira.len(), 1, "one comment, no transition: {to_jira:?}");
    assert_eq!(to_jira[0].url.path(), format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment"));
    let comment = body(&to_jira[0]);
    assert_eq!(comment["public"], true, "the requester is told: {comment}");
    let text = comment["body"].as_str().unwrap();
    assert!(text.starts_with("No access was granted for ACCESS-42."), "{text}");
    assert!(text.contains("Reason (self_approval)"), "{text}");
    assert!(text.contains("nothing was changed in Microsoft Entra"), "{text}");
}

#[tokio::test]
async fn servicenow_read_back_still_pending_is_refused_on_the_ritm() {
    let fakes = fakes().await;
    servicenow_says(&fakes, "servicenow/table-ritm-requested.json").await;
    group_member_writes_accepted(&fakes).await;
    let app = spawn(Backend::Sqlite, &fakes, &portal()).await;
    let id = app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    app.settle().await;

    assert_eq!(app.outcome(&id).await["code"], "not_approved");
    assert!(graph_writes(&fakes).await.is_empty(), "nothing granted");
    let updates = writes(&fakes.servicenow).await;
    assert_eq!(updates.len(), 1, "{updates:?}");
    let update = body(&updates[0]);
    assert_eq!(update["state"], "4", "Closed Incomplete: {update}");
    let comment = update["comments"].as_str().unwrap();
    assert!(comment.starts_with("No access was granted for RITM0010001."), "{comment}");
    assert!(comment.contains("Reason (not_approved)"), "{comment}");
    assert!(comment.contains("`requested`"), "the state read back is named: {comment}");
}

#[tokio::test]
async fn jsm_approvals_still_pending_are_refused_on_the_request() {
    let fakes = fakes().await;
    jira_says(&fakes, json_fixture("jira/approvals-pending.json"), jira_issue()).await;
    jsm_comments_accepted(&fakes).await;
    let app = spawn(Backend::Sqlite, &fakes, &portal()).await;
    let id = app.deliver("jira", "jira/issue-updated-approved.json").await;
    app.settle().await;

    assert_eq!(app.outcome(&id).await["code"], "not_approved");
    assert!(graph_writes(&fakes).await.is_empty(), "nothing granted");
    let to_jira = writes(&fakes.jira).await;
    assert_eq!(to_jira.len(), 1, "{to_jira:?}");
    let text = body(&to_jira[0])["body"].as_str().unwrap().to_string();
    assert!(text.contains("Reason (not_approved)") && text.contains("still pending"), "{text}");
}

#[tokio::test]
async fn graph_throttling_is_waited_out_then_granted_once_with_one_note() {
    let fakes = fakes().await;
    servicenow_says(&fakes, "servicenow/table-ritm-approved.json").await;
    group_member_writes_throttled(&fakes, 2).await;
    let app = spawn(Backend::Sqlite, &fakes, &portal()).await;
    app.deliver("servicenow", "servicenow/ritm-approved.json").await;
    let started = std::time::Instant::now();
    app.settle().await;
    // A job that gave up on the throttled write would be retried later: run whatever became due.
    for _ in 0..10 {
        if app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap()[0].state == "active" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        app.settle().await;
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900), "Retry-After was honoured");

    let patches = graph_writes(&fakes).await;
    assert_eq!(patches.len(), 3, "two throttled writes, one that went through");
    assert!(patches.iter().all(|p| body(p) == body(&patches[2])), "the same write each time");
    assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap()[0].state, "active");
    app.settle().await;
    assert_servicenow_closed_complete_once(&fakes, &app.store).await;
}

both_backends! {
    async fn jira_down_when_granted_gets_its_comment_once_after_it_recovers(backend: Backend) {
        let fakes = fakes().await;
        jira_says(&fakes, json_fixture("jira/approvals-approved.json"), jira_issue()).await;
        group_member_writes_accepted(&fakes).await;
        let jira_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        Mock::given(method("POST"))
            .and(path_regex(r"^/rest/servicedeskapi/request/(10042|ACCESS-42)/comment$"))
            .respond_with(DownUntil(jira_up.clone()))
            .mount(&fakes.jira)
            .await;
        let app = spawn(backend, &fakes, &portal()).await;
        app.deliver("jira", "jira/issue-updated-approved.json").await;
        app.settle().await;

        assert_riley_added_once(&fakes).await;
        let comment_posts = || async {
            writes(&fakes.jira).await.into_iter().filter(|r| r.url.path().ends_with("/comment")).collect::<Vec<_>>()
        };
        assert_eq!(comment_posts().await.len(), 1, "one attempt, no retry inside it");
        let callbacks = app.store.callbacks_for_ticket("jira", "ACCESS-42").await.unwrap();
        assert_eq!(callbacks.len(), 1, "{callbacks:?}");
        let pending = &callbacks[0];
        assert_eq!((pending.kind.as_str(), pending.state.as_str(), pending.attempts), ("granted", "queued", 1));
        assert!(pending.last_error.as_deref().unwrap().contains("503"), "{pending:?}");
        assert!(pending.next_attempt_at_ms > grantbridge::inbound::unix_millis(std::time::SystemTime::now()));
        assert_eq!(app.callbacker.run_pending().await.unwrap(), 0, "not due before its back-off");

        jira_up.store(true, std::sync::atomic::Ordering::SeqCst);
        app.callbacks_due_now().await;
        assert_eq!(app.callbacker.run_pending().await.unwrap(), 1);
        app.callbacks_due_now().await;
        assert_eq!(app.callbacker.run_pending().await.unwrap(), 0, "nothing left");

        let posted = comment_posts().await;
        assert_eq!(posted.len(), 2, "the failed post and the one that arrived");
        let text = body(&posted[1])["body"].as_str().unwrap().to_string();
        assert!(text.starts_with("Access granted for ACCESS-42.") && text.contains("EPM - User Portal Access"), "{text}");
        assert!(text.ends_with(&format!("(grantbridge ref: {})", pending.id)), "{text}");
        let reads = fakes.jira.received_requests().await.unwrap();
        assert!(
            reads.iter().any(|r| r.method.as_str() == "GET" && r.url.path() == format!("/rest/api/3/issue/{ISSUE_ID}/comment")),
            "the retry looked for an earlier post first"
        );
        let done = app.store.callback(&pending.id).await.unwrap().unwrap();
        assert_eq!((done.state.as_str(), done.attempts), ("done", 2));
    }
}

both_backends! {
    async fn one_event_delivered_three_times_at_once_is_granted_and_reported_once(backend: Backend) {
        let fakes = fakes().await;
        servicenow_says(&fakes, "servicenow/table-ritm-approved.json").await;
        group_member_writes_accepted(&fakes).await;
        let app = spawn(backend, &fakes, &portal()).await;
        let payload = std::fs::read_to_string(fixture("servicenow/ritm-approved.json")).unwrap();
        let (a, b, c) = tokio::join!(
            app.send("servicenow", payload.clone()),
            app.send("servicenow", payload.clone()),
            app.send("servicenow", payload)
        );
        assert!(a.0 == b.0 && b.0 == c.0, "one event: {a:?} {b:?} {c:?}");
        let mut statuses = [a.1, b.1, c.1];
        statuses.sort();
        assert_eq!(statuses, ["accepted", "duplicate", "duplicate"]);

        // Two replicas' worth of workers, executors and callbackers, all at once.
        let (worker, executor, callbacker) = &app.others;
        let (first, second) = tokio::join!(app.worker.run_pending(), worker.run_pending());
        assert_eq!(first.unwrap() + second.unwrap(), 1, "one decision");
        let (first, second) = tokio::join!(app.executor.run_pending(), executor.run_pending());
        assert_eq!(first.unwrap() + second.unwrap(), 1, "one grant job");
        let (first, second) = tokio::join!(app.callbacker.run_pending(), callbacker.run_pending());
        assert_eq!(first.unwrap() + second.unwrap(), 1, "one callback");

        assert_riley_added_once(&fakes).await;
        assert_eq!(app.store.grants_for_ticket("servicenow", "RITM0010001").await.unwrap().len(), 1);
        assert_servicenow_closed_complete_once(&fakes, &app.store).await;
    }
}
