//! Keeps `openapi.yaml` true: its routes, its error codes and its response schemas are checked against the
//! running application, and its error-code enum against `ApiError::code()`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::Connection;

use crate::admin::{entra_section, entra_token};
use crate::common::{Backend, TempDir, sign};
use crate::helpers::{JIRA_SECRET, OPERATE_TOKEN, READ_TOKEN, TestApp, spawn_app, spawn_app_with};

const HTTP_METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// Codes that a black-box test cannot provoke cheaply, or that another test provokes (`event_being_decided`: a
/// replay while a worker holds the event, in `operate.rs`; `grant_not_active`: revoking a pending grant, in
/// tests/decide/lifecycle.rs); they must still be in `ApiError::code()`.
const NOT_PROVOKED: [&str; 4] = ["not_ready", "unreadable_body", "event_being_decided", "grant_not_active"];

const PLAN: &str = "/v1/plan";

fn repo_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub(crate) fn spec() -> Value {
    let text = std::fs::read_to_string(repo_file("openapi.yaml")).expect("openapi.yaml is readable");
    serde_yaml_ng::from_str(&text).expect("openapi.yaml is valid YAML")
}

/// Follows a local `$ref` (`#/components/...`) until the value is not a reference.
fn resolve<'a>(spec: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference.strip_prefix('#').unwrap_or_else(|| panic!("only local $refs are used: {reference}"));
        value = spec.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref {reference}"));
    }
    value
}

/// One documented operation, with its path parameters filled from their examples.
struct Operation<'a> {
    method: &'static str,
    template: String,
    path: String,
    spec: &'a Value,
}

fn operations(spec: &Value) -> Vec<Operation<'_>> {
    let paths = spec["paths"].as_object().expect("the spec has paths");
    let mut found = Vec::new();
    for (template, item) in paths {
        let item = resolve(spec, item);
        for method in HTTP_METHODS {
            let Some(operation) = item.get(method) else { continue };
            let mut path = template.clone();
            let parameters = item["parameters"].as_array().into_iter().chain(operation["parameters"].as_array());
            for parameter in parameters.flatten().map(|p| resolve(spec, p)) {
                if parameter["in"] == "path" {
                    let name = parameter["name"].as_str().expect("a parameter has a name");
                    let example = parameter["example"].as_str().expect("path parameters have an example");
                    path = path.replace(&format!("{{{name}}}"), example);
                }
            }
            assert!(!path.contains('{'), "{template}: every path parameter has an example");
            found.push(Operation { method, template: template.clone(), path, spec: operation });
        }
    }
    found
}

fn http_method(name: &str) -> Method {
    Method::from_bytes(name.to_ascii_uppercase().as_bytes()).expect("a valid method")
}

async fn request(app: &TestApp, method: &str, path: &str) -> reqwest::Response {
    let mut request = app.client.request(http_method(method), app.url(path));
    if method == "post" {
        request = request.header(CONTENT_TYPE, "application/json").body("{}");
    }
    request.send().await.expect("the test server answers")
}

/// What the application answers for a route it does not have, as opposed to an answer from a handler.
fn is_unserved(status: StatusCode, body: &Value) -> bool {
    (status == StatusCode::NOT_FOUND && body["error"]["code"] == "not_found")
        || (status == StatusCode::METHOD_NOT_ALLOWED && body["error"]["code"] == "method_not_allowed")
}

/// A response taken apart, so that it can be checked after its body was read.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) async fn from(response: reqwest::Response) -> Answer {
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("a readable body");
        Answer { status, headers, body }
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub(crate) fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("<none>").to_string()
    }
}

