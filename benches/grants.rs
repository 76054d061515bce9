//! Grant execution under Microsoft Graph's write budget: N approved ServiceNow requests for one group, executed
//! against a fake Graph that throttles membership writes like the real one, and how close the run comes to the
//! fastest time the budget allows.
//!
//!     cargo bench --bench grants                                 # 10,000 requests, 300 writes per 15 s
//!     cargo bench --bench grants -- --requests 2000 --budget 60/15
//!
//! Options: `--requests N` (default 10000), `--budget W/S` (default 300/15: W writes per S seconds),
//! `--concurrency C` webhook senders (default 32), `--executors E` (default 32), `--timeout-secs T` (default 900),
//! `--no-pacing`: do not tell the service the budget (`graph_write_budget = 0`), so it learns it from 429s alone.
//! `--prequeue`: hold the executors' first read of the group until every grant is decided and queued, so that the
//! measured time is the execution stage alone (without it, grants are executed while events are still decided).
//! `GRANTBRIDGE_BENCH_LOG=warn` (any tracing filter) shows the service's own logs.
//!
//! Everything runs in this process:
//! - a fake identity platform and Graph (actix-web on its own thread and System): the token endpoint, user and group
//!   reads, and the two membership writes, `PATCH /groups/{id}` with `members@odata.bind` (at most 20) and
//!   `POST /groups/{id}/members/$ref`. The writes share one token bucket modelled on Graph's identity-and-access
//!   write limit (3,000 writes per app per tenant per 150 s), scaled to W per S: capacity W, refilled continuously
//!   at W/S per second, full at the start. A write that finds a token takes it (whatever its answer); one that does
//!   not gets `429` with `Retry-After` (the seconds until the next token, rounded up) and Graph's error body, and
//!   takes no token. An add of an existing member fails the whole write with Graph's documented 400.
//! - grantbridge (`Application::build`) on a temporary SQLite file, with a ServiceNow source (base64 HMAC-SHA256
//!   in `X-Signature`, no timestamp, no ticketing API), a policy rule that needs no confirmation and grants one
//!   group, 2 deciding workers and E executors.
//!
//! The bench signs and posts N RITM webhooks (each its own requester and approver), waits until every grant is
//! active, and compares the time from the first write to the last successful one with the ideal under the budget:
//! ceil(N/20) writes, of which the first W are free (the bucket starts full) and the rest come at W/S per second.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use grantbridge::config::{EnvOverrides, Settings};
use grantbridge::startup::Application;

const SECRET: &str = "bench-servicenow-secret";
const TENANT: &str = "8f2d4b61-9c3a-4e7f-b1d5-0a6c2e9f4b73";
const CLIENT: &str = "3c9e1f7a-2b4d-4c6e-8a0f-5d7b9e1c3a24";
const GROUP: &str = "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90";
const GROUP_NAME: &str = "EPM - User Portal Access";
/// Graph's limit of `members@odata.bind` references in one PATCH.
const MAX_PER_PATCH: usize = 20;
const ALREADY_MEMBER: &str =
    "One or more added object references already exist for the following modified properties: 'members'.";

struct Options {
    requests: usize,
    budget_writes: u32,
    budget_secs: f64,
    concurrency: usize,
    executors: usize,
    timeout: Duration,
    prequeue: bool,
    no_pacing: bool,
}

