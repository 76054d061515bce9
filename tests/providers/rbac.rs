//! Azure RBAC: the deterministic assignment name, 409 as "already", DELETE of the same URL.

use grantbridge::domain::GrantTarget;
use grantbridge::providers::{GrantOutcome, ROLE_ASSIGNMENT_NAMESPACE};
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::matchers::{method, path_regex, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{Fakes, OTHER_USER, USER, arm_error, form, header, is_guid, request};

const SUB: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";
/// Reader.
const ROLE: &str = "acdd72a7-3385-48ef-bd42-f606fba81ae7";

fn scope() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/rg-portal")
}

fn target() -> GrantTarget {
    GrantTarget::AzureRbac { scope: scope(), role_definition_id: ROLE.into() }
}

/// Computed here from the documented recipe, not by the code under test.
fn expected_name(scope: &str, role: &str, principal: &str) -> Uuid {
    let namespace = Uuid::parse_str("38309b83-e6c7-4d03-a94b-744b372c5be3").unwrap();
    assert_eq!(namespace, ROLE_ASSIGNMENT_NAMESPACE, "the namespace must never change");
    let name = format!("{}|{}|{}", scope.to_lowercase(), role.to_lowercase(), principal.to_lowercase());
    Uuid::new_v5(&namespace, name.as_bytes())
}

fn assignment_path(principal: &str) -> String {
    format!(
        "{}/providers/Microsoft.Authorization/roleAssignments/{}",
        scope(),
        expected_name(&scope(), ROLE, principal)
    )
}

async fn mount_arm(fakes: &Fakes, verb: &str, response: ResponseTemplate) {
    Mock::given(method(verb))
        .and(path_regex(r"^/subscriptions/.+/providers/Microsoft\.Authorization/roleAssignments/[0-9a-f-]{36}$"))
        .and(query_param("api-version", "2022-04-01"))
        .respond_with(response)
        .mount(&fakes.arm)
        .await;
}

fn created(fakes_path: &str) -> ResponseTemplate {
    assignment(201, fakes_path)
}

fn assignment(status: u16, fakes_path: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "id": fakes_path,
        "type": "Microsoft.Authorization/roleAssignments",
        "name": fakes_path.rsplit('/').next().unwrap(),
        "properties": {
            "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ROLE}"),
            "principalId": USER, "principalType": "User", "scope": scope()
        }
    }))
}

#[tokio::test]
async fn the_put_uses_the_deterministic_name_with_an_arm_token() {
    // Arrange
    let fakes = Fakes::start().await;
    mount_arm(&fakes, "PUT", created(&assignment_path(USER))).await;

    // Act
    let first = fakes.providers.grant(&request(target(), USER, None)).await;
    let again = fakes.providers.grant(&request(target(), USER, None)).await;
    let other = fakes.providers.grant(&request(target(), OTHER_USER, None)).await;

    // Assert
    let granted = Ok(GrantOutcome::Granted { upstream_id: Some(assignment_path(USER)), already: false });
    assert_eq!(first, granted);
    assert_eq!(again, granted);
    assert!(other.is_ok());
    let puts: Vec<_> = fakes.arm.received_requests().await.unwrap();
    let paths: Vec<&str> = puts.iter().map(|r| r.url.path()).collect();
    assert_eq!(paths, vec![assignment_path(USER), assignment_path(USER), assignment_path(OTHER_USER)]);
    assert_ne!(expected_name(&scope(), ROLE, USER), expected_name(&scope(), ROLE, OTHER_USER));
    let body: Value = puts[0].body_json().unwrap();
    assert_eq!(
        body,
        json!({"properties": {
            "roleDefinitionId": format!("/subscriptions/{SUB}/providers/Microsoft.Authorization/roleDefinitions/{ROLE}"),
            "principalId": USER,
            "principalType": "User",
        }})
    );
    assert_eq!(header(&puts[0], "authorization"), Some("Bearer token-1"));
    assert!(header(&puts[0], "x-ms-client-request-id").is_some_and(is_guid));
    let token_calls = fakes.token_calls().await;
    assert_eq!(token_calls.len(), 1);
    assert_eq!(form(&token_calls[0]).get("scope").map(String::as_str), Some("https://management.azure.com/.default"));
}

