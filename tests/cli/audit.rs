//! `grantbridge audit verify` and `grantbridge audit export`, run as an operator runs them.

use grantbridge::audit::{AuditEntry, AuditKind};
use grantbridge::store::Store;
use serde_json::Value;

use crate::both_backends;
use crate::common::{TempDir, TestDb};
// `both_backends!` defines its own `run`.
use crate::process::run as grantbridge;

/// A config whose only use here is naming the database; the source's secret is a file that exists.
fn config(dir: &TempDir, db: &TestDb) -> String {
    let secret = dir.write("secret", "audit-cli-secret");
    let text = format!(
        "[database]\nurl = \"{}\"\n[sources.jira]\nkind = \"jira\"\n[[sources.jira.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{{ file = \"{}\" }}]\n",
        db.url,
        secret.display()
    );
    dir.write("audit.toml", text).display().to_string()
}

async fn three_entries(store: &Store) {
    let entries = [
        AuditEntry::service(AuditKind::Rejected)
            .source("jira")
            .detail(serde_json::json!({"code": "invalid_signature", "reason": "signature_mismatch"})),
        AuditEntry::operator(AuditKind::OperatorAction, "alice@example.com")
            .source("jira")
            .ticket("ACC-7")
            .grant("g-7")
            .detail(serde_json::json!({"action": "revoke"})),
        AuditEntry::service(AuditKind::Revoked).source("jira").ticket("ACC-7").grant("g-7"),
    ];
    store.append_audit(&entries).await.unwrap();
}

async fn sql(store: &Store, statement: &str) {
    let statement = sqlx::AssertSqlSafe(statement.to_string());
    match store {
        Store::Sqlite(sqlite) => sqlx::raw_sql(statement).execute(&sqlite.pool).await.map(|_| ()).unwrap(),
        Store::Postgres(pool) => sqlx::raw_sql(statement).execute(pool).await.map(|_| ()).unwrap(),
    }
}

async fn drop_protection(store: &Store) {
    match store {
        Store::Sqlite(_) => sql(store, "DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;").await,
        Store::Postgres(_) => sql(store, "DROP TRIGGER audit_log_no_change ON audit_log").await,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

both_backends! {
    async fn verify_passes_a_whole_chain_and_names_the_first_broken_entry(backend: Backend) {
        let db = TestDb::new(backend).await;
        let dir = TempDir::new();
        let config = config(&dir, &db);
        let store = db.store().await;
        three_entries(&store).await;
        let head = store.audit_head().await.unwrap().unwrap();

        let out = grantbridge(&["audit", "verify", "--config", &config], &[]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
        assert!(stdout.contains("audit trail OK, 3 entries checked"), "{stdout}");
        assert!(stdout.contains(&format!("head: 3:{}", head.hash)), "{stdout}");
        let anchored = grantbridge(&["audit", "verify", "--config", &config, "--expect-head", &head.to_string()], &[]);
        assert_eq!(anchored.status.code(), Some(0), "{}", text(&anchored.stderr));

        drop_protection(&store).await;
        sql(&store, "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2").await;
        let out = grantbridge(&["audit", "verify", "--config", &config], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("BROKEN at entry 2 (operator_action): modified"), "{stderr}");
    }
}

both_backends! {
    async fn verify_catches_a_removed_tail_only_against_the_recorded_head(backend: Backend) {
        let db = TestDb::new(backend).await;
        let dir = TempDir::new();
        let config = config(&dir, &db);
        let store = db.store().await;
        three_entries(&store).await;
        let head = store.audit_head().await.unwrap().unwrap().to_string();
        drop_protection(&store).await;
        sql(&store, "DELETE FROM audit_log WHERE seq = 3").await;

        let plain = grantbridge(&["audit", "verify", "--config", &config], &[]);
        assert_eq!(plain.status.code(), Some(0), "what is left is a whole chain");
        let out = grantbridge(&["audit", "verify", "--config", &config, "--expect-head", &head], &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("BROKEN at entry 3: missing: the chain ends at 2"), "{stderr}");

        let bad = grantbridge(&["audit", "verify", "--config", &config, "--expect-head", "3:not-a-hash"], &[]);
        assert_eq!(bad.status.code(), Some(2), "a malformed head is a usage error");
    }
}

both_backends! {
    async fn export_writes_every_field_as_json_lines(backend: Backend) {
        let db = TestDb::new(backend).await;
        let dir = TempDir::new();
        let config = config(&dir, &db);
        let store = db.store().await;
        three_entries(&store).await;
        let stored = store.audit_entries(0, 10).await.unwrap();

        let out = grantbridge(&["audit", "export", "--config", &config], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        for (line, record) in lines.iter().zip(&stored) {
            let keys: Vec<&str> = line.as_object().unwrap().keys().map(String::as_str).collect();
            let mut expected = vec!["seq", "at_ms", "kind", "actor", "source", "ticket_key", "event_id", "grant_id",
                "detail", "prev_hash", "hash"];
            expected.sort();
            assert_eq!(keys, expected);
            assert_eq!(line["seq"], record.seq);
            assert_eq!(line["hash"], record.hash.as_str());
            assert_eq!(line["prev_hash"], record.prev_hash.as_str());
            // The detail is the object itself, and compact JSON of it is the hashed text.
            assert!(line["detail"].is_object());
            assert_eq!(line["detail"].to_string(), record.detail);
        }
        assert_eq!(lines[1]["actor"], "alice@example.com");
        assert_eq!(lines[1]["ticket_key"], "ACC-7");
        assert_eq!(lines[0]["grant_id"], Value::Null);
        assert_eq!(lines[0]["detail"]["reason"], "signature_mismatch");
        assert!(text(&out.stderr).contains(&format!("head: 3:{}", stored[2].hash)), "{}", text(&out.stderr));

        let path = dir.path().join("later.jsonl");
        let path = path.to_str().unwrap();
        let out = grantbridge(&["audit", "export", "--config", &config, "--after-seq", "1", "--output", path], &[]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "with --output, standard output stays clean");
        let written = std::fs::read_to_string(path).unwrap();
        assert_eq!(written, stdout.lines().skip(1).map(|l| format!("{l}\n")).collect::<String>());
    }
}