fn parse_options() -> Options {
    let mut o = Options {
        requests: 10_000,
        budget_writes: 300,
        budget_secs: 15.0,
        concurrency: 32,
        executors: 32,
        timeout: Duration::from_secs(900),
        prequeue: false,
        no_pacing: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--requests" => o.requests = args.next().and_then(|v| v.parse().ok()).expect("--requests N"),
            "--budget" => {
                let v = args.next().expect("--budget W/S");
                let (w, s) = v.split_once('/').expect("--budget W/S, e.g. 300/15");
                o.budget_writes = w.trim().parse().expect("--budget W/S: W is a whole number of writes");
                o.budget_secs = s.trim().parse().expect("--budget W/S: S is a number of seconds");
                assert!(o.budget_writes >= 1 && o.budget_secs > 0.0, "--budget W/S: both must be positive");
            }
            "--concurrency" => o.concurrency = args.next().and_then(|v| v.parse().ok()).expect("--concurrency C"),
            "--executors" => o.executors = args.next().and_then(|v| v.parse().ok()).expect("--executors E"),
            "--prequeue" => o.prequeue = true,
            "--no-pacing" => o.no_pacing = true,
            "--timeout-secs" => {
                o.timeout = Duration::from_secs(args.next().and_then(|v| v.parse().ok()).expect("--timeout-secs T"))
            }
            _ => {} // cargo bench passes --bench
        }
    }
    assert!(o.requests >= 1, "--requests must be at least 1");
    o
}

fn main() {
    if let Ok(filter) = std::env::var("GRANTBRIDGE_BENCH_LOG") {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).init();
    }
    let options = parse_options();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let code = runtime.block_on(run(options));
    std::process::exit(code);
}

// ---------------------------------------------------------------------------------------------------------------
// The fake identity platform and Graph.

/// Graph's write budget: a token bucket of `capacity` writes, refilled continuously at `rate` per second.
struct Budget {
    capacity: f64,
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Budget {
    fn new(writes: u32, secs: f64) -> Self {
        Budget {
            capacity: f64::from(writes),
            rate: f64::from(writes) / secs,
            tokens: f64::from(writes),
            at: Instant::now(),
        }
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Patch,
    AddRef,
}

/// One membership write as the fake answered it.
#[derive(Debug, Clone, Copy)]
struct WriteRecord {
    at: SystemTime,
    kind: WriteKind,
    status: u16,
    /// References in the request.
    size: usize,
    /// `Retry-After` given, for a 429.
    retry_after: u64,
}

struct Graph {
    budget: Budget,
    /// Object ids handed out by user reads: the directory objects a write may reference.
    users: HashSet<String>,
    members: HashSet<String>,
    writes: Vec<WriteRecord>,
    tokens_issued: u64,
    user_reads: u64,
    group_reads: u64,
    unexpected: Vec<String>,
}

type Shared = Arc<Mutex<Graph>>;

fn user_id(upn: &str) -> String {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, upn.to_ascii_lowercase().as_bytes()).to_string()
}

/// Graph's error shape, with its request id and date, and the headers Graph sends with every answer.
fn graph_error(status: u16, code: &str, message: &str, req: &HttpRequest) -> HttpResponse {
    let request_id = Uuid::now_v7().to_string();
    let mut builder = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    builder.insert_header(("request-id", request_id.clone()));
    if let Some(id) = req.headers().get("client-request-id") {
        builder.insert_header(("client-request-id", id.clone()));
    }
    builder.json(json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": { "request-id": request_id, "date": iso_date(SystemTime::now()) }
        }
    }))
}

fn graph_ok(status: u16, req: &HttpRequest) -> actix_web::HttpResponseBuilder {
    let mut builder = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    builder.insert_header(("request-id", Uuid::now_v7().to_string()));
    if let Some(id) = req.headers().get("client-request-id") {
        builder.insert_header(("client-request-id", id.clone()));
    }
    builder
}

