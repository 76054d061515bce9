//! The one way to build a `reqwest::Client` for an upstream: timeouts, no redirects, our user agent.

use std::time::Duration;

use reqwest::redirect;

pub const USER_AGENT: &str = concat!("grantbridge/", env!("CARGO_PKG_VERSION"));

/// Connecting should never take long even when the overall budget is generous: a slow connect means a dead route.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the client, or says why the TLS backend could not be set up.
pub fn try_http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .timeout(timeout)
        .user_agent(USER_AGENT)
        // The APIs we call never redirect; a redirect means a login page or a misconfigured base URL, and following
        // it could carry credentials elsewhere.
        .redirect(redirect::Policy::none())
        .build()
}

/// Like [`try_http_client`], for callers that cannot fail: if the configured client cannot be built, logs why and
/// falls back to reqwest's default client (no timeouts) rather than stopping the process.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    match try_http_client(timeout) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the configured HTTP client; using reqwest's default");
            reqwest::Client::default()
        }
    }
}
