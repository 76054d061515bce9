//! Group membership: adds and removes as Graph answers them, refusals before any write, retries, the ids sent.

use std::time::{Duration, Instant};

use grantbridge::domain::GrantTarget;
use grantbridge::providers::{GrantOutcome, ProviderError};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{Fakes, GROUP, USER, graph_error, header, is_guid, members_ref_path, request};

const ALREADY: &str =
    "One or more added object references already exist for the following modified properties: 'members'.";

async fn mount_add(fakes: &Fakes, response: ResponseTemplate) {
    Mock::given(method("POST")).and(path(members_ref_path(GROUP))).respond_with(response).mount(&fakes.graph).await;
}

#[tokio::test]
async fn an_add_answered_204_is_granted_with_a_graph_reference_and_a_client_request_id() {
    // Arrange
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;

    // Act
    let outcome =
        fakes.providers.grant(&request(GrantTarget::GroupMember { group_id: GROUP.into() }, USER, None)).await;

    // Assert
    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    assert_eq!(posts.len(), 1);
    let body: serde_json::Value = posts[0].body_json().unwrap();
    assert_eq!(body, json!({"@odata.id": fakes.reference(USER)}));
    assert_eq!(header(&posts[0], "authorization"), Some("Bearer token-1"));
    assert!(header(&posts[0], "client-request-id").is_some_and(is_guid));
    assert_eq!(Fakes::requests(&fakes.graph, "GET", &format!("/v1.0/groups/{GROUP}")).await.len(), 1);
}

#[tokio::test]
async fn the_reference_base_can_name_the_real_graph_when_the_base_url_is_a_proxy() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;
    let groups = fakes.groups().clone().with_reference_base("https://graph.microsoft.com/v1.0/");

    groups.add(GROUP, USER).await.unwrap();

    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    let body: serde_json::Value = posts[0].body_json().unwrap();
    assert_eq!(body["@odata.id"], format!("https://graph.microsoft.com/v1.0/directoryObjects/{USER}"));
}

#[tokio::test]
async fn already_a_member_is_granted_already() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_add(&fakes, ResponseTemplate::new(400).set_body_json(graph_error("Request_BadRequest", ALREADY, "r-400")))
        .await;

    let outcome = fakes.groups().add(GROUP, USER).await;

    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: true }));
    assert_eq!(fakes.graph_writes().await.len(), 1);
}

#[tokio::test]
async fn an_unknown_user_is_permanent_after_one_call() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    let message =
        format!("Resource '{USER}' does not exist or one of its queried reference-property objects are not present.");
    mount_add(
        &fakes,
        ResponseTemplate::new(404).set_body_json(graph_error("Request_ResourceNotFound", &message, "r-404")),
    )
    .await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    let ProviderError::Permanent { code, detail } = &err else { panic!("{err:?}") };
    assert_eq!(code, "not_found");
    assert!(detail.contains(USER) && detail.contains("request-id r-404"), "{detail}");
    assert_eq!(fakes.graph_writes().await.len(), 1);
}

#[tokio::test]
async fn a_dynamic_group_is_refused_before_any_write() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &["DynamicMembership"], None).await;
    // What Graph would answer to a manual add: the same 403 as a missing permission.
    mount_add(
        &fakes,
        ResponseTemplate::new(403).set_body_json(graph_error(
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            "r-403",
        )),
    )
    .await;

    let add = fakes.groups().add(GROUP, USER).await.unwrap_err();
    let remove = fakes.groups().remove(GROUP, USER).await.unwrap_err();

    for err in [&add, &remove] {
        let ProviderError::Refused { reason } = err else { panic!("{err:?}") };
        assert!(reason.contains("dynamic membership") && reason.contains("EPM - User Portal Access"), "{reason}");
        assert!(!err.is_retryable());
    }
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn an_on_premises_synced_group_is_refused_before_any_write() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], Some(true)).await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;

    let err = fakes.providers.grant(&request(GrantTarget::GroupMember { group_id: GROUP.into() }, USER, None)).await;

    let Err(ProviderError::Refused { reason }) = &err else { panic!("{err:?}") };
    assert!(reason.contains("synced from on-premises"), "{reason}");
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn a_403_on_an_assigned_group_says_which_permission_may_be_missing() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &["Unified"], Some(false)).await;
    mount_add(
        &fakes,
        ResponseTemplate::new(403).set_body_json(graph_error(
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            "r-403",
        )),
    )
    .await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    assert_eq!(err.code(), "forbidden");
    assert!(err.to_string().contains("GroupMember.ReadWrite.All"), "{err}");
    assert_eq!(fakes.graph_writes().await.len(), 1);
}

