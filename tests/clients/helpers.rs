//! Fakes and fixtures shared by the client tests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use grantbridge::entra::{Credential, GraphDirectory, TokenProvider};
use grantbridge::secret::Secret;
use grantbridge::upstream::{RetryPolicy, http_client};
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";
pub const CLIENT_SECRET: &str = "canary~client~secret~value";
pub const ACCESS_TOKEN: &str = "eyJ0eXAiOiJKV1Qi.fake-graph-token";

/// Retries in milliseconds, so tests stay fast; server delays up to 2 s are honoured.
pub fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_server_delay: Duration::from_secs(2),
    }
}

pub fn http() -> reqwest::Client {
    http_client(Duration::from_secs(5))
}

/// The body of a form POST, decoded.
pub fn form(request: &Request) -> HashMap<String, String> {
    let body = String::from_utf8(request.body.clone()).unwrap();
    reqwest::Url::parse(&format!("http://x/?{body}")).unwrap().query_pairs().into_owned().collect()
}

pub fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request.headers.get(name).and_then(|v| v.to_str().ok())
}

pub async fn requests_to(server: &MockServer, path_: &str) -> Vec<Request> {
    server.received_requests().await.unwrap().into_iter().filter(|r| r.url.path() == path_).collect()
}

/// Graph's error body, as documented.
pub fn graph_error(code: &str, message: &str, request_id: &str) -> Value {
    json!({"error": {"code": code, "message": message,
        "innerError": {"date": "2024-05-01T10:00:00", "request-id": request_id, "client-request-id": "c"}}})
}

pub fn user_json(id: &str, upn: &str) -> Value {
    json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users(id,userPrincipalName,displayName,mail,accountEnabled)/$entity",
        "id": id, "userPrincipalName": upn, "displayName": "Ada Lovelace", "mail": "ada@contoso.com", "accountEnabled": true})
}

/// A fake identity platform and a fake Graph (under `/v1.0`, like the real one), with clients pointed at them.
pub struct EntraFakes {
    pub login: MockServer,
    pub graph: MockServer,
    pub tokens: Arc<TokenProvider>,
    pub directory: GraphDirectory,
}

impl EntraFakes {
    pub async fn start() -> Self {
        let login = MockServer::start().await;
        let graph = MockServer::start().await;
        let tokens = Arc::new(
            TokenProvider::new(http(), &login.uri(), TENANT, CLIENT_ID, Credential::Secret(Secret::new(CLIENT_SECRET)))
                .with_retry_policy(fast_policy()),
        );
        let directory = GraphDirectory::new(http(), format!("{}/v1.0", graph.uri()), tokens.clone())
            .with_retry_policy(fast_policy());
        EntraFakes { login, graph, tokens, directory }
    }

    pub fn token_path() -> String {
        format!("/{TENANT}/oauth2/v2.0/token")
    }

    /// The token endpoint answering success, as the v2 endpoint does.
    pub async fn mount_token(&self, expires_in: u64, delay: Duration) {
        Mock::given(method("POST"))
            .and(path(Self::token_path()))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"token_type": "Bearer", "expires_in": expires_in,
                        "ext_expires_in": expires_in, "access_token": ACCESS_TOKEN}))
                    .set_delay(delay),
            )
            .mount(&self.login)
            .await;
    }

    pub async fn token_calls(&self) -> usize {
        requests_to(&self.login, &Self::token_path()).await.len()
    }
}