/// Whether `value` is of the JSON Schema type `kind`.
fn is_of_type(kind: &str, value: &Value, at: &str) -> bool {
    match kind {
        "object" => value.is_object(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "null" => value.is_null(),
        other => panic!("{at}: schema type {other} is not handled by this check"),
    }
}

/// A small JSON Schema check covering what openapi.yaml uses: `$ref`, `allOf`, `oneOf` (exactly one
/// alternative fits), `type` (a name or a list of names, `null` included), `const`, `enum`, `required`,
/// `properties`, `additionalProperties` (`false` or a schema), `items`, `minimum` and `format: uuid`.
fn schema_errors(spec: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        schema_errors(spec, part, value, at, errors);
    }
    if let Some(alternatives) = schema["oneOf"].as_array() {
        let found: Vec<Vec<String>> = alternatives
            .iter()
            .map(|alternative| {
                let mut found = Vec::new();
                schema_errors(spec, alternative, value, at, &mut found);
                found
            })
            .collect();
        let fitting = found.iter().filter(|f| f.is_empty()).count();
        if fitting != 1 {
            errors.push(format!("{at}: {value} fits {fitting} of the {} oneOf alternatives", alternatives.len()));
            // The closest alternative says best what is wrong.
            if let Some(closest) = found.into_iter().filter(|f| !f.is_empty()).min_by_key(Vec::len) {
                errors.extend(closest.into_iter().map(|e| format!("  closest alternative: {e}")));
            }
        }
    }
    let kinds: Vec<&str> = match &schema["type"] {
        Value::String(kind) => vec![kind.as_str()],
        Value::Array(kinds) => kinds.iter().map(|k| k.as_str().expect("type names are strings")).collect(),
        _ => Vec::new(),
    };
    if !kinds.is_empty() && !kinds.iter().any(|kind| is_of_type(kind, value, at)) {
        errors.push(format!("{at}: {value} is not of type {}", kinds.join(" or ")));
        return;
    }
    if let Some(expected) = schema.get("const")
        && expected != value
    {
        errors.push(format!("{at}: {value} is not {expected}"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        errors.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(minimum), Some(n)) = (schema["minimum"].as_f64(), value.as_f64())
        && n < minimum
    {
        errors.push(format!("{at}: {n} is below the minimum {minimum}"));
    }
    if schema["format"] == "uuid" && value.as_str().is_none_or(|s| uuid::Uuid::parse_str(s).is_err()) {
        errors.push(format!("{at}: {value} is not a UUID"));
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, item) in array.iter().enumerate() {
            schema_errors(spec, items, item, &format!("{at}[{i}]"), errors);
        }
    }
    let Some(object) = value.as_object() else { return };
    for required in schema["required"].as_array().into_iter().flatten() {
        let name = required.as_str().expect("required names are strings");
        if !object.contains_key(name) {
            errors.push(format!("{at}: required property `{name}` is missing"));
        }
    }
    let properties = schema["properties"].as_object();
    for (name, property) in properties.into_iter().flatten() {
        if let Some(v) = object.get(name) {
            schema_errors(spec, property, v, &format!("{at}.{name}"), errors);
        }
    }
    let declared = |name: &String| properties.is_some_and(|p| p.contains_key(name));
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => {
            for name in object.keys().filter(|name| !declared(name)) {
                errors.push(format!("{at}: property `{name}` is not in the schema"));
            }
        }
        Some(extra @ Value::Object(_)) => {
            for (name, v) in object.iter().filter(|(name, _)| !declared(name)) {
                schema_errors(spec, extra, v, &format!("{at}.{name}"), errors);
            }
        }
        _ => {}
    }
}

/// Checks a real answer against what the spec documents for `method template` and its status:
/// the status is documented, required headers are there and valid, and the body fits the media type's schema.
pub(crate) fn assert_documented(spec: &Value, method: &str, template: &str, answer: &Answer) {
    let what = format!("{} {template} -> {}", method.to_ascii_uppercase(), answer.status);
    let operation = &spec["paths"][template][method];
    assert!(operation.is_object(), "{what}: operation not documented");
    let documented = operation["responses"].get(answer.status.as_str());
    let response = resolve(spec, documented.unwrap_or_else(|| panic!("{what}: status not documented")));
    let mut errors = Vec::new();

    for (name, header) in response["headers"].as_object().into_iter().flatten() {
        let header = resolve(spec, header);
        let Some(actual) = answer.headers.get(name.as_str()) else {
            if header["required"] == true {
                errors.push(format!("header {name} is missing"));
            }
            continue;
        };
        let actual = actual.to_str().expect("header values are ASCII");
        let schema = resolve(spec, &header["schema"]);
        let value = match schema["type"].as_str() {
            Some("integer") => actual.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(actual)),
            _ => Value::from(actual),
        };
        schema_errors(spec, schema, &value, &format!("header {name}"), &mut errors);
    }

    let content = response["content"].as_object().unwrap_or_else(|| panic!("{what}: documented without content"));
    let content_type = answer.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match content.get(essence) {
        None => errors.push(format!("Content-Type {content_type} is not among {:?}", content.keys())),
        Some(media) if essence == "application/json" => {
            let body: Value = serde_json::from_str(&answer.body)
                .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {}", answer.body));
            schema_errors(spec, &media["schema"], &body, "body", &mut errors);
        }
        Some(media) => schema_errors(spec, &media["schema"], &Value::from(answer.body.clone()), "body", &mut errors),
    }
    assert!(errors.is_empty(), "{what} does not match openapi.yaml:\n  {}\n{}", errors.join("\n  "), answer.body);
}

