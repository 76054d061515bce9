//! OAuth 2.0 client-credentials tokens: one request, and a per-scope cache that fetches one at a time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use reqwest::header::ACCEPT;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{RetryPolicy, UpstreamError, send_with_retry};
use crate::secret::Secret;

/// Renew this long before a token expires (the identity platform issues 60-90 minute tokens).
pub(crate) const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);

/// When a token response omits `expires_in`, assume a short life rather than a long one.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(5 * 60);

pub(crate) struct FetchedToken {
    pub access_token: Secret,
    pub expires_in: Duration,
}

// No Debug: the whole point of this struct is the token.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<ExpiresIn>,
}

/// The v2 identity platform sends a number; older endpoints and some proxies send a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Number(u64),
    Text(String),
}

/// POSTs a client-credentials form to `url`. The form carries the secret; it is only ever put in the body.
pub(crate) async fn fetch_client_credentials(
    http: &reqwest::Client,
    policy: &RetryPolicy,
    upstream: &str,
    url: &str,
    form: &[(&str, &str)],
) -> Result<FetchedToken, UpstreamError> {
    let response =
        send_with_retry(upstream, policy, || http.post(url).header(ACCEPT, "application/json").form(form)).await?;
    let body = response.bytes().await.map_err(|e| UpstreamError::Transport(e.without_url().to_string()))?;
    // serde's messages can quote field values, and this body holds a token: report only where parsing failed.
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        UpstreamError::InvalidResponse(format!(
            "the token response from {upstream} is not the expected JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    if parsed.access_token.is_empty() {
        return Err(UpstreamError::InvalidResponse(format!("the token response from {upstream} has no access_token")));
    }
    let expires_in = match parsed.expires_in {
        Some(ExpiresIn::Number(n)) => Duration::from_secs(n),
        Some(ExpiresIn::Text(t)) => t.trim().parse().map(Duration::from_secs).unwrap_or(ASSUMED_LIFETIME),
        None => ASSUMED_LIFETIME,
    };
    Ok(FetchedToken { access_token: Secret::new(parsed.access_token), expires_in })
}

/// How long a token is used before it is renewed.
fn renew_after(expires_in: Duration, renew_before: Duration) -> Duration {
    // Short-lived tokens (tests, some ServiceNow setups) would otherwise be renewed on every call.
    expires_in.saturating_sub(renew_before.min(expires_in / 2))
}

#[derive(Debug)]
struct Cached {
    token: Secret,
    renew_at: Instant,
}

type Slot = Arc<Mutex<Option<Cached>>>;

/// Tokens by scope. Each scope has its own async lock, held across the fetch, so however many tasks ask at once
/// only the first fetches and the others get its token.
#[derive(Debug)]
pub(crate) struct TokenCache {
    slots: StdMutex<HashMap<String, Slot>>,
    renew_before: Duration,
}

impl TokenCache {
    pub(crate) fn new(renew_before: Duration) -> Self {
        TokenCache { slots: StdMutex::new(HashMap::new()), renew_before }
    }

    fn slot(&self, key: &str) -> Slot {
        // A poisoned map only means another task panicked while inserting; the map itself is still sound.
        let mut slots = self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// The cached token for `key`, or a fresh one from `fetch` when none is cached or it is due for renewal.
    pub(crate) async fn get<F, Fut>(&self, key: &str, fetch: F) -> Result<Secret, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedToken, UpstreamError>>,
    {
        let slot = self.slot(key);
        let mut cached = slot.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let fetched = fetch().await?;
        let renew_at = Instant::now() + renew_after(fetched.expires_in, self.renew_before);
        *cached = Some(Cached { token: fetched.access_token.clone(), renew_at });
        Ok(fetched.access_token)
    }

    /// Forgets the token for `key`, e.g. after the upstream answered 401 with it.
    pub(crate) async fn invalidate(&self, key: &str) {
        let slot = self.slot(key);
        *slot.lock().await = None;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fetched(token: &str, secs: u64) -> Result<FetchedToken, UpstreamError> {
        Ok(FetchedToken { access_token: Secret::new(token), expires_in: Duration::from_secs(secs) })
    }

    #[test]
    fn renewal_comes_five_minutes_early_or_at_half_life() {
        let five = DEFAULT_RENEW_BEFORE;
        assert_eq!(renew_after(Duration::from_secs(3599), five), Duration::from_secs(3299));
        assert_eq!(renew_after(Duration::from_secs(600), five), Duration::from_secs(300));
        assert_eq!(renew_after(Duration::from_secs(2), five), Duration::from_secs(1));
        assert_eq!(renew_after(Duration::ZERO, five), Duration::ZERO);
    }

    #[tokio::test]
    async fn caches_per_key_until_renewal_and_after_invalidation_fetches_again() {
        let cache = TokenCache::new(DEFAULT_RENEW_BEFORE);
        let calls = AtomicU32::new(0);
        let get = |secs| {
            let calls = &calls;
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                fetched("t", secs)
            }
        };
        assert_eq!(cache.get("s", get(2)).await.unwrap().expose(), "t");
        assert_eq!(cache.get("s", get(2)).await.unwrap().expose(), "t");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(1050)).await;
        cache.get("s", get(3600)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        cache.get("s", get(3600)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        cache.get("other", get(3600)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        cache.invalidate("s").await;
        cache.get("s", get(3600)).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_fetch_caches_nothing() {
        let cache = TokenCache::new(DEFAULT_RENEW_BEFORE);
        let err = cache.get("s", || async { Err(UpstreamError::Transport("down".into())) }).await;
        assert!(err.is_err());
        assert_eq!(cache.get("s", || async { fetched("t2", 3600) }).await.unwrap().expose(), "t2");
    }
}
