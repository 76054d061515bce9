use std::sync::{Arc, Mutex};

use grantbridge::domain::EventId;
use serde_json::Value;

use crate::both_backends;
use crate::common::{Backend, TempDir, TestDb, sign};
use crate::process::{Server, run};

const SECRET: &str = "jira-secret-for-process-tests";

fn quickstart() -> String {
    format!("{}/examples/quickstart.toml", env!("CARGO_MANIFEST_DIR"))
}

fn quickstart_env() -> [(&'static str, &'static str); 2] {
    [("JIRA_WEBHOOK_SECRET", SECRET), ("SERVICENOW_WEBHOOK_SECRET", "sn-secret-for-process-tests")]
}

async fn deliver(client: &reqwest::Client, server_url: &str, n: usize) -> reqwest::Result<(String, Value)> {
    let body = format!(r#"{{"webhookEvent":"jira:issue_updated","issue":{{"key":"ACC-{n}"}}}}"#);
    let delivery = format!("crash-{n}");
    let response = client
        .post(server_url)
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature", sign::hub_signature(SECRET, body.as_bytes()))
        .header("X-Atlassian-Webhook-Identifier", &delivery)
        .body(body)
        .send()
        .await?;
    let status = response.status();
    let value: Value = response.json().await?;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{value}");
    Ok((delivery, value))
}

both_backends! {
    async fn every_acknowledged_event_survives_kill_9(backend: Backend) {
        let db = TestDb::new(backend).await;
        let dir = TempDir::new();
        let mut server = Server::start(quickstart().as_ref(), &db.url, dir.path(), &quickstart_env());
        let url = server.url("/webhooks/jira");
        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let client = reqwest::Client::new();
        let mut senders = Vec::new();
        for worker in 0..16 {
            let (client, url, acked) = (client.clone(), url.clone(), acked.clone());
            senders.push(tokio::spawn(async move {
                for i in 0..10_000 {
                    match deliver(&client, &url, worker * 100_000 + i).await {
                        Ok((delivery, answer)) => {
                            let id = answer["event_id"].as_str().unwrap().to_string();
                            acked.lock().unwrap().push((delivery, id));
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        while acked.lock().unwrap().len() < 300 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server.kill9();
        for s in senders {
            s.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let store = db.store().await;
        for (delivery, id) in &acked {
            let stored = store.event(EventId::parse(id).unwrap()).await.unwrap();
            assert!(stored.is_some(), "event {id} ({delivery}) was acknowledged but is gone after kill -9");
        }
        assert!(store.count_events().await.unwrap() >= acked.len() as i64);

        // After a restart, a sender's retry of an acknowledged delivery is a duplicate of the stored event.
        let server = Server::start(quickstart().as_ref(), &db.url, dir.path(), &quickstart_env());
        let (delivery, id) = &acked[0];
        let n: usize = delivery.trim_start_matches("crash-").parse().unwrap();
        let (_, answer) = deliver(&client, &server.url("/webhooks/jira"), n).await.unwrap();
        assert_eq!(answer["status"], "duplicate");
        assert_eq!(answer["event_id"].as_str(), Some(id.as_str()));
    }
}

#[tokio::test]
async fn send_signs_like_the_configured_source_and_the_server_accepts_it() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = TempDir::new();
    let server = Server::start(quickstart().as_ref(), &db.url, dir.path(), &quickstart_env());
    let examples = format!("{}/examples/events", env!("CARGO_MANIFEST_DIR"));
    for (source, file) in [("jira", "jira-request-approved.json"), ("servicenow", "servicenow-ritm-approved.json")] {
        let url = server.url(&format!("/webhooks/{source}"));
        let path = format!("{examples}/{file}");
        let args = ["send", "--config", &quickstart(), "--source", source, "--file", &path, "--url", &url];
        let out = run(&args, &quickstart_env());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{source}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("202"), "{stdout}");
        assert!(stdout.contains("\"status\":\"accepted\""), "{stdout}");
    }
    let store = db.store().await;
    assert_eq!(store.count_events().await.unwrap(), 2);

    // Signed with a different secret than the server holds: send reports the refusal and exits non-zero.
    let url = server.url("/webhooks/jira");
    let path = format!("{examples}/jira-request-approved.json");
    let out = run(
        &["send", "--config", &quickstart(), "--source", "jira", "--file", &path, "--url", &url],
        &[("JIRA_WEBHOOK_SECRET", "not-the-servers-secret"), ("SERVICENOW_WEBHOOK_SECRET", "x")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("401"));
}

#[tokio::test]
async fn secrets_never_reach_logs_responses_or_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = TempDir::new();
    let canary = "CANARY-7f3a9c1e-secret";
    let config = dir.write(
        "canary.toml",
        "[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{ env = \"CANARY_SECRET\" }]\n\
         [[sources.jira.verify]]\nscheme = \"shared_secret_header\"\nheader = \"X-Token\"\nsecrets = [{ env = \"CANARY_SECRET\" }]\n",
    );
    let env = [("CANARY_SECRET", canary), ("GRANTBRIDGE_LOG", "trace")];
    let mut server = Server::start(&config, &db.url, dir.path(), &env);
    let client = reqwest::Client::new();
    let url = server.url("/webhooks/jira");
    let body = r#"{"webhookEvent":"jira:issue_updated"}"#;
    let mut answers = String::new();
    let requests = [
        vec![("X-Hub-Signature", sign::hub_signature(canary, body.as_bytes()))],
        vec![("X-Hub-Signature", sign::hub_signature("wrong", body.as_bytes()))],
        vec![("X-Token", canary.to_string()), ("X-Atlassian-Webhook-Identifier", "c-2".to_string())],
        vec![("X-Token", format!("{canary}x"))],
        vec![],
    ];
    for headers in requests {
        let mut request = client.post(&url).header("Content-Type", "application/json").body(body);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let response = request.send().await.unwrap();
        answers.push_str(&format!("{:?}", response.headers()));
        answers.push_str(&response.text().await.unwrap());
    }
    answers.push_str(&client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap());
    assert_eq!(server.terminate().code(), Some(0));
    let logs = server.logs();
    assert!(logs.contains("webhook signature refused"), "the refusal is logged: {logs}");
    assert!(logs.contains("signature_mismatch"), "with its reason");
    assert!(!logs.contains(canary), "the secret leaked into the logs:\n{logs}");
    assert!(!answers.contains(canary), "the secret leaked into a response");
    let check = run(&["check-config", "--config", config.to_str().unwrap()], &env);
    assert!(!String::from_utf8_lossy(&check.stdout).contains(canary));
    assert!(!String::from_utf8_lossy(&check.stderr).contains(canary));
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = TempDir::new();
    let mut server = Server::start(quickstart().as_ref(), &db.url, dir.path(), &quickstart_env());
    let client = reqwest::Client::new();
    let (_, answer) = deliver(&client, &server.url("/webhooks/jira"), 1).await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let status = server.terminate();
    assert_eq!(status.code(), Some(0), "{}", server.logs());
    let logs = server.logs();
    assert!(logs.contains("grantbridge stopped"), "{logs}");
    for line in logs.lines() {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "JSON log format gives one JSON object per line: {line}");
    }
}

#[test]
fn migrate_applies_the_schema_once() {
    let dir = TempDir::new();
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let first = run(&["migrate"], &[("GRANTBRIDGE_DATABASE_URL", &url)]);
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied migrations [1, 2, 3, 4]"));
    let second = run(&["migrate"], &[("GRANTBRIDGE_DATABASE_URL", &url)]);
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
}

#[test]
fn migrate_does_not_need_graph_to_resolve_the_policy() {
    let dir = TempDir::new();
    let secret = dir.write("s", "x");
    let config = dir.write(
        "named.toml",
        format!(
            "[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{{ file = \"{0}\" }}]\n\
             [entra]\ntenant_id = \"8f2d4b61-9c3a-4e7f-b1d5-0a6c2e9f4b73\"\nclient_id = \"3c9e1f7a-2b4d-4c6e-8a0f-5d7b9e1c3a24\"\n\
             client_secret = {{ file = \"{0}\" }}\nauthority = \"http://127.0.0.1:9\"\ngraph_url = \"http://127.0.0.1:9/v1.0\"\n\
             [[policy.rules]]\nname = \"named\"\nrequest_types = [\"x\"]\n[[policy.rules.grants]]\nkind = \"group_member\"\ngroup_name = \"Some Group\"\n",
            secret.display()
        ),
    );
    let url = format!("sqlite://{}", dir.path().join("m.db").display());
    let out = run(&["migrate", "--config", config.to_str().unwrap()], &[("GRANTBRIDGE_DATABASE_URL", &url)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // check-config does resolve names, and says plainly when Graph cannot be reached.
    let check = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("group_name `Some Group`"));
}
