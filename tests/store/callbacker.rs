//! The callbacker end to end: outcomes enqueued in the store, delivered to fakes of Jira Service Management and
//! ServiceNow that remember what was posted, exactly once even across a crash, retried, then dead-lettered.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use grantbridge::callbacks::{CallbackSettings, Callbacker, CallbackerContext, Deliverer, TicketRef};
use grantbridge::decide::Decided;
use grantbridge::domain::{Decision, PersonRef, Refusal, RefusalCode, TicketAction, TicketEvent};
use grantbridge::inbound::{SourceKind, unix_millis};
use grantbridge::itsm::{JiraAuth, JiraClient, ServiceNowAuth, ServiceNowClient};
use grantbridge::metrics::Metrics;
use grantbridge::secret::Secret;
use grantbridge::store::{NewCallback, Store};
use grantbridge::upstream::http_client;
use serde_json::{Value, json};
use tokio::sync::Notify;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::both_backends;
use crate::common::{Backend, TestDb};

const ISSUE_ID: &str = "10042";
const SYS_ID: &str = "a83820b58f723300e7e16c7827bdeed2";
const EVENT_ID: &str = "0190a5b2-0000-7000-8000-0000000000aa";

/// Comments as Jira keeps them: a POST adds one, a GET lists them newest first, in ADF.
#[derive(Clone, Default)]
struct Comments(Arc<Mutex<Vec<String>>>);

impl Comments {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

struct Post(Comments);

impl Respond for Post {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let mut comments = (self.0).0.lock().unwrap();
        comments.push(body["body"].as_str().unwrap().to_string());
        ResponseTemplate::new(201)
            .set_body_json(json!({"id": (1000 + comments.len()).to_string(), "public": body["public"]}))
    }
}

struct List(Comments);

impl Respond for List {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let comments = (self.0).0.lock().unwrap();
        let listed: Vec<Value> = comments
            .iter()
            .enumerate()
            .rev()
            .map(|(i, text)| {
                let paragraphs: Vec<Value> = text
                    .split("\n\n")
                    .map(|p| json!({"type": "paragraph", "content": [{"type": "text", "text": p}]}))
                    .collect();
                json!({"id": (1001 + i).to_string(), "body": {"type": "doc", "version": 1, "content": paragraphs}})
            })
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(json!({"startAt": 0, "maxResults": 100, "total": listed.len(), "comments": listed}))
    }
}

