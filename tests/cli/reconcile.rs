//! Reconciliation as an admin runs it: `grantbridge reconcile` once, and the periodic job of `serve`, on one
//! process and on two replicas sharing PostgreSQL. Graph is a fake that keeps the group's members, so a removal
//! shows in the next listing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use grantbridge::domain::GrantTarget;
use grantbridge::store::Store;
use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::common::entra::{PORTAL_GROUP as GROUP, PORTAL_LABEL, assigned_group, entra_table, portal_rule};
use crate::common::ledger::{Ledger, Seeded};
use crate::common::{Backend, TempDir, TestDb};
use crate::process::{Server, run};

/// Member with an active grant.
const KEPT: &str = "20000000-0000-4000-8000-000000000001";
/// Member whose grant was revoked: lingering.
const ENDED: &str = "20000000-0000-4000-8000-000000000002";

/// The group's members as the fake holds them, and the removals it was asked for.
#[derive(Default)]
struct Group {
    members: BTreeSet<String>,
    deleted: Vec<String>,
}

/// `GET /groups/{id}/members`: the current members, one per page, each page linking to the next.
struct Members {
    group: Arc<Mutex<Group>>,
    base: String,
}

impl Respond for Members {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let members: Vec<String> = self.group.lock().unwrap().members.iter().cloned().collect();
        let skip: usize =
            request.url.query_pairs().find(|(k, _)| k == "$skiptoken").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = json!({"value": members.get(skip).map(|id| vec![json!({"@odata.type": "#microsoft.graph.user", "id": id})]).unwrap_or_default()});
        if skip + 1 < members.len() {
            body["@odata.nextLink"] =
                json!(format!("{}/v1.0/groups/{GROUP}/members?$select=id&$top=999&$skiptoken={}", self.base, skip + 1));
        }
        ResponseTemplate::new(200).set_body_json(body)
    }
}

/// `DELETE /groups/{id}/members/{member}/$ref`.
struct Remove {
    group: Arc<Mutex<Group>>,
}

impl Respond for Remove {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let member = request.url.path().trim_end_matches("/$ref").rsplit('/').next().unwrap_or_default().to_string();
        let mut group = self.group.lock().unwrap();
        group.deleted.push(member.clone());
        if group.members.remove(&member) {
            ResponseTemplate::new(204)
        } else {
            ResponseTemplate::new(404)
                .set_body_json(json!({"error": {"code": "Request_ResourceNotFound", "message": "gone"}}))
        }
    }
}

async fn entra_fake() -> (MockServer, Arc<Mutex<Group>>) {
    let entra = crate::common::entra::entra().await;
    assigned_group(&entra, GROUP, PORTAL_LABEL).await;
    let group = Arc::new(Mutex::new(Group {
        members: [KEPT, ENDED].iter().map(|m| m.to_string()).collect(),
        deleted: Vec::new(),
    }));
    Mock::given(method("GET"))
        .and(path(format!("/v1.0/groups/{GROUP}/members")))
        .respond_with(Members { group: group.clone(), base: entra.uri() })
        .mount(&entra)
        .await;
    Mock::given(method("DELETE"))
        .and(path_regex(format!("^/v1.0/groups/{GROUP}/members/[0-9a-f-]+/\\$ref$")))
        .respond_with(Remove { group: group.clone() })
        .mount(&entra)
        .await;
    (entra, group)
}

fn write_config(dir: &TempDir, entra: &MockServer, reconcile: &str) -> std::path::PathBuf {
    let webhook_secret = dir.write("webhook-secret", "jira-secret").display().to_string();
    let client_secret = dir.write("client-secret", "entra-client-secret").display().to_string();
    let text = format!(
        r#"
[reconcile]
{reconcile}

[sources.jira]
kind = "jira"
[[sources.jira.verify]]
scheme = "jira_hub_signature"
secrets = [{{ file = "{webhook_secret}" }}]

{entra}{portal}"#,
        entra = entra_table(&entra.uri(), &client_secret),
        portal = portal_rule("", ""),
    );
    dir.write("reconcile.toml", text)
}

async fn seed(store: &Store) {
    let portal = GrantTarget::GroupMember { group_id: GROUP.into() };
    let mut ledger = Ledger::new(store.clone());
    ledger.grant("portal-access", &portal, KEPT, Seeded::Active { expires_at_ms: None }).await;
    ledger.grant("portal-access", &portal, ENDED, Seeded::Revoked).await;
}

