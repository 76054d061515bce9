//! Jira Cloud / JSM reads: approvals over pages, authentication, 401 and 429 as Jira sends them.

use std::time::{Duration, Instant};

use base64::Engine;
use grantbridge::domain::ApprovalDecision;
use grantbridge::itsm::{JiraAuth, JiraClient};
use grantbridge::secret::Secret;
use grantbridge::upstream::UpstreamError;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{fast_policy, header, http, requests_to};

const EMAIL: &str = "bot@example.com";
const API_TOKEN: &str = "ATATT3x-canary-api-token";

fn client(server: &MockServer) -> JiraClient {
    let auth = JiraAuth::Basic { email: EMAIL.into(), api_token: Secret::new(API_TOKEN) };
    JiraClient::new(http(), server.uri(), auth).with_retry_policy(fast_policy())
}

fn approval(id: &str, decision: &str, approvers: Value) -> Value {
    json!({"id": id, "name": "Manager approval", "finalDecision": decision, "canAnswerApproval": false,
        "approvers": approvers,
        "createdDate": {"iso8601": "2024-05-01T09:00:00+0000", "epochMillis": 1714554000000_i64},
        "completedDate": {"iso8601": "2024-05-01T10:00:00+0000", "jira": "2024-05-01T10:00:00.000+0000",
                          "friendly": "Today 10:00 AM", "epochMillis": 1714557600000_i64},
        "_links": {"self": "https://example.atlassian.net/rest/servicedeskapi/request/10010/approval/1"}})
}

fn approver(account_id: &str, name: &str, email: Option<&str>, decision: &str) -> Value {
    let mut user = json!({"accountId": account_id, "displayName": name, "active": true, "timeZone": "Europe/Paris"});
    if let Some(email) = email {
        user["emailAddress"] = json!(email);
    }
    json!({"approver": user, "approverDecision": decision})
}

#[tokio::test]
async fn approvals_are_read_over_every_page_with_basic_auth() {
    let server = MockServer::start().await;
    let approvals_path = "/rest/servicedeskapi/request/ACCESS-42/approval";
    Mock::given(method("GET"))
        .and(path(approvals_path))
        .and(query_param("start", "0"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
        "size": 2, "start": 0, "limit": 50, "isLastPage": false,
        "values": [
            approval("1", "approved", json!([approver("a-1", "Ann", Some("ann@example.com"), "approved")])),
            approval("2", "declined", json!([approver("b-2", "Bob", None, "declined")])),
        ]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(approvals_path))
        .and(query_param("start", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "size": 1, "start": 2, "limit": 50, "isLastPage": true,
            "values": [approval("3", "pending", json!([approver("c-3", "Cy", None, "pending")]))]})))
        .expect(1)
        .mount(&server)
        .await;

    let approvals = client(&server).approvals("ACCESS-42").await.unwrap();

    let ids: Vec<&str> = approvals.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["1", "2", "3"]);
    let decisions: Vec<ApprovalDecision> = approvals.iter().map(|a| a.final_decision).collect();
    assert_eq!(decisions, [ApprovalDecision::Approved, ApprovalDecision::Rejected, ApprovalDecision::Pending]);
    let ann = &approvals[0].approvals()[0];
    assert_eq!(ann.approver.id.as_deref(), Some("a-1"));
    assert_eq!(ann.approver.email.as_deref(), Some("ann@example.com"));
    assert_eq!(approvals[1].approvers[0].0.email, None);
    assert_eq!(approvals[0].completed_at.as_deref(), Some("2024-05-01T10:00:00+0000"));
    let calls = requests_to(&server, approvals_path).await;
    let expected =
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{EMAIL}:{API_TOKEN}")));
    assert!(calls.iter().all(|c| header(c, "authorization") == Some(expected.as_str())));
    assert!(calls.iter().all(|c| header(c, "accept") == Some("application/json")));
}

#[tokio::test]
async fn a_401_is_permanent_and_the_token_stays_out_of_the_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACCESS-42"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_raw("Client must be authenticated to access this resource.", "text/plain;charset=UTF-8"),
        )
        .expect(1)
        .mount(&server)
        .await;

    let err = client(&server).issue("ACCESS-42").await.unwrap_err();

    assert!(matches!(&err, UpstreamError::Permanent { status, .. } if status.as_u16() == 401), "{err:?}");
    assert!(err.to_string().contains("Client must be authenticated"), "{err}");
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(API_TOKEN) && !text.contains("Basic "), "{text}");
    }
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out() {
    let server = MockServer::start().await;
    let issue_path = "/rest/api/3/issue/ACCESS-42";
    Mock::given(method("GET"))
        .and(path(issue_path))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .insert_header("X-RateLimit-Reset", "2099-01-01T00:00Z")
                .insert_header("RateLimit-Reason", "jira-burst-based"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(issue_path))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "10010", "key": "ACCESS-42", "fields": {"summary": "x"}})),
        )
        .mount(&server)
        .await;

    let started = Instant::now();
    let issue = client(&server).issue("ACCESS-42").await.unwrap().unwrap();

    // Retry-After (1 s) wins over X-RateLimit-Reset, which would mean decades (clamped to 2 s here).
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1) && waited < Duration::from_millis(1900), "{waited:?}");
    assert_eq!(issue["key"], "ACCESS-42");
    assert_eq!(requests_to(&server, issue_path).await.len(), 2);
}

#[tokio::test]
async fn a_missing_issue_is_none_and_a_user_without_a_visible_email_keeps_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACCESS-404"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "errorMessages": ["Issue does not exist or you do not have permission to see it."], "errors": {}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user"))
        .and(query_param("accountId", "5b10ac8d82e05b22cc7d4ef5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "self": "https://example.atlassian.net/rest/api/3/user?accountId=5b10ac8d82e05b22cc7d4ef5",
            "accountId": "5b10ac8d82e05b22cc7d4ef5", "accountType": "atlassian",
            "displayName": "Mia Krystof", "active": true, "timeZone": "Australia/Sydney", "locale": "en_US"})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/user"))
        .and(query_param("accountId", "gone"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "errorMessages": ["Specified user does not exist or you do not have required permissions"], "errors": {}})))
        .mount(&server)
        .await;

    let jira = client(&server);
    assert_eq!(jira.issue("ACCESS-404").await.unwrap(), None);
    let user = jira.user("5b10ac8d82e05b22cc7d4ef5").await.unwrap().unwrap();
    assert_eq!(user.id.as_deref(), Some("5b10ac8d82e05b22cc7d4ef5"));
    assert_eq!(user.name.as_deref(), Some("Mia Krystof"));
    assert_eq!(user.email, None);
    assert_eq!(jira.user("gone").await.unwrap(), None);
}

#[tokio::test]
async fn bearer_auth_goes_through_the_api_gateway_path() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/ex/jira/cloud-1/rest/api/3/issue/ACCESS-1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": "ACCESS-1"})))
        .expect(1)
        .mount(&server)
        .await;

    let jira = JiraClient::new(
        http(),
        format!("{}/ex/jira/cloud-1/", server.uri()),
        JiraAuth::Bearer { token: Secret::new("oauth-access-token") },
    );
    jira.issue("ACCESS-1").await.unwrap().unwrap();

    let calls = requests_to(&server, "/ex/jira/cloud-1/rest/api/3/issue/ACCESS-1").await;
    assert_eq!(header(&calls[0], "authorization"), Some("Bearer oauth-access-token"));
}