async fn token(state: web::Data<Mutex<Graph>>) -> HttpResponse {
    state.lock().unwrap().tokens_issued += 1;
    HttpResponse::Ok()
        .json(json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": "x"}))
}

async fn get_user(req: HttpRequest, state: web::Data<Mutex<Graph>>) -> HttpResponse {
    let raw = req.match_info().get("upn").unwrap_or_default();
    let upn = percent_encoding::percent_decode_str(raw).decode_utf8_lossy().to_string();
    let id = user_id(&upn);
    {
        let mut g = state.lock().unwrap();
        g.user_reads += 1;
        g.users.insert(id.clone());
    }
    graph_ok(200, &req).json(json!({
        "id": id,
        "userPrincipalName": upn,
        "displayName": upn.split('@').next().unwrap_or_default(),
        "mail": upn,
        "accountEnabled": true
    }))
}

async fn get_group(req: HttpRequest, state: web::Data<Mutex<Graph>>, gate: web::Data<AtomicBool>) -> HttpResponse {
    let id = req.match_info().get("id").unwrap_or_default().to_ascii_lowercase();
    state.lock().unwrap().group_reads += 1;
    // Only the executors read the group (once; then it is cached): holding this answer holds every write.
    while !gate.load(Ordering::Acquire) {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    if id != GROUP {
        return graph_error(404, "Request_ResourceNotFound", &format!("Resource '{id}' does not exist."), &req);
    }
    graph_ok(200, &req).json(json!({
        "id": GROUP,
        "displayName": GROUP_NAME,
        "groupTypes": [],
        "onPremisesSyncEnabled": null,
        "isAssignableToRole": false
    }))
}

/// The object id at the end of an `@odata.id` reference (`.../directoryObjects/{id}`).
fn referenced_id(reference: &Value) -> Option<String> {
    let text = reference.as_str()?;
    let (_, id) = text.rsplit_once("/directoryObjects/")?;
    Some(id.trim_end_matches('/').to_ascii_lowercase())
}

/// Both membership writes: budget first, then the checks Graph makes, then the members.
fn write(
    state: &Mutex<Graph>,
    req: &HttpRequest,
    kind: WriteKind,
    references: Result<Vec<String>, String>,
) -> HttpResponse {
    let group = req.match_info().get("id").unwrap_or_default().to_ascii_lowercase();
    let now = Instant::now();
    let at = SystemTime::now();
    let mut g = state.lock().unwrap();
    let size = references.as_ref().map_or(0, Vec::len);
    if let Err(wait) = g.budget.take(now) {
        let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
        g.writes.push(WriteRecord { at, kind, status: 429, size, retry_after });
        drop(g);
        let mut response = graph_error(
            429,
            "TooManyRequests",
            "Too many requests. The application has exceeded its write budget for this tenant; retry after the \
             time in the Retry-After header.",
            req,
        );
        response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, retry_after.to_string().parse().unwrap());
        return response;
    }
    let record = |g: &mut Graph, status: u16| g.writes.push(WriteRecord { at, kind, status, size, retry_after: 0 });
    if group != GROUP {
        record(&mut g, 404);
        return graph_error(404, "Request_ResourceNotFound", &format!("Resource '{group}' does not exist."), req);
    }
    let ids = match references {
        Ok(ids) => ids,
        Err(message) => {
            record(&mut g, 400);
            return graph_error(400, "Request_BadRequest", &message, req);
        }
    };
    if ids.len() > MAX_PER_PATCH {
        record(&mut g, 400);
        return graph_error(
            400,
            "Request_BadRequest",
            &format!("The request exceeds the limit of {MAX_PER_PATCH} members per update: {} given.", ids.len()),
            req,
        );
    }
    if let Some(unknown) = ids.iter().find(|id| !g.users.contains(*id)) {
        record(&mut g, 404);
        return graph_error(
            404,
            "Request_ResourceNotFound",
            &format!(
                "Resource '{unknown}' does not exist or one of its queried reference-property objects are not present."
            ),
            req,
        );
    }
    let mut seen = HashSet::new();
    if ids.iter().any(|id| g.members.contains(id) || !seen.insert(id.clone())) {
        record(&mut g, 400);
        return graph_error(400, "Request_BadRequest", ALREADY_MEMBER, req);
    }
    g.members.extend(ids);
    record(&mut g, 204);
    drop(g);
    graph_ok(204, req).finish()
}

async fn patch_group(req: HttpRequest, body: web::Bytes, state: web::Data<Mutex<Graph>>) -> HttpResponse {
    let references = serde_json::from_slice::<Value>(&body).map_err(|e| format!("Invalid JSON: {e}")).and_then(|v| {
        match v.get("members@odata.bind").and_then(Value::as_array) {
            Some(list) if !list.is_empty() => list
                .iter()
                .map(|r| referenced_id(r).ok_or_else(|| format!("Invalid object identifier '{r}'.")))
                .collect(),
            _ => Err("Invalid request: only members@odata.bind with at least one reference is expected here.".into()),
        }
    });
    write(&state, &req, WriteKind::Patch, references)
}

async fn add_member_ref(req: HttpRequest, body: web::Bytes, state: web::Data<Mutex<Graph>>) -> HttpResponse {
    let references = serde_json::from_slice::<Value>(&body).map_err(|e| format!("Invalid JSON: {e}")).and_then(|v| {
        match v.get("@odata.id").and_then(referenced_id) {
            Some(id) => Ok(vec![id]),
            None => Err("Invalid request: @odata.id with a directoryObjects reference is expected.".into()),
        }
    });
    write(&state, &req, WriteKind::AddRef, references)
}

async fn unexpected(req: HttpRequest, state: web::Data<Mutex<Graph>>) -> HttpResponse {
    state.lock().unwrap().unexpected.push(format!("{} {}", req.method(), req.uri()));
    graph_error(404, "Request_ResourceNotFound", "The fake Graph does not serve this request.", &req)
}

/// Starts the fake on its own thread and System; returns its port.
fn start_fake(state: Shared, gate: Arc<AtomicBool>) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::from(state);
            let gate = web::Data::from(gate);
            let server = actix_web::HttpServer::new(move || {
                actix_web::App::new()
                    .app_data(data.clone())
                    .app_data(gate.clone())
                    .route("/{tenant}/oauth2/v2.0/token", web::post().to(token))
                    .route("/v1.0/users/{upn}", web::get().to(get_user))
                    .route("/v1.0/groups/{id}", web::get().to(get_group))
                    .route("/v1.0/groups/{id}", web::patch().to(patch_group))
                    .route("/v1.0/groups/{id}/members/$ref", web::post().to(add_member_ref))
                    .default_service(web::to(unexpected))
            })
            .workers(2)
            .bind(("127.0.0.1", 0))
            .unwrap();
            tx.send(server.addrs()[0].port()).unwrap();
            server.run().await.unwrap()
        })
    });
    rx.recv().unwrap()
}

