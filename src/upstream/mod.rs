//! What every outbound client shares: the HTTP client, the retry decision and schedule, upstream errors, tokens.

mod budget;
mod client;
mod error;
pub(crate) mod oauth;
mod retry;
pub(crate) mod url;

pub use budget::WriteBudget;
pub use client::{USER_AGENT, http_client, try_http_client};
pub use error::UpstreamError;
pub(crate) use retry::days_from_civil;
pub use retry::{
    AttemptError, Backoff, RetryPolicy, Verdict, classify, classify_transport, retry_after, send_once, send_with_retry,
    send_with_retry_paced,
};

/// Reads a 2xx body as JSON. Only for bodies that hold no secret: serde's messages may quote values.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    upstream: &str,
) -> Result<T, UpstreamError> {
    let body = response.bytes().await.map_err(|e| {
        let e = e.without_url();
        if e.is_timeout() {
            UpstreamError::Exhausted {
                attempts: 1,
                last: format!("reading the body timed out: {e}"),
                retry_after: None,
            }
        } else {
            UpstreamError::Transport(format!("reading the body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::InvalidResponse(format!("{upstream} answered with unexpected JSON: {e}")))
}
