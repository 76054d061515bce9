//! Tokens during a run: renewed when due, renewed once after a 401, never in an error.

use std::time::Duration;

use grantbridge::providers::GrantOutcome;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{CLIENT_SECRET, Fakes, GROUP, USER, graph_error, header, members_ref_path};

#[tokio::test]
async fn a_token_that_expires_mid_run_is_replaced_before_the_next_call() {
    // Two seconds of life: renewed after one.
    let fakes = Fakes::with_token_lifetime(2).await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.graph)
        .await;

    fakes.groups().add(GROUP, USER).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fakes.groups().add(GROUP, USER).await.unwrap();

    assert_eq!(fakes.token_calls().await.len(), 2);
    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    assert_eq!(header(&posts[0], "authorization"), Some("Bearer token-1"));
    assert_eq!(header(&posts[1], "authorization"), Some("Bearer token-2"));
}

#[tokio::test]
async fn a_401_drops_the_token_and_the_call_is_made_once_more_with_a_new_one() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            "Lifetime validation failed, the token is expired.",
            "r-401",
        )))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.graph)
        .await;

    let outcome = fakes.groups().add(GROUP, USER).await;

    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(header(&posts[1], "authorization"), Some("Bearer token-2"));
}

#[tokio::test]
async fn a_401_that_persists_is_permanent_and_shows_no_secret() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
            "r-401",
        )))
        .mount(&fakes.graph)
        .await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    assert_eq!(err.code(), "InvalidAuthenticationToken");
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.len(), 2);
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(CLIENT_SECRET) && !text.contains("token-"), "{text}");
    }
}

#[tokio::test]
async fn an_identity_platform_refusal_is_asked_once_and_nothing_is_written() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(Fakes::token_path()))
        .respond_with(ResponseTemplate::new(401).set_body_json(serde_json::json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t-1\r\nCorrelation ID: c-1",
            "error_codes": [7000215], "trace_id": "t-1", "correlation_id": "c-1"
        })))
        .with_priority(1)
        .mount(&fakes.login)
        .await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    assert_eq!(err.code(), "AADSTS7000215");
    assert!(!err.to_string().contains(CLIENT_SECRET), "{err}");
    assert_eq!(fakes.token_calls().await.len(), 1);
    assert!(fakes.graph.received_requests().await.unwrap().is_empty());
}
