//! Access tokens from the Microsoft identity platform (client-credentials flow), cached per scope.

use std::time::Duration;

use crate::secret::Secret;
use crate::upstream::oauth::{DEFAULT_RENEW_BEFORE, TokenCache, fetch_client_credentials};
use crate::upstream::url::path_segment;
use crate::upstream::{RetryPolicy, UpstreamError};

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
pub const ARM_RESOURCE: &str = "https://management.azure.com";

const UPSTREAM: &str = "entra-token";

/// How the application proves who it is. Certificate assertions and workload identity federation will be further
/// variants: each changes only the form fields of the token request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret from the app registration.
    Secret(Secret),
}

impl Credential {
    /// The form fields that prove the client's identity. Fallible because an assertion will be signed or a federated
    /// token file re-read for each request.
    fn proof(&self) -> Result<Vec<(&'static str, String)>, UpstreamError> {
        match self {
            Credential::Secret(secret) => Ok(vec![("client_secret", secret.expose().to_owned())]),
        }
    }
}

/// The `.default` scope of a resource (`https://graph.microsoft.com` -> `https://graph.microsoft.com/.default`);
/// a value that already is a `.default` scope is kept.
pub fn scope_for(resource: &str) -> String {
    if resource.ends_with("/.default") {
        resource.to_owned()
    } else {
        format!("{}/.default", resource.trim_end_matches('/'))
    }
}

/// Fetches and caches app-only tokens for one app registration in one tenant.
#[derive(Debug)]
pub struct TokenProvider {
    http: reqwest::Client,
    token_url: String,
    client_id: String,
    credential: Credential,
    policy: RetryPolicy,
    cache: TokenCache,
}

impl TokenProvider {
    /// `authority` is e.g. `https://login.microsoftonline.com` (or a fake's URL in tests); `tenant_id` a GUID or
    /// a verified domain.
    pub fn new(
        http: reqwest::Client,
        authority: &str,
        tenant_id: &str,
        client_id: impl Into<String>,
        credential: Credential,
    ) -> Self {
        let token_url =
            format!("{}/{}/oauth2/v2.0/token", authority.trim_end_matches('/'), path_segment(tenant_id.trim()));
        TokenProvider {
            http,
            token_url,
            client_id: client_id.into(),
            credential,
            policy: RetryPolicy::default(),
            cache: TokenCache::new(DEFAULT_RENEW_BEFORE),
        }
    }

    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long before expiry a token is renewed (default 5 minutes; never more than half its lifetime).
    pub fn with_renew_before(mut self, renew_before: Duration) -> Self {
        self.cache = TokenCache::new(renew_before);
        self
    }

    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// A bearer token for `resource` (e.g. [`GRAPH_RESOURCE`]) or a `.default` scope. Concurrent callers share one
    /// fetch. A refusal from the identity platform is `UpstreamError::Permanent` whose `code` is the `AADSTS`
    /// number and whose message starts with the OAuth `error`.
    pub async fn token(&self, resource: &str) -> Result<Secret, UpstreamError> {
        let scope = scope_for(resource);
        self.cache.get(&scope, || self.fetch(&scope)).await
    }

    /// Drops the cached token for `resource`, so that the next call fetches a new one (after a 401 with it).
    pub async fn invalidate(&self, resource: &str) {
        self.cache.invalidate(&scope_for(resource)).await;
    }

    async fn fetch(&self, scope: &str) -> Result<crate::upstream::oauth::FetchedToken, UpstreamError> {
        let proof = self.credential.proof()?;
        let mut form: Vec<(&str, &str)> =
            vec![("grant_type", "client_credentials"), ("client_id", &self.client_id), ("scope", scope)];
        form.extend(proof.iter().map(|(k, v)| (*k, v.as_str())));
        tracing::debug!(scope, "fetching an identity platform token");
        let fetched = fetch_client_credentials(&self.http, &self.policy, UPSTREAM, &self.token_url, &form).await;
        if let Err(e) = &fetched {
            tracing::warn!(scope, error = %e, "the identity platform refused or failed the token request");
        }
        fetched
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_token_url() {
        assert_eq!(scope_for(GRAPH_RESOURCE), "https://graph.microsoft.com/.default");
        assert_eq!(scope_for("https://management.azure.com/"), "https://management.azure.com/.default");
        assert_eq!(scope_for("api://x/.default"), "api://x/.default");
        let p = TokenProvider::new(
            reqwest::Client::new(),
            "https://login.microsoftonline.com/",
            "contoso.onmicrosoft.com",
            "c",
            Credential::Secret(Secret::new("s3cr3t-canary")),
        );
        assert_eq!(p.token_url(), "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
        assert!(!format!("{p:?}").contains("s3cr3t-canary"));
    }
}
