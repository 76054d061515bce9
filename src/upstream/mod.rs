//! What every outbound client shares: the HTTP client, the retry decision and schedule, upstream errors, tokens.

mod client;
mod error;
pub(crate) mod oauth;
mod retry;
pub(crate) mod url;

pub use client::{USER_AGENT, http_client, try_http_client};
pub use error::UpstreamError;
pub use retry::{
    AttemptError, Backoff, RetryPolicy, Verdict, classify, classify_transport, retry_after, send_once, send_with_retry,
};

/// Reads a 2xx body as JSON. Only for bodies that hold no secret: serde's messages may quote values.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    upstream: &str,
) -> Result<T, UpstreamError> {
    let body = response.bytes().await.map_err(|e| {
        let e = e.without_url();
        if e.is_timeout() {
            UpstreamError::Exhausted { attempts: 1, last: format!("reading the body timed out: {e}") }
        } else {
            UpstreamError::Transport(format!("reading the body: {e}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::InvalidResponse(format!("{upstream} answered with unexpected JSON: {e}")))
}
