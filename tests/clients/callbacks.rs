//! Ticket callbacks against fakes that answer as Jira, Jira Service Management and ServiceNow are documented to:
//! the bodies posted, transitions by name, the marker that stops a second post, throttling and refusals.

use std::sync::Arc;
use std::time::Duration;

use grantbridge::callbacks::{CallbackSettings, CallbacksConfig, Deliverer, DeliveryError, callback_id, marker_line};
use grantbridge::inbound::SourceKind;
use grantbridge::itsm::{JiraAuth, JiraClient, ServiceNowAuth, ServiceNowClient};
use grantbridge::secret::Secret;
use grantbridge::store::CallbackRecord;
use serde_json::{Value, json};
use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::helpers::{header, http, requests_to};

const ISSUE_ID: &str = "10042";
const SYS_ID: &str = "a83820b58f723300e7e16c7827bdeed2";
const JIRA_TOKEN: &str = "ATATT3x-canary-callback-token";

fn jira_client(server: &MockServer) -> JiraClient {
    JiraClient::new(
        http(),
        server.uri(),
        JiraAuth::Basic { email: "bot@example.com".into(), api_token: Secret::new(JIRA_TOKEN) },
    )
}

fn snow_client(server: &MockServer) -> ServiceNowClient {
    let auth = ServiceNowAuth::Basic { user: "svc.grantbridge".into(), password: Secret::new("canary-snow-password") };
    ServiceNowClient::new(http(), server.uri(), auth)
}

fn settings(text: &str) -> Arc<CallbackSettings> {
    let raw: CallbacksConfig = toml::from_str(text).unwrap();
    Arc::new(raw.build("callbacks", &[("jira", SourceKind::Jira), ("snow", SourceKind::Servicenow)]).unwrap())
}

fn jira(server: &MockServer, text: &str) -> Deliverer {
    Deliverer::new(settings(text)).with_jira("jira", jira_client(server))
}

fn snow(server: &MockServer) -> Deliverer {
    Deliverer::new(settings("")).with_servicenow("snow", snow_client(server))
}

