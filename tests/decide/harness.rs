//! The service under test for this binary: the app on a random port with Jira, ServiceNow and Entra as loopback
//! fakes, its config, signed webhook delivery, and the fakes' answers the pipeline tests and scenarios share.

use grantbridge::callbacks::Callbacker;
use grantbridge::startup::Application;
use grantbridge::store::Store;
use grantbridge::worker::{Executor, Worker};
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::common::entra::{entra_table, token_endpoint};
use crate::common::{Backend, TempDir, TestDb, fixture, settings_from, sign};

pub use crate::common::entra::{PORTAL_GROUP, group_resource};

pub const RILEY_ID: &str = "aaaaaaaa-1111-4111-8111-111111111111";
pub const AVERY_ID: &str = "bbbbbbbb-2222-4222-8222-222222222222";
/// The sys_id of RITM0010001 in the fixtures.
pub const SYS_ID: &str = "9d385017c611228701d22104cc95c371";

pub struct Fakes {
    pub jira: MockServer,
    pub servicenow: MockServer,
    pub entra: MockServer,
}

/// A worker, executor and callbacker: what one replica runs.
pub type Replica = (Worker, Executor, Callbacker);

pub struct TestApp {
    pub worker: Worker,
    pub executor: Executor,
    pub callbacker: Callbacker,
    /// A second worker, executor and callbacker, as another replica would run them.
    pub others: Replica,
    pub store: Store,
    pub client: reqwest::Client,
    pub address: String,
    pub db: TestDb,
    _dir: TempDir,
}

impl TestApp {
    /// Posts a signed webhook; answers the event id and `accepted` or `duplicate`.
    pub async fn send(&self, source: &str, body: String) -> (String, String) {
        let mut request = self.client.post(format!("{}/webhooks/{source}", self.address)).body(body.clone());
        request = request.header("Content-Type", "application/json");
        if source == "jira" {
            request = request.header("X-Hub-Signature", sign::hub_signature("jira-secret", body.as_bytes()));
        } else {
            let ts = sign::now().to_string();
            request = request
                .header("X-Timestamp", &ts)
                .header("X-Signature", sign::servicenow_timestamped("sn-secret", &ts, body.as_bytes()));
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 202);
        let answer: Value = response.json().await.unwrap();
        (answer["event_id"].as_str().unwrap().to_string(), answer["status"].as_str().unwrap().to_string())
    }

    /// Posts a signed webhook that must be accepted as a new event; answers its id.
    pub async fn deliver_body(&self, source: &str, body: String) -> String {
        let (id, status) = self.send(source, body).await;
        assert_eq!(status, "accepted", "event {id}");
        id
    }

    pub async fn deliver(&self, source: &str, fixture_name: &str) -> String {
        self.deliver_body(source, std::fs::read_to_string(fixture(fixture_name)).unwrap()).await
    }

    /// Runs the worker until nothing is due, then returns the stored decision's detail.
    pub async fn decision(&self, event_id: &str) -> Value {
        self.worker.run_pending().await.unwrap();
        let id = grantbridge::domain::EventId::parse(event_id).unwrap();
        let stored = self.store.decision(id).await.unwrap().expect("a decision is stored");
        let detail: Value = serde_json::from_str(&stored.detail).unwrap();
        assert_eq!(detail["decision"]["outcome"], stored.outcome);
        detail
    }

    /// The stored decision of an event decided already.
    pub async fn outcome(&self, event_id: &str) -> Value {
        let id = grantbridge::domain::EventId::parse(event_id).unwrap();
        let stored = self.store.decision(id).await.unwrap().expect("a decision is stored");
        serde_json::from_str::<Value>(&stored.detail).unwrap()["decision"].clone()
    }

    /// Decides, grants and calls back until nothing is due.
    pub async fn settle(&self) {
        self.worker.run_pending().await.unwrap();
        self.executor.run_pending().await.unwrap();
        self.callbacker.run_pending().await.unwrap();
    }

    /// Makes every queued callback due now, instead of waiting out its back-off.
    pub async fn callbacks_due_now(&self) {
        let sql = "UPDATE callbacks SET next_attempt_at_ms = 0 WHERE state = 'queued'";
        match &self.store {
            Store::Sqlite(sqlite) => sqlx::query(sql).execute(&sqlite.pool).await.unwrap().rows_affected(),
            Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.unwrap().rows_affected(),
        };
    }
}