#[tokio::test]
async fn the_same_role_held_under_another_name_is_granted_already() {
    let fakes = Fakes::start().await;
    mount_arm(
        &fakes,
        "PUT",
        ResponseTemplate::new(409)
            .insert_header("x-ms-request-id", "arm-409")
            .set_body_json(arm_error("RoleAssignmentExists", "The role assignment already exists.")),
    )
    .await;

    let outcome = fakes.providers.grant(&request(target(), USER, None)).await;

    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: true }));
    assert_eq!(fakes.arm.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn another_conflict_is_permanent() {
    let fakes = Fakes::start().await;
    mount_arm(
        &fakes,
        "PUT",
        ResponseTemplate::new(403).insert_header("x-ms-request-id", "arm-403").set_body_json(arm_error(
            "AuthorizationFailed",
            "The client does not have authorization to perform action 'Microsoft.Authorization/roleAssignments/write'.",
        )),
    )
    .await;

    let err = fakes.providers.grant(&request(target(), USER, None)).await.unwrap_err();

    assert_eq!(err.code(), "AuthorizationFailed");
    assert!(err.to_string().contains("request-id arm-403"), "{err}");
}

#[tokio::test]
async fn delete_revokes_the_same_assignment_and_204_means_already_gone() {
    let fakes = Fakes::start().await;
    Mock::given(method("DELETE"))
        .and(path_regex(r"/roleAssignments/"))
        .respond_with(assignment(200, &assignment_path(USER)))
        .up_to_n_times(1)
        .mount(&fakes.arm)
        .await;
    mount_arm(&fakes, "DELETE", ResponseTemplate::new(204)).await;

    let first = fakes.providers.revoke(&request(target(), USER, None)).await;
    let second = fakes.providers.revoke(&request(target(), USER, None)).await;

    assert_eq!(first, Ok(GrantOutcome::Revoked { already_gone: false }));
    assert_eq!(second, Ok(GrantOutcome::Revoked { already_gone: true }));
    let deletes = fakes.arm.received_requests().await.unwrap();
    assert_eq!(deletes.len(), 2);
    for d in &deletes {
        assert_eq!(d.url.path(), assignment_path(USER));
        assert_eq!(d.url.query(), Some("api-version=2022-04-01"));
    }
}

#[tokio::test]
async fn a_scope_that_could_bend_the_url_is_refused_without_a_call() {
    let fakes = Fakes::start().await;
    let target =
        GrantTarget::AzureRbac { scope: format!("/subscriptions/{SUB}/../x?y"), role_definition_id: ROLE.into() };

    let err = fakes.providers.grant(&request(target, USER, None)).await.unwrap_err();

    assert_eq!(err.code(), "invalid_input");
    assert!(fakes.arm.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn calls_to_one_upstream_are_limited_across_executors() {
    // Arrange: ARM answers after 300 ms; at most one ARM call may be in flight.
    let fakes = Fakes::start().await;
    Mock::given(method("PUT"))
        .and(path_regex("/roleAssignments/"))
        .respond_with(created(&assignment_path(USER)).set_delay(std::time::Duration::from_millis(300)))
        .mount(&fakes.arm)
        .await;
    let providers = fakes.providers.with_concurrency(8, 1);
    let users = [USER, OTHER_USER, crate::helpers::GROUP];

    // Act: three grants at once.
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all(users.iter().map(|u| {
        let request = request(target(), u, None);
        let providers = &providers;
        async move { providers.grant(&request).await }
    }))
    .await;

    // Assert: all granted, one after the other (three times the delay at least).
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
    assert_eq!(fakes.arm.received_requests().await.unwrap().len(), 3);
}
