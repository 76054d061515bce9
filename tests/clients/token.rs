//! Identity platform tokens: refusals carry the AADSTS code and never the secret; caching, renewal, one fetch at a time.

use std::time::Duration;

use grantbridge::entra::GraphError;
use grantbridge::upstream::UpstreamError;
use serde_json::json;
use tokio::task::JoinSet;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CLIENT_ID, CLIENT_SECRET, EntraFakes, form, requests_to, user_json};

const USER: &str = "ada@contoso.com";

async fn mount_user(fakes: &EntraFakes) {
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/users/{USER}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json("u1", USER)))
        .mount(&fakes.graph)
        .await;
}

#[tokio::test]
async fn an_invalid_client_secret_is_reported_with_its_aadsts_code_and_without_the_secret() {
    let fakes = EntraFakes::start().await;
    // What the identity platform answers for a wrong secret (HTTP 401, invalid_client, AADSTS7000215).
    Mock::given(method("POST"))
        .and(path(EntraFakes::token_path()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{CLIENT_ID}'.\r\nTrace ID: 6f6c4645-0202-4486-b625-fa957dfc4700\r\nCorrelation ID: 5fc87507-4086-4e77-b415-cee677eb232e\r\nTimestamp: 2024-05-06 06:03:00Z"),
            "error_codes": [7000215],
            "timestamp": "2024-05-06 06:03:00Z",
            "trace_id": "6f6c4645-0202-4486-b625-fa957dfc4700",
            "correlation_id": "5fc87507-4086-4e77-b415-cee677eb232e",
            "error_uri": "https://login.microsoftonline.com/error?code=7000215"
        })))
        .expect(1)
        .mount(&fakes.login)
        .await;
    mount_user(&fakes).await;

    let err = fakes.directory.user(USER).await.unwrap_err();

    let GraphError::Upstream(UpstreamError::Permanent { status, code, message, request_id }) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(status.as_u16(), 401);
    assert_eq!(code.as_deref(), Some("AADSTS7000215"));
    assert!(message.starts_with("invalid_client: AADSTS7000215: Invalid client secret provided."), "{message}");
    assert_eq!(request_id.as_deref(), Some("6f6c4645-0202-4486-b625-fa957dfc4700"));
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(CLIENT_SECRET), "{text}");
        assert!(text.contains("AADSTS7000215"), "{text}");
    }
    assert!(requests_to(&fakes.graph, &format!("/v1.0/users/{USER}")).await.is_empty());
}

#[tokio::test]
async fn a_bad_request_from_the_token_endpoint_is_not_retried() {
    let fakes = EntraFakes::start().await;
    Mock::given(method("POST"))
        .and(path(EntraFakes::token_path()))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_scope",
            "error_description": "AADSTS1002012: The provided value for scope x is not valid.\r\nTrace ID: t\r\nCorrelation ID: c",
            "error_codes": [1002012], "trace_id": "t", "correlation_id": "c"})))
        .expect(1)
        .mount(&fakes.login)
        .await;

    let err = fakes.tokens.token("https://graph.microsoft.com").await.unwrap_err();

    assert_eq!(err.status().map(|s| s.as_u16()), Some(400));
    assert!(err.to_string().contains("AADSTS1002012") && err.to_string().contains("invalid_scope"), "{err}");
}

#[tokio::test]
async fn one_token_serves_many_graph_calls_and_asks_for_the_real_graph_scope() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    mount_user(&fakes).await;

    for _ in 0..5 {
        fakes.directory.user(USER).await.unwrap().unwrap();
    }

    let token_calls = requests_to(&fakes.login, &EntraFakes::token_path()).await;
    assert_eq!(token_calls.len(), 1);
    let form = form(&token_calls[0]);
    assert_eq!(form.get("grant_type").map(String::as_str), Some("client_credentials"));
    assert_eq!(form.get("client_id").map(String::as_str), Some(CLIENT_ID));
    // The base URL points at a fake; the scope must still name the real resource.
    assert_eq!(form.get("scope").map(String::as_str), Some("https://graph.microsoft.com/.default"));
    assert_eq!(form.get("client_secret").map(String::as_str), Some(CLIENT_SECRET));
    assert_eq!(form.len(), 4);
}

#[tokio::test]
async fn a_token_is_renewed_when_it_is_due() {
    let fakes = EntraFakes::start().await;
    // Two seconds of life: renewed after one (half-life, since five minutes would exceed it).
    fakes.mount_token(2, Duration::ZERO).await;
    mount_user(&fakes).await;

    fakes.directory.user(USER).await.unwrap();
    fakes.directory.user(USER).await.unwrap();
    assert_eq!(fakes.token_calls().await, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fakes.directory.user(USER).await.unwrap();

    assert_eq!(fakes.token_calls().await, 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_fetch() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::from_millis(300)).await;
    mount_user(&fakes).await;

    let mut tasks = JoinSet::new();
    for _ in 0..12 {
        let directory = fakes.directory.clone();
        tasks.spawn(async move { directory.user(USER).await });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        assert!(result.unwrap().unwrap().is_some());
        done += 1;
    }

    assert_eq!(done, 12);
    assert_eq!(fakes.token_calls().await, 1);
    assert_eq!(requests_to(&fakes.graph, &format!("/v1.0/users/{USER}")).await.len(), 12);
}
