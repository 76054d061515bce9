//! Adds to one group in 20-member PATCHes: chunking, the fallback to single adds, and the coalescer.

use std::collections::HashSet;

use grantbridge::domain::GrantTarget;
use grantbridge::providers::{GrantOutcome, GroupAddBatcher, ProviderError};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{Fakes, GROUP, graph_error, members_ref_path, request, user};

const ALREADY: &str =
    "One or more added object references already exist for the following modified properties: 'members'.";

fn group_path() -> String {
    format!("/v1.0/groups/{GROUP}")
}

async fn mount_patch(fakes: &Fakes, response: ResponseTemplate) {
    Mock::given(method("PATCH")).and(path(group_path())).respond_with(response).mount(&fakes.graph).await;
}

fn bound(request: &wiremock::Request) -> Vec<String> {
    let body: Value = request.body_json().unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body["members@odata.bind"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn forty_five_members_go_out_as_patches_of_20_20_and_5() {
    // Arrange
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_patch(&fakes, ResponseTemplate::new(204)).await;
    let principals: Vec<String> = (0..45).map(user).collect();

    // Act
    let results = fakes.groups().add_many(GROUP, &principals).await;

    // Assert
    assert_eq!(results.len(), 45);
    for ((given, result), want) in results.iter().zip(&principals) {
        assert_eq!(given, want);
        assert_eq!(result, &Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    }
    let patches = Fakes::requests(&fakes.graph, "PATCH", &group_path()).await;
    let bodies: Vec<Vec<String>> = patches.iter().map(bound).collect();
    assert_eq!(bodies.iter().map(Vec::len).collect::<Vec<_>>(), vec![20, 20, 5]);
    let expected: Vec<String> = principals.iter().map(|p| fakes.reference(p)).collect();
    assert_eq!(bodies.concat(), expected);
    assert!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.is_empty());
}

#[tokio::test]
async fn a_patch_refused_because_one_is_already_a_member_falls_back_to_single_adds() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    // Graph refuses the whole PATCH and adds nothing.
    mount_patch(&fakes, ResponseTemplate::new(400).set_body_json(graph_error("Request_BadRequest", ALREADY, "r-p400")))
        .await;
    let principals: Vec<String> = (0..5).map(user).collect();
    let member = principals[2].clone();
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .and(body_json(json!({"@odata.id": fakes.reference(&member)})))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error("Request_BadRequest", ALREADY, "r-400")))
        .with_priority(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.graph)
        .await;

    let results = fakes.groups().add_many(GROUP, &principals).await;

    for (given, result) in &results {
        let already = *given == member;
        assert_eq!(result, &Ok(GrantOutcome::Granted { upstream_id: None, already }), "{given}");
    }
    assert_eq!(Fakes::requests(&fakes.graph, "PATCH", &group_path()).await.len(), 1);
    let posts = Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await;
    let posted: Vec<String> =
        posts.iter().map(|r| r.body_json::<Value>().unwrap()["@odata.id"].as_str().unwrap().to_owned()).collect();
    assert_eq!(posted, principals.iter().map(|p| fakes.reference(p)).collect::<Vec<_>>());
}

#[tokio::test]
async fn duplicates_are_sent_once_and_bad_ids_answered_without_a_call() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_patch(&fakes, ResponseTemplate::new(204)).await;
    let principals = vec![user(1), user(2), user(1).to_uppercase(), "not-an-id".to_owned()];

    let results = fakes.groups().add_many(GROUP, &principals).await;

    assert_eq!(results.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(), principals);
    for (_, result) in &results[..3] {
        assert_eq!(result, &Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    }
    assert_eq!(results[3].1.as_ref().unwrap_err().code(), "invalid_input");
    let patches = Fakes::requests(&fakes.graph, "PATCH", &group_path()).await;
    assert_eq!(patches.len(), 1);
    assert_eq!(bound(&patches[0]), vec![fakes.reference(&user(1)), fakes.reference(&user(2))]);
}

#[tokio::test]
async fn a_batch_to_a_dynamic_group_is_refused_for_everyone() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &["DynamicMembership"], None).await;

    let results = fakes.groups().add_many(GROUP, &[user(1), user(2)]).await;

    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|(_, r)| matches!(r, Err(ProviderError::Refused { .. }))));
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn thirty_concurrent_grants_to_one_group_coalesce_into_at_most_two_patches() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_patch(&fakes, ResponseTemplate::new(204)).await;
    let providers = fakes.providers.clone().with_group_batching(std::time::Duration::from_millis(50));

    let mut tasks = JoinSet::new();
    for n in 0..30 {
        let providers = providers.clone();
        tasks.spawn(async move {
            let req = request(GrantTarget::GroupMember { group_id: GROUP.into() }, &user(n), None);
            providers.grant(&req).await
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.push(joined.unwrap());
    }

    assert_eq!(answers.len(), 30);
    assert!(
        answers.iter().all(|a| *a == Ok(GrantOutcome::Granted { upstream_id: None, already: false })),
        "{answers:?}"
    );
    let patches = Fakes::requests(&fakes.graph, "PATCH", &group_path()).await;
    assert!(!patches.is_empty() && patches.len() <= 2, "{} PATCHes", patches.len());
    let sent: Vec<String> = patches.iter().flat_map(bound).collect();
    assert_eq!(sent.len(), 30);
    assert_eq!(sent.iter().collect::<HashSet<_>>().len(), 30);
    assert!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.is_empty());
}

#[tokio::test]
async fn each_caller_of_the_coalescer_gets_its_own_answer() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    mount_patch(&fakes, ResponseTemplate::new(400).set_body_json(graph_error("Request_BadRequest", ALREADY, "r-p400")))
        .await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .and(body_json(json!({"@odata.id": fakes.reference(&user(0))})))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error("Request_BadRequest", ALREADY, "r-400")))
        .with_priority(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.graph)
        .await;
    let batcher = GroupAddBatcher::new(fakes.groups().clone(), std::time::Duration::from_millis(100));

    let (u0, u1, u2) = (user(0), user(1), user(2));
    let (a, b, c, bad) = tokio::join!(
        batcher.add(GROUP, &u0),
        batcher.add(GROUP, &u1),
        batcher.add(GROUP, &u2),
        batcher.add(GROUP, "nobody"),
    );

    assert_eq!(a, Ok(GrantOutcome::Granted { upstream_id: None, already: true }));
    assert_eq!(b, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    assert_eq!(c, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    assert_eq!(bad.unwrap_err().code(), "invalid_input");
    assert_eq!(Fakes::requests(&fakes.graph, "PATCH", &group_path()).await.len(), 1);
}
