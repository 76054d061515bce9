use jsonwebtoken::{Algorithm, EncodingKey};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::common::sign::{self, now};
use crate::common::{Backend, fixture};
use crate::helpers::*;

type Headers = Vec<(String, String)>;

pub(crate) const JIRA_EVENT: &str = r#"{"timestamp":1606480436302,"webhookEvent":"jira:issue_updated","issue":{"id":"99291","key":"JRA-20002"},"changelog":{"id":10124,"items":[{"field":"status","fromString":"Waiting for approval","toString":"Approved"}]}}"#;
const SN_EVENT: &str = r#"{"table":"sc_req_item","sys_id":"9d385017c611228701d22104cc95c371","number":"RITM0010001","approval":"approved"}"#;

pub(crate) fn jira_headers(body: &[u8], delivery: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json; charset=utf-8".into()),
        ("X-Hub-Signature".into(), sign::hub_signature(JIRA_SECRET, body)),
        ("X-Atlassian-Webhook-Identifier".into(), delivery.into()),
    ]
}

fn sn_headers(body: &[u8], ts: i64) -> Vec<(String, String)> {
    let ts = ts.to_string();
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("X-Timestamp".into(), ts.clone()),
        ("X-Signature".into(), sign::servicenow_timestamped(SN_SECRET, &ts, body)),
    ]
}

fn std_headers(secret: &str, id: &str, ts: i64, body: &[u8]) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("webhook-id".into(), id.into()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("webhook-signature".into(), sign::standard_webhooks(secret, id, ts, body)),
    ]
}

fn jwt_claims(iss: &str, aud: &str, exp_offset: i64) -> Value {
    let n = now();
    json!({"iss": iss, "aud": aud, "iat": n, "nbf": n - 5, "exp": n + exp_offset})
}

fn bearer(token: String) -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json".into()), ("Authorization".into(), format!("Bearer {token}"))]
}

fn hs256() -> EncodingKey {
    EncodingKey::from_secret(JWT_SECRET.as_bytes())
}

fn connect_token(secret: &str, qsh: &str) -> Vec<(String, String)> {
    let n = now();
    let claims = json!({"iss": CONNECT_KEY, "iat": n, "exp": n + 180, "qsh": qsh});
    let token = sign::jwt(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()), &claims);
    vec![("Content-Type".into(), "application/json".into()), ("Authorization".into(), format!("JWT {token}"))]
}

pub(crate) async fn post(
    app: &TestApp,
    source: &str,
    headers: &[(String, String)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    app.post(source, &refs, body).await
}

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("error bodies are JSON");
    (status, body["error"]["code"].as_str().unwrap_or("<none>").to_string())
}

#[tokio::test]
async fn jira_published_vector_passes_signature_check() {
    // Atlassian's vector signs `Hello World!`, which is not JSON: a 400 (not a 401) proves the signature held.
    let app = spawn_app_with(
        Backend::Sqlite,
        &format!(
            "[sources.jira-vector]\nkind = \"jira\"\n[[sources.jira-vector.verify]]\nscheme = \"jira_hub_signature\"\nsecrets = [{{ file = \"{}\" }}]\n",
            fixture("vectors/jira-secret.txt").display()
        ),
    )
    .await;
    let headers = [(
        "X-Hub-Signature".to_string(),
        "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9".to_string(),
    )];
    let (status, code) = error_code(post(&app, "jira-vector", &headers, "Hello World!").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "malformed_payload"));
    let wrong = [("X-Hub-Signature".to_string(), format!("sha256={}", "0".repeat(64)))];
    let (status, _) = error_code(post(&app, "jira-vector", &wrong, "Hello World!").await).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn servicenow_generate_mac_vector_passes_signature_check() {
    let app = spawn_app(Backend::Sqlite).await;
    let headers = [("X-Signature".to_string(), "4VWUI48lJvmGSF6MYmOVWA9c0hfu55Ur+3e+fUFFFr4=".to_string())];
    let (status, code) = error_code(post(&app, "sn-plain", &headers, "sample_data").await).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "malformed_payload"));
}