fn reconcile(config: &std::path::Path, db: &TestDb, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["reconcile", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run(&args, &[("GRANTBRIDGE_DATABASE_URL", &db.url), ("GRANTBRIDGE_LOG", "warn")]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.code().unwrap_or(-1), stdout, String::from_utf8_lossy(&out.stderr).to_string())
}

/// `(started_by, started_at_ms)` of every recorded run, oldest first.
async fn runs(store: &Store) -> Vec<(String, i64)> {
    let sql = "SELECT started_by, started_at_ms FROM reconcile_runs ORDER BY started_at_ms";
    match store {
        Store::Sqlite(sqlite) => sqlx::query_as(sql).fetch_all(&sqlite.pool).await.unwrap(),
        Store::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
    }
}

#[tokio::test]
async fn reconcile_reports_in_a_dry_run_repairs_for_real_and_exits_by_what_it_found() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    seed(&store).await;
    let (entra, group) = entra_fake().await;
    let dir = TempDir::new();
    let config = write_config(&dir, &entra, "interval_secs = 0");

    // A dry run: drift found (exit 2), reported as JSON, nothing removed.
    let (code, stdout, stderr) = reconcile(&config, &db, &["--dry-run", "--json"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["totals"]["lingering"], 1, "{report}");
    assert_eq!(report["totals"]["drift"], Value::Null, "the totals are the counts");
    assert_eq!(report["targets"][0]["members"], 2, "both pages were read");
    assert_eq!(report["targets"][0]["lingering"][0]["principal_id"], ENDED);
    assert_eq!(report["targets"][0]["lingering"][0]["action"], "would_remove");
    assert!(group.lock().unwrap().deleted.is_empty(), "a dry run removes nobody");

    // For real: the lingering membership is removed; drift was found, so still exit 2, in the human summary.
    let (code, stdout, stderr) = reconcile(&config, &db, &[]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 lingering"), "{stdout}");
    assert!(stdout.contains(&format!("lingering {ENDED} removed")), "{stdout}");
    assert_eq!(group.lock().unwrap().deleted, vec![ENDED.to_string()]);

    // Nothing left to find: exit 0.
    let (code, stdout, stderr) = reconcile(&config, &db, &["--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["targets"][0]["members"], 1);
    assert_eq!(group.lock().unwrap().deleted.len(), 1);

    let recorded = runs(&store).await;
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|(by, _)| by == "cli"), "{recorded:?}");
}

#[tokio::test]
async fn reconcile_without_entra_fails_with_exit_1() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = TempDir::new();
    let secret = dir.write("webhook-secret", "jira-secret").display().to_string();
    let config = dir.write(
        "no-entra.toml",
        format!("[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{{ file = \"{secret}\" }}]\n"),
    );
    let (code, stdout, stderr) = reconcile(&config, &db, &["--dry-run"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(stderr.contains("has no [entra] table"), "{stderr}");
}

/// Waits until `count` scheduled runs are recorded, at most `within`.
async fn wait_for_scheduled_runs(store: &Store, count: usize, within: Duration, servers: &[&Server]) {
    let deadline = Instant::now() + within;
    loop {
        let scheduled = runs(store).await.into_iter().filter(|(by, _)| by == "schedule").count();
        if scheduled >= count {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = servers.iter().map(|s| s.logs()).collect();
            panic!("{scheduled} scheduled run(s) within {within:?}, {count} expected:\n{}", logs.join("\n----\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_reconciles_on_its_schedule() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = db.store().await;
    seed(&store).await;
    let (entra, group) = entra_fake().await;
    let dir = TempDir::new();
    let config = write_config(&dir, &entra, "interval_secs = 2");
    let server = Server::start(&config, &db.url, dir.path(), &[]);

    wait_for_scheduled_runs(&store, 1, Duration::from_secs(20), &[&server]).await;

    assert_eq!(group.lock().unwrap().deleted, vec![ENDED.to_string()], "{}", server.logs());
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("grantbridge_reconcile_drift_total{kind=\"lingering\"} 1"), "{metrics}");
    assert!(metrics.contains("grantbridge_reconcile_actions_total{action=\"removed\"} 1"), "{metrics}");
    let latest = store.latest_reconcile_run().await.unwrap().unwrap();
    assert_eq!((latest.started_by.as_str(), latest.dry_run, latest.drift), ("schedule", false, 1));
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
async fn two_replicas_reconcile_once_per_interval_between_them() {
    const INTERVAL_MS: i64 = 3_000;
    let db = TestDb::new(Backend::Postgres).await;
    let store = db.store().await;
    seed(&store).await;
    let (entra, group) = entra_fake().await;
    let dir = TempDir::new();
    let config = write_config(&dir, &entra, "interval_secs = 3");
    let a = Server::start(&config, &db.url, dir.path(), &[]);
    let b = Server::start(&config, &db.url, dir.path(), &[]);

    wait_for_scheduled_runs(&store, 3, Duration::from_secs(30), &[&a, &b]).await;

    let scheduled: Vec<i64> =
        runs(&store).await.into_iter().filter(|(by, _)| by == "schedule").map(|(_, at)| at).collect();
    for pair in scheduled.windows(2) {
        assert!(pair[1] - pair[0] >= INTERVAL_MS, "two runs within one interval: {scheduled:?}");
    }
    assert_eq!(group.lock().unwrap().deleted, vec![ENDED.to_string()], "removed once, by one replica");
    let ran = |s: &Server| s.logs().matches("reconciliation finished").count();
    println!("two replicas: runs at {scheduled:?}; by A {}, by B {}", ran(&a), ran(&b));
}
