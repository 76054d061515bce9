//! What the three executors share: one authenticated call with its own client request id, a second chance with a
//! fresh token after a 401, logs that name the upstream's request id; id checks and UTC timestamps.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::header::ACCEPT;
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::ProviderError;
use crate::entra::TokenProvider;
use crate::upstream::{RetryPolicy, UpstreamError, WriteBudget, send_with_retry_paced};

/// One upstream (Graph or ARM) as seen by an executor.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    /// The token resource: always the real one, whatever the base URL points at.
    resource: &'static str,
    /// The name in logs.
    upstream: &'static str,
    /// Graph reads `client-request-id`, ARM `x-ms-client-request-id`.
    client_request_id_header: &'static str,
    pub(crate) policy: RetryPolicy,
    /// Calls in flight to this upstream at once, shared by every client of it.
    pub(crate) limit: Option<Arc<Semaphore>>,
    /// The upstream's write budget, shared by every client that writes to it: writes wait for a token.
    pub(crate) budget: Option<Arc<WriteBudget>>,
}

impl Caller {
    pub(crate) fn new(
        http: reqwest::Client,
        tokens: Arc<TokenProvider>,
        resource: &'static str,
        upstream: &'static str,
        client_request_id_header: &'static str,
    ) -> Self {
        Caller {
            http,
            tokens,
            resource,
            upstream,
            client_request_id_header,
            policy: RetryPolicy::default(),
            limit: None,
            budget: None,
        }
    }

    /// Sends what `build` makes with a bearer token and a fresh client request id (the same for every retry of
    /// this call), retrying as the upstream table says. A 401 drops the cached token and tries once more with a new
    /// one: the token may have expired or been revoked since it was cached. `expected` names failures that are
    /// answers (404 on a removal, "already exists"): those are logged at debug, the others as warnings.
    pub(crate) async fn send(
        &self,
        operation: &'static str,
        expected: impl Fn(&UpstreamError) -> bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        self.call(operation, expected, build, false).await
    }

    /// As [`Caller::send`], for a write: each attempt first takes a token from the write budget, if there is one.
    pub(crate) async fn write(
        &self,
        operation: &'static str,
        expected: impl Fn(&UpstreamError) -> bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, UpstreamError> {
        self.call(operation, expected, build, true).await
    }

    async fn call(
        &self,
        operation: &'static str,
        expected: impl Fn(&UpstreamError) -> bool,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
        write: bool,
    ) -> Result<Response, UpstreamError> {
        let budget = self.budget.as_deref().filter(|_| write);
        // Held across the upstream's own retries too: when it asks us to back off, the other calls wait as well.
        let _permit = match &self.limit {
            Some(limit) => limit.acquire().await.ok(),
            None => None,
        };
        let client_request_id = Uuid::now_v7().to_string();
        let result = match self.send_once(&client_request_id, &build, budget).await {
            // Only a 401 from the upstream itself: the identity platform refusing the app is not helped by asking again.
            Err(Failure::Call(e)) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                tracing::info!(upstream = self.upstream, operation, client_request_id, "401: renewing the token once");
                self.tokens.invalidate(self.resource).await;
                self.send_once(&client_request_id, &build, budget).await
            }
            other => other,
        };
        let result = result.map_err(Failure::into_inner);
        if let Err(error) = &result {
            let request_id = match error {
                UpstreamError::Permanent { request_id, .. } => request_id.as_deref(),
                _ => None,
            };
            if expected(error) {
                tracing::debug!(upstream = self.upstream, operation, request_id, client_request_id, error = %error, "upstream answered");
            } else {
                tracing::warn!(upstream = self.upstream, operation, request_id, client_request_id, error = %error, "upstream call failed");
            }
        }
        result
    }

    async fn send_once(
        &self,
        client_request_id: &str,
        build: &impl Fn(&reqwest::Client) -> RequestBuilder,
        budget: Option<&WriteBudget>,
    ) -> Result<Response, Failure> {
        let token = self.tokens.token(self.resource).await.map_err(Failure::Token)?;
        send_with_retry_paced(self.upstream, &self.policy, budget, || {
            build(&self.http)
                .bearer_auth(token.expose())
                .header(ACCEPT, "application/json")
                .header(self.client_request_id_header, client_request_id)
        })
        .await
        .map_err(Failure::Call)
    }
}

/// Whether getting the token or the call itself failed.
enum Failure {
    Token(UpstreamError),
    Call(UpstreamError),
}

impl Failure {
    fn into_inner(self) -> UpstreamError {
        match self {
            Failure::Token(e) | Failure::Call(e) => e,
        }
    }
}

/// An Entra object or role definition id: the hyphenated GUID form, lower-cased. Anything else is refused before it
/// can reach a URL or an `@odata.id`.
pub(crate) fn object_id(what: &str, value: &str) -> Result<String, ProviderError> {
    let value = value.trim();
    if value.len() == 36 && Uuid::try_parse(value).is_ok() {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ProviderError::invalid_input(format!("the {what} `{value}` is not an object id (a GUID)")))
    }
}

/// The body of a 2xx answer as JSON, if it is JSON: a write that succeeded stays a success even when its echo of
/// the created object cannot be read.
pub(crate) async fn json_body(response: Response) -> Option<serde_json::Value> {
    let body = response.bytes().await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// `2024-05-01T10:00:00Z`: RFC 3339 in UTC, whole seconds.
pub(crate) fn rfc3339_utc(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = crate::clock::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_868_800)), "2000-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_709_208_000)), "2024-02-29T12:00:00Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_700_000_000_999)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(4_102_444_799)), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn object_ids_are_guids() {
        assert_eq!(
            object_id("group", " 0F8FAD5B-D9CB-469F-A165-70867728950E ").unwrap(),
            "0f8fad5b-d9cb-469f-a165-70867728950e"
        );
        for bad in
            ["", "0f8fad5bd9cb469fa16570867728950e", "../0f8fad5b-d9cb-469f-a165-70867728950e", "ada@contoso.com"]
        {
            let err = object_id("principal", bad).unwrap_err();
            assert_eq!(err.code(), "invalid_input", "{bad}");
        }
    }
}