/// Fakes that know nobody yet: only the token endpoint answers.
pub async fn bare_fakes() -> Fakes {
    let fakes = Fakes {
        jira: MockServer::start().await,
        servicenow: MockServer::start().await,
        entra: MockServer::start().await,
    };
    token_endpoint(&fakes.entra).await;
    fakes
}

/// Fakes where Riley (the receiver) and Avery (the approver) exist in Entra.
pub async fn fakes() -> Fakes {
    let fakes = bare_fakes().await;
    let user = |id: &str, upn: &str| json!({"id": id, "userPrincipalName": upn, "displayName": upn, "mail": upn, "accountEnabled": true});
    for (id, upn) in [(RILEY_ID, "riley.requester@example.com"), (AVERY_ID, "avery.approver@example.com")] {
        Mock::given(method("GET"))
            .and(path(format!("/v1.0/users/{upn}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(user(id, upn)))
            .mount(&fakes.entra)
            .await;
    }
    fakes
}

/// The service's config: fakes for every upstream, secrets in `dir`. `workers_extra` goes into `[workers]`
/// (count 0 unless it sets one: tests drive workers themselves); `rest` (policy, callbacks, admin) follows `[entra]`.
pub fn config(fakes: &Fakes, dir: &TempDir, workers_extra: &str, rest: &str) -> String {
    let workers =
        if workers_extra.contains("count") { workers_extra.to_string() } else { format!("count = 0\n{workers_extra}") };
    let s = |name: &str, value: &str| dir.write(name, value).display().to_string();
    let (jira_secret, sn_secret, token, password, client_secret) = (
        s("j", "jira-secret"),
        s("s", "sn-secret"),
        s("t", "jira-api-token"),
        s("p", "sn-password"),
        s("c", "entra-client-secret"),
    );
    format!(
        r#"
[server]
workers = 1
[workers]
{workers}

[sources.jira]
kind = "jira"
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{{ file = "{jira_secret}" }}]
[sources.jira.ticket]
request_type_field = "customfield_10010"
approvals_field = "customfield_10020"
[sources.jira.api]
base_url = "{jira}"
auth = {{ kind = "basic", email = "bot@example.com", api_token = {{ file = "{token}" }} }}

[sources.servicenow]
kind = "servicenow"
[[sources.servicenow.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
timestamp_header = "X-Timestamp"
secrets = [{{ file = "{sn_secret}" }}]
[sources.servicenow.api]
base_url = "{servicenow}"
auth = {{ kind = "basic", user = "grantbridge", password = {{ file = "{password}" }} }}
{entra}
{rest}
"#,
        jira = fakes.jira.uri(),
        servicenow = fakes.servicenow.uri(),
        entra = entra_table(&fakes.entra.uri(), &client_secret),
    )
}

/// The app on a random port with `config(fakes, _, workers_extra, rest)`, serving in the background.
pub async fn spawn(backend: Backend, fakes: &Fakes, workers_extra: &str, rest: &str) -> TestApp {
    spawn_with_clock(backend, fakes, workers_extra, rest, grantbridge::clock::system()).await
}

/// [`spawn`] with workers that judge due jobs, leases and expiry by `clock` (a `ManualClock` moves time).
pub async fn spawn_with_clock(
    backend: Backend,
    fakes: &Fakes,
    workers_extra: &str,
    rest: &str,
    clock: std::sync::Arc<dyn grantbridge::clock::Clock>,
) -> TestApp {
    let db = TestDb::new(backend).await;
    let dir = TempDir::new();
    let settings = settings_from(&config(fakes, &dir, workers_extra, rest), &db);
    let app = Application::build_with_clock(settings, clock).await.unwrap();
    let address = format!("http://127.0.0.1:{}", app.port());
    let worker = app.worker();
    let executor = app.executor().expect("an Entra tenant is configured");
    let callbacker = app.callbacker().expect("the sources have ticketing APIs");
    let others = (app.worker(), app.executor().unwrap(), app.callbacker().unwrap());
    tokio::spawn(app.run_until_stopped());
    let store = db.store().await;
    TestApp { worker, executor, callbacker, others, store, client: reqwest::Client::new(), address, db, _dir: dir }
}

pub fn json_fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// ACCESS-42 as the Jira REST API answers it.
pub fn jira_issue() -> Value {
    json_fixture("jira/issue-updated-approved.json")["issue"].clone()
}

/// ServiceNow's Table API: the RITM read back as `record`, Avery's approval and Avery.
pub async fn servicenow_reads(fakes: &Fakes, record: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/api/now/table/sc_req_item/{SYS_ID}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(json_fixture(record)))
        .mount(&fakes.servicenow)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sysapproval_approver"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json_fixture("servicenow/table-approvals.json")))
        .mount(&fakes.servicenow)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sys_user/46d44a5fa9fe198101e4d1c2b8a1e9a8"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": "46d44a5fa9fe198101e4d1c2b8a1e9a8", "user_name": "avery.approver", "email": "avery.approver@example.com"}})))
        .mount(&fakes.servicenow)
        .await;
}