#[tokio::test]
async fn an_unknown_group_is_permanent_and_nothing_is_written() {
    let fakes = Fakes::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{GROUP}")))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            &format!(
                "Resource '{GROUP}' does not exist or one of its queried reference-property objects are not present."
            ),
            "r-g404",
        )))
        .mount(&fakes.graph)
        .await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    assert_eq!(err.code(), "not_found");
    assert!(err.to_string().contains(GROUP), "{err}");
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn the_group_check_is_cached() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;

    for _ in 0..3 {
        fakes.groups().add(GROUP, USER).await.unwrap();
    }

    assert_eq!(Fakes::requests(&fakes.graph, "GET", &format!("/v1.0/groups/{GROUP}")).await.len(), 1);
    assert_eq!(fakes.graph_writes().await.len(), 3);
}

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_granted() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1").set_body_json(graph_error(
            "TooManyRequests",
            "Too many requests",
            "r-429",
        )))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;

    let started = Instant::now();
    let outcome = fakes.groups().add(GROUP, USER).await;

    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After not honoured: {:?}", started.elapsed());
    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.len(), 2);
}

#[tokio::test]
async fn a_503_is_retried_with_the_same_client_request_id() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(503).set_body_json(graph_error(
            "serviceNotAvailable",
            "Service unavailable",
            "r-503",
        )))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    mount_add(&fakes, ResponseTemplate::new(204)).await;

    let outcome = fakes.groups().add(GROUP, USER).await;

    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    assert_eq!(posts.len(), 2);
    assert_eq!(header(&posts[0], "client-request-id"), header(&posts[1], "client-request-id"));
}

#[tokio::test]
async fn a_503_that_persists_is_retryable() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_add(&fakes, ResponseTemplate::new(503)).await;

    let err = fakes.groups().add(GROUP, USER).await.unwrap_err();

    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.len(), 3);
}

#[tokio::test]
async fn remove_deletes_only_the_membership_reference_and_404_means_already_gone() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    let ref_path = format!("/v1.0/groups/{GROUP}/members/{USER}/$ref");
    Mock::given(method("DELETE"))
        .and(path(&ref_path))
        .respond_with(ResponseTemplate::new(204))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("DELETE"))
        .and(path(&ref_path))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            &format!(
                "Resource '{USER}' does not exist or one of its queried reference-property objects are not present."
            ),
            "r-404",
        )))
        .mount(&fakes.graph)
        .await;
    let target = GrantTarget::GroupMember { group_id: GROUP.into() };

    let first = fakes.providers.revoke(&request(target.clone(), USER, None)).await;
    let second = fakes.providers.revoke(&request(target, USER, None)).await;

    assert_eq!(first, Ok(GrantOutcome::Revoked { already_gone: false }));
    assert_eq!(second, Ok(GrantOutcome::Revoked { already_gone: true }));
    let writes = fakes.graph_writes().await;
    assert_eq!(writes.len(), 2);
    for w in writes {
        assert_eq!(w.url.path(), ref_path, "a DELETE without /$ref would delete the object itself");
    }
}

#[tokio::test]
async fn ids_that_are_not_guids_never_reach_graph() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;

    let bad_user = fakes.groups().add(GROUP, "ada@contoso.com").await.unwrap_err();
    let bad_group = fakes.groups().remove("../users/x", USER).await.unwrap_err();

    assert_eq!(bad_user.code(), "invalid_input");
    assert_eq!(bad_group.code(), "invalid_input");
    assert!(fakes.graph_writes().await.is_empty());
}