fn jira_callback(key: &str, issue_id: &str, kind: &str, visibility: &str, transition: Option<&str>) -> CallbackRecord {
    CallbackRecord {
        id: callback_id("jira", key, kind, "event-1"),
        event_id: "0190a5b2-0000-7000-8000-000000000001".into(),
        grant_id: None,
        source: "jira".into(),
        system: "jira".into(),
        ticket_key: key.into(),
        ticket_id: issue_id.into(),
        ticket_table: None,
        kind: kind.into(),
        message: format!("Access {kind} for {key}.\nline two"),
        visibility: visibility.into(),
        transition: transition.map(str::to_string),
        ticket_state: None,
        state: "running".into(),
        attempts: 1,
        next_attempt_at_ms: 0,
        lease_owner: Some("me".into()),
        lease_until_ms: Some(0),
        last_error: None,
        delivered_at_ms: None,
        remote_id: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

fn snow_callback(kind: &str, visibility: &str, state: Option<&str>) -> CallbackRecord {
    CallbackRecord {
        id: callback_id("snow", "RITM0010001", kind, "event-1"),
        source: "snow".into(),
        system: "servicenow".into(),
        ticket_key: "RITM0010001".into(),
        ticket_id: SYS_ID.into(),
        ticket_table: Some("sc_req_item".into()),
        ticket_state: state.map(str::to_string),
        ..jira_callback("RITM0010001", SYS_ID, kind, visibility, None)
    }
}

fn body(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

fn created(id: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({"id": id, "body": "…", "public": true,
        "author": {"accountId": "557058:bot", "displayName": "grantbridge"},
        "created": {"iso8601": "2024-05-01T10:00:00+0000", "epochMillis": 1714557600000_i64}}))
}

fn transitions(list: &[(&str, &str)]) -> ResponseTemplate {
    let items: Vec<Value> = list
        .iter()
        .map(|(id, name)| {
            json!({"id": id, "name": name, "hasScreen": false, "isGlobal": false,
            "isInitial": false, "isAvailable": true, "isConditional": false,
            "to": {"id": "10001", "name": name, "statusCategory": {"key": "done"}}})
        })
        .collect();
    ResponseTemplate::new(200).set_body_json(json!({"expand": "transitions", "transitions": items}))
}

#[tokio::test]
async fn jsm_comments_are_public_or_internal_as_the_kind_says_and_end_with_the_marker() {
    let server = MockServer::start().await;
    let comment_path = format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment");
    Mock::given(method("POST")).and(path(&comment_path)).respond_with(created("1001")).expect(2).mount(&server).await;
    let deliverer = jira(&server, "");

    let granted = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", None);
    let failed = jira_callback("ACCESS-42", ISSUE_ID, "failed", "internal", None);
    let delivered = deliverer.deliver(&granted).await.unwrap();
    deliverer.deliver(&failed).await.unwrap();

    assert_eq!((delivered.remote_id.as_deref(), delivered.already), (Some("1001"), false));
    let posts = requests_to(&server, &comment_path).await;
    assert_eq!(
        body(&posts[0]),
        json!({"body": format!("Access granted for ACCESS-42.\nline two\n\n{}", marker_line(&granted.id)), "public": true})
    );
    assert_eq!(body(&posts[1])["public"], json!(false), "JSM: public false is an internal comment");
    assert!(header(&posts[0], "authorization").unwrap().starts_with("Basic "));
    assert_eq!(header(&posts[0], "content-type"), Some("application/json"));
    assert!(
        requests_to(&server, &format!("/rest/api/3/issue/{ISSUE_ID}/comment")).await.is_empty(),
        "a first attempt does not look for an earlier post"
    );
}

#[tokio::test]
async fn issue_comments_are_atlassian_document_format_with_the_callback_property() {
    let server = MockServer::start().await;
    let comment_path = format!("/rest/api/3/issue/{ISSUE_ID}/comment");
    Mock::given(method("POST")).and(path(&comment_path)).respond_with(created("20001")).expect(1).mount(&server).await;
    let callback = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", None);

    let delivered = jira(&server, "[sources.jira]\njira_comments = \"issue\"").deliver(&callback).await.unwrap();

    assert_eq!(delivered.remote_id.as_deref(), Some("20001"));
    let posted = body(&requests_to(&server, &comment_path).await[0]);
    assert_eq!(
        posted,
        json!({
            "body": {"type": "doc", "version": 1, "content": [
                {"type": "paragraph", "content": [
                    {"type": "text", "text": "Access granted for ACCESS-42."}, {"type": "hardBreak"},
                    {"type": "text", "text": "line two"}]},
                {"type": "paragraph", "content": [{"type": "text", "text": marker_line(&callback.id)}]}]},
            "properties": [{"key": "grantbridge", "value": {"callback": callback.id}}]})
    );
}

#[tokio::test]
async fn a_transition_is_resolved_by_name_once_per_project_and_cached() {
    let server = MockServer::start().await;
    for id in ["10001", "10002"] {
        Mock::given(method("POST"))
            .and(path(format!("/rest/servicedeskapi/request/{id}/comment")))
            .respond_with(created("1"))
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/rest/api/3/issue/{id}/transitions")))
            .respond_with(transitions(&[("21", "In progress"), ("31", "Resolve this issue")]))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path(format!("/rest/api/3/issue/{id}/transitions")))
            .and(body_json(json!({"transition": {"id": "31"}})))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
    }
    let deliverer = jira(&server, "");

    for (key, id) in [("ACCESS-1", "10001"), ("ACCESS-2", "10002")] {
        let callback = jira_callback(key, id, "granted", "public", Some("resolve this ISSUE"));
        deliverer.deliver(&callback).await.unwrap();
    }

    let gets = requests_to(&server, "/rest/api/3/issue/10001/transitions")
        .await
        .into_iter()
        .chain(requests_to(&server, "/rest/api/3/issue/10002/transitions").await)
        .filter(|r| r.method.as_str() == "GET")
        .count();
    assert_eq!(gets, 1, "one lookup serves the project's other issues");
}

#[tokio::test]
async fn a_cached_transition_id_that_jira_refuses_is_looked_up_again_once() {
    let server = MockServer::start().await;
    for id in ["10001", "10002"] {
        Mock::given(method("POST"))
            .and(path(format!("/rest/servicedeskapi/request/{id}/comment")))
            .respond_with(created("1"))
            .mount(&server)
            .await;
    }
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/10001/transitions"))
        .respond_with(transitions(&[("31", "Done")]))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/10002/transitions"))
        .respond_with(transitions(&[("41", "Done")]))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/10002/transitions"))
        .and(body_json(json!({"transition": {"id": "31"}})))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "errorMessages": ["Transition id '31' is not valid for this issue."], "errors": {}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/10002/transitions"))
        .and(body_json(json!({"transition": {"id": "41"}})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/rest/api/3/issue/10001/transitions"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let deliverer = jira(&server, "");

    deliverer.deliver(&jira_callback("ACCESS-1", "10001", "granted", "public", Some("Done"))).await.unwrap();
    deliverer.deliver(&jira_callback("ACCESS-2", "10002", "granted", "public", Some("Done"))).await.unwrap();
}

#[tokio::test]
async fn a_transition_the_workflow_lacks_is_a_clear_permanent_error_and_nothing_is_posted() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/rest/api/3/issue/{ISSUE_ID}/transitions")))
        .respond_with(transitions(&[("11", "Start progress"), ("51", "Cancel request")]))
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(created("1")).expect(0).mount(&server).await;

    let callback = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", Some("Resolve"));
    let err = jira(&server, "").deliver(&callback).await.unwrap_err();

    let DeliveryError::Permanent { reason } = err else { panic!("{err:?}") };
    assert!(reason.contains("no transition named `Resolve` on ACCESS-42"), "{reason}");
    assert!(reason.contains("available: Start progress, Cancel request"), "{reason}");
}

#[tokio::test]
async fn a_redelivery_finds_its_marker_and_posts_nothing() {
    let server = MockServer::start().await;
    let mut callback = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", Some("Done"));
    callback.attempts = 2;
    let marker = marker_line(&callback.id);
    // JSM comments come back through the issue API as ADF, newest first.
    Mock::given(method("GET"))
        .and(path(format!("/rest/api/3/issue/{ISSUE_ID}/comment")))
        .and(query_param("orderBy", "-created"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "startAt": 0, "maxResults": 100, "total": 2, "comments": [
                {"id": "1002", "body": {"type": "doc", "version": 1, "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "unrelated"}]}]}},
                {"id": "1001", "jsdPublic": true, "body": {"type": "doc", "version": 1, "content": [
                    {"type": "paragraph", "content": [{"type": "text", "text": "Access granted"}]},
                    {"type": "paragraph", "content": [{"type": "text", "text": marker}]}]}}]})))
        .expect(1)
        .mount(&server)
        .await;
    // The earlier attempt made the transition too: the issue no longer offers it.
    Mock::given(method("GET"))
        .and(path(format!("/rest/api/3/issue/{ISSUE_ID}/transitions")))
        .respond_with(transitions(&[("61", "Reopen")]))
        .mount(&server)
        .await;
    Mock::given(method("POST")).respond_with(created("9")).expect(0).mount(&server).await;

    let delivered = jira(&server, "").deliver(&callback).await.unwrap();

    assert_eq!((delivered.remote_id.as_deref(), delivered.already), (Some("1001"), true));
}

#[tokio::test]
async fn a_redelivery_without_its_marker_searches_every_page_then_posts() {
    let server = MockServer::start().await;
    let comments_path = format!("/rest/api/3/issue/{ISSUE_ID}/comment");
    let other = |id: u32| json!({"id": id.to_string(), "body": {"type": "doc", "version": 1, "content": []}});
    Mock::given(method("GET"))
        .and(path(&comments_path))
        .and(query_param("startAt", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "startAt": 0, "maxResults": 100, "total": 3, "comments": [other(3), other(2)]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(&comments_path))
        .and(query_param("startAt", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "startAt": 2, "maxResults": 100, "total": 3, "comments": [other(1)]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment")))
        .respond_with(created("1004"))
        .expect(1)
        .mount(&server)
        .await;
    let mut callback = jira_callback("ACCESS-42", ISSUE_ID, "refused", "public", None);
    callback.attempts = 3;

    let delivered = jira(&server, "").deliver(&callback).await.unwrap();

    assert_eq!((delivered.remote_id.as_deref(), delivered.already), (Some("1004"), false));
}

#[tokio::test]
async fn throttling_is_retried_later_at_the_time_jira_asks() {
    let server = MockServer::start().await;
    let comment_path = format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment");
    Mock::given(method("POST"))
        .and(path(&comment_path))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "7")
                .insert_header("RateLimit-Reason", "jira-per-issue-on-write"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    // X-RateLimit-Reset alone: an ISO 8601 time, here far in the future.
    Mock::given(method("POST"))
        .and(path(&comment_path))
        .respond_with(ResponseTemplate::new(429).insert_header("X-RateLimit-Reset", "2099-01-01T00:00Z"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path(&comment_path))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST")).and(path(&comment_path)).respond_with(created("7")).mount(&server).await;
    let deliverer = jira(&server, "");
    let callback = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", None);

    let first = deliverer.deliver(&callback).await.unwrap_err();
    let second = deliverer.deliver(&callback).await.unwrap_err();
    let third = deliverer.deliver(&callback).await.unwrap_err();
    let fourth = deliverer.deliver(&callback).await.unwrap();

    assert!(
        matches!(&first, DeliveryError::Retry { after: Some(d), reason } if *d == Duration::from_secs(7) && reason.contains("429")),
        "{first:?}"
    );
    assert!(
        matches!(&second, DeliveryError::Retry { after: Some(d), .. } if *d > Duration::from_secs(365 * 86_400)),
        "{second:?}"
    );
    assert!(matches!(&third, DeliveryError::Retry { after: None, reason } if reason.contains("503")), "{third:?}");
    assert_eq!(fourth.remote_id.as_deref(), Some("7"));
    assert_eq!(requests_to(&server, &comment_path).await.len(), 4, "one request per attempt: no waiting in process");
}

#[tokio::test]
async fn refusals_are_permanent_and_say_what_went_wrong_without_the_credentials() {
    let server = MockServer::start().await;
    let cases = [
        (
            "10001",
            ResponseTemplate::new(401)
                .set_body_raw("Client must be authenticated to access this resource.", "text/plain"),
            "401",
        ),
        (
            "10002",
            ResponseTemplate::new(403)
                .set_body_json(json!({"errorMessages": ["You do not have permission to comment on this request."]})),
            "permission to comment",
        ),
        (
            "10003",
            ResponseTemplate::new(404).set_body_json(
                json!({"errorMessages": ["Issue does not exist or you do not have permission to see it."]}),
            ),
            "not a Jira Service Management request",
        ),
    ];
    for (id, answer, _) in &cases {
        Mock::given(method("POST"))
            .and(path(format!("/rest/servicedeskapi/request/{id}/comment")))
            .respond_with(answer.clone())
            .mount(&server)
            .await;
    }
    let deliverer = jira(&server, "");

    for (i, (id, _, expected)) in cases.iter().enumerate() {
        let callback = jira_callback(&format!("ACCESS-{i}"), id, "granted", "public", None);
        let err = deliverer.deliver(&callback).await.unwrap_err();
        let DeliveryError::Permanent { reason } = &err else { panic!("{err:?}") };
        assert!(reason.contains(expected), "{reason}");
        assert!(!reason.contains(JIRA_TOKEN) && !reason.contains("Basic "), "{reason}");
    }
}

#[tokio::test]
async fn servicenow_gets_one_patch_with_the_note_the_visibility_asks_for_and_the_state() {
    let server = MockServer::start().await;
    let record_path = format!("/api/now/table/sc_req_item/{SYS_ID}");
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .and(query_param("sysparm_fields", "sys_id"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})))
        .expect(2)
        .mount(&server)
        .await;
    let deliverer = snow(&server);
    let granted = snow_callback("granted", "public", Some("3"));
    let failed = snow_callback("failed", "internal", None);

    let delivered = deliverer.deliver(&granted).await.unwrap();
    deliverer.deliver(&failed).await.unwrap();

    assert_eq!(delivered.remote_id.as_deref(), Some(SYS_ID));
    let patches = requests_to(&server, &record_path).await;
    assert_eq!(
        body(&patches[0]),
        json!({"comments": format!("Access granted for RITM0010001.\nline two\n\n{}", marker_line(&granted.id)), "state": "3"})
    );
    assert_eq!(
        body(&patches[1]),
        json!({"work_notes": format!("Access failed for RITM0010001.\nline two\n\n{}", marker_line(&failed.id))})
    );
    assert!(requests_to(&server, "/api/now/table/sys_journal_field").await.is_empty());
}

#[tokio::test]
async fn a_servicenow_redelivery_looks_in_the_journal_for_its_marker() {
    let server = MockServer::start().await;
    let mut found = snow_callback("granted", "public", Some("3"));
    found.attempts = 2;
    let mut missing = snow_callback("refused", "public", Some("4"));
    missing.attempts = 2;
    for (callback, rows) in [(&found, json!([{"sys_id": "f00d", "element": "comments"}])), (&missing, json!([]))] {
        Mock::given(method("GET"))
            .and(path("/api/now/table/sys_journal_field"))
            .and(query_param("sysparm_query", format!("element_id={SYS_ID}^valueLIKE{}", callback.id)))
            .and(query_param("sysparm_limit", "1"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": rows})))
            .expect(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("PATCH"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})))
        .expect(1)
        .mount(&server)
        .await;
    let deliverer = snow(&server);

    let again = deliverer.deliver(&found).await.unwrap();
    let first = deliverer.deliver(&missing).await.unwrap();

    assert!(again.already && !first.already);
    let patch = &requests_to(&server, &format!("/api/now/table/sc_req_item/{SYS_ID}")).await[0];
    assert_eq!(body(patch)["state"], "4");
}

#[tokio::test]
async fn servicenow_throttling_outages_and_refusals() {
    let server = MockServer::start().await;
    let record_path = format!("/api/now/table/sc_req_item/{SYS_ID}");
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "error": {"message": "Operation Failed", "detail": "ACL Exception Update Failed due to security constraints"},
            "status": "failure"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"},
            "status": "failure"})))
        .mount(&server)
        .await;
    let deliverer = snow(&server);
    let callback = snow_callback("granted", "public", Some("3"));

    let throttled = deliverer.deliver(&callback).await.unwrap_err();
    let forbidden = deliverer.deliver(&callback).await.unwrap_err();
    let missing = deliverer.deliver(&callback).await.unwrap_err();

    assert_eq!(
        throttled,
        DeliveryError::Retry {
            after: Some(Duration::from_secs(30)),
            reason: "updating sc_req_item RITM0010001: servicenow answered 429".into()
        }
    );
    assert!(
        matches!(&forbidden, DeliveryError::Permanent { reason } if reason.contains("403") && reason.contains("ACL Exception")),
        "{forbidden:?}"
    );
    assert!(
        matches!(&missing, DeliveryError::Permanent { reason } if reason.contains("has no sc_req_item record")),
        "{missing:?}"
    );
}

#[tokio::test]
async fn a_servicenow_oauth_token_refused_mid_way_is_renewed_once() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "sn-token", "token_type": "Bearer", "expires_in": 1799})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let record_path = format!("/api/now/table/sc_req_item/{SYS_ID}");
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"})))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}})))
        .expect(1)
        .mount(&server)
        .await;
    let auth =
        ServiceNowAuth::OAuth { client_id: "cid".into(), client_secret: Secret::new("canary-secret"), token_url: None };
    let deliverer =
        Deliverer::new(settings("")).with_servicenow("snow", ServiceNowClient::new(http(), server.uri(), auth));

    deliverer.deliver(&snow_callback("granted", "public", Some("3"))).await.unwrap();

    for patch in requests_to(&server, &record_path).await {
        assert_eq!(header(&patch, "authorization"), Some("Bearer sn-token"));
    }
}

#[tokio::test]
async fn a_source_without_api_credentials_cannot_be_posted_to() {
    let server = MockServer::start().await;
    let mut callback = jira_callback("ACCESS-42", ISSUE_ID, "granted", "public", None);
    callback.source = "elsewhere".into();

    let err = jira(&server, "").deliver(&callback).await.unwrap_err();

    assert!(
        matches!(&err, DeliveryError::Permanent { reason } if reason.contains("[sources.elsewhere.api]")),
        "{err:?}"
    );
    assert!(server.received_requests().await.unwrap().is_empty());
}