#[tokio::test]
async fn standard_webhooks_published_vector_is_accepted() {
    let app = spawn_app(Backend::Sqlite).await;
    let headers = [
        ("webhook-id".to_string(), "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string()),
        ("webhook-timestamp".to_string(), "1614265330".to_string()),
        ("webhook-signature".to_string(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string()),
    ];
    let response = post(&app, "stdwh-vector", &headers, r#"{"test": 2432232314}"#).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "accepted");
    let stored = app
        .store
        .event(grantbridge::domain::EventId::parse(body["event_id"].as_str().unwrap()).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.delivery_id.as_deref(), Some("msg_p5jXN8AQM9LWM0D4loKWxJek"));
    assert_eq!(stored.scheme, "standard_webhooks");
    assert_eq!(stored.body, r#"{"test": 2432232314}"#);
}

both_backends! {
    async fn every_scheme_accepts_a_genuine_request(backend: Backend) {
        let app = spawn_app(backend).await;
        let ec_key = EncodingKey::from_ec_pem(&std::fs::read(fixture("keys/ec.pem")).unwrap()).unwrap();
        let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("keys/rsa.pem")).unwrap()).unwrap();
        let sn_body = SN_EVENT.as_bytes();
        let jwt_body = |id: &str| SN_EVENT.replace("9d385017c611228701d22104cc95c371", id);
        let rotated_body = JIRA_EVENT.replace("1606480436302", "1606480436999");
        let next_secret = vec![
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Hub-Signature".to_string(), sign::hub_signature(JIRA_SECRET_NEXT, rotated_body.as_bytes())),
            ("X-Atlassian-Webhook-Identifier".to_string(), "rotated-1".to_string()),
        ];
        let cases: Vec<(&str, &str, Headers, String)> = vec![
            ("jira", "jira_hub_signature", jira_headers(JIRA_EVENT.as_bytes(), "d-1"), JIRA_EVENT.into()),
            ("jira", "jira_hub_signature", next_secret, rotated_body.clone()),
            ("servicenow", "hmac_sha256", sn_headers(sn_body, now()), SN_EVENT.into()),
            ("servicenow", "hmac_sha256", sn_headers(b"{\"a\":1}", now() * 1000), "{\"a\":1}".into()),
            ("stdwh", "standard_webhooks", std_headers(STD_SECRET, "msg_1", now(), sn_body), SN_EVENT.into()),
            ("jwt", "jwt_bearer", bearer(sign::jwt(Algorithm::HS256, &hs256(), &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300))), jwt_body("hs")),
            ("jwt", "jwt_bearer", bearer(sign::jwt(Algorithm::RS256, &rsa_key, &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300))), jwt_body("rs")),
            ("jwt", "jwt_bearer", bearer(sign::jwt(Algorithm::ES256, &ec_key, &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300))), jwt_body("es")),
            ("connect", "jira_connect_jwt", connect_token(CONNECT_SECRET, &sign::connect_qsh("POST", "/webhooks/connect")), JIRA_EVENT.into()),
            ("automation", "shared_secret_header", vec![("X-Automation-Token".into(), AUTOMATION_TOKEN.into()), ("X-Delivery".into(), "a-1".into())], JIRA_EVENT.into()),
        ];
        for (i, (source, scheme, headers, body)) in cases.into_iter().enumerate() {
            let response = post(&app, source, &headers, body.clone()).await;
            assert_eq!(response.status(), StatusCode::ACCEPTED, "case {i} ({source}): {:?}", response.text().await);
            let answer: Value = response.json().await.unwrap();
            assert_eq!(answer["status"], "accepted", "case {i}");
            let id = grantbridge::domain::EventId::parse(answer["event_id"].as_str().unwrap()).unwrap();
            let stored = app.store.event(id).await.unwrap().expect("stored");
            assert_eq!((stored.source.as_str(), stored.scheme.as_str()), (source, scheme), "case {i}");
            assert_eq!(stored.body, body, "case {i}: the body is stored byte for byte");
        }
        assert_eq!(app.event_count().await, 10);
        // The JWT source takes its delivery id from the body field `/sys_id`.
        app.stop().await;
    }
}

/// One row of the hostile-input table: what is sent, and what must come back.
pub(crate) struct Bad {
    pub(crate) what: &'static str,
    pub(crate) source: &'static str,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
}

fn bad(
    what: &'static str,
    source: &'static str,
    headers: Vec<(String, String)>,
    body: impl Into<Vec<u8>>,
    status: StatusCode,
    code: &'static str,
) -> Bad {
    Bad { what, source, headers, body: body.into(), status, code }
}

fn with(mut headers: Vec<(String, String)>, name: &str, value: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), value.to_string()));
    headers
}

fn without(mut headers: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    headers
}

