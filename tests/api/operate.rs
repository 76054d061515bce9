//! `GET /v1/audit` (every entry once across pages, in order, with its filters), `GET /v1/audit/head`, and the
//! answers of `POST /v1/events/{id}/replay` other than success.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use grantbridge::audit::{AuditEntry, AuditKind};
use grantbridge::domain::EventId;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::admin::{decide_next, deliver, get, send};
use crate::both_backends;
use crate::common::Backend;
use crate::helpers::*;
use crate::openapi::{Answer, assert_documented, spec};

fn now_ms() -> i64 {
    i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

/// Follows `next_cursor` through `/v1/audit?{query}`; every entry, in the order the pages gave them.
async fn walk_audit(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    for _ in 0..200 {
        let mut url = format!("/v1/audit?limit={limit}");
        if !query.is_empty() {
            url.push('&');
            url.push_str(query);
        }
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let answer = get(app, &url, READ_TOKEN).await;
        assert_eq!(answer.status, StatusCode::OK, "{url}: {}", answer.body);
        let body = answer.json();
        let entries = body["entries"].as_array().unwrap().clone();
        assert!(entries.len() <= limit, "{url}");
        all.extend(entries.iter().cloned());
        match body["next_cursor"].as_str() {
            Some(next) => {
                assert_eq!(entries.len(), limit, "{url}: only the last page is short");
                cursor = Some(next.to_string());
            }
            None => return all,
        }
    }
    panic!("the cursor never ran out");
}

fn seqs(entries: &[Value]) -> Vec<i64> {
    entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect()
}

fn field<'a>(entries: &'a [Value], name: &str) -> Vec<&'a str> {
    entries.iter().map(|e| e[name].as_str().unwrap_or("-")).collect()
}

