//! Listing a group's direct members: every page of `@odata.nextLink`, throttling waited out, links elsewhere refused.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{Fakes, GROUP, graph_error, header, user};

fn members_path() -> String {
    format!("/v1.0/groups/{GROUP}/members")
}

/// A page as Graph writes it: each member with its `@odata.type`, and the link to the next page if there is one.
fn page(ids: &[String], next: Option<String>) -> Value {
    let value: Vec<Value> = ids.iter().map(|id| json!({"@odata.type": "#microsoft.graph.user", "id": id})).collect();
    let mut body = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#directoryObjects(id)",
        "value": value,
    });
    if let Some(next) = next {
        body["@odata.nextLink"] = json!(next);
    }
    body
}

/// The next link Graph gives for page `token` of the group's members, on `base` (`{uri}/v1.0`).
fn next_link(base: &str, token: &str) -> String {
    format!("{base}/groups/{GROUP}/members?$select=id&$top=999&$skiptoken={token}")
}

/// Page 1 (no skiptoken) and pages for each `(token, ids, next)`.
async fn mount_pages(fakes: &Fakes, first: Value, rest: Vec<(&str, Value)>) {
    Mock::given(method("GET"))
        .and(path(members_path()))
        .and(query_param("$select", "id"))
        .and(query_param("$top", "999"))
        .and(query_param_is_missing("$skiptoken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(first))
        .mount(&fakes.graph)
        .await;
    for (token, body) in rest {
        Mock::given(method("GET"))
            .and(path(members_path()))
            .and(query_param("$skiptoken", token))
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&fakes.graph)
            .await;
    }
}

#[tokio::test]
async fn every_page_is_followed_and_ids_come_back_lower_cased() {
    // Arrange: three pages; one id in upper case, as Graph never sends but a proxy might.
    let fakes = Fakes::start().await;
    let base = fakes.graph_url();
    let shouted = user(3).to_ascii_uppercase();
    mount_pages(
        &fakes,
        page(&[user(1), user(2)], Some(next_link(&base, "p2"))),
        vec![("p2", page(&[shouted, user(4)], Some(next_link(&base, "p3")))), ("p3", page(&[user(5)], None))],
    )
    .await;

    // Act
    let members = fakes.groups().list_members(GROUP).await.unwrap();

    // Assert
    assert_eq!(members, vec![user(1), user(2), user(3), user(4), user(5)]);
    let gets = Fakes::requests(&fakes.graph, "GET", &members_path()).await;
    assert_eq!(gets.len(), 3, "one request per page");
    let tokens: Vec<Option<String>> = gets
        .iter()
        .map(|r| r.url.query_pairs().find(|(k, _)| k == "$skiptoken").map(|(_, v)| v.into_owned()))
        .collect();
    assert_eq!(tokens, vec![None, Some("p2".into()), Some("p3".into())], "the links are followed as given");
    assert!(gets.iter().all(|r| header(r, "authorization") == Some("Bearer token-1")));
    assert!(fakes.graph_writes().await.is_empty());
}

#[tokio::test]
async fn a_429_mid_paging_is_waited_out_and_the_list_is_complete() {
    let fakes = Fakes::start().await;
    let base = fakes.graph_url();
    mount_pages(&fakes, page(&[user(1)], Some(next_link(&base, "p2"))), vec![("p3", page(&[user(3)], None))]).await;
    // Page 2 is throttled once, with Graph's Retry-After in seconds, then served.
    Mock::given(method("GET"))
        .and(path(members_path()))
        .and(query_param("$skiptoken", "p2"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1").set_body_json(graph_error(
            "TooManyRequests",
            "Too many requests",
            "r-429",
        )))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path(members_path()))
        .and(query_param("$skiptoken", "p2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&[user(2)], Some(next_link(&base, "p3")))))
        .mount(&fakes.graph)
        .await;

    let started = Instant::now();
    let members = fakes.groups().list_members(GROUP).await.unwrap();

    assert_eq!(members, vec![user(1), user(2), user(3)]);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was honoured: {:?}", started.elapsed());
    let gets = Fakes::requests(&fakes.graph, "GET", &members_path()).await;
    assert_eq!(gets.len(), 4, "page 2 twice, the others once");
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused_without_sending_the_token_there() {
    let fakes = Fakes::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page(&[user(9)], None)))
        .mount(&elsewhere)
        .await;
    let foreign = next_link(&format!("{}/v1.0", elsewhere.uri()), "p2");
    mount_pages(&fakes, page(&[user(1)], Some(foreign)), vec![]).await;

    let err = fakes.groups().list_members(GROUP).await.unwrap_err();

    assert_eq!(err.code(), "invalid_response", "{err}");
    assert!(err.to_string().contains("outside the configured Graph URL"), "{err}");
    assert!(elsewhere.received_requests().await.unwrap().is_empty(), "nothing, and no token, went to the other host");
}

#[tokio::test]
async fn a_page_that_fails_fails_the_whole_list() {
    let fakes = Fakes::start().await;
    let base = fakes.graph_url();
    mount_pages(&fakes, page(&[user(1)], Some(next_link(&base, "p2"))), vec![]).await;
    Mock::given(method("GET"))
        .and(path(members_path()))
        .and(query_param("$skiptoken", "p2"))
        .respond_with(ResponseTemplate::new(403).set_body_json(graph_error(
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
            "r-403",
        )))
        .mount(&fakes.graph)
        .await;

    let err = fakes.groups().list_members(GROUP).await.unwrap_err();

    assert_eq!(err.code(), "Authorization_RequestDenied", "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn an_unknown_group_is_not_found() {
    let fakes = Fakes::start().await;
    Mock::given(method("GET"))
        .and(path(members_path()))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            "Resource does not exist or one of its queried reference-property objects are not present.",
            "r-404",
        )))
        .mount(&fakes.graph)
        .await;

    let err = fakes.groups().list_members(GROUP).await.unwrap_err();

    assert_eq!(err.code(), "not_found", "{err}");
}
