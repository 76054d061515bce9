//! Graph directory reads: retries on 429/503, 404 as absence, permanent 400s, UPN escaping, filters, chunking.

use std::time::{Duration, Instant};

use grantbridge::domain::Principal;
use grantbridge::entra::GraphError;
use grantbridge::upstream::UpstreamError;
use serde_json::json;
use wiremock::matchers::{body_json, header as header_is, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::{ACCESS_TOKEN, EntraFakes, graph_error, header, requests_to, user_json};

const USER_ID: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";
const SELECT: &str = "id,userPrincipalName,displayName,mail,accountEnabled";

#[tokio::test]
async fn a_429_with_retry_after_is_waited_out_then_the_call_succeeds() {
    // Arrange
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    let user_path = format!("/v1.0/users/{USER_ID}");
    Mock::given(method("GET"))
        .and(path(&user_path))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1").set_body_json(graph_error(
            "TooManyRequests",
            "Too many requests",
            "r-429",
        )))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path(&user_path))
        .and(query_param("$select", SELECT))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(USER_ID, "ada@contoso.com")))
        .mount(&fakes.graph)
        .await;

    // Act
    let started = Instant::now();
    let user = fakes.directory.user(USER_ID).await.unwrap().unwrap();

    // Assert
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After was not honoured: {:?}", started.elapsed());
    assert_eq!(user.id, USER_ID);
    assert_eq!(user.account_enabled, Some(true));
    let calls = requests_to(&fakes.graph, &user_path).await;
    assert_eq!(calls.len(), 2);
    for call in &calls {
        assert_eq!(header(call, "authorization"), Some(format!("Bearer {ACCESS_TOKEN}").as_str()));
    }
}

#[tokio::test]
async fn a_503_is_retried_and_each_call_carries_a_client_request_id() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    let user_path = "/v1.0/users/ada@contoso.com";
    Mock::given(method("GET"))
        .and(path(user_path))
        .respond_with(ResponseTemplate::new(503).set_body_json(graph_error(
            "serviceNotAvailable",
            "Service unavailable",
            "r-503",
        )))
        .up_to_n_times(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path(user_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json(USER_ID, "ada@contoso.com")))
        .mount(&fakes.graph)
        .await;

    let user = fakes.directory.user("ada@contoso.com").await.unwrap().unwrap();
    let second = fakes.directory.user("ada@contoso.com").await.unwrap().unwrap();

    assert_eq!(user, second);
    let principal = Principal::from(user);
    assert_eq!(principal.object_id, USER_ID);
    assert_eq!(principal.user_principal_name.as_deref(), Some("ada@contoso.com"));
    let calls = requests_to(&fakes.graph, user_path).await;
    assert_eq!(calls.len(), 3);
    let ids: Vec<&str> = calls.iter().map(|c| header(c, "client-request-id").unwrap()).collect();
    for id in &ids {
        assert!(uuid::Uuid::try_parse(id).is_ok(), "{id}");
    }
    // Retries of one call share its id; another call gets a new one.
    assert_eq!(ids[0], ids[1]);
    assert_ne!(ids[1], ids[2]);
}

#[tokio::test]
async fn an_unknown_user_is_none() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/nobody@contoso.com"))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            "Resource 'nobody@contoso.com' does not exist or one of its queried reference-property objects are not present.",
            "r-404",
        )))
        .expect(1)
        .mount(&fakes.graph)
        .await;

    assert_eq!(fakes.directory.user("nobody@contoso.com").await.unwrap(), None);
}

