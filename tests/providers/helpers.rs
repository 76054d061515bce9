//! Fakes of the token endpoint, Graph (under `/v1.0`) and ARM, and executors pointed at them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grantbridge::domain::GrantTarget;
use grantbridge::entra::{Credential, TokenProvider};
use grantbridge::providers::{AzureRbac, GROUP_SELECT, GrantRequest, GraphGroups, Pim, Providers};
use grantbridge::secret::Secret;
use grantbridge::upstream::{RetryPolicy, http_client};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "canary~client~secret~value";

pub const GROUP: &str = "02bd9fd6-8f93-4758-87c3-1fb73740a315";
pub const OTHER_GROUP: &str = "5a1c2e3f-7b8d-4e9f-a0b1-c2d3e4f5a6b7";
pub const USER: &str = "6e7b768e-07e2-4810-8459-485f84f8f204";
pub const OTHER_USER: &str = "87d349ed-44d7-43e1-9a83-5f2406dee5bd";

/// Retries in milliseconds so tests stay fast; server delays up to 2 s are honoured.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_server_delay: Duration::from_secs(2),
    }
}

/// A distinct, valid-looking object id per number.
pub fn user(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// Graph's error body, as documented.
pub fn graph_error(code: &str, message: &str, request_id: &str) -> Value {
    json!({"error": {"code": code, "message": message,
        "innerError": {"date": "2024-05-01T10:00:00", "request-id": request_id, "client-request-id": "c"}}})
}

/// ARM's error body: no innerError; the request id travels in `x-ms-request-id`.
pub fn arm_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn form(request: &Request) -> HashMap<String, String> {
    let body = String::from_utf8(request.body.clone()).unwrap();
    reqwest::Url::parse(&format!("http://x/?{body}")).unwrap().query_pairs().into_owned().collect()
}

pub fn is_guid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

/// The token endpoint: `token-1`, `token-2`, ... one new token per fetch, each living `expires_in` seconds.
struct NumberedTokens {
    expires_in: u64,
    issued: AtomicUsize,
}

impl Respond for NumberedTokens {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        ResponseTemplate::new(200).set_body_json(json!({"token_type": "Bearer", "expires_in": self.expires_in,
            "ext_expires_in": self.expires_in, "access_token": format!("token-{n}")}))
    }
}

pub struct Fakes {
    pub login: MockServer,
    pub graph: MockServer,
    pub arm: MockServer,
    pub providers: Providers,
}

impl Fakes {
    /// Fakes with a token endpoint issuing hour-long tokens.
    pub async fn start() -> Self {
        Self::with_token_lifetime(3599).await
    }

    pub async fn with_token_lifetime(expires_in: u64) -> Self {
        let login = MockServer::start().await;
        let graph = MockServer::start().await;
        let arm = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path(Self::token_path()))
            .respond_with(NumberedTokens { expires_in, issued: AtomicUsize::new(0) })
            .mount(&login)
            .await;
        let http = http_client(Duration::from_secs(5));
        let tokens = Arc::new(
            TokenProvider::new(
                http.clone(),
                &login.uri(),
                TENANT,
                CLIENT_ID,
                Credential::Secret(Secret::new(CLIENT_SECRET)),
            )
            .with_retry_policy(fast_policy()),
        );
        let graph_url = format!("{}/v1.0", graph.uri());
        let providers = Providers::new(
            GraphGroups::new(http.clone(), &graph_url, tokens.clone()).with_retry_policy(fast_policy()),
            Pim::new(http.clone(), &graph_url, tokens.clone()).with_retry_policy(fast_policy()),
            AzureRbac::new(http, arm.uri(), tokens.clone()).with_retry_policy(fast_policy()),
        );
        Fakes { login, graph, arm, providers }
    }

    pub fn token_path() -> String {
        format!("/{TENANT}/oauth2/v2.0/token")
    }

    pub fn groups(&self) -> &GraphGroups {
        &self.providers.groups
    }

    pub fn graph_url(&self) -> String {
        format!("{}/v1.0", self.graph.uri())
    }

    /// What the add bodies must reference for `id`.
    pub fn reference(&self, id: &str) -> String {
        format!("{}/directoryObjects/{id}", self.graph_url())
    }

    /// `GET /groups/{id}?$select=...` answering a group of the given kind.
    pub async fn mount_group(&self, group_id: &str, group_types: &[&str], on_premises_sync: Option<bool>) {
        Mock::given(method("GET"))
            .and(path(format!("/v1.0/groups/{group_id}")))
            .and(query_param("$select", GROUP_SELECT))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups(id,displayName,groupTypes,onPremisesSyncEnabled,isAssignableToRole)/$entity",
                "id": group_id,
                "displayName": "EPM - User Portal Access",
                "groupTypes": group_types,
                "onPremisesSyncEnabled": on_premises_sync,
                "isAssignableToRole": null,
            })))
            .mount(&self.graph)
            .await;
    }

    pub async fn requests(server: &MockServer, verb: &str, path_: &str) -> Vec<Request> {
        server
            .received_requests()
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.method.as_str() == verb && r.url.path() == path_)
            .collect()
    }

    pub async fn graph_writes(&self) -> Vec<Request> {
        self.graph.received_requests().await.unwrap().into_iter().filter(|r| r.method.as_str() != "GET").collect()
    }

    pub async fn token_calls(&self) -> Vec<Request> {
        Self::requests(&self.login, "POST", &Self::token_path()).await
    }
}

pub fn members_ref_path(group_id: &str) -> String {
    format!("/v1.0/groups/{group_id}/members/$ref")
}

pub fn request(target: GrantTarget, principal_id: &str, duration: Option<Duration>) -> GrantRequest {
    GrantRequest {
        target,
        principal_id: principal_id.to_owned(),
        duration,
        ticket_number: "RITM0010001".into(),
        ticket_system: "ServiceNow".into(),
        justification: "Portal access for RITM0010001, approved by the manager".into(),
    }
}
