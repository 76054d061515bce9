//! Intake load benchmark: verified, durably stored webhooks per second and latency percentiles, against a bare
//! 200 on the same route as the ceiling, in the same run, on this machine.
//!
//!     cargo bench --bench intake                     # SQLite (WAL, synchronous=FULL)
//!     cargo bench --bench intake -- --postgres URL   # PostgreSQL
//!     cargo bench --bench intake -- --seconds 20 --connections 64
//!     cargo bench --bench intake -- --workers 0                  # an intake-only replica
//!
//! The server under test is the release `grantbridge` binary, started as its own process with a Jira source
//! (X-Hub-Signature). Every request carries a unique delivery id and body and is signed like Jira signs it.
//! The ceiling is an actix-web server with the same worker count answering 200 on /webhooks/{source} without
//! doing anything; it is this same bench binary re-run with `--ceiling PORT`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "bench-secret";

struct Options {
    seconds: u64,
    connections: usize,
    rate: u64,
    postgres: Option<String>,
    /// Deciding workers in the server (2 is `serve`'s default; 0 is an intake-only replica).
    workers: usize,
}

fn parse_options() -> Options {
    let mut o = Options { seconds: 10, connections: 64, rate: 1000, postgres: None, workers: 2 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => o.seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.seconds),
            "--connections" => o.connections = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.connections),
            "--rate" => o.rate = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.rate),
            "--postgres" => o.postgres = args.next(),
            "--workers" => o.workers = args.next().and_then(|v| v.parse().ok()).unwrap_or(o.workers),
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--ceiling") {
        let port: u16 = args[i + 1].parse().unwrap();
        return ceiling_server(port);
    }
    let options = parse_options();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run(options));
}

fn ceiling_server(port: u16) {
    actix_web::rt::System::new().block_on(async move {
        actix_web::HttpServer::new(|| {
            actix_web::App::new().route(
                "/webhooks/{source}",
                actix_web::web::post().to(|| async { actix_web::HttpResponse::Ok().finish() }),
            )
        })
        .bind(("127.0.0.1", port))
        .unwrap()
        .run()
        .await
        .unwrap()
    });
}

struct Request {
    body: String,
    signature: String,
    delivery: String,
}

fn requests(count: usize, tag: &str) -> Vec<Request> {
    (0..count)
        .map(|i| {
            let body = format!(
                r#"{{"timestamp":{ts},"bench":"{tag}","webhookEvent":"jira:issue_updated","issue_event_type_name":"issue_generic","user":{{"accountId":"5b10ac8d82e05b22cc7d4ef5","displayName":"Avery Approver"}},"issue":{{"id":"{i}","key":"ACCESS-{i}","fields":{{"summary":"Permissions portal access","customfield_10010":{{"requestType":{{"name":"Permissions portal access"}}}},"reporter":{{"accountId":"5b10a2844c20165700ede21g"}}}}}},"changelog":{{"id":"{i}","items":[{{"field":"status","fieldtype":"jira","from":"10001","fromString":"Waiting for approval","to":"10002","toString":"Approved"}}]}}}}"#,
                ts = 1_764_316_800_000u64 + i as u64
            );
            let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
            mac.update(body.as_bytes());
            let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            Request { body, signature, delivery: format!("{tag}-{i}") }
        })
        .collect()
}

struct Proc {
    child: Child,
}

impl Proc {
    fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn wait_listening(port: u16) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server on port {port} did not start");
}

struct Measured {
    requests: usize,
    errors: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[idx] as f64 / 1000.0
    }
}