pub(crate) fn bad_requests() -> Vec<Bad> {
    use StatusCode as S;
    let body = JIRA_EVENT.as_bytes().to_vec();
    let ok_jira = jira_headers(&body, "bad-1");
    let sig = sign::hub_signature(JIRA_SECRET, &body);
    let mut one_byte_changed = body.clone();
    one_byte_changed[20] ^= 0x01;
    let signed = |b: &[u8]| jira_headers(b, "bad-x");
    let invalid_utf8: Vec<u8> = b"{\"key\":\"\xff\xfe\"}".to_vec();
    let deep: Vec<u8> = format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes();
    let deep_object: Vec<u8> = format!("{{\"a\":{}1{}}}", "[".repeat(1500), "]".repeat(1500)).into_bytes();
    let oversized = vec![b' '; 5000];
    let sn = SN_EVENT.as_bytes();
    let t = now();
    let ok_sn = sn_headers(sn, t);
    let rsa_pub = std::fs::read(fixture("keys/rsa.pub.pem")).unwrap();
    let rsa_key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("keys/rsa.pem")).unwrap()).unwrap();
    let valid_jwt = sign::jwt(Algorithm::HS256, &hs256(), &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300));
    let mut future_nbf = jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 3600);
    future_nbf["nbf"] = json!(now() + 600);
    let good_qsh = sign::connect_qsh("POST", "/webhooks/connect");
    vec![
        bad(
            "missing signature",
            "jira",
            without(ok_jira.clone(), "X-Hub-Signature"),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "garbled signature",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", "sha256=not-hex-at-all"),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "truncated signature",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", &sig[..sig.len() - 2]),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "signature without method",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", &sig[7..]),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "unsupported method sha1",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", &sig.replace("sha256=", "sha1=")),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "wrong secret",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", &sign::hub_signature("guess", &body)),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "rotated-out secret",
            "jira",
            with(ok_jira.clone(), "X-Hub-Signature", &sign::hub_signature(JIRA_SECRET_RETIRED, &body)),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "body changed by one byte",
            "jira",
            ok_jira.clone(),
            one_byte_changed,
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad("oversized body", "jira", signed(&oversized), oversized.clone(), S::PAYLOAD_TOO_LARGE, "payload_too_large"),
        bad("invalid UTF-8", "jira", signed(&invalid_utf8), invalid_utf8.clone(), S::BAD_REQUEST, "malformed_payload"),
        bad(
            "deeply nested JSON",
            "servicenow",
            sn_headers(&deep, t),
            deep.clone(),
            S::BAD_REQUEST,
            "malformed_payload",
        ),
        bad(
            "deeply nested JSON inside an object",
            "jira",
            signed(&deep_object),
            deep_object.clone(),
            S::BAD_REQUEST,
            "malformed_payload",
        ),
        bad("not JSON", "jira", signed(b"approved=yes"), b"approved=yes".to_vec(), S::BAD_REQUEST, "malformed_payload"),
        bad("truncated JSON", "jira", signed(&body[..40]), body[..40].to_vec(), S::BAD_REQUEST, "malformed_payload"),
        bad(
            "JSON array, not an object",
            "jira",
            signed(b"[1,2]"),
            b"[1,2]".to_vec(),
            S::BAD_REQUEST,
            "malformed_payload",
        ),
        bad("empty body", "jira", signed(b""), Vec::new(), S::BAD_REQUEST, "malformed_payload"),
        bad(
            "wrong content type",
            "jira",
            with(ok_jira.clone(), "Content-Type", "text/plain"),
            body.clone(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        bad(
            "form content type",
            "jira",
            with(ok_jira.clone(), "Content-Type", "application/x-www-form-urlencoded"),
            body.clone(),
            S::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        bad(
            "delivery id too long",
            "jira",
            with(ok_jira.clone(), "X-Atlassian-Webhook-Identifier", &"x".repeat(300)),
            body.clone(),
            S::BAD_REQUEST,
            "invalid_delivery_id",
        ),
        bad("unknown source", "nosuchsource", ok_jira.clone(), body.clone(), S::NOT_FOUND, "unknown_source"),
        bad(
            "missing timestamp",
            "servicenow",
            without(ok_sn.clone(), "X-Timestamp"),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "stale timestamp",
            "servicenow",
            sn_headers(sn, t - 330),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "future timestamp",
            "servicenow",
            sn_headers(sn, t + 330),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "timestamp changed after signing",
            "servicenow",
            with(ok_sn.clone(), "X-Timestamp", &(t + 1).to_string()),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "non-numeric timestamp",
            "servicenow",
            with(ok_sn.clone(), "X-Timestamp", "yesterday"),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "hex where base64 is configured",
            "servicenow",
            with(ok_sn.clone(), "X-Signature", &"ab".repeat(32)),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "standard webhooks: wrong secret",
            "stdwh",
            std_headers("whsec_c2VjcmV0LXdyb25n", "msg_2", t, sn),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "standard webhooks: stale",
            "stdwh",
            std_headers(STD_SECRET, "msg_3", t - 600, sn),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "standard webhooks: id changed after signing",
            "stdwh",
            with(std_headers(STD_SECRET, "msg_4", t, sn), "webhook-id", "msg_5"),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "standard webhooks: missing id",
            "stdwh",
            without(std_headers(STD_SECRET, "msg_6", t, sn), "webhook-id"),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: alg none",
            "jwt",
            bearer(sign::unsigned_jwt(&jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300))),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: algorithm confusion",
            "jwt",
            bearer(sign::confused_jwt(&rsa_pub, &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300))),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: expired",
            "jwt",
            bearer(sign::jwt(Algorithm::HS256, &hs256(), &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, -600))),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: not yet valid",
            "jwt",
            bearer(sign::jwt(Algorithm::HS256, &hs256(), &future_nbf)),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: wrong audience",
            "jwt",
            bearer(sign::jwt(Algorithm::HS256, &hs256(), &jwt_claims(JWT_ISSUER, "someone-else", 300))),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: wrong issuer",
            "jwt",
            bearer(sign::jwt(Algorithm::RS256, &rsa_key, &jwt_claims("https://evil.example", JWT_AUDIENCE, 300))),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "jwt: signature garbled",
            "jwt",
            bearer(format!("{}x", &valid_jwt[..valid_jwt.len() - 1])),
            sn.to_vec(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad("jwt: not a JWT", "jwt", bearer("abc".into()), sn.to_vec(), S::UNAUTHORIZED, "invalid_signature"),
        bad(
            "connect: wrong qsh",
            "connect",
            connect_token(CONNECT_SECRET, &sign::connect_qsh("POST", "/webhooks/other")),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "connect: context qsh",
            "connect",
            connect_token(CONNECT_SECRET, "context-qsh"),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "connect: wrong shared secret",
            "connect",
            connect_token("not-the-secret", &good_qsh),
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad(
            "static secret: wrong",
            "automation",
            vec![("X-Automation-Token".into(), "automation-static-tokeN".into())],
            body.clone(),
            S::UNAUTHORIZED,
            "invalid_signature",
        ),
        bad("static secret: missing", "automation", vec![], body.clone(), S::UNAUTHORIZED, "invalid_signature"),
    ]
}

both_backends! {
    async fn hostile_requests_get_their_code_and_leave_the_store_untouched(backend: Backend) {
        let app = spawn_app(backend).await;
        let table = bad_requests();
        assert!(table.len() >= 25);
        let mut messages_401 = std::collections::HashSet::new();
        for case in table {
            let response = post(&app, case.source, &case.headers, case.body).await;
            let status = response.status();
            let www = response.headers().get("www-authenticate").is_some();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                (status, body["error"]["code"].as_str().unwrap_or("<none>")),
                (case.status, case.code),
                "{}: {body}",
                case.what
            );
            if status == StatusCode::UNAUTHORIZED {
                assert!(www, "{}: 401 carries WWW-Authenticate", case.what);
                messages_401.insert(body["error"]["message"].as_str().unwrap_or_default().to_string());
            }
            assert_eq!(app.event_count().await, 0, "{}: nothing stored", case.what);
        }
        assert_eq!(messages_401.len(), 1, "every 401 says the same thing, revealing no reason: {messages_401:?}");
        app.stop().await;
    }
}

