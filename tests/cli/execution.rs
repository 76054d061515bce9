//! Grant execution by the real binary: a process killed with writes to Graph in flight, two replicas sharing one
//! PostgreSQL database, batches slower than the lease. Graph is a fake with Graph's membership semantics, so a job
//! executed twice shows up as an "already exists" answer and a lost job as a missing member.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use grantbridge::store::Store;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::both_backends;
use crate::common::entra::{PORTAL_GROUP, PORTAL_LABEL, entra_table, group_resource, portal_rule};
use crate::common::{Backend, TempDir, TestDb, sign};
use crate::process::Server;

const WEBHOOK_SECRET: &str = "sn-secret-for-execution-tests";
/// How long the fake holds every membership write before answering: long enough for a kill to land mid-write.
const WRITE_DELAY: Duration = Duration::from_millis(300);
/// Graph's answer when an added member is already there (HTTP 400, `Request_BadRequest`).
const ALREADY_EXISTS: &str =
    "One or more added object references already exist for the following modified properties: 'members'.";

/// The group's members as Graph holds them, and every write it was asked for.
#[derive(Debug, Default)]
struct GroupState {
    members: BTreeSet<String>,
    /// Per member: how many writes added it (Graph answered 204).
    added: BTreeMap<String, u32>,
    /// Per member: how many writes named it while it was already a member (Graph answered 400 "already exist").
    already: BTreeMap<String, u32>,
    /// Writes received (PATCH and POST), whatever the answer.
    writes: u32,
    /// Writes answered 400 "already exist".
    refused_writes: u32,
}

/// `PATCH /groups/{id}` (`members@odata.bind`, all or nothing) and `POST /groups/{id}/members/$ref` (one member).
/// The effect is applied when the request arrives; the answer leaves after `WRITE_DELAY`, so a client killed in
/// between has written without knowing it, as with the real Graph.
struct GroupWrites {
    state: Arc<Mutex<GroupState>>,
}

impl Respond for GroupWrites {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let references: Vec<String> = if request.method.as_str() == "PATCH" {
            body["members@odata.bind"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
                .unwrap_or_default()
        } else {
            body["@odata.id"].as_str().map(|s| vec![s.to_string()]).unwrap_or_default()
        };
        let ids: Vec<String> =
            references.iter().map(|r| r.rsplit('/').next().unwrap_or_default().to_ascii_lowercase()).collect();
        let mut state = self.state.lock().unwrap();
        state.writes += 1;
        if ids.is_empty() || ids.iter().any(|id| uuid::Uuid::try_parse(id).is_err()) {
            return graph_error(400, "Request_BadRequest", "Invalid object identifier");
        }
        let present: Vec<String> = ids.iter().filter(|id| state.members.contains(*id)).cloned().collect();
        if !present.is_empty() {
            // The whole request fails: nothing of a PATCH is added when one of its references already exists.
            state.refused_writes += 1;
            for id in present {
                *state.already.entry(id).or_default() += 1;
            }
            return graph_error(400, "Request_BadRequest", ALREADY_EXISTS);
        }
        for id in ids {
            state.members.insert(id.clone());
            *state.added.entry(id).or_default() += 1;
        }
        ResponseTemplate::new(204).set_delay(WRITE_DELAY)
    }
}

fn graph_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({"error": {
            "code": code,
            "message": message,
            "innerError": {"date": "2026-11-28T08:00:00", "request-id": uuid::Uuid::now_v7().to_string()}
        }}))
        .set_delay(WRITE_DELAY)
}

/// `GET /users/{upn}`: every UPN exists, with an id derived from it.
struct Users;

impl Respond for Users {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let upn = request.url.path().rsplit('/').next().unwrap_or_default().to_ascii_lowercase();
        ResponseTemplate::new(200).set_body_json(json!({
            "id": user_id(&upn), "userPrincipalName": upn, "displayName": upn, "mail": upn, "accountEnabled": true
        }))
    }
}

fn user_id(upn: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, upn.to_ascii_lowercase().as_bytes()).to_string()
}

fn upn(n: usize) -> String {
    format!("user{n}@example.com")
}

