//! The `[sources.NAME.api]` settings: where a ticketing system's API is and how we sign in to it.

use std::time::Duration;

use serde::Deserialize;

use super::jira::{JiraAuth, JiraClient};
use super::servicenow::{ServiceNowAuth, ServiceNowClient};
use crate::config::ConfigError;
use crate::secret::SecretRef;
use crate::upstream::try_http_client;
use crate::upstream::url::base_url;

const DEFAULT_TIMEOUT_SECS: u64 = 30;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItsmApiConfig {
    pub base_url: String,
    pub auth: ItsmAuthConfig,
    /// Overall time allowed for one HTTP exchange.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `basic` is Jira's `email` + `api_token` or ServiceNow's `user` + `password`; `bearer` is Jira only (OAuth 2.0);
/// `oauth` is ServiceNow only (client credentials).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ItsmAuthConfig {
    Basic {
        #[serde(default)]
        email: Option<String>,
        #[serde(default)]
        api_token: Option<SecretRef>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        password: Option<SecretRef>,
    },
    Bearer {
        token: SecretRef,
    },
    Oauth {
        client_id: String,
        client_secret: SecretRef,
        #[serde(default)]
        token_url: Option<String>,
    },
}

impl ItsmApiConfig {
    /// Builds the Jira client. `at` is the config key of this table, e.g. `sources.jira.api`.
    pub fn build_jira(self, at: &str) -> Result<JiraClient, ConfigError> {
        let key = keyer(at);
        let base = base_url(&self.base_url, &key("base_url"))?;
        let auth = match self.auth {
            ItsmAuthConfig::Basic { email, api_token, user, password } => {
                if user.is_some() || password.is_some() {
                    return Err(ConfigError::at(
                        key("auth"),
                        "Jira basic auth takes `email` and `api_token`; `user` and `password` are for ServiceNow",
                    ));
                }
                let email = email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).ok_or_else(|| {
                    ConfigError::at(key("auth.email"), "Jira basic auth needs the Atlassian account e-mail")
                })?;
                if !email.contains('@') {
                    return Err(ConfigError::at(key("auth.email"), format!("`{email}` is not an e-mail address")));
                }
                let api_token = api_token
                    .ok_or_else(|| ConfigError::at(key("auth.api_token"), "Jira basic auth needs an API token"))?
                    .resolve(&key("auth.api_token"))?;
                JiraAuth::Basic { email, api_token }
            }
            ItsmAuthConfig::Bearer { token } => {
                // OAuth 2.0 tokens are accepted only through the API gateway, not on the site URL.
                if reqwest::Url::parse(&base)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| h.to_ascii_lowercase()))
                    .is_some_and(|h| h.ends_with(".atlassian.net"))
                {
                    return Err(ConfigError::at(
                        key("base_url"),
                        "with a bearer (OAuth 2.0) token the base URL must be https://api.atlassian.com/ex/jira/{cloudId}",
                    ));
                }
                JiraAuth::Bearer { token: token.resolve(&key("auth.token"))? }
            }
            ItsmAuthConfig::Oauth { .. } => {
                return Err(ConfigError::at(
                    key("auth.kind"),
                    "Jira takes kind = \"basic\" (email + api_token) or kind = \"bearer\" (an OAuth 2.0 token); \
                     \"oauth\" client credentials are for ServiceNow",
                ));
            }
        };
        let http = http(self.timeout_secs, &key)?;
        Ok(JiraClient::new(http, base, auth))
    }

    /// Builds the ServiceNow client. `at` is the config key of this table, e.g. `sources.servicenow.api`.
    pub fn build_servicenow(self, at: &str) -> Result<ServiceNowClient, ConfigError> {
        let key = keyer(at);
        let base = base_url(&self.base_url, &key("base_url"))?;
        let auth = match self.auth {
            ItsmAuthConfig::Basic { email, api_token, user, password } => {
                if email.is_some() || api_token.is_some() {
                    return Err(ConfigError::at(
                        key("auth"),
                        "ServiceNow basic auth takes `user` and `password`; `email` and `api_token` are for Jira",
                    ));
                }
                let user = user.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).ok_or_else(|| {
                    ConfigError::at(key("auth.user"), "ServiceNow basic auth needs the integration user's name")
                })?;
                let password = password
                    .ok_or_else(|| ConfigError::at(key("auth.password"), "ServiceNow basic auth needs a password"))?
                    .resolve(&key("auth.password"))?;
                ServiceNowAuth::Basic { user, password }
            }
            ItsmAuthConfig::Oauth { client_id, client_secret, token_url } => {
                let client_id = client_id.trim().to_owned();
                if client_id.is_empty() {
                    return Err(ConfigError::at(key("auth.client_id"), "must not be empty"));
                }
                let token_url = token_url.map(|u| base_url(&u, &key("auth.token_url"))).transpose()?;
                let client_secret = client_secret.resolve(&key("auth.client_secret"))?;
                ServiceNowAuth::OAuth { client_id, client_secret, token_url }
            }
            ItsmAuthConfig::Bearer { .. } => {
                return Err(ConfigError::at(
                    key("auth.kind"),
                    "ServiceNow takes kind = \"basic\" (user + password) or kind = \"oauth\" (client credentials); \
                     \"bearer\" is for Jira",
                ));
            }
        };
        let http = http(self.timeout_secs, &key)?;
        Ok(ServiceNowClient::new(http, base, auth))
    }
}

fn keyer(at: &str) -> impl Fn(&str) -> String + '_ {
    move |name| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") }
}