both_backends! {
    async fn a_repeated_delivery_is_stored_once(backend: Backend) {
        let app = spawn_app(backend).await;
        let headers = jira_headers(JIRA_EVENT.as_bytes(), "delivery-42");
        let first: Value = post(&app, "jira", &headers, JIRA_EVENT).await.json().await.unwrap();
        let retry = with(headers.clone(), "X-Atlassian-Webhook-Retry", "1");
        let second = post(&app, "jira", &retry, JIRA_EVENT).await;
        assert_eq!(second.status(), StatusCode::ACCEPTED);
        let second: Value = second.json().await.unwrap();
        assert_eq!(first["status"], "accepted");
        assert_eq!(second["status"], "duplicate");
        assert_eq!(first["event_id"], second["event_id"], "a duplicate names the stored event");
        assert_eq!(app.event_count().await, 1);

        // Jira does not sign its delivery id: a captured request replayed under a new id is still a duplicate.
        let replayed = with(headers.clone(), "X-Atlassian-Webhook-Identifier", "forged-new-id");
        let replayed: Value = post(&app, "jira", &replayed, JIRA_EVENT).await.json().await.unwrap();
        assert_eq!(replayed["status"], "duplicate");
        assert_eq!(replayed["event_id"], first["event_id"]);
        // Standard Webhooks signs its id: two messages with the same body are two events.
        let t = now();
        let m1: Value = post(&app, "stdwh", &std_headers(STD_SECRET, "msg_a", t, SN_EVENT.as_bytes()), SN_EVENT).await.json().await.unwrap();
        let m2: Value = post(&app, "stdwh", &std_headers(STD_SECRET, "msg_b", t, SN_EVENT.as_bytes()), SN_EVENT).await.json().await.unwrap();
        assert_eq!((m1["status"].as_str(), m2["status"].as_str()), (Some("accepted"), Some("accepted")));
        assert_eq!(app.event_count().await, 3);

        // Without a delivery id, the body's hash is the key: ServiceNow re-sending the same record is a duplicate,
        // even though each send carries a fresh timestamp and signature.
        let a: Value = post(&app, "servicenow", &sn_headers(SN_EVENT.as_bytes(), now()), SN_EVENT).await.json().await.unwrap();
        let b: Value = post(&app, "servicenow", &sn_headers(SN_EVENT.as_bytes(), now() + 1), SN_EVENT).await.json().await.unwrap();
        assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("accepted"), Some("duplicate")));
        // The same delivery id on another source is another event.
        let c: Value = post(&app, "automation", &[("X-Automation-Token".into(), AUTOMATION_TOKEN.into()), ("X-Delivery".into(), "delivery-42".into())], JIRA_EVENT).await.json().await.unwrap();
        assert_eq!(c["status"], "accepted");
        assert_eq!(app.event_count().await, 5);
        app.stop().await;
    }
}

