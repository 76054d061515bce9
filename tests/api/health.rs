use reqwest::StatusCode;
use serde_json::Value;

use crate::both_backends;
use crate::common::Backend;
use crate::common::sign;
use crate::helpers::*;

both_backends! {
    async fn health_and_readiness_answer(backend: Backend) {
        let app = spawn_app(backend).await;
        let health = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        let body: Value = ready.json().await.unwrap();
        let expected = match backend { Backend::Sqlite => "sqlite", Backend::Postgres => "postgres" };
        assert_eq!(body["store"], expected);
        app.stop().await;
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_outcomes_and_verification_failures_by_reason() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = r#"{"webhookEvent":"jira:issue_updated"}"#;
    let good = [("Content-Type", "application/json"), ("X-Atlassian-Webhook-Identifier", "m-1")];
    let signature = sign::hub_signature(JIRA_SECRET, body.as_bytes());
    let mut headers = good.to_vec();
    headers.push(("X-Hub-Signature", &signature));
    assert_eq!(app.post("jira", &headers, body).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.post("jira", &headers, body).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.post("jira", &good, body).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.post("no-such-source", &good, body).await.status(), StatusCode::NOT_FOUND);

    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let requests = "grantbridge_webhook_requests_total";
    assert_eq!(metric(&text, &format!("{requests}{{source=\"jira\",outcome=\"accepted\"}}")), 1.0, "{text}");
    assert_eq!(metric(&text, &format!("{requests}{{source=\"jira\",outcome=\"duplicate\"}}")), 1.0, "{text}");
    assert_eq!(metric(&text, &format!("{requests}{{source=\"jira\",outcome=\"invalid_signature\"}}")), 1.0, "{text}");
    assert_eq!(metric(&text, &format!("{requests}{{source=\"(unknown)\",outcome=\"unknown_source\"}}")), 1.0, "{text}");
    assert_eq!(
        metric(&text, "grantbridge_webhook_verification_failures_total{source=\"jira\",reason=\"missing_signature\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "grantbridge_webhook_request_duration_seconds_count"), 4.0, "{text}");
    assert!(!text.contains("no-such-source"), "request paths never become labels");
    app.stop().await;
}