// ---------------------------------------------------------------------------------------------------------------
// The service under test.

struct Ticket {
    body: String,
    signature: String,
    principal: String,
}

fn tickets(count: usize, run: &str) -> Vec<Ticket> {
    let key = SECRET.as_bytes();
    (0..count)
        .map(|i| {
            let n = i + 1;
            let sys_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{run}-ritm-{n}").as_bytes()).simple().to_string();
            let requester =
                Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{run}-user-{n}").as_bytes()).simple().to_string();
            let approver =
                Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("{run}-approver-{n}").as_bytes()).simple().to_string();
            let email = format!("requester{n:05}@example.com");
            let body = json!({
                "table": "sc_req_item",
                "sys_id": sys_id,
                "number": format!("RITM{:07}", 1_000_000 + n),
                "request": format!("REQ{:07}", 1_000_000 + n),
                "cat_item": "Permissions portal access",
                "requested_for": { "sys_id": requester, "user_name": format!("requester{n:05}"), "email": email },
                "opened_by": { "sys_id": requester, "user_name": format!("requester{n:05}") },
                "approval": "approved",
                "state": "1",
                "stage": "fulfillment",
                "sys_updated_on": "2026-11-28 07:00:00",
                "variables": { "justification": "Needs to request cloud permissions for the billing project" },
                "approvers": [{
                    "sys_id": approver,
                    "user_name": format!("approver{n:05}"),
                    "email": format!("approver{n:05}@example.com"),
                    "state": "approved"
                }]
            })
            .to_string();
            let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
            mac.update(body.as_bytes());
            let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            Ticket { body, signature, principal: user_id(&email) }
        })
        .collect()
}