#[tokio::test]
async fn a_400_is_permanent_and_not_retried() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/not-a-guid"))
        .respond_with(ResponseTemplate::new(400).insert_header("request-id", "hdr-id").set_body_json(graph_error(
            "Request_BadRequest",
            "Invalid object identifier 'not-a-guid'.",
            "r-400",
        )))
        .expect(1)
        .mount(&fakes.graph)
        .await;

    let err = fakes.directory.user("not-a-guid").await.unwrap_err();

    match err {
        GraphError::Upstream(UpstreamError::Permanent { status, code, message, request_id }) => {
            assert_eq!(status.as_u16(), 400);
            assert_eq!(code.as_deref(), Some("Request_BadRequest"));
            assert_eq!(message, "Invalid object identifier 'not-a-guid'.");
            assert_eq!(request_id.as_deref(), Some("r-400"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn upns_with_hash_and_dollar_are_addressed_as_graph_documents() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    let guest = "ada_fabrikam.com#EXT#@contoso.onmicrosoft.com";
    Mock::given(method("GET"))
        .and(path("/v1.0/users/ada_fabrikam.com%23EXT%23@contoso.onmicrosoft.com"))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json("g1", guest)))
        .expect(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users('$admin@contoso.com')"))
        .and(query_param("$select", SELECT))
        .respond_with(ResponseTemplate::new(200).set_body_json(user_json("d1", "$admin@contoso.com")))
        .expect(1)
        .mount(&fakes.graph)
        .await;

    assert_eq!(fakes.directory.user(guest).await.unwrap().unwrap().user_principal_name, guest);
    assert_eq!(fakes.directory.user("$admin@contoso.com").await.unwrap().unwrap().id, "d1");
}

#[tokio::test]
async fn mail_lookups_quote_the_value_and_refuse_ambiguity() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    let page = |users: Vec<serde_json::Value>| {
        ResponseTemplate::new(200).set_body_json(
            json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users", "value": users}),
        )
    };
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .and(query_param("$filter", "mail eq 'o''neil+it@contoso.com'"))
        .and(query_param("$select", SELECT))
        .respond_with(page(vec![user_json("u1", "oneil@contoso.com")]))
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .and(query_param("$filter", "mail eq 'shared@contoso.com'"))
        .respond_with(page(vec![user_json("u2", "a@contoso.com"), user_json("u3", "b@contoso.com")]))
        .mount(&fakes.graph)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .and(query_param("$filter", "mail eq 'ghost@contoso.com'"))
        .respond_with(page(vec![]))
        .mount(&fakes.graph)
        .await;

    assert_eq!(fakes.directory.user_by_mail("o'neil+it@contoso.com").await.unwrap().unwrap().id, "u1");
    assert_eq!(fakes.directory.user_by_mail("ghost@contoso.com").await.unwrap(), None);
    let err = fakes.directory.user_by_mail("shared@contoso.com").await.unwrap_err();
    assert!(matches!(&err, GraphError::AmbiguousMail { count: 2, .. }), "{err:?}");
    assert!(err.to_string().contains("ambiguous"), "{err}");
}

#[tokio::test]
async fn check_member_groups_is_called_in_chunks_of_twenty() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    let ids: Vec<String> = (0..25).map(|i| format!("00000000-0000-0000-0000-{i:012}")).collect();
    let check_path = format!("/v1.0/users/{USER_ID}/checkMemberGroups");
    Mock::given(method("POST"))
        .and(path(&check_path))
        .and(header_is("content-type", "application/json"))
        .and(body_json(json!({"groupIds": ids[..20]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [ids[3], ids[19]]})))
        .expect(1)
        .mount(&fakes.graph)
        .await;
    Mock::given(method("POST"))
        .and(path(&check_path))
        .and(body_json(json!({"groupIds": ids[20..]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [ids[24]]})))
        .expect(1)
        .mount(&fakes.graph)
        .await;

    let member_of = fakes.directory.member_of_groups(USER_ID, &ids).await.unwrap();

    assert_eq!(member_of, vec![ids[3].clone(), ids[19].clone(), ids[24].clone()]);
    assert!(fakes.directory.member_of_groups(USER_ID, &[]).await.unwrap().is_empty());
    assert_eq!(requests_to(&fakes.graph, &check_path).await.len(), 2);
}

#[tokio::test]
async fn groups_are_found_by_exact_display_name() {
    let fakes = EntraFakes::start().await;
    fakes.mount_token(3599, Duration::ZERO).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .and(query_param("$filter", "displayName eq 'EPM - User Portal Access'"))
        .and(query_param("$select", "id,displayName,groupTypes,onPremisesSyncEnabled,isAssignableToRole"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": [
            {"id": "g1", "displayName": "EPM - User Portal Access", "groupTypes": [],
             "onPremisesSyncEnabled": null, "isAssignableToRole": null},
            {"id": "g2", "displayName": "EPM - User Portal Access", "groupTypes": ["DynamicMembership"],
             "onPremisesSyncEnabled": true, "isAssignableToRole": false}]})))
        .expect(1)
        .mount(&fakes.graph)
        .await;

    let groups = fakes.directory.group_by_name("EPM - User Portal Access").await.unwrap();

    assert_eq!(groups.len(), 2);
    assert!(!groups[0].is_dynamic() && !groups[0].is_synced_from_on_premises());
    assert!(groups[1].is_dynamic() && groups[1].is_synced_from_on_premises());
}
