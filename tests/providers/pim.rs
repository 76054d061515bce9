//! PIM for Groups and directory roles: the request bodies, "already assigned", "not assigned", no duration.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use grantbridge::domain::{GrantTarget, PimAccess};
use grantbridge::providers::{GrantOutcome, ProviderError};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{Fakes, GROUP, USER, graph_error, header, is_guid, request};

const GROUP_REQUESTS: &str = "/v1.0/identityGovernance/privilegedAccess/group/assignmentScheduleRequests";
const ROLE_REQUESTS: &str = "/v1.0/roleManagement/directory/roleAssignmentScheduleRequests";
/// Privileged Role Administrator.
const ROLE: &str = "e8611ab8-c189-46e8-94e1-60213ab1f814";
const EIGHT_HOURS: Option<Duration> = Some(Duration::from_secs(8 * 3600));

async fn mount_requests(fakes: &Fakes, path_: &str, response: ResponseTemplate) {
    Mock::given(method("POST")).and(path(path_)).respond_with(response).mount(&fakes.graph).await;
}

fn created(id: &str, action: &str) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#identityGovernance/privilegedAccess/group/assignmentScheduleRequests/$entity",
        "id": id, "status": "Provisioned", "action": action, "accessId": "member",
        "principalId": USER, "groupId": GROUP, "createdDateTime": "2024-05-01T10:00:00Z"
    }))
}

/// `YYYY-MM-DDTHH:MM:SSZ` within a minute of now.
fn assert_recent_rfc3339_utc(text: &str) {
    assert_eq!(text.len(), 20, "{text}");
    assert!(text.ends_with('Z') && text.as_bytes()[10] == b'T', "{text}");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (date, time) = text.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let t: Vec<u64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from civil (Hinnant), to compare with the clock.
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    let secs = days as u64 * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    assert!(now.abs_diff(secs) < 60, "{text} is not now");
}

#[tokio::test]
async fn a_pim_group_assignment_carries_the_ticket_the_duration_and_the_access() {
    // Arrange
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_requests(&fakes, GROUP_REQUESTS, created("b1f5c5e2-0000-4000-8000-000000000001", "adminAssign")).await;
    let target = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Member };

    // Act
    let outcome = fakes.providers.grant(&request(target, USER, EIGHT_HOURS)).await;

    // Assert
    assert_eq!(
        outcome,
        Ok(GrantOutcome::Granted { upstream_id: Some("b1f5c5e2-0000-4000-8000-000000000001".into()), already: false })
    );
    let posts = Fakes::requests(&fakes.graph, "POST", GROUP_REQUESTS).await;
    assert_eq!(posts.len(), 1);
    assert!(header(&posts[0], "client-request-id").is_some_and(is_guid));
    let mut body: Value = posts[0].body_json().unwrap();
    let start = body["scheduleInfo"]["startDateTime"].take();
    assert_recent_rfc3339_utc(start.as_str().unwrap());
    assert_eq!(
        body,
        json!({
            "accessId": "member",
            "principalId": USER,
            "groupId": GROUP,
            "action": "adminAssign",
            "justification": "Portal access for RITM0010001, approved by the manager",
            "scheduleInfo": {"startDateTime": null, "expiration": {"type": "afterDuration", "duration": "PT8H"}},
            "ticketInfo": {"ticketNumber": "RITM0010001", "ticketSystem": "ServiceNow"},
        })
    );
}

#[tokio::test]
async fn owner_access_is_sent_as_owner() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_requests(&fakes, GROUP_REQUESTS, created("r-1", "adminAssign")).await;
    let target = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Owner };

    fakes.providers.grant(&request(target, USER, Some(Duration::from_secs(90 * 60)))).await.unwrap();

    let body: Value = Fakes::requests(&fakes.graph, "POST", GROUP_REQUESTS).await[0].body_json().unwrap();
    assert_eq!(body["accessId"], "owner");
    assert_eq!(body["scheduleInfo"]["expiration"]["duration"], "PT1H30M");
}

#[tokio::test]
async fn a_pim_role_assignment_names_the_role_and_directory_scope() {
    let fakes = Fakes::start().await;
    mount_requests(&fakes, ROLE_REQUESTS, created("r-role", "adminAssign")).await;
    let target = GrantTarget::PimRole { role_definition_id: ROLE.into(), directory_scope_id: "/".into() };

    let outcome = fakes.providers.grant(&request(target, USER, EIGHT_HOURS)).await;

    assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: Some("r-role".into()), already: false }));
    let posts = Fakes::requests(&fakes.graph, "POST", ROLE_REQUESTS).await;
    assert_eq!(posts.len(), 1);
    let body: Value = posts[0].body_json().unwrap();
    assert_eq!(body["action"], "adminAssign");
    assert_eq!(body["principalId"], USER);
    assert_eq!(body["roleDefinitionId"], ROLE);
    assert_eq!(body["directoryScopeId"], "/");
    assert_eq!(body["justification"], "Portal access for RITM0010001, approved by the manager");
    assert_eq!(body["scheduleInfo"]["expiration"], json!({"type": "afterDuration", "duration": "PT8H"}));
    assert_eq!(body["ticketInfo"], json!({"ticketNumber": "RITM0010001", "ticketSystem": "ServiceNow"}));
    assert_eq!(body.as_object().unwrap().len(), 7, "{body}");
    // A role needs no group check.
    assert!(Fakes::requests(&fakes.graph, "GET", &format!("/v1.0/groups/{GROUP}")).await.is_empty());
}

