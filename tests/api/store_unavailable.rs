//! When the store cannot be written, nothing is acknowledged: 503 with Retry-After, and nothing half-written.

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Backend, sign};
use crate::helpers::*;

const BODY: &str = r#"{"webhookEvent":"jira:issue_updated","issue":{"key":"ACC-1"}}"#;

async fn send(app: &TestApp, delivery: &str) -> reqwest::Response {
    let signature = sign::hub_signature(JIRA_SECRET, BODY.as_bytes());
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Hub-Signature", signature.as_str()),
        ("X-Atlassian-Webhook-Identifier", delivery),
    ];
    app.post("jira", &headers, BODY).await
}

async fn assert_refused(response: reqwest::Response) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
}

#[tokio::test]
async fn sqlite_locked_by_another_writer_answers_503_and_stores_nothing() {
    let app = spawn_app_with(Backend::Sqlite, "[database]\nbusy_timeout_ms = 200\n").await;
    // Another process holding the write lock is what "cannot be written" looks like to an embedded store.
    let mut locker = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut locker).await.unwrap();

    assert_refused(send(&app, "locked-1").await).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "reads still work while a writer holds the lock");

    sqlx::raw_sql("ROLLBACK").execute(&mut locker).await.unwrap();
    assert_eq!(app.event_count().await, 0, "the refused event was not stored");
    let retried = send(&app, "locked-1").await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED, "the sender's retry succeeds once the store is back");
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "accepted");
    assert_eq!(app.event_count().await, 1);
}

#[tokio::test]
#[cfg_attr(not(postgres_tests), ignore = "PostgreSQL test: set GRANTBRIDGE_TEST_POSTGRES_URL to run it")]
async fn postgres_unreachable_answers_503_and_recovers() {
    let app = spawn_app_with(Backend::Postgres, "[database]\nbusy_timeout_ms = 500\n").await;
    let admin = sqlx::PgPool::connect(&std::env::var(crate::common::POSTGRES_URL_VAR).unwrap()).await.unwrap();
    let name = app.db.db_name();
    let block = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false");
    sqlx::query(sqlx::AssertSqlSafe(block)).execute(&admin).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&name)
    .execute(&admin)
    .await
    .unwrap();

    assert_refused(send(&app, "pg-down-1").await).await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);

    let allow = format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true");
    sqlx::query(sqlx::AssertSqlSafe(allow)).execute(&admin).await.unwrap();
    let fresh = app.db.store().await;
    assert_eq!(fresh.count_events().await.unwrap(), 0, "nothing was acknowledged or stored while down");
    let retried = send(&app, "pg-down-1").await;
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    assert_eq!(fresh.count_events().await.unwrap(), 1);
}

use sqlx::Connection;