fn http(timeout_secs: Option<u64>, key: &impl Fn(&str) -> String) -> Result<reqwest::Client, ConfigError> {
    let timeout = match timeout_secs {
        Some(0) => return Err(ConfigError::at(key("timeout_secs"), "must be at least 1")),
        Some(n) => Duration::from_secs(n),
        None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
    };
    try_http_client(timeout)
        .map_err(|e| ConfigError::at(key("base_url"), format!("cannot set up the HTTP client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_file(name: &str) -> String {
        let path = std::env::temp_dir().join(format!("gb-itsm-{}-{name}", std::process::id()));
        std::fs::write(&path, "canary-itsm-secret\n").unwrap();
        path.display().to_string()
    }

    fn parse(text: &str) -> Result<ItsmApiConfig, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.message().to_string())
    }

    #[test]
    fn jira_basic_and_bearer_build() {
        let f = secret_file("jira");
        let c = parse(&format!(
            "base_url = \"https://example.atlassian.net/\"\nauth = {{ kind = \"basic\", email = \"a@b.c\", api_token = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let client = c.build_jira("sources.jira.api").unwrap();
        assert_eq!(client.base_url(), "https://example.atlassian.net");
        assert!(!format!("{client:?}").contains("canary-itsm-secret"));

        let c = parse(&format!(
            "base_url = \"https://api.atlassian.com/ex/jira/1234\"\nauth = {{ kind = \"bearer\", token = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        assert!(c.build_jira("sources.jira.api").is_ok());

        let c = parse(&format!(
            "base_url = \"https://example.atlassian.net\"\nauth = {{ kind = \"bearer\", token = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let err = c.build_jira("sources.jira.api").unwrap_err().to_string();
        assert!(err.starts_with("sources.jira.api.base_url: ") && err.contains("api.atlassian.com"), "{err}");
    }

    #[test]
    fn servicenow_basic_and_oauth_build() {
        let f = secret_file("snow");
        let c = parse(&format!(
            "base_url = \"https://dev1.service-now.com\"\nauth = {{ kind = \"basic\", user = \"svc\", password = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let client = c.build_servicenow("sources.snow.api").unwrap();
        assert_eq!(client.token_url(), None);
        assert!(!format!("{client:?}").contains("canary-itsm-secret"));

        let c = parse(&format!(
            "base_url = \"https://dev1.service-now.com/\"\nauth = {{ kind = \"oauth\", client_id = \"cid\", client_secret = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let client = c.build_servicenow("sources.snow.api").unwrap();
        assert_eq!(client.token_url().as_deref(), Some("https://dev1.service-now.com/oauth_token.do"));

        let c = parse(&format!(
            "base_url = \"https://dev1.service-now.com\"\ntimeout_secs = 5\nauth = {{ kind = \"oauth\", client_id = \"cid\", client_secret = {{ file = \"{f}\" }}, token_url = \"https://idp.example/token\" }}"
        ))
        .unwrap();
        assert_eq!(c.build_servicenow("s").unwrap().token_url().as_deref(), Some("https://idp.example/token"));
    }

    #[test]
    fn auth_kinds_that_do_not_fit_the_system_are_refused() {
        let f = secret_file("mismatch");
        let bearer = parse(&format!(
            "base_url = \"https://x.service-now.com\"\nauth = {{ kind = \"bearer\", token = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let err = bearer.build_servicenow("sources.snow.api").unwrap_err().to_string();
        assert!(err.starts_with("sources.snow.api.auth.kind: ") && err.contains("for Jira"), "{err}");

        let oauth = parse(&format!(
            "base_url = \"https://x.atlassian.net\"\nauth = {{ kind = \"oauth\", client_id = \"c\", client_secret = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        let err = oauth.build_jira("sources.jira.api").unwrap_err().to_string();
        assert!(err.starts_with("sources.jira.api.auth.kind: ") && err.contains("for ServiceNow"), "{err}");

        let jira_basic_for_snow = parse(&format!(
            "base_url = \"https://x.service-now.com\"\nauth = {{ kind = \"basic\", email = \"a@b.c\", api_token = {{ file = \"{f}\" }} }}"
        ))
        .unwrap();
        assert!(jira_basic_for_snow.build_servicenow("s").unwrap_err().to_string().contains("`user` and `password`"));

        let missing =
            parse("base_url = \"https://x.atlassian.net\"\nauth = { kind = \"basic\", email = \"a@b.c\" }").unwrap();
        assert!(missing.build_jira("j").unwrap_err().to_string().starts_with("j.auth.api_token: "));
    }

    #[test]
    fn bad_input_is_refused_at_parse_or_build() {
        let err =
            parse("base_url = \"https://x\"\nauth = { kind = \"basic\", user = \"u\", pass = \"p\" }").unwrap_err();
        assert!(err.contains("unknown field `pass`"), "{err}");
        let err = parse("base_url = \"https://x\"\nauth = { kind = \"ldap\" }").unwrap_err();
        assert!(err.contains("ldap"), "{err}");
        let err = parse("base_url = \"https://x\"\nextra = 1\nauth = { kind = \"bearer\", token = { env = \"T\" } }")
            .unwrap_err();
        assert!(err.contains("unknown field `extra`"), "{err}");
        let err = parse("base_url = \"https://x\"\nauth = { kind = \"bearer\", token = \"hunter2\" }").unwrap_err();
        assert!(err.contains("by reference") && !err.contains("hunter2"), "{err}");
        let c = parse("base_url = \"ftp://x\"\nauth = { kind = \"bearer\", token = { env = \"T\" } }").unwrap();
        assert!(c.build_jira("j").unwrap_err().to_string().starts_with("j.base_url: "));
    }
}
