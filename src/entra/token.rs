//! Access tokens from the Microsoft identity platform (client-credentials flow), cached per scope.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::certificate::{CertificateCredential, JWT_BEARER_ASSERTION_TYPE};
use crate::secret::Secret;
use crate::upstream::oauth::{DEFAULT_RENEW_BEFORE, FetchedToken, TokenCache, fetch_client_credentials};
use crate::upstream::url::path_segment;
use crate::upstream::{RetryPolicy, UpstreamError};

pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
pub const GRAPH_RESOURCE: &str = "https://graph.microsoft.com";
pub const ARM_RESOURCE: &str = "https://management.azure.com";

const UPSTREAM: &str = "entra-token";

/// How the application proves who it is. Each changes only the form fields of the token request.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A client secret from the app registration.
    Secret(Secret),
    /// A certificate registered on the app: a new signed assertion for every token request.
    Certificate(CertificateCredential),
    /// Workload identity federation: the file holds a token from another issuer (a Kubernetes projected service
    /// account token) that the app trusts through a federated identity credential.
    Federated { token_file: PathBuf },
}

impl Credential {
    fn kind(&self) -> &'static str {
        match self {
            Credential::Secret(_) => "client_secret",
            Credential::Certificate(_) => "certificate",
            Credential::Federated { .. } => "federated",
        }
    }

    /// The form fields that prove the client's identity, made anew for each token request.
    fn proof(&self, token_url: &str, client_id: &str) -> Result<Vec<(&'static str, String)>, UpstreamError> {
        let assertion = match self {
            Credential::Secret(secret) => return Ok(vec![("client_secret", secret.expose().to_owned())]),
            Credential::Certificate(certificate) => {
                certificate.assertion(token_url, client_id).map_err(UpstreamError::InvalidInput)?.expose().to_owned()
            }
            // The kubelet rotates the projected token well before it expires; a copy kept from an earlier read
            // could be stale by the time the cache needs a new access token.
            Credential::Federated { token_file } => {
                read_federated_token(token_file).map_err(UpstreamError::InvalidInput)?
            }
        };
        Ok(vec![("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.to_owned()), ("client_assertion", assertion)])
    }
}

/// The federated token in `path`, trimmed. The error names the file, never its contents. A blocking read: the file
/// is a small one on a tmpfs, read once per access token.
pub(crate) fn read_federated_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the federated token file {}: {}", path.display(), e.kind()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the federated token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
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

    async fn fetch(&self, scope: &str) -> Result<FetchedToken, UpstreamError> {
        tracing::debug!(scope, credential = self.credential.kind(), "fetching an identity platform token");
        let fetched = self.request(scope).await;
        if let Err(e) = &fetched {
            tracing::warn!(scope, error = %e, "the identity platform refused or failed the token request");
        }
        fetched
    }

    async fn request(&self, scope: &str) -> Result<FetchedToken, UpstreamError> {
        let proof = self.credential.proof(&self.token_url, &self.client_id)?;
        let mut form: Vec<(&str, &str)> =
            vec![("grant_type", "client_credentials"), ("client_id", &self.client_id), ("scope", scope)];
        form.extend(proof.iter().map(|(k, v)| (*k, v.as_str())));
        fetch_client_credentials(&self.http, &self.policy, UPSTREAM, &self.token_url, &form).await
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

    #[test]
    fn a_federated_token_is_read_afresh_for_each_proof() {
        let path = std::env::temp_dir().join(format!("gb-federated-{}", std::process::id()));
        let credential = Credential::Federated { token_file: path.clone() };
        std::fs::write(&path, "token-a\n").unwrap();
        let first = credential.proof("u", "c").unwrap();
        std::fs::write(&path, "token-b").unwrap();
        let second = credential.proof("u", "c").unwrap();
        assert_eq!(first[0], ("client_assertion_type", JWT_BEARER_ASSERTION_TYPE.to_owned()));
        assert_eq!(first[1], ("client_assertion", "token-a".to_owned()));
        assert_eq!(second[1], ("client_assertion", "token-b".to_owned()));
        std::fs::write(&path, " \n").unwrap();
        let err = credential.proof("u", "c").unwrap_err().to_string();
        assert!(err.contains("is empty") && err.contains(&path.display().to_string()), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = credential.proof("u", "c").unwrap_err().to_string();
        assert!(err.contains("cannot read the federated token file"), "{err}");
    }
}
