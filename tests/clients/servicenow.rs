//! ServiceNow Table API reads: records, approvals, users; basic and OAuth sign-in; rate limiting.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use grantbridge::domain::ApprovalDecision;
use grantbridge::itsm::{ServiceNowAuth, ServiceNowClient};
use grantbridge::secret::Secret;
use grantbridge::upstream::UpstreamError;
use serde_json::json;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{fast_policy, form, header, http, requests_to};

const RITM: &str = "a83820b58f723300e7e16c7827bdeed2";
const PASSWORD: &str = "canary-snow-password";
const CLIENT_SECRET: &str = "canary-snow-client-secret";

fn basic(server: &MockServer) -> ServiceNowClient {
    let auth = ServiceNowAuth::Basic { user: "svc.grantbridge".into(), password: Secret::new(PASSWORD) };
    ServiceNowClient::new(http(), server.uri(), auth).with_retry_policy(fast_policy())
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404).set_body_json(json!({
        "error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"},
        "status": "failure"}))
}

#[tokio::test]
async fn a_record_is_read_with_the_fields_asked_for_and_a_missing_one_is_none() {
    let server = MockServer::start().await;
    let record_path = format!("/api/now/table/sc_req_item/{RITM}");
    Mock::given(method("GET"))
        .and(path(&record_path))
        .and(query_param("sysparm_fields", "approval,state,requested_for"))
        .and(query_param("sysparm_exclude_reference_link", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {
            "approval": "approved", "state": "1", "requested_for": "62826bf03710200044e0bfc8bcbe5df1"}})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sc_req_item/00000000000000000000000000000000"))
        .respond_with(not_found())
        .expect(1)
        .mount(&server)
        .await;

    let snow = basic(&server);
    let record = snow.record("sc_req_item", RITM, &["approval", "state", "requested_for"]).await.unwrap().unwrap();
    let missing = snow.record("sc_req_item", "00000000000000000000000000000000", &["state"]).await.unwrap();

    assert_eq!(record["approval"], "approved");
    assert_eq!(record["requested_for"], "62826bf03710200044e0bfc8bcbe5df1");
    assert_eq!(missing, None);
    let calls = requests_to(&server, &record_path).await;
    assert!(header(&calls[0], "authorization").unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn approvals_and_users_are_read_back() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sysapproval_approver"))
        .and(query_param("sysparm_query", format!("sysapproval={RITM}")))
        .and(query_param("sysparm_fields", "approver,state"))
        .and(query_param("sysparm_exclude_reference_link", "true"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": [
            {"approver": "46d44a23a9fe19810012d100cca80666", "state": "approved"},
            {"approver": "5137153cc611227c000bbd1bd8cd2005", "state": "rejected"},
            {"approver": "681ccaf9c0a8016400b98a06818d57c7", "state": "not requested"},
            {"approver": "", "state": "approved"}]})))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sys_user/46d44a23a9fe19810012d100cca80666"))
        .and(query_param("sysparm_fields", "sys_id,user_name,email"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {
            "sys_id": "46d44a23a9fe19810012d100cca80666", "user_name": "beth.anglin", "email": "beth.anglin@example.com"}})))
        .mount(&server)
        .await;

    let snow = basic(&server);
    let approvals = snow.approvals_for(RITM).await.unwrap();
    let user = snow.user("46d44a23a9fe19810012d100cca80666").await.unwrap().unwrap();

    // The row without an approver is left out: nobody can be checked against it.
    let decisions: Vec<ApprovalDecision> = approvals.iter().map(|a| a.decision).collect();
    assert_eq!(decisions, [ApprovalDecision::Approved, ApprovalDecision::Rejected, ApprovalDecision::Pending]);
    assert_eq!(approvals[0].approver.id.as_deref(), Some("46d44a23a9fe19810012d100cca80666"));
    assert_eq!(user.name.as_deref(), Some("beth.anglin"));
    assert_eq!(user.email.as_deref(), Some("beth.anglin@example.com"));
    // A value that would extend the encoded query is refused before anything is sent.
    let err = snow.approvals_for(&format!("{RITM}^ORsysapproval!=x")).await.unwrap_err();
    assert!(matches!(err, UpstreamError::InvalidInput(_)), "{err:?}");
}

#[tokio::test]
async fn oauth_fetches_a_token_once_then_reads_with_it() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": "sn-access-token", "refresh_token": "sn-refresh", "scope": "useraccount",
            "token_type": "Bearer", "expires_in": 1799})))
        .expect(1)
        .mount(&server)
        .await;
    let record_path = format!("/api/now/table/sc_req_item/{RITM}");
    Mock::given(method("GET"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"approval": "approved"}})))
        .expect(2)
        .mount(&server)
        .await;
    let auth = ServiceNowAuth::OAuth {
        client_id: "grantbridge-client".into(),
        client_secret: Secret::new(CLIENT_SECRET),
        token_url: None,
    };
    let snow = ServiceNowClient::new(http(), format!("{}/", server.uri()), auth).with_retry_policy(fast_policy());

    snow.record("sc_req_item", RITM, &["approval"]).await.unwrap().unwrap();
    snow.record("sc_req_item", RITM, &["approval"]).await.unwrap().unwrap();

    let token_calls = requests_to(&server, "/oauth_token.do").await;
    let form = form(&token_calls[0]);
    assert_eq!(form.get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(form.get("client_id").map(String::as_str), Some("grantbridge-client"));
    assert_eq!(form.get("client_secret").map(String::as_str), Some(CLIENT_SECRET));
    for call in requests_to(&server, &record_path).await {
        assert_eq!(header(&call, "authorization"), Some("Bearer sn-access-token"));
    }
}

#[tokio::test]
async fn an_oauth_refusal_is_permanent_and_keeps_the_secret_out() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth_token.do"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"error_description": "access_denied", "error": "server_error"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let auth = ServiceNowAuth::OAuth {
        client_id: "grantbridge-client".into(),
        client_secret: Secret::new(CLIENT_SECRET),
        token_url: Some(format!("{}/oauth_token.do", server.uri())),
    };
    let snow = ServiceNowClient::new(http(), server.uri(), auth).with_retry_policy(fast_policy());

    let err = snow.record("sc_req_item", RITM, &[]).await.unwrap_err();

    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    assert!(!err.to_string().contains(CLIENT_SECRET) && !format!("{err:?}").contains(CLIENT_SECRET));
    assert!(!format!("{snow:?}").contains(CLIENT_SECRET));
}

#[tokio::test]
async fn a_429_with_x_ratelimit_reset_waits_until_the_reset() {
    let server = MockServer::start().await;
    let record_path = format!("/api/now/table/sc_req_item/{RITM}");
    let reset = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 2;
    Mock::given(method("GET"))
        .and(path(&record_path))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("X-RateLimit-Limit", "100")
                .insert_header("X-RateLimit-Reset", reset.to_string())
                .insert_header("X-RateLimit-Rule", "f3e1c0a1db4c3010c4bc9f3dbf961901")
                .set_body_json(json!({"error": {"message": "Rate limit exceeded",
                    "detail": "Rate limit of 100 requests per hour exceeded"}, "status": "failure"})),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(&record_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"state": "1"}})))
        .mount(&server)
        .await;

    let started = Instant::now();
    let record = basic(&server).record("sc_req_item", RITM, &["state"]).await.unwrap().unwrap();

    assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(record["state"], "1");
    assert_eq!(requests_to(&server, &record_path).await.len(), 2);
}
