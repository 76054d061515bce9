//! `[admin]`: who may call the admin API under `/v1/`. Microsoft Entra ID access tokens (`[admin.entra]`) and
//! static bearer tokens given by their SHA-256 only (`[[admin.tokens]]`). Without the section nobody may.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ConfigError;
use crate::upstream::url::base_url;

pub const DEFAULT_READ_ROLE: &str = "Grantbridge.Read";
pub const DEFAULT_OPERATE_ROLE: &str = "Grantbridge.Operate";
const DEFAULT_JWKS_MIN_REFRESH_SECS: u64 = 30;
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// What an operator may do. `Operate` includes everything `Read` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Look at events, decisions, grants and dead letters, and plan.
    Read,
    /// Also act: replay, revoke, see stored bodies.
    Operate,
}

impl Role {
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    entra: Option<EntraAdminConfig>,
    #[serde(default)]
    tokens: Vec<StaticTokenConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntraAdminConfig {
    /// The directory (tenant) id, a GUID: it is part of the issuer every token must name.
    tenant_id: String,
    /// Accepted `aud` values: the API's client id (v2.0 tokens always carry it) and/or its application id URI
    /// (`api://grantbridge`, in v1.0 tokens requested for it).
    audiences: Vec<String>,
    /// Where the tenant's signing keys are published; default `https://login.microsoftonline.com/{tenant}/discovery/v2.0/keys`.
    jwks_url: Option<String>,
    /// App roles (the `roles` claim) that give read access; default `["Grantbridge.Read"]`.
    read_roles: Option<Vec<String>>,
    /// App roles that give operate access (which includes read); default `["Grantbridge.Operate"]`.
    operate_roles: Option<Vec<String>>,
    /// A token naming a key we do not know makes us fetch the keys again, at most this often.
    jwks_min_refresh_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticTokenConfig {
    name: String,
    /// Lowercase or uppercase hex of the SHA-256 of the token.
    sha256: Option<String>,
    role: Role,
    /// Accepted by the parser only to be refused with a clear message: a token is configured by its hash alone.
    token: Option<IgnoredAny>,
}

/// `[admin]`, validated. The default (no section) lets nobody in.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    pub entra: Option<EntraAdminSettings>,
    pub tokens: Vec<StaticToken>,
}

#[derive(Debug, Clone)]
pub struct EntraAdminSettings {
    pub tenant_id: String,
    /// v2.0 (`https://login.microsoftonline.com/{tid}/v2.0`) and v1.0 (`https://sts.windows.net/{tid}/`) forms.
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    pub jwks_url: String,
    pub read_roles: Vec<String>,
    pub operate_roles: Vec<String>,
    pub jwks_min_refresh: Duration,
    pub jwks_max_age: Duration,
}

/// A static bearer token: its name (who is acting, in logs), the SHA-256 of its value, and its role.
#[derive(Clone)]
pub struct StaticToken {
    pub name: String,
    pub sha256: [u8; 32],
    pub role: Role,
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticToken").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

impl AdminSettings {
    pub fn is_open_to_nobody(&self) -> bool {
        self.entra.is_none() && self.tokens.is_empty()
    }