both_backends! {
    async fn the_audit_trail_is_read_in_pages_in_order_with_filters(backend: Backend) {
        let app = spawn_app_with(backend, "[workers]\ncount = 0\n").await;
        let spec = spec();
        let mut events = Vec::new();
        for i in 0..4 {
            events.push(deliver(&app, &format!("a-{i}"), &json!({"n": i})).await);
        }
        decide_next(&app.store, "decided", "plan", Some("ACC-1"), &[]).await;
        decide_next(&app.store, "refused", "refused", Some("ACC-3"), &[]).await;
        app.store
            .append_audit(&[AuditEntry::operator(AuditKind::OperatorAction, "someone-else")
                .at(1_000)
                .detail(json!({"action": "test"}))])
            .await
            .unwrap();
        let replayed = send(&app, &Method::POST, &format!("/v1/events/{}/replay", events[0]), Some(OPERATE_TOKEN), None).await;
        assert_eq!(replayed.status, StatusCode::ACCEPTED, "{}", replayed.body);
        assert_documented(&spec, "post", "/v1/events/{id}/replay", &replayed);

        // Every page size walks every entry exactly once, in sequence order, each linked to the one before.
        let all = walk_audit(&app, "", 100).await;
        let n = all.len();
        assert_eq!(n, 8);
        assert_eq!(seqs(&all), (1..=8).collect::<Vec<i64>>());
        for pair in all.windows(2) {
            assert_eq!(pair[1]["prev_hash"], pair[0]["hash"]);
        }
        for limit in 1..=n + 1 {
            assert_eq!(walk_audit(&app, "", limit).await, all, "limit {limit}");
        }
        let page = get(&app, "/v1/audit?limit=3", READ_TOKEN).await;
        assert_documented(&spec, "get", "/v1/audit", &page);
        assert!(page.json()["entries"][0]["detail"].is_object(), "detail is JSON");

        // Filters.
        assert_eq!(field(&walk_audit(&app, "kind=received", 2).await, "kind"), ["received"; 4]);
        let of_first = walk_audit(&app, &format!("event_id={}", events[0]), 1).await;
        assert_eq!(field(&of_first, "kind"), ["received", "decided", "operator_action"]);
        assert_eq!(of_first[2]["actor"], OPERATE_TOKEN_NAME);
        assert_eq!(of_first[2]["detail"]["action"], "replay");
        assert_eq!(field(&walk_audit(&app, "ticket=ACC-3", 5).await, "kind"), ["refused"]);
        assert_eq!(field(&walk_audit(&app, "actor=someone-else", 5).await, "kind"), ["operator_action"]);
        assert_eq!(walk_audit(&app, "source=automation&kind=decided", 5).await.len(), 1);
        let boundary = all[2]["at_ms"].as_i64().unwrap();
        let since: Vec<i64> = all.iter().filter(|e| e["at_ms"].as_i64().unwrap() >= boundary).map(|e| e["seq"].as_i64().unwrap()).collect();
        let until: Vec<i64> = all.iter().filter(|e| e["at_ms"].as_i64().unwrap() < boundary).map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(seqs(&walk_audit(&app, &format!("since={boundary}"), 2).await), since);
        assert_eq!(seqs(&walk_audit(&app, &format!("until={boundary}"), 2).await), until);
        assert_eq!(seqs(&walk_audit(&app, "until=1001", 2).await), [7], "the entry dated 1000");
        // RFC 3339 too: the seeded decision (dated 1970) and the entry dated 1000 are before 2000.
        let recent: Vec<i64> = all.iter().filter(|e| e["at_ms"].as_i64().unwrap() >= 946_684_800_000).map(|e| e["seq"].as_i64().unwrap()).collect();
        assert_eq!(recent.len(), 5);
        assert_eq!(seqs(&walk_audit(&app, "since=2000-01-01T00:00:00Z", 50).await), recent);
        assert!(walk_audit(&app, &format!("event_id={}", EventId::new()), 5).await.is_empty());

        // The head, to keep outside the database.
        let head = get(&app, "/v1/audit/head", READ_TOKEN).await;
        assert_documented(&spec, "get", "/v1/audit/head", &head);
        let last = &all[n - 1];
        assert_eq!(
            head.json()["head"],
            json!({"seq": 8, "hash": last["hash"], "anchor": format!("8:{}", last["hash"].as_str().unwrap())})
        );

        // Bad parameters and foreign cursors.
        let events_cursor = get(&app, "/v1/events?limit=1", READ_TOKEN).await.json()["next_cursor"].as_str().unwrap().to_string();
        for (query, code) in [
            ("kind=Received".to_string(), "invalid_parameter"),
            ("since=yesterday".to_string(), "invalid_parameter"),
            ("limit=0".to_string(), "invalid_parameter"),
            ("seq=3".to_string(), "invalid_parameter"),
            ("cursor=not-a-cursor".to_string(), "invalid_cursor"),
            (format!("cursor={events_cursor}"), "invalid_cursor"),
        ] {
            let answer = get(&app, &format!("/v1/audit?{query}"), READ_TOKEN).await;
            assert_eq!((answer.status, answer.code().as_str()), (StatusCode::BAD_REQUEST, code), "{query}");
            assert_documented(&spec, "get", "/v1/audit", &answer);
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn a_replay_is_refused_without_operate_for_unknown_events_and_while_deciding() {
    let app = spawn_app_with(Backend::Sqlite, "[workers]\ncount = 0\n").await;
    let spec = spec();
    let event = deliver(&app, "r-1", &json!({"n": 1})).await;
    let path = format!("/v1/events/{event}/replay");
    let template = "/v1/events/{id}/replay";
    let trail = app.store.audit_entries(0, 100).await.unwrap().len();

    let cases = [
        (None, path.clone(), StatusCode::UNAUTHORIZED, "unauthorized"),
        (Some(READ_TOKEN), path.clone(), StatusCode::FORBIDDEN, "insufficient_role"),
        (Some(OPERATE_TOKEN), format!("/v1/events/{}/replay", EventId::new()), StatusCode::NOT_FOUND, "unknown_event"),
        (Some(OPERATE_TOKEN), "/v1/events/not-an-id/replay".to_string(), StatusCode::NOT_FOUND, "unknown_event"),
    ];
    for (token, path, status, code) in cases {
        let answer = send(&app, &Method::POST, &path, token, None).await;
        assert_eq!((answer.status, answer.code().as_str()), (status, code), "{path} {token:?}");
        assert_documented(&spec, "post", template, &answer);
    }
    let answer = send(&app, &Method::GET, &path, Some(OPERATE_TOKEN), None).await;
    assert_eq!((answer.status, answer.code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
    assert_eq!(answer.headers.get("allow").unwrap(), "POST");

    // A worker is deciding it: the replay waits for the decision rather than race it.
    let claimed = app.store.claim_event("busy-worker", now_ms(), Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(claimed.id.to_string(), event);
    let busy: Answer = send(&app, &Method::POST, &path, Some(OPERATE_TOKEN), None).await;
    assert_eq!((busy.status, busy.code().as_str()), (StatusCode::CONFLICT, "event_being_decided"), "{}", busy.body);
    assert_documented(&spec, "post", template, &busy);
    assert_eq!(app.store.event(claimed.id).await.unwrap().unwrap().state, "deciding");
    assert_eq!(app.store.audit_entries(0, 100).await.unwrap().len(), trail, "nothing refused is recorded");
    app.stop().await;
}