/// Jira: the request's approvals and the issue, as read back for confirmation.
pub async fn jira_reads(fakes: &Fakes, approvals: Value, issue: Value) {
    Mock::given(method("GET"))
        .and(path("/rest/servicedeskapi/request/ACCESS-42/approval"))
        .respond_with(ResponseTemplate::new(200).set_body_json(approvals))
        .mount(&fakes.jira)
        .await;
    Mock::given(method("GET"))
        .and(path("/rest/api/3/issue/ACCESS-42"))
        .respond_with(ResponseTemplate::new(200).set_body_json(issue))
        .mount(&fakes.jira)
        .await;
}

/// `GET /v1.0/groups/{PORTAL_GROUP}` with the group types given (`[]`: assigned membership, writable).
pub async fn writable_group(fakes: &Fakes, group_types: Value) {
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(group_resource(
            PORTAL_GROUP,
            crate::common::entra::PORTAL_LABEL,
            group_types,
        )))
        .mount(&fakes.entra)
        .await;
}

/// `PATCH /v1.0/groups/{PORTAL_GROUP}` answered 204: the members were added.
pub async fn group_member_writes_accepted(fakes: &Fakes) {
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.entra)
        .await;
}

/// Graph throttles the first `throttled` membership writes (`429`, `Retry-After: 1`), then accepts them.
pub async fn group_member_writes_throttled(fakes: &Fakes, throttled: u64) {
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1").set_body_json(json!({
            "error": {"code": "TooManyRequests", "message": "Too many requests",
                      "innerError": {"request-id": "r-1", "date": "2026-11-28T08:00:00"}}
        })))
        .up_to_n_times(throttled)
        .with_priority(1)
        .mount(&fakes.entra)
        .await;
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&fakes.entra)
        .await;
}

/// Jira's answers to what a callback reads and does, for any issue: the transitions offered (`Pending`,
/// `Resolve this issue`) and made, and the issue's comments (none yet, so a marker is never found).
pub async fn jira_callbacks_answered(fakes: &Fakes) {
    Mock::given(method("GET"))
        .and(path_regex(r"^/rest/api/3/issue/[^/]+/transitions$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "expand": "transitions",
            "transitions": [
                {"id": "21", "name": "Pending", "to": {"id": "10003", "name": "Pending"}},
                {"id": "31", "name": "Resolve this issue", "to": {"id": "10004", "name": "Resolved"}}
            ]
        })))
        .mount(&fakes.jira)
        .await;
    Mock::given(method("POST"))
        .and(path_regex(r"^/rest/api/3/issue/[^/]+/transitions$"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&fakes.jira)
        .await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/rest/api/3/issue/[^/]+/comment$"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"startAt": 0, "maxResults": 100, "total": 0, "comments": []})),
        )
        .mount(&fakes.jira)
        .await;
}

/// JSM answers a new request comment with 201 and the comment.
pub fn comment_created() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "id": "1000", "body": "(posted)", "public": false, "author": {"accountId": "bot"},
        "created": {"iso8601": "2026-11-28T09:05:00+0000", "epochMillis": 1764320700000u64}
    }))
}