fn config(dir: &std::path::Path, fake: &str, o: &Options) -> String {
    // A held group read must not time out (the default is 30 s) while the backlog is decided.
    let timeout = if o.prequeue { "timeout_secs = 3600" } else { "" };
    let executors = o.executors;
    // The service is told the budget the fake enforces, as an admin configures Graph's documented one.
    let budget = if o.no_pacing { 0 } else { o.budget_writes };
    let window = o.budget_secs.ceil() as u64;
    let secret = dir.join("servicenow-secret");
    let client_secret = dir.join("entra-client-secret");
    std::fs::write(&secret, SECRET).unwrap();
    std::fs::write(&client_secret, "bench-client-secret").unwrap();
    format!(
        r#"
[log]
level = "warn"

[workers]
count = 2
executors = {executors}
graph_write_budget = {budget}
graph_write_window_secs = {window}

[sources.servicenow]
kind = "servicenow"
[[sources.servicenow.verify]]
scheme = "hmac_sha256"
header = "X-Signature"
encoding = "base64"
secrets = [{{ file = "{secret}" }}]

[entra]
tenant_id = "{TENANT}"
client_id = "{CLIENT}"
client_secret = {{ file = "{client_secret}" }}
authority = "{fake}"
graph_url = "{fake}/v1.0"
arm_url = "{fake}"
{timeout}

[policy]
mode = "first_match"

[[policy.rules]]
name = "portal-access"
request_types = ["Permissions portal access"]
require_confirmation = false
min_approvals = 1
approver_not_requester = true

[[policy.rules.grants]]
kind = "group_member"
group_id = "{GROUP}"
label = "{GROUP_NAME}"
"#,
        secret = secret.display(),
        client_secret = client_secret.display(),
    )
}

/// Posts every ticket, `concurrency` at a time; returns (accepted, failed). A 503 is retried as a sender would.
async fn send_all(url: &str, tickets: Arc<Vec<Ticket>>, concurrency: usize) -> (usize, usize) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, tickets, next, url) = (client.clone(), tickets.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut failed) = (0, 0);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(t) = tickets.get(i) else { break };
                let mut ok = false;
                for attempt in 0..5 {
                    let response = client
                        .post(&url)
                        .header("Content-Type", "application/json")
                        .header("X-Signature", &t.signature)
                        .body(t.body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().as_u16() == 202 => {
                            let answer: Value = r.json().await.unwrap_or_default();
                            ok = answer["status"] == "accepted";
                            if !ok {
                                eprintln!("ticket {i}: {answer}");
                            }
                            break;
                        }
                        Ok(r) if r.status().is_server_error() => {
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                        Ok(r) => {
                            let status = r.status();
                            eprintln!("ticket {i}: {status} {}", r.text().await.unwrap_or_default());
                            break;
                        }
                        Err(e) => {
                            eprintln!("ticket {i}: {e}");
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
                if ok {
                    accepted += 1;
                } else {
                    failed += 1;
                }
            }
            (accepted, failed)
        }));
    }
    let (mut accepted, mut failed) = (0, 0);
    for t in tasks {
        let (a, f) = t.await.unwrap();
        accepted += a;
        failed += f;
    }
    (accepted, failed)
}

#[derive(Debug, Default)]
struct Progress {
    undecided: i64,
    grants: BTreeMap<String, i64>,
}

impl Progress {
    fn grants(&self, state: &str) -> i64 {
        self.grants.get(state).copied().unwrap_or(0)
    }
}

async fn progress(db: &sqlx::SqlitePool) -> Progress {
    let undecided: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE state IN ('received', 'deciding')")
        .fetch_one(db)
        .await
        .unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, COUNT(*) FROM grants GROUP BY state").fetch_all(db).await.unwrap();
    Progress { undecided, grants: rows.into_iter().collect() }
}

fn secs_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