#[tokio::test]
async fn every_documented_operation_is_served_and_nothing_else_is() {
    let spec = spec();
    let app = spawn_app(Backend::Sqlite).await;
    let operations = operations(&spec);
    assert!(!operations.is_empty());

    for op in &operations {
        let answer = Answer::from(request(&app, op.method, &op.path).await).await;
        assert!(
            !is_unserved(answer.status, &answer.json()),
            "{} {} is documented but not served: {} {}",
            op.method,
            op.path,
            answer.status,
            answer.body
        );
        assert!(
            op.spec["responses"].get(answer.status.as_str()).is_some(),
            "{} {} answered {}, which openapi.yaml does not document",
            op.method,
            op.path,
            answer.status
        );
    }

    let documented: BTreeSet<(&str, &str)> = operations.iter().map(|op| (op.template.as_str(), op.method)).collect();
    for op in &operations {
        for method in HTTP_METHODS.into_iter().filter(|m| !documented.contains(&(op.template.as_str(), *m))) {
            let answer = Answer::from(request(&app, method, &op.path).await).await;
            let unserved = if method == "head" {
                // A HEAD answer has no body to read a code from.
                matches!(answer.status, StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED)
            } else {
                is_unserved(answer.status, &answer.json())
            };
            assert!(unserved, "{method} {} is served but not documented: {} {}", op.path, answer.status, answer.body);
        }
    }

    let undocumented =
        ["/", "/webhooks", "/webhooks/", "/webhooks/jira/extra", "/healthz/", "/v1/event", "/v1/", "/openapi.yaml"];
    for path in undocumented.into_iter().filter(|path| spec["paths"].get(*path).is_none()) {
        for method in ["get", "post"] {
            let answer = Answer::from(request(&app, method, path).await).await;
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (StatusCode::NOT_FOUND, "not_found"),
                "{method} {path} is not documented, so it must not be served"
            );
        }
    }
    app.stop().await;
}

/// `"code"` strings of the match in `ApiError::code()`, read from the source.
fn codes_in_error_rs() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo_file("src/http/error.rs")).expect("src/http/error.rs is readable");
    let start = source.find("pub fn code(&self)").expect("ApiError::code() is in src/http/error.rs");
    let body = &source[start..];
    let end = body.find("\n    }\n").expect("the end of ApiError::code()");
    body[..end]
        .split("=> \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(code, _)| code.to_string()))
        .collect()
}

fn spec_error_codes(spec: &Value) -> BTreeSet<String> {
    spec["components"]["schemas"]["ErrorCode"]["enum"]
        .as_array()
        .expect("components.schemas.ErrorCode has an enum")
        .iter()
        .map(|code| code.as_str().expect("codes are strings").to_string())
        .collect()
}

fn jira_headers(body: &[u8], delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Content-Type", "application/json".to_string()),
        ("X-Hub-Signature", sign::hub_signature(JIRA_SECRET, body)),
        ("X-Atlassian-Webhook-Identifier", delivery.to_string()),
    ]
}

async fn post(app: &TestApp, source: &str, headers: &[(&str, String)], body: impl Into<reqwest::Body>) -> Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    Answer::from(app.post(source, &headers, body).await).await
}