#[tokio::test]
async fn an_existing_assignment_is_granted_already() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    let exists = || {
        ResponseTemplate::new(400).set_body_json(graph_error(
            "RoleAssignmentExists",
            "The Role assignment already exists.",
            "r-exists",
        ))
    };
    mount_requests(&fakes, GROUP_REQUESTS, exists()).await;
    mount_requests(&fakes, ROLE_REQUESTS, exists()).await;
    let group = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Member };
    let role = GrantTarget::PimRole { role_definition_id: ROLE.into(), directory_scope_id: "/".into() };

    for target in [group, role] {
        let outcome = fakes.providers.grant(&request(target, USER, EIGHT_HOURS)).await;
        assert_eq!(outcome, Ok(GrantOutcome::Granted { upstream_id: None, already: true }));
    }
}

#[tokio::test]
async fn revoking_sends_admin_remove_and_a_missing_assignment_is_already_gone() {
    let fakes = Fakes::start().await;
    Mock::given(method("POST"))
        .and(path(ROLE_REQUESTS))
        .respond_with(created("r-remove", "adminRemove"))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    mount_requests(
        &fakes,
        ROLE_REQUESTS,
        ResponseTemplate::new(400).set_body_json(graph_error(
            "RoleAssignmentDoesNotExist",
            "The Role assignment does not exist.",
            "r-missing",
        )),
    )
    .await;
    let target = GrantTarget::PimRole { role_definition_id: ROLE.into(), directory_scope_id: "/".into() };

    let first = fakes.providers.revoke(&request(target.clone(), USER, EIGHT_HOURS)).await;
    let second = fakes.providers.revoke(&request(target, USER, EIGHT_HOURS)).await;

    assert_eq!(first, Ok(GrantOutcome::Revoked { already_gone: false }));
    assert_eq!(second, Ok(GrantOutcome::Revoked { already_gone: true }));
    let body: Value = Fakes::requests(&fakes.graph, "POST", ROLE_REQUESTS).await[0].body_json().unwrap();
    assert_eq!(body["action"], "adminRemove");
    assert!(body.get("scheduleInfo").is_none(), "{body}");
}

#[tokio::test]
async fn a_pim_group_revoke_of_a_missing_assignment_answered_404_is_already_gone() {
    let fakes = Fakes::start().await;
    mount_requests(
        &fakes,
        GROUP_REQUESTS,
        ResponseTemplate::new(404).set_body_json(graph_error(
            "RoleAssignmentDoesNotExist",
            "The Role assignment does not exist.",
            "r-missing",
        )),
    )
    .await;
    let target = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Member };

    let outcome = fakes.providers.revoke(&request(target, USER, None)).await;

    assert_eq!(outcome, Ok(GrantOutcome::Revoked { already_gone: true }));
}

#[tokio::test]
async fn pim_without_a_duration_is_permanent_and_sends_nothing() {
    let fakes = Fakes::start().await;
    mount_requests(&fakes, ROLE_REQUESTS, created("r", "adminAssign")).await;
    let target = GrantTarget::PimRole { role_definition_id: ROLE.into(), directory_scope_id: "/".into() };

    let err = fakes.providers.grant(&request(target, USER, None)).await.unwrap_err();

    assert_eq!(err.code(), "duration_required");
    assert!(!err.is_retryable());
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn pim_for_a_dynamic_group_is_refused_before_any_write() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &["DynamicMembership"], None).await;
    mount_requests(&fakes, GROUP_REQUESTS, created("r", "adminAssign")).await;
    let target = GrantTarget::PimGroup { group_id: GROUP.into(), access: PimAccess::Member };

    let err = fakes.providers.grant(&request(target, USER, EIGHT_HOURS)).await.unwrap_err();

    assert!(matches!(err, ProviderError::Refused { .. }), "{err:?}");
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn a_refused_request_is_permanent_with_graph_code_and_request_id() {
    let fakes = Fakes::start().await;
    mount_requests(
        &fakes,
        ROLE_REQUESTS,
        ResponseTemplate::new(400).set_body_json(graph_error(
            "InvalidRoleAssignmentRequest",
            "The role assignment request is invalid.",
            "r-invalid",
        )),
    )
    .await;
    let target = GrantTarget::PimRole { role_definition_id: ROLE.into(), directory_scope_id: "/".into() };

    let err = fakes.providers.grant(&request(target, USER, EIGHT_HOURS)).await.unwrap_err();

    assert_eq!(err.code(), "InvalidRoleAssignmentRequest");
    assert!(err.to_string().contains("request-id r-invalid"), "{err}");
    assert_eq!(fakes.graph_writes().await.len(), 1);
}