/// The token endpoint and Graph: users, the group's kind and its membership writes.
/// `group_read_delay`: how long Graph takes to answer the read of the group's kind (before the first write).
async fn entra_fake(group_read_delay: Duration) -> (MockServer, Arc<Mutex<GroupState>>) {
    let entra = crate::common::entra::entra().await;
    Mock::given(method("GET")).and(path_regex("^/v1.0/users/[^/]+$")).respond_with(Users).mount(&entra).await;
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(group_resource(PORTAL_GROUP, PORTAL_LABEL, json!([])))
                .set_delay(group_read_delay),
        )
        .mount(&entra)
        .await;
    let state = Arc::new(Mutex::new(GroupState::default()));
    Mock::given(method("PATCH"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}")))
        .respond_with(GroupWrites { state: state.clone() })
        .mount(&entra)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v1.0/groups/{PORTAL_GROUP}/members/$ref")))
        .respond_with(GroupWrites { state: state.clone() })
        .mount(&entra)
        .await;
    (entra, state)
}

/// A ServiceNow source signing the body only (no API, so no confirmation), the portal rule, Entra at the fake;
/// short leases so that a restarted process takes over a dead one's work within seconds.
/// `workers_extra` goes into `[workers]`.
fn write_config(dir: &TempDir, entra: &MockServer, workers_extra: &str) -> std::path::PathBuf {
    let webhook_secret = dir.write("webhook-secret", WEBHOOK_SECRET).display().to_string();
    let client_secret = dir.write("client-secret", "entra-client-secret").display().to_string();
    let text = format!(
        r#"
[workers]
lease_secs = 2
poll_ms = 100
{workers_extra}

[sources.servicenow]
kind = "servicenow"
[[sources.servicenow.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
secrets = [{{ file = "{webhook_secret}" }}]

{entra}{portal}"#,
        entra = entra_table(&entra.uri(), &client_secret),
        portal = portal_rule("require_confirmation = false", ""),
    );
    dir.write("execution.toml", text)
}

/// An approved requested item for user `n`, its own ticket.
fn ritm(n: usize) -> String {
    let person = json!({"sys_id": format!("{:032x}", 0x5000 + n), "user_name": format!("user{n}"), "email": upn(n)});
    json!({
        "table": "sc_req_item",
        "sys_id": format!("{:032x}", 0x9000 + n),
        "number": format!("RITM{:07}", 20_000 + n),
        "request": format!("REQ{:07}", 20_000 + n),
        "cat_item": "Permissions portal access",
        "requested_for": person,
        "opened_by": person,
        "approval": "approved",
        "state": "1",
        "stage": "fulfillment",
        "sys_updated_on": "2026-11-28 07:00:00",
        "variables": {"justification": "Needs the portal"},
        "approvers": [{
            "sys_id": "46d44a5fa9fe198101e4d1c2b8a1e9a8",
            "user_name": "avery.approver",
            "email": "avery.approver@example.com",
            "state": "approved"
        }]
    })
    .to_string()
}

async fn deliver(client: &reqwest::Client, server_url: &str, n: usize) {
    let body = ritm(n);
    let signature = STANDARD.encode(sign::hmac_sha256(WEBHOOK_SECRET.as_bytes(), body.as_bytes()));
    let response = client
        .post(server_url)
        .header("Content-Type", "application/json")
        .header("X-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "webhook {n}: {answer}");
    assert_eq!(answer["status"], "accepted", "webhook {n}: {answer}");
}

/// Sends the webhooks for users `0..count`, user `n` to `urls[n % urls.len()]`, all at once.
async fn deliver_all(urls: &[String], count: usize) {
    let client = reqwest::Client::new();
    let sends: Vec<_> = (0..count)
        .map(|n| {
            let (client, url) = (client.clone(), urls[n % urls.len()].clone());
            tokio::spawn(async move { deliver(&client, &url, n).await })
        })
        .collect();
    for send in sends {
        send.await.unwrap();
    }
}

/// `(state, count)` rows of `SELECT state, COUNT(*) FROM {table} GROUP BY state`.
async fn states(store: &Store, table: &str) -> BTreeMap<String, i64> {
    let sql = format!("SELECT state, COUNT(*) FROM {table} GROUP BY state");
    let rows: Vec<(String, i64)> = match store {
        Store::Sqlite(sqlite) => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&sqlite.pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await.unwrap(),
    };
    rows.into_iter().collect()
}

/// Every job: `(id, kind, state, attempts)`.
async fn jobs(store: &Store) -> Vec<(String, String, String, i64)> {
    let sql = "SELECT id, kind, state, attempts FROM jobs ORDER BY id";
    match store {
        Store::Sqlite(sqlite) => sqlx::query_as(sql).fetch_all(&sqlite.pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

/// Every grant: `(principal_id, state)`.
async fn grants(store: &Store) -> Vec<(String, String)> {
    let sql = "SELECT principal_id, state FROM grants ORDER BY principal_id";
    match store {
        Store::Sqlite(sqlite) => sqlx::query_as(sql).fetch_all(&sqlite.pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

/// Polls the ledger until `count` grants are active, at most `within`; panics with the ledger and logs otherwise.
async fn wait_all_active(store: &Store, count: i64, within: Duration, servers: &[&Server]) {
    let deadline = Instant::now() + within;
    loop {
        let grants = states(store, "grants").await;
        if grants.get("active").copied().unwrap_or(0) == count {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| s.logs()).collect();
            panic!(
                "not all {count} grants became active within {within:?}: grants {grants:?}, events {:?}, jobs {:?}\n{}",
                states(store, "events").await,
                states(store, "jobs").await,
                logs.join("\n----\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Jobs whose execution a server logged as finished ("grant active"), by job id.
fn executed_jobs(server: &Server) -> Vec<String> {
    server
        .logs()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "grant active")
        .filter_map(|line| line["job"].as_str().map(str::to_string))
        .collect()
}

/// The fake saw every user added, each exactly once in effect.
fn assert_every_user_added_once(state: &GroupState, users: usize) {
    let expected: BTreeSet<String> = (0..users).map(|n| user_id(&upn(n))).collect();
    assert_eq!(state.members, expected, "the group holds exactly the {users} users");
    for id in &expected {
        assert_eq!(state.added.get(id), Some(&1), "member {id} was added exactly once: {:?}", state.added);
    }
}

both_backends! {
    async fn grants_in_flight_when_the_process_is_killed_are_completed_once_after_a_restart(backend: Backend) {
        const USERS: usize = 40;
        let started = Instant::now();
        let db = TestDb::new(backend).await;
        let dir = TempDir::new();
        let (entra, group) = entra_fake(Duration::ZERO).await;
        let config = write_config(&dir, &entra, "");
        let mut first = Server::start(&config, &db.url, dir.path(), &[]);
        deliver_all(&[first.url("/webhooks/servicenow")], USERS).await;

        // Kill -9 as soon as the first membership write reached Graph: its answer, and others, are in flight.
        let deadline = Instant::now() + Duration::from_secs(15);
        while group.lock().unwrap().writes == 0 {
            assert!(Instant::now() < deadline, "no write reached Graph:\n{}", first.logs());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        first.kill9();
        let store = db.store().await;
        let members_at_kill = group.lock().unwrap().members.len();
        let jobs_at_kill = states(&store, "jobs").await;
        let done_at_kill = jobs_at_kill.get("done").copied().unwrap_or(0);
        println!("at kill -9: {members_at_kill} members in the fake, jobs {jobs_at_kill:?}");
        assert!(
            usize::try_from(done_at_kill).unwrap() < members_at_kill,
            "the kill came after Graph added a member and before the job recorded it"
        );

        let second = Server::start(&config, &db.url, dir.path(), &[]);
        wait_all_active(&store, USERS as i64, Duration::from_secs(30), &[&first, &second]).await;

        let grants = grants(&store).await;
        assert_eq!(grants.len(), USERS, "{grants:?}");
        assert!(grants.iter().all(|(_, state)| state == "active"), "{grants:?}");
        let expected: BTreeSet<String> = (0..USERS).map(|n| user_id(&upn(n))).collect();
        let granted: BTreeSet<String> = grants.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(granted, expected, "one grant per user");

        let jobs = jobs(&store).await;
        assert_eq!(jobs.len(), USERS, "{jobs:?}");
        let unfinished: Vec<_> = jobs.iter().filter(|j| j.2 == "queued" || j.2 == "running").collect();
        assert!(unfinished.is_empty(), "jobs left behind: {unfinished:?}");
        assert!(jobs.iter().all(|j| j.1 == "grant" && j.2 == "done"), "{jobs:?}");
        assert_eq!(states(&store, "events").await, BTreeMap::from([("decided".to_string(), USERS as i64)]));

        let state = group.lock().unwrap();
        assert_every_user_added_once(&state, USERS);
        let retried: Vec<_> = jobs.iter().filter(|j| j.3 > 1).map(|j| (&j.0, j.3)).collect();
        println!(
            "kill -9 backend {backend:?}: {} writes to Graph, {} answered 'already exists' (members {:?}); \
             {} jobs claimed more than once {:?}; {:.1} s",
            state.writes,
            state.refused_writes,
            state.already,
            retried.len(),
            retried,
            started.elapsed().as_secs_f64()
        );
        // Only the jobs the killed process held are claimed again, once each: the restarted one keeps its leases.
        let running_at_kill = jobs_at_kill.get("running").copied().unwrap_or(0);
        assert!(retried.iter().all(|(_, attempts)| *attempts == 2), "{retried:?}");
        assert!(retried.len() as i64 <= running_at_kill, "{retried:?}, {running_at_kill} running at the kill");
    }
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
async fn two_replicas_on_one_postgres_execute_each_grant_exactly_once() {
    const USERS: usize = 60;
    let started = Instant::now();
    let db = TestDb::new(Backend::Postgres).await;
    let dir = TempDir::new();
    let (entra, group) = entra_fake(Duration::ZERO).await;
    let config = write_config(&dir, &entra, "");
    let a = Server::start(&config, &db.url, dir.path(), &[]);
    let b = Server::start(&config, &db.url, dir.path(), &[]);
    deliver_all(&[a.url("/webhooks/servicenow"), b.url("/webhooks/servicenow")], USERS).await;
    let store = db.store().await;
    wait_all_active(&store, USERS as i64, Duration::from_secs(30), &[&a, &b]).await;

    let writes = {
        let state = group.lock().unwrap();
        assert_every_user_added_once(&state, USERS);
        assert_eq!(state.refused_writes, 0, "a job executed twice meets 'already exists': {:?}", state.already);
        assert!(state.already.is_empty(), "{:?}", state.already);
        state.writes
    };

    let jobs = jobs(&store).await;
    assert_eq!(jobs.len(), USERS, "{jobs:?}");
    for (id, kind, job_state, attempts) in &jobs {
        assert_eq!((kind.as_str(), job_state.as_str(), *attempts), ("grant", "done", 1), "job {id}");
    }
    assert_eq!(states(&store, "events").await, BTreeMap::from([("decided".to_string(), USERS as i64)]));

    // Each job's execution was logged by one replica, once.
    let (by_a, by_b) = (executed_jobs(&a), executed_jobs(&b));
    let mut times: HashMap<String, usize> = HashMap::new();
    for job in by_a.iter().chain(&by_b) {
        *times.entry(job.clone()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "jobs executed more than once: {twice:?}");
    let ids: BTreeSet<String> = jobs.iter().map(|j| j.0.clone()).collect();
    let logged: BTreeSet<String> = times.into_keys().collect();
    assert_eq!(logged, ids, "every job's execution is in one replica's log");
    println!(
        "two replicas: {} jobs by A, {} by B, {writes} writes to Graph; {:.1} s",
        by_a.len(),
        by_b.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Users already in the group (added by hand before the ticket): Graph refuses the batched PATCH and the executor
/// adds each member alone, each answered "already exists"; a batch of n members then takes 50 ms + (n + 1) x 300 ms,
/// longer than the 2 s lease, while four of the sixteen executors are idle. The lease is renewed while the job
/// executes, so no idle executor takes a job over: each job is executed once. (Without renewal the idle executors
/// reclaimed the jobs, queued them behind the running batch, lost them in turn, and no job was ever recorded.)
#[tokio::test]
async fn members_already_in_the_group_are_granted_without_losing_leases() {
    const USERS: usize = 12;
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = TempDir::new();
    // The first read of the group takes a second: meanwhile the other jobs are claimed and wait for one batch.
    let (entra, group) = entra_fake(Duration::from_secs(1)).await;
    group.lock().unwrap().members.extend((0..USERS).map(|n| user_id(&upn(n))));
    let config = write_config(&dir, &entra, "");
    let server = Server::start(&config, &db.url, dir.path(), &[]);
    deliver_all(&[server.url("/webhooks/servicenow")], USERS).await;
    let store = db.store().await;
    wait_all_active(&store, USERS as i64, Duration::from_secs(20), &[&server]).await;

    let jobs = jobs(&store).await;
    let retried: Vec<_> = jobs.iter().filter(|j| j.3 != 1).collect();
    assert!(retried.is_empty(), "jobs claimed again by the same healthy process: {retried:?}");
    assert!(!server.logs().contains("lease lost"), "{}", server.logs());
    let state = group.lock().unwrap();
    assert!(state.added.is_empty(), "nobody was added: all were members already");
    for n in 0..USERS {
        let id = user_id(&upn(n));
        // The refused PATCH names each member once, its own POST once more.
        assert!(
            (1..=2).contains(&state.already.get(&id).copied().unwrap_or(0)),
            "member {id} was written again: {:?}",
            state.already
        );
    }
}