#[tokio::test]
async fn the_error_code_enum_is_exactly_what_the_app_answers() {
    let spec = spec();
    let app = spawn_app(Backend::Sqlite).await;
    let json = || vec![("Content-Type", "application/json".to_string())];
    let webhook = "/webhooks/{source}";
    let oversized = vec![b' '; 5000];
    let long_id = "x".repeat(300);
    let valid = br#"{"webhookEvent":"jira:issue_updated"}"#;

    let mut provoked: Vec<(&str, &str, Answer)> = vec![
        ("post", webhook, post(&app, "no-such-source", &json(), "{}").await),
        ("post", webhook, post(&app, "jira", &json(), "{}").await),
        ("post", webhook, post(&app, "jira", &jira_headers(b"[1,2]", "e-1"), "[1,2]").await),
        ("post", webhook, post(&app, "jira", &jira_headers(valid, &long_id), &valid[..]).await),
        ("post", webhook, post(&app, "jira", &jira_headers(&oversized, "e-2"), oversized.clone()).await),
        ("post", webhook, post(&app, "jira", &[("Content-Type", "text/plain".to_string())], "{}").await),
    ];
    // The 405 is documented on the one operation of the path.
    provoked.push((
        "post",
        webhook,
        Answer::from(app.client.get(app.url("/webhooks/jira")).send().await.unwrap()).await,
    ));
    // The plan route's own refusals, each checked against what /v1/plan documents.
    provoked.push(("post", PLAN, post_plan(&app, &br#"{"source": 1}"#[..]).await));
    provoked.push(("post", PLAN, post_plan(&app, plan_body("no-such-source", servicenow_ritm(), false)).await));
    provoked.push(("post", PLAN, post_plan(&app, vec![b' '; 1024 * 1024 + 1]).await));
    provoked.push(("post", PLAN, Answer::from(app.client.get(app.url(PLAN)).send().await.unwrap()).await));
    // The admin API's own refusals.
    let admin_get = |path: String, token: Option<&'static str>| {
        let mut request = app.client.get(app.url(&path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { Answer::from(request.send().await.unwrap()).await }
    };
    let some_event = uuid::Uuid::now_v7();
    provoked.push(("get", "/v1/events", admin_get("/v1/events".into(), None).await));
    provoked.push(("get", "/v1/events", admin_get("/v1/events?limit=0".into(), Some(READ_TOKEN)).await));
    provoked.push(("get", "/v1/events", admin_get("/v1/events?cursor=x".into(), Some(READ_TOKEN)).await));
    provoked.push(("get", "/v1/events/{id}", admin_get(format!("/v1/events/{some_event}"), Some(READ_TOKEN)).await));
    let body_for_readers = admin_get(format!("/v1/events/{some_event}?include=body"), Some(READ_TOKEN)).await;
    provoked.push(("get", "/v1/events/{id}", body_for_readers));
    let no_run = admin_get(format!("/v1/reconcile/runs/{some_event}"), Some(READ_TOKEN)).await;
    provoked.push(("get", "/v1/reconcile/runs/{id}", no_run));
    let revoke = "/v1/grants/{id}/revoke";
    let post_revoke = |body: &'static str| {
        let request = app.client.post(app.url("/v1/grants/no-such-grant/revoke")).bearer_auth(OPERATE_TOKEN).body(body);
        async move { Answer::from(request.header("Content-Type", "application/json").send().await.unwrap()).await }
    };
    provoked.push(("post", revoke, post_revoke(r#"{"why": "left"}"#).await));
    provoked.push(("post", revoke, post_revoke(r#"{"reason": "left the team"}"#).await));
    let nowhere = Answer::from(app.client.get(app.url("/nowhere")).send().await.unwrap()).await;
    assert_eq!((nowhere.status, nowhere.code().as_str()), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(app.event_count().await, 0, "no error leaves an event behind");
    app.stop().await;

    // Confirming with a ticketing API that nobody answers: the port was free a moment ago.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let secrets = TempDir::new();
    let password = secrets.write("servicenow-api", "integration-password");
    let unreachable_api = format!(
        r#"
[sources.servicenow.api]
base_url = "http://127.0.0.1:{closed_port}"
auth = {{ kind = "basic", user = "grantbridge", password = {{ file = "{}" }} }}
timeout_secs = 2

[[policy.rules]]
name = "portal-access"
sources = ["servicenow"]
[[policy.rules.grants]]
kind = "group_member"
group_id = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"
"#,
        password.display()
    );
    let unreachable = spawn_app_with(Backend::Sqlite, &unreachable_api).await;
    let down = post_plan(&unreachable, plan_body("servicenow", servicenow_ritm(), true)).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{}", down.body);
    provoked.push(("post", PLAN, down));
    unreachable.stop().await;

    // The store refusing a write: another connection holds SQLite's write lock.
    let locked = spawn_app_with(Backend::Sqlite, "[database]\nbusy_timeout_ms = 200\n").await;
    let mut locker = sqlx::SqliteConnection::connect(&locked.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();
    provoked.push(("post", webhook, post(&locked, "jira", &jira_headers(valid, "e-3"), &valid[..]).await));
    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    locked.stop().await;

    // Entra tokens while the tenant's signing keys cannot be fetched.
    let keys_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let no_keys = spawn_app_with(Backend::Sqlite, &entra_section(&format!("http://127.0.0.1:{keys_port}/k"), 30)).await;
    let request = no_keys.client.get(no_keys.url("/v1/grants")).bearer_auth(entra_token(&["Grantbridge.Read"]));
    provoked.push(("get", "/v1/grants", Answer::from(request.send().await.unwrap()).await));
    no_keys.stop().await;

    let mut codes: BTreeSet<String> = BTreeSet::from([nowhere.code()]);
    for (method, template, answer) in &provoked {
        assert_documented(&spec, method, template, answer);
        codes.insert(answer.code());
    }
    let expected = [
        "unknown_source",
        "invalid_signature",
        "malformed_payload",
        "invalid_delivery_id",
        "payload_too_large",
        "unsupported_media_type",
        "method_not_allowed",
        "not_found",
        "store_unavailable",
        "upstream_unavailable",
        "unauthorized",
        "insufficient_role",
        "invalid_parameter",
        "invalid_cursor",
        "unknown_event",
        "auth_unavailable",
        "invalid_body",
        "unknown_grant",
        "unknown_reconcile_run",
    ];
    assert_eq!(codes, expected.iter().map(|c| c.to_string()).collect(), "each request provokes its own code");

    let in_source = codes_in_error_rs();
    for code in NOT_PROVOKED {
        assert!(in_source.contains(code), "{code} is not in ApiError::code() any more: update this test and the spec");
        codes.insert(code.to_string());
    }
    let documented = spec_error_codes(&spec);
    assert_eq!(documented, codes, "components.schemas.ErrorCode.enum lists exactly the codes the app answers");
    assert_eq!(documented, in_source, "components.schemas.ErrorCode.enum lists exactly the codes of ApiError::code()");
}

#[tokio::test]
async fn real_responses_match_their_documented_schemas() {
    let spec = spec();
    let app = spawn_app(Backend::Sqlite).await;
    let webhook = "/webhooks/{source}";
    let body = br#"{"webhookEvent":"jira:issue_updated","issue":{"key":"ACC-7"}}"#;

    let accepted = post(&app, "jira", &jira_headers(body, "spec-1"), &body[..]).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.body);
    assert_eq!(accepted.json()["status"], "accepted");
    assert_documented(&spec, "post", webhook, &accepted);

    let duplicate = post(&app, "jira", &jira_headers(body, "spec-1"), &body[..]).await;
    assert_eq!(duplicate.json()["status"], "duplicate");
    assert_eq!(duplicate.json()["event_id"], accepted.json()["event_id"]);
    assert_documented(&spec, "post", webhook, &duplicate);

    let unsigned = post(&app, "jira", &[("Content-Type", "application/json".to_string())], &body[..]).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    assert_documented(&spec, "post", webhook, &unsigned);

    let wrong_method = Answer::from(app.client.delete(app.url("/webhooks/jira")).send().await.unwrap()).await;
    assert_documented(&spec, "post", webhook, &wrong_method);

    for (path, status) in [("/healthz", StatusCode::OK), ("/readyz", StatusCode::OK), ("/metrics", StatusCode::OK)] {
        let answer = Answer::from(app.client.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!(answer.status, status, "GET {path}: {}", answer.body);
        assert_documented(&spec, "get", path, &answer);
    }
    let ready = Answer::from(app.client.get(app.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(ready.json()["store"], "sqlite");
    let metrics = Answer::from(app.client.get(app.url("/metrics")).send().await.unwrap()).await;
    assert!(metrics.body.contains("grantbridge_webhook_requests_total{source=\"jira\",outcome=\"accepted\"} 1"));
    // The series served and the series the spec describes are the same.
    let described = spec["paths"]["/metrics"]["get"]["description"].as_str().expect("/metrics has a description");
    let served: BTreeSet<&str> =
        metrics.body.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let documented: BTreeSet<&str> = described
        .split('`')
        .filter(|word| word.starts_with("grantbridge_"))
        .map(|word| word.split('{').next().unwrap_or(word))
        .collect();
    assert!(served.contains("grantbridge_decisions_total"), "the decision counter is served");
    assert_eq!(served, documented, "the /metrics description in openapi.yaml names exactly the series served");
    app.stop().await;
}

/// An approved ServiceNow requested item, as the business rule in examples/servicenow/ sends it.
fn servicenow_ritm() -> Value {
    serde_json::json!({
        "table": "sc_req_item",
        "sys_id": "9d385017c611228701d22104cc95c371",
        "number": "RITM0010001",
        "cat_item": "Permissions portal access",
        "requested_for": {"sys_id": "62826bf03710200044e0bfc8bcbe5df1", "user_name": "riley.requester", "email": "riley.requester@example.com"},
        "opened_by": {"sys_id": "62826bf03710200044e0bfc8bcbe5df1", "user_name": "riley.requester"},
        "approval": "approved",
        "state": "1",
        "variables": {"justification": "Billing project", "environment": "dev", "duration": "12h"},
        "approvers": [{"sys_id": "46d44a5fa9fe198101e4d1c2b8a1e9a8", "user_name": "avery.approver", "email": "avery.approver@example.com", "state": "approved"}]
    })
}

fn plan_body(source: &str, payload: Value, confirm: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "source": source, "payload": payload, "confirm": confirm })).unwrap()
}

async fn post_plan(app: &TestApp, body: impl Into<reqwest::Body>) -> Answer {
    let request =
        app.client.post(app.url(PLAN)).bearer_auth(READ_TOKEN).header(CONTENT_TYPE, "application/json").body(body);
    Answer::from(request.send().await.expect("the test server answers")).await
}

/// A policy for the `servicenow` source of the test config that plans one target of each kind.
const PLAN_POLICY: &str = r#"
[sources.servicenow.ticket]
duration_field = "duration"

[policy]
dry_run = true

[[policy.rules]]
name = "portal-access"
sources = ["servicenow"]
request_types = ["Permissions portal access"]
require_confirmation = false
max_duration = "8h"

[[policy.rules.grants]]
kind = "group_member"
group_id = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90"
label = "EPM - User Portal Access"

[[policy.rules.grants]]
kind = "pim_group"
group_id = "0b9e7c31-5a4f-4e2d-8c1b-7a6f3e2d1c0b"
access = "member"

[[policy.rules.grants]]
kind = "pim_role"
role_definition_id = "62e90394-69f5-4237-9190-012177145e10"

[[policy.rules.grants]]
kind = "azure_rbac"
choose_by = "environment"
options = { dev = { scope = "/subscriptions/1b2c3d4e-5f60-4718-92a3-b4c5d6e7f809/resourceGroups/app-dev", role_definition_id = "b24988ac-6180-42a0-ab88-20f7382dd24c" } }
"#;

#[tokio::test]
async fn the_plan_route_answers_as_documented() {
    let spec = spec();

    // The test config has no [policy] and no ticket mapping: a valid ticket is refused, offline or not.
    let app = spawn_app(Backend::Sqlite).await;
    for confirm in [false, true] {
        let refused = post_plan(&app, plan_body("servicenow", servicenow_ritm(), confirm)).await;
        assert_eq!(refused.status, StatusCode::OK, "{}", refused.body);
        assert_documented(&spec, "post", PLAN, &refused);
        let json = refused.json();
        assert_eq!(json["ticket"]["ticket_key"], "RITM0010001");
        assert_eq!(json["ticket"]["action"], "approved");
        assert_eq!(json["decision"]["outcome"], "refused");
        assert_eq!(json["decision"]["code"], "no_matching_rule");
        assert_eq!(json["decision"]["rule"], Value::Null);
    }

    let not_a_ticket = serde_json::json!({ "table": "incident", "sys_id": "x", "number": "INC0010001" });
    let ignored = post_plan(&app, plan_body("servicenow", not_a_ticket, false)).await;
    assert_eq!(ignored.status, StatusCode::OK, "{}", ignored.body);
    assert_documented(&spec, "post", PLAN, &ignored);
    assert_eq!(ignored.json()["ticket"], Value::Null);
    assert_eq!(ignored.json()["decision"]["outcome"], "ignored");

    let mut pending = servicenow_ritm();
    pending["approval"] = "requested".into();
    let other = post_plan(&app, plan_body("servicenow", pending, false)).await;
    assert_documented(&spec, "post", PLAN, &other);
    assert!(other.json()["ticket"]["action"]["other"].is_string(), "{}", other.body);
    assert_eq!(app.event_count().await, 0, "planning stores nothing");
    app.stop().await;

    // With a policy: a dry-run plan with one grant of each kind, the requested 12 h capped to 8 h.
    let app = spawn_app_with(Backend::Sqlite, PLAN_POLICY).await;
    let planned = post_plan(&app, plan_body("servicenow", servicenow_ritm(), false)).await;
    assert_eq!(planned.status, StatusCode::OK, "{}", planned.body);
    assert_documented(&spec, "post", PLAN, &planned);
    let json = planned.json();
    assert_eq!(json["ticket"]["requested_duration"], 12 * 3600);
    let decision = &json["decision"];
    assert_eq!(decision["outcome"], "plan", "{}", planned.body);
    assert_eq!(decision["dry_run"], true);
    assert_eq!(decision["confirmation"]["status"], "skipped");
    let grants = decision["grants"].as_array().unwrap();
    let kinds: Vec<&str> = grants.iter().map(|g| g["target"]["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["group_member", "pim_group", "pim_role", "azure_rbac"]);
    assert!(grants.iter().all(|g| g["duration_secs"] == 8 * 3600), "{}", planned.body);
    app.stop().await;
}

#[test]
fn the_plan_examples_fit_their_schemas() {
    let spec = spec();
    let operation = &spec["paths"][PLAN]["post"];
    let mut errors = Vec::new();
    let request = &operation["requestBody"]["content"]["application/json"];
    schema_errors(&spec, &request["schema"], &request["example"], "request example", &mut errors);
    let response = &operation["responses"]["200"]["content"]["application/json"];
    for (name, example) in response["examples"].as_object().expect("the 200 answer has examples") {
        schema_errors(&spec, &response["schema"], &example["value"], &format!("example {name}"), &mut errors);
    }
    assert!(errors.is_empty(), "the /v1/plan examples do not fit their schemas:\n  {}", errors.join("\n  "));
}

/// The `"code"` strings of `RefusalCode::as_str()`, read from the source.
fn refusal_codes_in_source() -> BTreeSet<String> {
    let source = std::fs::read_to_string(repo_file("src/domain/plan.rs")).expect("src/domain/plan.rs is readable");
    let start = source.find("impl RefusalCode").expect("RefusalCode has an impl in src/domain/plan.rs");
    let body = &source[start..];
    let end = body.find("\n    }\n").expect("the end of RefusalCode::as_str()");
    body[..end]
        .split("=> \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(code, _)| code.to_string()))
        .collect()
}

#[test]
fn the_refusal_code_enum_is_exactly_the_domain_codes() {
    let spec = spec();
    let documented: BTreeSet<String> = spec["components"]["schemas"]["RefusalCode"]["enum"]
        .as_array()
        .expect("components.schemas.RefusalCode has an enum")
        .iter()
        .map(|code| code.as_str().expect("codes are strings").to_string())
        .collect();
    let in_source = refusal_codes_in_source();
    assert!(!in_source.is_empty());
    assert_eq!(documented, in_source, "components.schemas.RefusalCode.enum lists exactly RefusalCode::as_str()");
    let table = spec["components"]["schemas"]["RefusalCode"]["description"].as_str().unwrap();
    for code in &in_source {
        assert!(table.contains(&format!("| `{code}` |")), "{code} is missing from the RefusalCode table");
    }
}