/// Closed loop: `connections` clients each send back to back for `duration`.
async fn saturate(url: &str, reqs: Arc<Vec<Request>>, connections: usize, duration: Duration) -> Measured {
    let next = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build().unwrap();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, reqs, next, url) = (client.clone(), reqs.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut errors = 0;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(r) = reqs.get(i) else { break };
                let sent = Instant::now();
                if send(&client, &url, r).await {
                    latencies.push(sent.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    Measured { requests: all.len(), errors, elapsed, latencies_us: all }
}

/// Open loop at a fixed rate; latency is measured from the scheduled send time (no coordinated omission).
async fn fixed_rate(url: &str, reqs: Arc<Vec<Request>>, rate: u64, duration: Duration) -> Measured {
    let client = reqwest::Client::builder().pool_max_idle_per_host(256).build().unwrap();
    let total = (rate * duration.as_secs()) as usize;
    let interval = Duration::from_nanos(1_000_000_000 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total.min(reqs.len()) {
        let due = start + interval * i as u32;
        let (client, reqs, url) = (client.clone(), reqs.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let ok = send(&client, &url, &reqs[i]).await;
            (ok, due.elapsed().as_micros() as u64)
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for t in tasks {
        let (ok, l) = t.await.unwrap();
        if ok {
            latencies.push(l);
        } else {
            errors += 1;
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Measured { requests: latencies.len(), errors, elapsed, latencies_us: latencies }
}

async fn send(client: &reqwest::Client, url: &str, r: &Request) -> bool {
    let response = client
        .post(url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header("X-Hub-Signature", &r.signature)
        .header("X-Atlassian-Webhook-Identifier", &r.delivery)
        .body(r.body.clone())
        .send()
        .await;
    match response {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let _ = resp.bytes().await;
            ok
        }
        Err(_) => false,
    }
}

async fn count_events(database_url: &str) -> i64 {
    let settings = grantbridge::config::DatabaseSettings::new(database_url.to_string());
    let store = grantbridge::store::Store::connect(&settings).await.unwrap();
    store.count_events().await.unwrap()
}

async fn run(o: Options) {
    let dir = std::env::temp_dir().join(format!("grantbridge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (database_url, backend) = match &o.postgres {
        Some(base) => {
            let name = format!("gb_bench_{}", std::process::id());
            let admin = sqlx::PgPool::connect(base).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&admin).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
            let mut url = reqwest::Url::parse(base).unwrap();
            url.set_path(&name);
            (url.to_string(), "PostgreSQL")
        }
        None => (format!("sqlite://{}", dir.join("bench.db").display()), "SQLite (WAL, synchronous=FULL)"),
    };
    let config = dir.join("bench.toml");
    std::fs::write(
        &config,
        format!("[workers]\ncount = {}\n[log]\nlevel = \"warn\"\n[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{{ env = \"BENCH_SECRET\" }}]\n", o.workers),
    )
    .unwrap();

    let duration = Duration::from_secs(o.seconds);
    let per_run = (o.seconds as usize + 2) * 40_000;
    println!("generating {} signed requests ...", per_run * 2 + (o.rate * o.seconds) as usize);
    let saturate_reqs = Arc::new(requests(per_run, "sat"));
    let ceiling_reqs = Arc::new(requests(per_run, "ceil"));
    let rate_reqs = Arc::new(requests((o.rate * o.seconds) as usize, "rate"));

    // Ceiling: bare 200 on the same route, same framework and worker count, its own process.
    let ceiling_port = free_port();
    let ceiling = Proc {
        child: Command::new(std::env::current_exe().unwrap())
            .args(["--ceiling", &ceiling_port.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_listening(ceiling_port).await;
    let ceiling_url = format!("http://127.0.0.1:{ceiling_port}/webhooks/jira");
    let _ = saturate(&ceiling_url, Arc::new(requests(2000, "warm")), o.connections, Duration::from_secs(1)).await;
    let bare = saturate(&ceiling_url, ceiling_reqs, o.connections, duration).await;
    drop(ceiling);

    let port = free_port();
    let server = Proc {
        child: Command::new(env!("CARGO_BIN_EXE_grantbridge"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("BENCH_SECRET", SECRET)
            .env("GRANTBRIDGE_LISTEN", format!("127.0.0.1:{port}"))
            .env("GRANTBRIDGE_DATABASE_URL", &database_url)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_listening(port).await;
    let url = format!("http://127.0.0.1:{port}/webhooks/jira");
    let warm = saturate(&url, Arc::new(requests(2000, "warm")), o.connections, Duration::from_secs(1)).await;
    let stored = saturate(&url, saturate_reqs, o.connections, duration).await;
    let paced = fixed_rate(&url, rate_reqs, o.rate, duration).await;
    let (rss, peak) = server.rss_kib();
    drop(server);
    let in_store = count_events(&database_url).await;
    let expected = warm.requests + stored.requests + paced.requests;

    println!();
    println!(
        "backend: {backend}; {} deciding workers; {} connections; {} s per run; {} cores",
        o.workers,
        o.connections,
        o.seconds,
        num_cores()
    );
    println!();
    println!("| run | requests | errors | req/s | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, m) in [
        ("ceiling: bare 200, same route", &bare),
        ("grantbridge: verified + durably stored", &stored),
        (&*format!("grantbridge at a fixed {} req/s", o.rate), &paced),
    ] {
        println!(
            "| {name} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            m.requests,
            m.errors,
            m.rate(),
            m.percentile(0.50),
            m.percentile(0.99),
            m.percentile(1.0)
        );
    }
    println!();
    println!("stored / ceiling: {:.1} %", 100.0 * stored.rate() / bare.rate());
    println!("server resident memory: {:.1} MiB now, {:.1} MiB peak", rss as f64 / 1024.0, peak as f64 / 1024.0);
    println!("events in the store: {in_store} (acknowledged: {expected})");
    assert!(in_store as usize >= expected, "an acknowledged event is missing from the store");
    let _ = std::fs::remove_dir_all(&dir);
}

fn num_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