    /// One line for `check-config`.
    pub fn describe(&self) -> String {
        if self.is_open_to_nobody() {
            return "not configured: every /v1/ route answers 401".to_string();
        }
        let mut parts = Vec::new();
        if let Some(entra) = &self.entra {
            parts.push(format!("Entra ID tenant {} (audiences {})", entra.tenant_id, entra.audiences.join(", ")));
        }
        if !self.tokens.is_empty() {
            let names: Vec<String> = self.tokens.iter().map(|t| format!("{} ({})", t.name, t.role.as_str())).collect();
            parts.push(format!("static tokens {}", names.join(", ")));
        }
        parts.join("; ")
    }
}

impl AdminConfig {
    /// `at` names the section in errors, e.g. `grantbridge.toml: admin`.
    pub fn build(self, at: &str) -> Result<AdminSettings, ConfigError> {
        if self.entra.is_none() && self.tokens.is_empty() {
            return Err(ConfigError::at(
                at,
                "[admin] needs [admin.entra] or at least one [[admin.tokens]]; leave the section out to keep the \
                 admin API closed",
            ));
        }
        let entra = self.entra.map(|e| e.build(&format!("{at}.entra"))).transpose()?;
        let mut names = BTreeSet::new();
        let mut hashes = BTreeSet::new();
        let mut tokens = Vec::with_capacity(self.tokens.len());
        for (i, token) in self.tokens.into_iter().enumerate() {
            let at = format!("{at}.tokens[{i}]");
            let token = token.build(&at)?;
            if !names.insert(token.name.clone()) {
                return Err(ConfigError::at(format!("{at}.name"), format!("`{}` is used by two tokens", token.name)));
            }
            if !hashes.insert(token.sha256) {
                return Err(ConfigError::at(format!("{at}.sha256"), "the same hash is given for two tokens"));
            }
            tokens.push(token);
        }
        Ok(AdminSettings { entra, tokens })
    }
}

impl EntraAdminConfig {
    fn build(self, at: &str) -> Result<EntraAdminSettings, ConfigError> {
        let tenant = uuid::Uuid::parse_str(self.tenant_id.trim()).map_err(|_| {
            ConfigError::at(
                format!("{at}.tenant_id"),
                format!(
                    "`{}` is not a directory (tenant) id: give the GUID, which every token names in its issuer",
                    self.tenant_id
                ),
            )
        })?;
        let tenant_id = tenant.hyphenated().to_string();
        let audiences = non_empty_list(self.audiences, &format!("{at}.audiences"), "an audience")?;
        let jwks_url = match self.jwks_url {
            Some(url) => base_url(&url, &format!("{at}.jwks_url"))?,
            None => format!("https://login.microsoftonline.com/{tenant_id}/discovery/v2.0/keys"),
        };
        let read_roles = match self.read_roles {
            Some(roles) => non_empty_list(roles, &format!("{at}.read_roles"), "a role")?,
            None => vec![DEFAULT_READ_ROLE.to_string()],
        };
        let operate_roles = match self.operate_roles {
            Some(roles) => non_empty_list(roles, &format!("{at}.operate_roles"), "a role")?,
            None => vec![DEFAULT_OPERATE_ROLE.to_string()],
        };
        let min_refresh = self.jwks_min_refresh_secs.unwrap_or(DEFAULT_JWKS_MIN_REFRESH_SECS);
        if !(1..=3600).contains(&min_refresh) {
            return Err(ConfigError::at(format!("{at}.jwks_min_refresh_secs"), "must be between 1 and 3600"));
        }
        Ok(EntraAdminSettings {
            issuers: vec![
                format!("https://login.microsoftonline.com/{tenant_id}/v2.0"),
                format!("https://sts.windows.net/{tenant_id}/"),
            ],
            tenant_id,
            audiences,
            jwks_url,
            read_roles,
            operate_roles,
            jwks_min_refresh: Duration::from_secs(min_refresh),
            jwks_max_age: JWKS_MAX_AGE,
        })
    }
}

fn non_empty_list(items: Vec<String>, at: &str, what: &str) -> Result<Vec<String>, ConfigError> {
    if items.is_empty() {
        return Err(ConfigError::at(at, format!("give at least {what}")));
    }
    let mut seen = BTreeSet::new();
    for item in &items {
        if item.trim().is_empty() || item.trim() != item {
            return Err(ConfigError::at(at, format!("`{item}` is empty or has surrounding spaces")));
        }
        if !seen.insert(item) {
            return Err(ConfigError::at(at, format!("`{item}` is listed twice")));
        }
    }
    Ok(items)
}

impl StaticTokenConfig {
    fn build(self, at: &str) -> Result<StaticToken, ConfigError> {
        if self.token.is_some() {
            return Err(ConfigError::at(
                format!("{at}.token"),
                "a token is never written in the config: give `sha256`, the hex SHA-256 of the token \
                 (`printf %s \"$TOKEN\" | sha256sum`)",
            ));
        }
        if !valid_token_name(&self.name) {
            return Err(ConfigError::at(
                format!("{at}.name"),
                "a token name is 1-64 characters of A-Z, a-z, 0-9, '.', '-', '_' and '@'",
            ));
        }
        let at_hash = format!("{at}.sha256");
        let Some(hex_hash) = self.sha256 else {
            return Err(ConfigError::at(at_hash, "missing: give the hex SHA-256 of the token"));
        };
        // The value is not echoed: whoever pasted the token itself here must not find it in a log.
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(hex_hash.trim(), &mut sha256)
            .map_err(|_| ConfigError::at(&at_hash, "is not 64 hexadecimal digits (the SHA-256 of the token)"))?;
        if sha256 == <[u8; 32]>::from(Sha256::digest(b"")) {
            return Err(ConfigError::at(at_hash, "is the SHA-256 of an empty token"));
        }
        Ok(StaticToken { name: self.name, sha256, role: self.role })
    }
}

fn valid_token_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

    fn parse(text: &str) -> Result<AdminSettings, String> {
        let config: AdminConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        config.build("test.toml: admin").map_err(|e| e.to_string())
    }

    fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn entra_defaults_derive_issuers_and_keys_from_the_tenant() {
        let settings = parse(&format!(
            "[entra]\ntenant_id = \"{}\"\naudiences = [\"api://grantbridge\"]\n",
            TENANT.to_uppercase()
        ))
        .unwrap();
        let entra = settings.entra.unwrap();
        assert_eq!(entra.tenant_id, TENANT);
        assert_eq!(
            entra.issuers,
            [format!("https://login.microsoftonline.com/{TENANT}/v2.0"), format!("https://sts.windows.net/{TENANT}/")]
        );
        assert_eq!(entra.jwks_url, format!("https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys"));
        assert_eq!(entra.read_roles, [DEFAULT_READ_ROLE]);
        assert_eq!(entra.operate_roles, [DEFAULT_OPERATE_ROLE]);
        assert_eq!(entra.jwks_min_refresh, Duration::from_secs(30));
    }

    #[test]
    fn static_tokens_by_hash() {
        let settings = parse(&format!(
            "[[tokens]]\nname = \"ci\"\nsha256 = \"{}\"\nrole = \"read\"\n[[tokens]]\nname = \"oncall\"\nsha256 = \"{}\"\nrole = \"operate\"\n",
            hash("a").to_uppercase(),
            hash("b")
        ))
        .unwrap();
        assert_eq!(settings.tokens.len(), 2);
        assert_eq!(settings.tokens[0].sha256, <[u8; 32]>::from(Sha256::digest(b"a")));
        assert_eq!(settings.tokens[1].role, Role::Operate);
        assert!(!format!("{:?}", settings.tokens[0]).contains(&hash("a")[..8]), "Debug leaves the hash out");
        assert!(settings.describe().contains("ci (read), oncall (operate)"), "{}", settings.describe());
    }

    #[test]
    fn a_literal_token_is_refused_without_echoing_it() {
        let err = parse("[[tokens]]\nname = \"ci\"\ntoken = \"hunter2-literal\"\nrole = \"read\"\n").unwrap_err();
        assert!(err.starts_with("test.toml: admin.tokens[0].token: "), "{err}");
        assert!(err.contains("sha256"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = parse("[[tokens]]\nname = \"ci\"\nsha256 = \"hunter2-literal\"\nrole = \"read\"\n").unwrap_err();
        assert!(err.contains("64 hexadecimal digits"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn bad_sections_are_refused_with_their_location() {
        let entra = |extra: &str| format!("[entra]\ntenant_id = \"{TENANT}\"\naudiences = [\"api://gb\"]\n{extra}");
        let cases = [
            ("", "test.toml: admin: [admin] needs"),
            ("[entra]\ntenant_id = \"contoso.onmicrosoft.com\"\naudiences = [\"x\"]\n", "admin.entra.tenant_id"),
            (&format!("[entra]\ntenant_id = \"{TENANT}\"\naudiences = []\n"), "admin.entra.audiences: give at least"),
            (&entra("read_roles = []"), "admin.entra.read_roles"),
            (&entra("operate_roles = [\"A\", \"A\"]"), "listed twice"),
            (&entra("jwks_url = \"ftp://keys\""), "admin.entra.jwks_url"),
            (&entra("jwks_min_refresh_secs = 0"), "admin.entra.jwks_min_refresh_secs"),
            (
                &format!("[[tokens]]\nname = \"a b\"\nsha256 = \"{}\"\nrole = \"read\"\n", hash("x")),
                "admin.tokens[0].name",
            ),
            ("[[tokens]]\nname = \"a\"\nrole = \"read\"\n", "admin.tokens[0].sha256: missing"),
            (&format!("[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"read\"\n", hash("")), "empty token"),
            (
                &format!(
                    "[[tokens]]\nname = \"a\"\nsha256 = \"{h}\"\nrole = \"read\"\n[[tokens]]\nname = \"b\"\nsha256 = \"{h}\"\nrole = \"read\"\n",
                    h = hash("x")
                ),
                "admin.tokens[1].sha256: the same hash",
            ),
            (
                &format!(
                    "[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"read\"\n[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"read\"\n",
                    hash("x"),
                    hash("y")
                ),
                "admin.tokens[1].name: `a` is used by two tokens",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}\n=> {err}");
        }
        let err = parse(&format!("[[tokens]]\nname = \"a\"\nsha256 = \"{}\"\nrole = \"admin\"\n", hash("x")));
        assert!(err.unwrap_err().contains("unknown variant `admin`"));
    }

    #[test]
    fn operate_includes_read() {
        assert!(Role::Operate.allows(Role::Read));
        assert!(Role::Operate.allows(Role::Operate));
        assert!(Role::Read.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operate));
    }
}
