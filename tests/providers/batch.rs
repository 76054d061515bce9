//! Adds to one group in 20-member PATCHes: chunking, the fallback to single adds; Graph writes paced to a budget.

use std::time::{Duration, Instant};

use grantbridge::domain::GrantTarget;
use grantbridge::providers::{GrantOutcome, ProviderError};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, method, path};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{Fakes, GROUP, OTHER_GROUP, graph_error, members_ref_path, request, user};

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
async fn writes_wait_for_the_graph_write_budget() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.graph)
        .await;
    // Two writes at once, then two per second.
    let providers = fakes.providers.clone().with_graph_write_budget(2, Duration::from_secs(1));

    let started = Instant::now();
    for n in 0..2 {
        let req = request(GrantTarget::GroupMember { group_id: GROUP.into() }, &user(n), None);
        providers.grant(&req).await.unwrap();
    }
    let burst = started.elapsed();
    for n in 2..4 {
        let req = request(GrantTarget::GroupMember { group_id: GROUP.into() }, &user(n), None);
        providers.grant(&req).await.unwrap();
    }

    assert!(burst < Duration::from_millis(400), "the first two writes are free: {burst:?}");
    assert!(started.elapsed() >= Duration::from_millis(950), "two more wait for the refill: {:?}", started.elapsed());
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.len(), 4);
}

#[tokio::test]
async fn a_429_holds_back_every_writer_until_its_retry_after() {
    let fakes = Fakes::start().await;
    fakes.mount_group(GROUP, &[], None).await;
    fakes.mount_group(OTHER_GROUP, &[], None).await;
    let throttled = json!({"error": {"code": "TooManyRequests", "message": "Too many requests."}});
    Mock::given(method("POST"))
        .and(path(members_ref_path(GROUP)))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "2").set_body_json(throttled))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fakes.graph)
        .await;
    for group in [GROUP, OTHER_GROUP] {
        Mock::given(method("POST"))
            .and(path(members_ref_path(group)))
            .respond_with(ResponseTemplate::new(204))
            .mount(&fakes.graph)
            .await;
    }
    let providers = fakes.providers.clone().with_graph_write_budget(100, Duration::from_secs(1));

    let started = Instant::now();
    let first = request(GrantTarget::GroupMember { group_id: GROUP.into() }, &user(1), None);
    let second = request(GrantTarget::GroupMember { group_id: OTHER_GROUP.into() }, &user(2), None);
    let (a, b) = tokio::join!(providers.grant(&first), async {
        // Starts after the first write has been answered 429.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = providers.grant(&second).await;
        (answer, started.elapsed())
    });

    assert_eq!(a, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    assert_eq!(b.0, Ok(GrantOutcome::Granted { upstream_id: None, already: false }));
    assert!(b.1 >= Duration::from_secs(2), "the other writer waited out the Retry-After too: {:?}", b.1);
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(GROUP)).await.len(), 2);
    assert_eq!(Fakes::requests(&fakes.graph, "POST", &members_ref_path(OTHER_GROUP)).await.len(), 1);
}
