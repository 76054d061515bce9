//! Secrets: given in the config only by reference (an environment variable or a file), never printable.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::config::ConfigError;

/// A resolved secret. `Debug` and `Display` never show it; only `expose` does.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn expose_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where a secret lives: `{ env = "NAME" }` or `{ file = "PATH" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Reads the secret. `at` names the config key in errors; the value is never part of an error.
    pub fn resolve(&self, at: &str) -> Result<Secret, ConfigError> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| ConfigError::at(at, format!("environment variable {name} is not set (or not UTF-8)")))?,
            SecretRef::File(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::at(at, format!("cannot read secret file {}: {}", path.display(), e.kind()))
            })?,
        };
        // Files and env values written by hand usually end with a newline that is not part of the secret.
        let value = value.trim_end_matches(['\r', '\n']);
        if value.is_empty() {
            return Err(ConfigError::at(at, format!("the secret from {} is empty", self.describe())));
        }
        Ok(Secret::new(value))
    }

    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("environment variable {name}"),
            SecretRef::File(path) => format!("file {}", path.display()),
        }
    }
}

const SECRET_REF_HINT: &str =
    "secrets are given by reference only: { env = \"VARIABLE\" } or { file = \"/path/to/file\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefVisitor;

        impl<'de> Visitor<'de> for RefVisitor {
            type Value = SecretRef;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(SECRET_REF_HINT)
            }

            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom(format!("a literal secret is not accepted; {SECRET_REF_HINT}")))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SecretRef, A::Error> {
                let mut found: Option<SecretRef> = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => SecretRef::Env(map.next_value()?),
                        "file" => SecretRef::File(map.next_value()?),
                        other => {
                            return Err(de::Error::custom(format!(
                                "unknown key `{other}` in a secret reference; {SECRET_REF_HINT}"
                            )));
                        }
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom(format!("give exactly one of env or file; {SECRET_REF_HINT}")));
                    }
                }
                found.ok_or_else(|| de::Error::custom(SECRET_REF_HINT))
            }
        }

        deserializer.deserialize_any(RefVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Holder {
        secret: SecretRef,
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("canary-value-123");
        assert!(!format!("{s:?}").contains("canary"));
    }

    #[test]
    fn env_and_file_references_parse() {
        let h: Holder = toml::from_str(r#"secret = { env = "X" }"#).unwrap();
        assert_eq!(h.secret, SecretRef::Env("X".into()));
        let h: Holder = toml::from_str(r#"secret = { file = "/run/s" }"#).unwrap();
        assert_eq!(h.secret, SecretRef::File("/run/s".into()));
    }

    #[test]
    fn literal_secrets_and_unknown_keys_are_refused_without_echoing_the_value() {
        let err = toml::from_str::<Holder>(r#"secret = "hunter2-literal""#).unwrap_err().message().to_string();
        assert!(err.contains("by reference"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let err = toml::from_str::<Holder>(r#"secret = { value = "x" }"#).unwrap_err().to_string();
        assert!(err.contains("unknown key `value`"), "{err}");
        let err = toml::from_str::<Holder>(r#"secret = { env = "A", file = "b" }"#).unwrap_err().to_string();
        assert!(err.contains("exactly one"), "{err}");
    }

    #[test]
    fn resolve_trims_trailing_newline_and_refuses_empty() {
        let dir = std::env::temp_dir().join(format!("gb-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(SecretRef::File(path.clone()).resolve("k").unwrap().expose(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(SecretRef::File(path).resolve("k").is_err());
        let err = SecretRef::Env("GB_SURELY_UNSET_VAR".into()).resolve("sources.x").unwrap_err();
        assert!(err.to_string().contains("GB_SURELY_UNSET_VAR"));
    }
}