/// A fake JSM: request comments are stored and listed back through the issue API.
async fn fake_jsm() -> (MockServer, Comments) {
    let server = MockServer::start().await;
    let comments = Comments::default();
    Mock::given(method("POST"))
        .and(path(format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment")))
        .respond_with(Post(comments.clone()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/rest/api/3/issue/{ISSUE_ID}/comment")))
        .respond_with(List(comments.clone()))
        .mount(&server)
        .await;
    (server, comments)
}

fn jira_deliverer(server: &MockServer) -> Deliverer {
    let auth = JiraAuth::Basic { email: "bot@example.com".into(), api_token: Secret::new("token") };
    let client = JiraClient::new(http_client(Duration::from_secs(5)), server.uri(), auth);
    Deliverer::new(Arc::new(CallbackSettings::default())).with_jira("jira", client)
}

fn snow_deliverer(server: &MockServer) -> Deliverer {
    let auth = ServiceNowAuth::Basic { user: "svc".into(), password: Secret::new("pw") };
    let client = ServiceNowClient::new(http_client(Duration::from_secs(5)), server.uri(), auth);
    Deliverer::new(Arc::new(CallbackSettings::default())).with_servicenow("snow", client)
}

fn context(store: &Store, deliverer: Deliverer, max_attempts: i64) -> Arc<CallbackerContext> {
    Arc::new(CallbackerContext {
        store: store.clone(),
        deliverer,
        lease: Duration::from_secs(30),
        poll: Duration::from_millis(50),
        max_attempts,
        // Retries fall due at once, so that run_pending goes through them without sleeping.
        retry_base: Duration::ZERO,
        retry_cap: Duration::ZERO,
        max_retry_after: Duration::from_secs(3600),
        metrics: Arc::new(Metrics::default()),
        wake: Arc::new(Notify::new()),
        clock: grantbridge::clock::system(),
    })
}

fn ticket(system: SourceKind) -> TicketEvent {
    let (source, key, id, table) = match system {
        SourceKind::Jira => ("jira", "ACCESS-42", ISSUE_ID, None),
        SourceKind::Servicenow => ("snow", "RITM0010001", SYS_ID, Some("sc_req_item".to_string())),
    };
    TicketEvent {
        source: source.into(),
        system,
        ticket_key: key.into(),
        ticket_id: id.into(),
        table,
        url: None,
        action: TicketAction::Approved,
        requested_for: Some(PersonRef { id: None, email: Some("ada@contoso.com".into()), name: Some("Ada".into()) }),
        requested_by: None,
        approvals: Vec::new(),
        request_type: Some("Permissions portal access".into()),
        fields: BTreeMap::new(),
        justification: None,
        requested_duration: None,
        delivery_id: None,
        occurred_at_ms: 1,
    }
}

/// A refusal, rendered the way the worker will: from the decision as stored.
fn refusal_callback(system: SourceKind) -> NewCallback {
    let refusal =
        Refusal::new(RefusalCode::NotEnoughApprovals, "needs 2 approvals from distinct people; the ticket has 1")
            .in_rule("portal-access");
    let decided = Decided { ticket: Some(ticket(system)), decision: Decision::Refused(refusal) };
    let detail = serde_json::to_string(&decided).unwrap();
    let ticket = TicketRef::from_decision_detail(&detail).unwrap();
    CallbackSettings::default().for_decision(&ticket, &decided.decision, EVENT_ID).unwrap()
}

fn now() -> i64 {
    unix_millis(SystemTime::now())
}

both_backends! {
    async fn a_refusal_enqueued_twice_is_posted_once(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let (server, comments) = fake_jsm().await;
        let ctx = context(&store, jira_deliverer(&server), 5);
        let callback = refusal_callback(SourceKind::Jira);
        store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();
        store.enqueue_callbacks(&[refusal_callback(SourceKind::Jira)], now()).await.unwrap();

        let done = Callbacker::new(ctx.clone(), 0).run_pending().await.unwrap();
        let again = Callbacker::new(ctx.clone(), 1).run_pending().await.unwrap();

        assert_eq!((done, again), (1, 0));
        assert_eq!(comments.count(), 1);
        let posted = comments.0.lock().unwrap()[0].clone();
        assert!(posted.starts_with("No access was granted for ACCESS-42.\nReason (not_enough_approvals): needs 2 approvals"), "{posted}");
        assert!(posted.ends_with(&format!("(grantbridge ref: {})", callback.id)), "{posted}");
        let stored = store.callback(&callback.id).await.unwrap().unwrap();
        assert_eq!((stored.state.as_str(), stored.remote_id.as_deref(), stored.attempts), ("done", Some("1001"), 1));
        assert!(stored.delivered_at_ms.is_some());
        assert!(ctx.metrics.render().contains(
            "grantbridge_callbacks_total{source=\"jira\",kind=\"refused\",outcome=\"delivered\"} 1"));
    }
}

both_backends! {
    async fn a_crash_between_the_post_and_its_record_does_not_post_again(backend: Backend) {
        let db = TestDb::new(backend).await;
        let store = db.store().await;
        let (server, comments) = fake_jsm().await;
        let callback = refusal_callback(SourceKind::Jira);
        store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();

        // A callbacker claims the callback, Jira accepts the comment, and the process dies before recording it.
        let crashed = store.claim_callback("crashed", now(), Duration::from_millis(200)).await.unwrap().unwrap();
        jira_deliverer(&server).deliver(&crashed.callback).await.unwrap();
        assert_eq!(comments.count(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let ctx = context(&store, jira_deliverer(&server), 5);
        assert_eq!(Callbacker::new(ctx.clone(), 0).run_pending().await.unwrap(), 1);

        assert_eq!(comments.count(), 1, "the lease ran out and another callbacker found the comment");
        let stored = store.callback(&callback.id).await.unwrap().unwrap();
        assert_eq!((stored.state.as_str(), stored.attempts, stored.remote_id.as_deref()), ("done", 2, Some("1001")));
        assert!(ctx.metrics.render().contains("kind=\"refused\",outcome=\"already_delivered\"} 1"));
    }
}

#[tokio::test]
async fn a_servicenow_crash_after_the_patch_does_not_add_a_second_note() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let server = MockServer::start().await;
    let journal = Comments::default();
    struct Patch(Comments);
    impl Respond for Patch {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            (self.0).0.lock().unwrap().push(body["comments"].as_str().unwrap().to_string());
            ResponseTemplate::new(200).set_body_json(json!({"result": {"sys_id": SYS_ID}}))
        }
    }
    struct Journal(Comments);
    impl Respond for Journal {
        fn respond(&self, request: &Request) -> ResponseTemplate {
            let query: String = request.url.query_pairs().find(|(k, _)| k == "sysparm_query").unwrap().1.into_owned();
            let needle = query.split("^valueLIKE").nth(1).unwrap().to_string();
            let rows: Vec<Value> = (self.0)
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|v| query.starts_with(&format!("element_id={SYS_ID}^")) && v.contains(&needle))
                .map(|_| json!({"sys_id": "0f6c", "element": "comments"}))
                .collect();
            ResponseTemplate::new(200).set_body_json(json!({"result": rows}))
        }
    }
    Mock::given(method("PATCH"))
        .and(path(format!("/api/now/table/sc_req_item/{SYS_ID}")))
        .respond_with(Patch(journal.clone()))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sys_journal_field"))
        .respond_with(Journal(journal.clone()))
        .mount(&server)
        .await;
    let callback = refusal_callback(SourceKind::Servicenow);
    assert_eq!(callback.ticket_state.as_deref(), Some("4"), "a refusal closes the request incomplete");
    store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();

    let crashed = store.claim_callback("crashed", now(), Duration::from_millis(200)).await.unwrap().unwrap();
    snow_deliverer(&server).deliver(&crashed.callback).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ctx = context(&store, snow_deliverer(&server), 5);
    Callbacker::new(ctx, 0).run_pending().await.unwrap();

    assert_eq!(journal.count(), 1);
    assert_eq!(store.callback(&callback.id).await.unwrap().unwrap().state, "done");
}

#[tokio::test]
async fn an_outage_is_retried_and_then_dead_lettered_with_the_reason() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let server = MockServer::start().await;
    Mock::given(method("PATCH")).respond_with(ResponseTemplate::new(503)).expect(3).mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/now/table/sys_journal_field"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": []})))
        .expect(2)
        .mount(&server)
        .await;
    let ctx = context(&store, snow_deliverer(&server), 3);
    let callback = refusal_callback(SourceKind::Servicenow);
    store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();

    assert_eq!(Callbacker::new(ctx.clone(), 0).run_pending().await.unwrap(), 3);

    let letters = store.dead_callbacks(10).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, callback.id);
    assert_eq!(
        letters[0].last_error.as_deref(),
        Some("gave up after 3 attempts: updating sc_req_item RITM0010001: servicenow answered 503")
    );
    let metrics = ctx.metrics.render();
    assert!(
        metrics.contains("grantbridge_callbacks_total{source=\"snow\",kind=\"refused\",outcome=\"retry\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("grantbridge_callbacks_total{source=\"snow\",kind=\"refused\",outcome=\"dead\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_503_then_success_posts_one_comment() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let (server, comments) = fake_jsm().await;
    // Preferred over the fake's own answer, once: the first post meets an outage.
    Mock::given(method("POST"))
        .and(path(format!("/rest/servicedeskapi/request/{ISSUE_ID}/comment")))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    let ctx = context(&store, jira_deliverer(&server), 5);
    let callback = refusal_callback(SourceKind::Jira);
    store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();

    assert_eq!(Callbacker::new(ctx, 0).run_pending().await.unwrap(), 2);

    assert_eq!(comments.count(), 1);
    let stored = store.callback(&callback.id).await.unwrap().unwrap();
    assert_eq!((stored.state.as_str(), stored.attempts), ("done", 2));
}

#[tokio::test]
async fn a_retry_after_is_waited_out_in_the_store_not_in_the_callbacker() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "120"))
        .expect(1)
        .mount(&server)
        .await;
    let ctx = context(&store, jira_deliverer(&server), 5);
    let callback = refusal_callback(SourceKind::Jira);
    store.enqueue_callbacks(std::slice::from_ref(&callback), now()).await.unwrap();

    let before = now();
    assert_eq!(Callbacker::new(ctx, 0).run_pending().await.unwrap(), 1);

    let stored = store.callback(&callback.id).await.unwrap().unwrap();
    assert_eq!(stored.state, "queued");
    assert!(
        (before + 120_000..=now() + 132_000).contains(&stored.next_attempt_at_ms),
        "{}",
        stored.next_attempt_at_ms - before
    );
    assert!(stored.last_error.as_deref().unwrap().contains("429"));
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
async fn enqueueing_on_postgres_wakes_the_callbackers_of_every_replica() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    let other_replica = db.store().await;
    let wake = Arc::new(Notify::new());
    let listener = grantbridge::worker::listen_for_work(
        &other_replica,
        Arc::new(Notify::new()),
        Arc::new(Notify::new()),
        wake.clone(),
    )
    .unwrap();

    // The listener connects in the background: enqueue until a notification arrives.
    let mut woken = false;
    for i in 0..50 {
        let notified = wake.notified();
        let mut callback = refusal_callback(SourceKind::Jira);
        callback.id = format!("{}-{i}", callback.id);
        store.enqueue_callbacks(&[callback], now()).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(200), notified).await.is_ok() {
            woken = true;
            break;
        }
    }
    listener.abort();

    assert!(woken, "a callback enqueued on one replica wakes the others");
    assert!(
        grantbridge::worker::listen_for_work(
            &TestDb::new(Backend::Sqlite).await.store().await,
            wake.clone(),
            wake.clone(),
            wake
        )
        .is_none()
    );
}
