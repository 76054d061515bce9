//! The `[entra]` settings: which tenant and app registration, and where the identity platform and Graph are.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::certificate::{AssertionAlgorithm, CertificateCredential, CertificateError};
use super::graph::{DEFAULT_GRAPH_URL, GraphDirectory};
use super::token::{Credential, DEFAULT_AUTHORITY, TokenProvider, read_federated_token};
use crate::config::ConfigError;
use crate::secret::SecretRef;
use crate::upstream::try_http_client;
use crate::upstream::url::base_url;

const DEFAULT_TIMEOUT_SECS: u64 = 30;

/// Tenant aliases that name no tenant: the client-credentials flow needs a real one.
const TENANT_ALIASES: [&str; 3] = ["common", "organizations", "consumers"];

/// What the Azure workload identity webhook sets on a pod labelled `azure.workload.identity/use: "true"`.
const TENANT_ENV: &str = "AZURE_TENANT_ID";
const CLIENT_ENV: &str = "AZURE_CLIENT_ID";
const FEDERATED_TOKEN_FILE_ENV: &str = "AZURE_FEDERATED_TOKEN_FILE";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntraConfig {
    /// Directory (tenant) id, or a verified domain such as `contoso.onmicrosoft.com`. With a federated credential it
    /// may be left out, and is then taken from `AZURE_TENANT_ID`.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Application (client) id of the app registration. With a federated credential it may be left out, and is then
    /// taken from `AZURE_CLIENT_ID`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Exactly one credential: `client_secret`, `certificate` (with `private_key`), `federated_token_file` or
    /// `federated = true`.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// A PEM certificate registered on the app (its first `CERTIFICATE` block is used).
    #[serde(default)]
    pub certificate: Option<SecretRef>,
    /// The certificate's unencrypted RSA key, PEM (PKCS#8 or PKCS#1); may name the same file as `certificate`.
    #[serde(default)]
    pub private_key: Option<SecretRef>,
    /// How the certificate assertion is signed: `PS256` (default) or `RS256`.
    #[serde(default)]
    pub assertion_alg: Option<AssertionAlgorithm>,
    /// A token file trusted by a federated identity credential on the app, re-read for every token request.
    #[serde(default)]
    pub federated_token_file: Option<PathBuf>,
    /// Workload identity federation with the file named by `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(default)]
    pub federated: bool,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_graph_url")]
    pub graph_url: String,
    /// Azure Resource Manager, for RBAC role assignments.
    #[serde(default = "default_arm_url")]
    pub arm_url: String,
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

fn default_arm_url() -> String {
    "https://management.azure.com".to_owned()
}

/// The Entra clients, sharing one token cache. Later clients (group writes, PIM, Azure RBAC) take `tokens` and `http`.
#[derive(Debug, Clone)]
pub struct Entra {
    pub tokens: Arc<TokenProvider>,
    pub directory: GraphDirectory,
    pub http: reqwest::Client,
    pub arm_url: String,
}

/// The credential the settings choose, before anything is read.
enum Choice {
    Secret(SecretRef),
    Certificate {
        certificate: SecretRef,
        private_key: SecretRef,
        algorithm: AssertionAlgorithm,
    },
    /// `at` is the key that named the file, for errors.
    Federated {
        token_file: PathBuf,
        at: String,
    },
}

impl EntraConfig {
    /// Checks the settings, reads the credential and builds the clients. `at` is the config key of this table.
    pub fn build(self, at: &str) -> Result<Entra, ConfigError> {
        self.build_with_env(at, |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    }

    fn build_with_env(self, at: &str, env: impl Fn(&str) -> Option<String>) -> Result<Entra, ConfigError> {
        let key = |name: &str| if at.is_empty() { name.to_owned() } else { format!("{at}.{name}") };
        let choice = self.choose_credential(at, &key, &env)?;
        let federated = matches!(choice, Choice::Federated { .. });
        let (tenant_id, tenant_at) = id_or_env(self.tenant_id, &key("tenant_id"), TENANT_ENV, federated, &env)?;
        check_tenant(&tenant_id, &tenant_at)?;
        let (client_id, client_at) = id_or_env(self.client_id, &key("client_id"), CLIENT_ENV, federated, &env)?;
        if !is_guid(&client_id) {
            return Err(ConfigError::at(
                client_at,
                format!("`{client_id}` is not a GUID: give the application (client) id of the app registration"),
            ));
        }
        let authority = base_url(&self.authority, &key("authority"))?;
        let graph_url = base_url(&self.graph_url, &key("graph_url"))?;
        let arm_url = base_url(&self.arm_url, &key("arm_url"))?;
        let credential = match choice {
            Choice::Secret(secret) => Credential::Secret(secret.resolve(&key("client_secret"))?),
            Choice::Certificate { certificate, private_key, algorithm } => {
                let certificate_pem = certificate.resolve(&key("certificate"))?;
                let key_pem = private_key.resolve(&key("private_key"))?;
                let credential = CertificateCredential::from_pem(certificate_pem.expose(), key_pem.expose(), algorithm)
                    .map_err(|e| match e {
                        CertificateError::Certificate(m) => {
                            ConfigError::at(key("certificate"), format!("{m} (in {})", certificate.describe()))
                        }
                        CertificateError::PrivateKey(m) => {
                            ConfigError::at(key("private_key"), format!("{m} (in {})", private_key.describe()))
                        }
                    })?;
                Credential::Certificate(credential)
            }
            Choice::Federated { token_file, at } => {
                // Read once now so that a wrong path fails at startup rather than at the first grant.
                read_federated_token(&token_file).map_err(|m| ConfigError::at(at, m))?;
                Credential::Federated { token_file }
            }
        };
        let timeout = match self.timeout_secs {
            Some(0) => return Err(ConfigError::at(key("timeout_secs"), "must be at least 1")),
            Some(n) => Duration::from_secs(n),
            None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        let http =
            try_http_client(timeout).map_err(|e| ConfigError::at(at, format!("cannot set up the HTTP client: {e}")))?;
        let tokens = Arc::new(TokenProvider::new(http.clone(), &authority, &tenant_id, client_id, credential));
        let directory = GraphDirectory::new(http.clone(), graph_url, tokens.clone());
        Ok(Entra { tokens, directory, http, arm_url })
    }

    /// Exactly one credential, and no setting that belongs to another one.
    fn choose_credential(
        &self,
        at: &str,
        key: &impl Fn(&str) -> String,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Choice, ConfigError> {
        if self.certificate.is_none() {
            for (name, given) in
                [("private_key", self.private_key.is_some()), ("assertion_alg", self.assertion_alg.is_some())]
            {
                if given {
                    return Err(ConfigError::at(key(name), "belongs to `certificate`, which is not given"));
                }
            }
        }
        let given: Vec<&str> = [
            ("client_secret", self.client_secret.is_some()),
            ("certificate", self.certificate.is_some()),
            ("federated_token_file", self.federated_token_file.is_some()),
            ("federated", self.federated),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect();
        match given.as_slice() {
            [] => Err(ConfigError::at(
                at,
                "no credential: give one of client_secret, certificate (with private_key), federated_token_file or \
                 federated = true",
            )),
            [_] => Ok(()),
            several => Err(ConfigError::at(at, format!("give exactly one credential, not {}", several.join(" and ")))),
        }?;
        if let Some(secret) = &self.client_secret {
            return Ok(Choice::Secret(secret.clone()));
        }
        if let Some(certificate) = &self.certificate {
            let Some(private_key) = &self.private_key else {
                return Err(ConfigError::at(key("private_key"), "is required with `certificate`"));
            };
            return Ok(Choice::Certificate {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
                algorithm: self.assertion_alg.unwrap_or_default(),
            });
        }
        if let Some(path) = &self.federated_token_file {
            return Ok(Choice::Federated { token_file: path.clone(), at: key("federated_token_file") });
        }
        match env(FEDERATED_TOKEN_FILE_ENV) {
            Some(path) => Ok(Choice::Federated {
                token_file: PathBuf::from(path.trim()),
                at: format!("{} ({FEDERATED_TOKEN_FILE_ENV})", key("federated")),
            }),
            None => Err(ConfigError::at(
                key("federated"),
                format!(
                    "{FEDERATED_TOKEN_FILE_ENV} is not set; the workload identity webhook sets it on pods labelled \
                     azure.workload.identity/use=true, or give federated_token_file"
                ),
            )),
        }
    }
}

/// A tenant or client id from the settings or, with a federated credential only, from the environment the workload
/// identity webhook sets up. Returns the id and the key to name in errors about it.
fn id_or_env(
    value: Option<String>,
    at: &str,
    variable: &str,
    federated: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<(String, String), ConfigError> {
    if let Some(value) = value {
        return Ok((value.trim().to_owned(), at.to_owned()));
    }
    if !federated {
        return Err(ConfigError::at(at, "is required"));
    }
    match env(variable) {
        Some(value) => Ok((value.trim().to_owned(), format!("{at} (from {variable})"))),
        None => Err(ConfigError::at(at, format!("is required: give it here or set {variable}"))),
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
        c.client_id = Some("my-app".into());
        let err = c.build("entra").unwrap_err();
        assert!(err.to_string().starts_with("entra.client_id: "), "{err}");
    }

    #[test]
    fn builds_and_never_shows_the_secret() {
        let path = std::env::temp_dir().join(format!("gb-entra-secret-{}", std::process::id()));
        std::fs::write(&path, "canary-secret-value\n").unwrap();
        let mut c = config("graph_url = \"http://127.0.0.1:1/v1.0/\"").unwrap();
        c.client_secret = Some(SecretRef::File(path));
        let entra = c.build("entra").unwrap();
        assert_eq!(entra.directory.base_url(), "http://127.0.0.1:1/v1.0");
        assert_eq!(entra.tokens.token_url(), format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"));
        assert!(!format!("{entra:?}").contains("canary-secret-value"));
        let mut c = config("").unwrap();
        c.client_secret = Some(SecretRef::Env("GB_SURELY_UNSET_ENTRA_SECRET".into()));
        assert!(c.build("entra").unwrap_err().to_string().starts_with("entra.client_secret: "));
    }

    fn federated(toml_text: &str, env: &[(&str, &str)]) -> Result<Entra, ConfigError> {
        let c: EntraConfig = toml::from_str(toml_text).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        c.build_with_env("entra", move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn federated_takes_the_file_and_ids_from_the_webhook_environment() {
        let path = std::env::temp_dir().join(format!("gb-entra-federated-{}", std::process::id()));
        std::fs::write(&path, "projected-token").unwrap();
        let file = path.display().to_string();
        let env = [(TENANT_ENV, TENANT), (CLIENT_ENV, CLIENT), (FEDERATED_TOKEN_FILE_ENV, file.as_str())];

        let entra = federated("federated = true", &env).unwrap();
        assert_eq!(entra.tokens.client_id(), CLIENT);
        assert!(entra.tokens.token_url().contains(TENANT));
        assert!(format!("{:?}", entra.tokens).contains(&file));

        // Values in the file win over the environment.
        let other = "99999999-8888-7777-6666-555555555555";
        let entra = federated(&format!("client_id = \"{other}\"\nfederated_token_file = \"{file}\""), &env).unwrap();
        assert_eq!(entra.tokens.client_id(), other);

        let err = federated("federated = true", &env[..2]).unwrap_err().to_string();
        assert!(err.starts_with("entra.federated: AZURE_FEDERATED_TOKEN_FILE is not set"), "{err}");
        let err = federated("federated = true", &[(CLIENT_ENV, CLIENT), env[2]]).unwrap_err().to_string();
        assert_eq!(err, "entra.tenant_id: is required: give it here or set AZURE_TENANT_ID");
        let err = federated("federated = true", &[(TENANT_ENV, TENANT), (CLIENT_ENV, "app"), env[2]]).unwrap_err();
        assert!(err.to_string().starts_with("entra.client_id (from AZURE_CLIENT_ID): `app` is not a GUID"), "{err}");
        let missing = [env[0], env[1], (FEDERATED_TOKEN_FILE_ENV, "/surely/not/here")];
        let err = federated("federated = true", &missing).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "entra.federated (AZURE_FEDERATED_TOKEN_FILE): cannot read the federated token file /surely/not/here"
            ),
            "{err}"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_environment_never_supplies_ids_for_a_secret() {
        let env = [(TENANT_ENV, TENANT), (CLIENT_ENV, CLIENT)];
        let err = federated("client_secret = { env = \"X\" }", &env).unwrap_err().to_string();
        assert_eq!(err, "entra.tenant_id: is required");
    }
}
