//! The `[entra]` settings: which tenant and app registration, and where the identity platform and Graph are.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::graph::{DEFAULT_GRAPH_URL, GraphDirectory};
use super::token::{Credential, DEFAULT_AUTHORITY, TokenProvider};
use crate::config::ConfigError;
use crate::secret::SecretRef;
use crate::upstream::try_http_client;
use crate::upstream::url::base_url;

const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Tenant aliases that name no tenant: the client-credentials flow needs a real one.
const TENANT_ALIASES: [&str; 3] = ["common", "organizations", "consumers"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Directory (tenant) id, or a verified domain such as `contoso.onmicrosoft.com`.
    pub tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    pub client_secret: SecretRef,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// Overall time allowed for one HTTP exchange.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

fn default_authority() -> String {
    DEFAULT_AUTHORITY.to_owned()
}

fn default_graph_url() -> String {
    DEFAULT_GRAPH_URL.to_owned()
}

/// The Entra clients, sharing one token cache. Later clients (group writes, PIM, Azure RBAC) take `tokens` and `http`.
#[derive(Debug, Clone)]
pub struct Entra {
    pub tokens: Arc<TokenProvider>,
    pub directory: GraphDirectory,
    pub http: reqwest::Client,
}

impl EntraConfig {
    /// Checks the settings, reads the secret and builds the clients. `at` is the config key of this table.
    pub fn build(self, at: &str) -> Result<Entra, ConfigError> {
        let key = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
        let tenant_id = self.tenant_id.trim();
        check_tenant(tenant_id, &key("tenant_id"))?;
        let client_id = self.client_id.trim();
        if !is_guid(client_id) {
            return Err(ConfigError::at(
                key("client_id"),
                format!("`{client_id}` is not a GUID: give the application (client) id of the app registration"),
            ));
        }
        let authority = base_url(&self.authority, &key("authority"))?;
        let graph_url = base_url(&self.graph_url, &key("graph_url"))?;
        let secret = self.client_secret.resolve(&key("client_secret"))?;
        let timeout = match self.timeout_secs {
            Some(0) => return Err(ConfigError::at(key("timeout_secs"), "must be at least 1")),
            Some(n) => Duration::from_secs(n),
            None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        let http =
            try_http_client(timeout).map_err(|e| ConfigError::at(at, format!("cannot set up the HTTP client: {e}")))?;
        let tokens =
            Arc::new(TokenProvider::new(http.clone(), &authority, tenant_id, client_id, Credential::Secret(secret)));
        let directory = GraphDirectory::new(http.clone(), graph_url, tokens.clone());
        Ok(Entra { tokens, directory, http })
    }
}

fn check_tenant(tenant: &str, at: &str) -> Result<(), ConfigError> {
    if TENANT_ALIASES.iter().any(|a| a.eq_ignore_ascii_case(tenant)) {
        return Err(ConfigError::at(
            at,
            format!("`{tenant}` names no tenant; an application token needs the directory (tenant) id or domain"),
        ));
    }
    if is_guid(tenant) || is_domain(tenant) {
        Ok(())
    } else {
        Err(ConfigError::at(
            at,
            format!("`{tenant}` is neither a GUID nor a domain name (e.g. contoso.onmicrosoft.com)"),
        ))
    }
}

/// The hyphenated 8-4-4-4-12 form only, as the Entra admin center shows ids.
fn is_guid(value: &str) -> bool {
    value.len() == 36 && uuid::Uuid::try_parse(value).is_ok()
}

fn is_domain(value: &str) -> bool {
    let labels: Vec<&str> = value.split('.').collect();
    labels.len() >= 2
        && value.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels.last().is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_alphabetic()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

    fn config(extra: &str) -> Result<EntraConfig, toml::de::Error> {
        toml::from_str(&format!(
            "tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ env = \"GB_ENTRA_TEST_SECRET\" }}\n{extra}"
        ))
    }

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c = config("").unwrap();
        assert_eq!(c.authority, "https://login.microsoftonline.com");
        assert_eq!(c.graph_url, "https://graph.microsoft.com/v1.0");
        assert!(config("tenant = \"x\"").unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn ids_are_checked() {
        for ok in [TENANT, "contoso.onmicrosoft.com", "example.com"] {
            assert!(check_tenant(ok, "entra.tenant_id").is_ok(), "{ok}");
        }
        for bad in ["common", "organizations", "contoso", "72f988bf86f141af91ab2d7cd011db47", "a/b.com", ""] {
            let err = check_tenant(bad, "entra.tenant_id").unwrap_err();
            assert!(err.to_string().starts_with("entra.tenant_id: "), "{err}");
        }
        let mut c = config("").unwrap();
        c.client_id = "my-app".into();
        let err = c.build("entra").unwrap_err();
        assert!(err.to_string().starts_with("entra.client_id: "), "{err}");
    }

    #[test]
    fn builds_and_never_shows_the_secret() {
        let path = std::env::temp_dir().join(format!("gb-entra-secret-{}", std::process::id()));
        std::fs::write(&path, "canary-secret-value\n").unwrap();
        let mut c = config("graph_url = \"http://127.0.0.1:1/v1.0/\"").unwrap();
        c.client_secret = SecretRef::File(path);
        let entra = c.build("entra").unwrap();
        assert_eq!(entra.directory.base_url(), "http://127.0.0.1:1/v1.0");
        assert_eq!(entra.tokens.token_url(), format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"));
        assert!(!format!("{entra:?}").contains("canary-secret-value"));
        let mut c = config("").unwrap();
        c.client_secret = SecretRef::Env("GB_SURELY_UNSET_ENTRA_SECRET".into());
        assert!(c.build("entra").unwrap_err().to_string().starts_with("entra.client_secret: "));
    }
}