async fn run(o: Options) -> i32 {
    let n = o.requests;
    let rate = f64::from(o.budget_writes) / o.budget_secs;
    let dir = std::env::temp_dir().join(format!("grantbridge-bench-grants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let graph: Shared = Arc::new(Mutex::new(Graph {
        budget: Budget::new(o.budget_writes, o.budget_secs),
        users: HashSet::new(),
        members: HashSet::new(),
        writes: Vec::new(),
        tokens_issued: 0,
        user_reads: 0,
        group_reads: 0,
        unexpected: Vec::new(),
    }));
    let gate = Arc::new(AtomicBool::new(!o.prequeue));
    let fake = format!("http://127.0.0.1:{}", start_fake(graph.clone(), gate.clone()));

    let database_url = format!("sqlite://{}", dir.join("grants.db").display());
    let env = EnvOverrides {
        listen: Some("127.0.0.1:0".into()),
        database_url: Some(database_url.clone()),
        log_format: None,
        log_level: None,
    };
    let text = config(&dir, &fake, &o);
    let settings = Settings::parse(&text, "benches/grants.toml", &env).unwrap_or_else(|e| panic!("{e}"));
    let app = Application::build(settings).await.unwrap();
    let port = app.port();
    let handle = app.handle();
    let running = tokio::spawn(app.run_until_stopped());
    let db = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&database_url).await.unwrap();

    println!("generating {n} signed ServiceNow RITM webhooks ...");
    let tickets = Arc::new(tickets(n, &std::process::id().to_string()));
    let expected: HashSet<String> = tickets.iter().map(|t| t.principal.clone()).collect();
    assert_eq!(expected.len(), n, "every ticket has its own requester");

    let url = format!("http://127.0.0.1:{port}/webhooks/servicenow");
    println!(
        "sending to {url} ({} at a time); Graph budget {} writes per {} s ({rate:.1}/s, bucket full at start)",
        o.concurrency, o.budget_writes, o.budget_secs
    );
    let cpu_before = CpuSample::now();
    let started = SystemTime::now();
    let (accepted, rejected) = send_all(&url, tickets.clone(), o.concurrency).await;
    let sent = SystemTime::now();
    println!("{accepted} accepted, {rejected} not, in {:.2} s", secs_between(started, sent));

    let deadline = Instant::now() + o.timeout;
    let mut last_print = Instant::now();
    let mut finished = None;
    let mut p = Progress::default();
    let mut queued: Option<SystemTime> = None;
    while Instant::now() < deadline {
        p = progress(&db).await;
        let active = p.grants("active");
        let failed = p.grants("failed");
        if active as usize >= accepted || (p.undecided == 0 && p.grants("pending") == 0 && active + failed > 0) {
            finished = Some(SystemTime::now());
            break;
        }
        if !gate.load(Ordering::Acquire) && p.undecided == 0 && p.grants("pending") as usize >= accepted {
            println!(
                "  t={:>6.1} s  all {accepted} grants queued: writes may start",
                secs_between(started, SystemTime::now())
            );
            queued = Some(SystemTime::now());
            gate.store(true, Ordering::Release);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let g = graph.lock().unwrap();
            let ok = g.writes.iter().filter(|w| w.status == 204).count();
            let throttled = g.writes.iter().filter(|w| w.status == 429).count();
            println!(
                "  t={:>6.1} s  undecided {:>5}  grants {:?}  writes 204: {ok}, 429: {throttled}, members {}",
                secs_between(started, SystemTime::now()),
                p.undecided,
                p.grants,
                g.members.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Timestamps from the store: when the first and last decisions were recorded.
    let (first_decided, last_decided): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(decided_at_ms), MAX(decided_at_ms) FROM decisions").fetch_one(&db).await.unwrap();
    let outcomes: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("SELECT outcome, code, COUNT(*) FROM decisions GROUP BY outcome, code")
            .fetch_all(&db)
            .await
            .unwrap();
    let job_attempts: Vec<(i64, i64)> =
        sqlx::query_as("SELECT attempts, COUNT(*) FROM jobs GROUP BY attempts ORDER BY attempts")
            .fetch_all(&db)
            .await
            .unwrap();
    let dead: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT id, last_error FROM jobs WHERE state = 'dead' LIMIT 3").fetch_all(&db).await.unwrap();
    db.close().await;
    handle.stop(true).await;
    let _ = tokio::time::timeout(Duration::from_secs(60), running).await;

    let cpu = CpuSample::now().since(&cpu_before);
    let g = graph.lock().unwrap();
    let calls = g.writes.len();
    let ok: Vec<&WriteRecord> = g.writes.iter().filter(|w| w.status == 204).collect();
    let throttled = g.writes.iter().filter(|w| w.status == 429).count();
    let bad = g.writes.iter().filter(|w| w.status == 400 || w.status == 404).count();
    let patches_ok: Vec<&&WriteRecord> = ok.iter().filter(|w| w.kind == WriteKind::Patch).collect();
    let singles_ok = ok.iter().filter(|w| w.kind == WriteKind::AddRef).count();
    let full = patches_ok.iter().filter(|w| w.size == MAX_PER_PATCH).count();
    let mean_per_write =
        if ok.is_empty() { 0.0 } else { ok.iter().map(|w| w.size).sum::<usize>() as f64 / ok.len() as f64 };
    let first_write = g.writes.first().map(|w| w.at);
    let last_ok = ok.last().map(|w| w.at);
    let measured = match (first_write, last_ok) {
        (Some(a), Some(b)) => secs_between(a, b),
        _ => f64::NAN,
    };
    let ideal_writes = n.div_ceil(MAX_PER_PATCH);
    let ideal = (ideal_writes.saturating_sub(o.budget_writes as usize)) as f64 / rate;
    let ratio = if ideal > 0.0 { measured / ideal } else { f64::NAN };
    let share = if calls == 0 { 0.0 } else { 100.0 * throttled as f64 / calls as f64 };
    let added_expected = g.members.intersection(&expected).count();
    let end_to_end = finished.map(|f| secs_between(started, f));
    let retry_afters: BTreeMap<u64, usize> =
        g.writes.iter().filter(|w| w.status == 429).fold(BTreeMap::new(), |mut m, w| {
            *m.entry(w.retry_after).or_default() += 1;
            m
        });

    println!();
    println!(
        "{n} requests, one group; budget {} writes / {} s ({rate:.1} writes/s, bucket of {} full at start); {} executors; {} cores",
        o.budget_writes,
        o.budget_secs,
        o.budget_writes,
        o.executors,
        std::thread::available_parallelism().map(|c| c.get()).unwrap_or(1)
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| webhooks accepted (202) | {accepted} of {n} |");
    println!("| webhooks sent in | {:.2} s |", secs_between(started, sent));
    if let (Some(a), Some(b)) = (first_decided, last_decided) {
        println!(
            "| decisions recorded | {:.2} s to {:.2} s after the first webhook |",
            secs_between(started, from_unix_ms(a)),
            secs_between(started, from_unix_ms(b))
        );
    }
    if let Some(first) = first_write {
        println!("| first write | {:.2} s after the first webhook |", secs_between(started, first));
    }
    if let Some(q) = queued {
        println!(
            "| all grants queued (--prequeue holds writes until then) | {:.2} s after the first webhook |",
            secs_between(started, q)
        );
    }
    println!("| write calls (PATCH + POST $ref) | {calls} |");
    println!("| successful writes (204) | {} ({} PATCH, {singles_ok} single adds) |", ok.len(), patches_ok.len());
    println!("| answered 429 | {throttled} ({share:.2} % of write calls) |");
    println!("| answered 400/404 | {bad} |");
    println!(
        "| members per successful write | {mean_per_write:.2} mean; {full} of {} PATCHes full (20) |",
        patches_ok.len()
    );
    println!("| members added | {} ({added_expected} of the {n} requesters) |", g.members.len());
    println!("| ideal writes, ceil(N/20) | {ideal_writes} |");
    println!("| ideal time: max(0, {ideal_writes} - {}) / {rate:.1} per s | {ideal:.2} s |", o.budget_writes);
    println!("| measured: first write to last successful write | {measured:.2} s |");
    println!(
        "| ratio measured / ideal (target <= 1.2) | {} |",
        if ratio.is_nan() { "n/a (ideal is 0)".into() } else { format!("{ratio:.2}") }
    );
    println!(
        "| first webhook to all grants active | {} |",
        end_to_end.map_or_else(|| "did not finish".to_string(), |s| format!("{s:.2} s"))
    );
    println!();
    println!("grants by state: {:?}; events not yet decided: {}", p.grants, p.undecided);
    println!("decisions: {outcomes:?}");
    println!("jobs by attempts: {job_attempts:?}");
    if !dead.is_empty() {
        println!("dead jobs (first 3): {dead:?}");
    }
    println!("Retry-After given (seconds: count): {retry_afters:?}");
    println!(
        "CPU over the run: this process {:.1} core-s, other processes {:.1} core-s, idle {:.1} core-s (of {:.1} s wall)",
        cpu.own, cpu.others, cpu.idle, cpu.wall
    );
    println!(
        "fake Graph: {} tokens issued, {} user reads, {} group reads, {} unexpected requests {:?}",
        g.tokens_issued,
        g.user_reads,
        g.group_reads,
        g.unexpected.len(),
        g.unexpected.iter().take(3).collect::<Vec<_>>()
    );
    if let Some(first) = first_write {
        println!();
        println!("timeline from the first write (5 s buckets): 204 writes / members / 429s");
        let mut buckets: BTreeMap<u64, (usize, usize, usize)> = BTreeMap::new();
        for w in g.writes.iter() {
            let b = buckets.entry((secs_between(first, w.at).max(0.0) / 5.0) as u64).or_default();
            match w.status {
                204 => {
                    b.0 += 1;
                    b.1 += w.size;
                }
                429 => b.2 += 1,
                _ => {}
            }
        }
        let line: Vec<String> =
            buckets.iter().map(|(k, (w, m, t))| format!("{:>3}-{:<3}s {w:>3}/{m:>4}/{t}", k * 5, k * 5 + 5)).collect();
        for chunk in line.chunks(4) {
            println!("  {}", chunk.join("   "));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    let mut code = 0;
    if g.members.len() != n || added_expected != n {
        eprintln!("FAIL: {} members added, {added_expected} of them requesters; expected {n}", g.members.len());
        code = 1;
    }
    if finished.is_none() {
        eprintln!("FAIL: not every grant was active within {} s", o.timeout.as_secs());
        code = 1;
    }
    code
}

/// `2026-11-28T07:00:00`: the form of Graph's `innerError.date` (UTC, whole seconds).
fn iso_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// CPU time from /proc (Linux; zeros elsewhere): the other processes' share says whether the machine was shared.
struct CpuSample {
    at: Instant,
    busy: f64,
    idle: f64,
    own: f64,
}

struct CpuUse {
    wall: f64,
    own: f64,
    others: f64,
    idle: f64,
}

impl CpuSample {
    fn now() -> Self {
        // USER_HZ is 100 on every Linux this runs on.
        let ticks = |v: u64| v as f64 / 100.0;
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> =
            stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let own_stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // After the `(comm)` field: state is field 3, utime and stime are fields 14 and 15.
        let after = own_stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let own: Vec<u64> = after.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
        CpuSample { at: Instant::now(), busy: ticks(total - idle), idle: ticks(idle), own: ticks(own.iter().sum()) }
    }

    fn since(&self, before: &CpuSample) -> CpuUse {
        let own = self.own - before.own;
        CpuUse {
            wall: self.at.duration_since(before.at).as_secs_f64(),
            own,
            others: (self.busy - before.busy - own).max(0.0),
            idle: self.idle - before.idle,
        }
    }
}