both_backends! {
    async fn concurrent_duplicates_store_exactly_one_event(backend: Backend) {
        let app = spawn_app(backend).await;
        let headers = jira_headers(JIRA_EVENT.as_bytes(), "race-1");
        let (a, b, c, d) = tokio::join!(
            post(&app, "jira", &headers, JIRA_EVENT),
            post(&app, "jira", &headers, JIRA_EVENT),
            post(&app, "jira", &headers, JIRA_EVENT),
            post(&app, "jira", &headers, JIRA_EVENT),
        );
        let mut statuses = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for r in [a, b, c, d] {
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let v: Value = r.json().await.unwrap();
            statuses.push(v["status"].as_str().unwrap().to_string());
            ids.insert(v["event_id"].as_str().unwrap().to_string());
        }
        statuses.sort();
        assert_eq!(statuses, ["accepted", "duplicate", "duplicate", "duplicate"]);
        assert_eq!(ids.len(), 1);
        assert_eq!(app.event_count().await, 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn delivery_id_from_a_body_field_deduplicates() {
    let app = spawn_app(Backend::Sqlite).await;
    let token = || sign::jwt(Algorithm::HS256, &hs256(), &jwt_claims(JWT_ISSUER, JWT_AUDIENCE, 300));
    let first: Value = post(&app, "jwt", &bearer(token()), SN_EVENT).await.json().await.unwrap();
    let changed = SN_EVENT.replace("RITM0010001", "RITM0010002");
    let second: Value = post(&app, "jwt", &bearer(token()), changed).await.json().await.unwrap();
    assert_eq!((first["status"].as_str(), second["status"].as_str()), (Some("accepted"), Some("duplicate")));
    let id = grantbridge::domain::EventId::parse(first["event_id"].as_str().unwrap()).unwrap();
    let stored = app.store.event(id).await.unwrap().unwrap();
    assert_eq!(stored.delivery_id.as_deref(), Some("9d385017c611228701d22104cc95c371"));
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_while_streaming() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app(Backend::Sqlite).await;
    let port = app.address.rsplit(':').next().unwrap();
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await.unwrap();
    let head = "POST /webhooks/jira HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 3000, " ".repeat(3000));
    for _ in 0..3 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 4096];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(app.event_count().await, 0);
}

#[tokio::test]
async fn wrong_method_and_unknown_route_get_json_errors() {
    let app = spawn_app(Backend::Sqlite).await;
    let response = app.client.get(app.url("/webhooks/jira")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    assert_eq!(error_code(response).await.1, "method_not_allowed");
    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(error_code(response).await, (StatusCode::NOT_FOUND, "not_found".to_string()));
}
