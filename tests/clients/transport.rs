//! Transport failures: a timeout is retried, then reported as exhausted.

use std::time::{Duration, Instant};

use grantbridge::itsm::{ServiceNowAuth, ServiceNowClient};
use grantbridge::secret::Secret;
use grantbridge::upstream::{UpstreamError, http_client};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{fast_policy, requests_to};

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_retried_then_exhausted() {
    let server = MockServer::start().await;
    let record_path = "/api/now/table/sc_req_item/a83820b58f723300e7e16c7827bdeed2";
    Mock::given(method("GET"))
        .and(path(record_path))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"result": {}})).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let auth = ServiceNowAuth::Basic { user: "svc".into(), password: Secret::new("pw") };
    let snow = ServiceNowClient::new(http_client(Duration::from_millis(200)), server.uri(), auth)
        .with_retry_policy(fast_policy());

    let started = Instant::now();
    let err = snow.record("sc_req_item", "a83820b58f723300e7e16c7827bdeed2", &[]).await.unwrap_err();

    match &err {
        UpstreamError::Exhausted { attempts, last, retry_after } => {
            assert_eq!(*retry_after, None, "a timeout asks for no delay");
            assert_eq!(*attempts, 3);
            assert!(last.to_lowercase().contains("timed out") || last.contains("timeout"), "{last}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(requests_to(&server, record_path).await.len(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_exhausted() {
    // Bind then drop a listener: nothing answers on that port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let auth = ServiceNowAuth::Basic { user: "svc".into(), password: Secret::new("pw") };
    let snow = ServiceNowClient::new(http_client(Duration::from_secs(1)), format!("http://127.0.0.1:{port}"), auth)
        .with_retry_policy(fast_policy());

    let err = snow.record("sc_req_item", "a83820b58f723300e7e16c7827bdeed2", &[]).await.unwrap_err();

    assert!(matches!(err, UpstreamError::Exhausted { attempts: 3, .. }), "{err:?}");
}
