//! What the schemes share: resolving secrets, HMAC keys, reading headers, time windows, JWT decoding.

use std::fmt;
use std::time::SystemTime;

use actix_web::http::header::HeaderName;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::{RawRequest, Rejection, unix_seconds};
use crate::config::ConfigError;
use crate::secret::{Secret, SecretRef};

/// Standard base64 alphabet; padding written when encoding, optional when decoding.
pub(super) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A list that is never empty, so that "the first one" (the one we sign with) always exists.
#[derive(Debug, Clone)]
pub(super) struct OneOrMore<T> {
    first: T,
    rest: Vec<T>,
}

impl<T> OneOrMore<T> {
    pub(super) fn from_vec(items: Vec<T>) -> Option<Self> {
        let mut items = items.into_iter();
        let first = items.next()?;
        Some(OneOrMore { first, rest: items.collect() })
    }

    pub(super) fn first(&self) -> &T {
        &self.first
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        std::iter::once(&self.first).chain(&self.rest)
    }

    /// Maps each item with its index, stopping at the first error.
    pub(super) fn try_map<U, E>(&self, mut f: impl FnMut(usize, &T) -> Result<U, E>) -> Result<OneOrMore<U>, E> {
        let first = f(0, &self.first)?;
        let rest = self.rest.iter().enumerate().map(|(i, item)| f(i + 1, item)).collect::<Result<_, _>>()?;
        Ok(OneOrMore { first, rest })
    }
}

/// Resolves `secrets[i]` of the table at `at`; at least one is required.
pub(super) fn resolve_secrets(secrets: &[SecretRef], at: &str) -> Result<OneOrMore<Secret>, ConfigError> {
    let resolved = secrets
        .iter()
        .enumerate()
        .map(|(i, secret)| secret.resolve(&format!("{at}.secrets[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    OneOrMore::from_vec(resolved).ok_or_else(|| {
        ConfigError::at(
            format!("{at}.secrets"),
            "give at least one secret (several are accepted at once, for rotation)",
        )
    })
}

/// HMAC-SHA256 keys made of the raw bytes of each secret.
pub(super) fn hmac_keys(secrets: &[SecretRef], at: &str) -> Result<OneOrMore<HmacKey>, ConfigError> {
    resolve_secrets(secrets, at)?
        .try_map(|i, secret| HmacKey::new(secret.expose_bytes(), &format!("{at}.secrets[{i}]")))
}

/// A keyed HMAC-SHA256 state, ready to be cloned for each message. `Debug` never shows the key.
#[derive(Clone)]
pub(super) struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    pub(super) fn new(key: &[u8], at: &str) -> Result<Self, ConfigError> {
        Hmac::new_from_slice(key).map(HmacKey).map_err(|_| ConfigError::at(at, "cannot be used as an HMAC-SHA256 key"))
    }

    /// The MAC of the concatenation of `parts`.
    pub(super) fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        self.over(parts).finalize().into_bytes().to_vec()
    }

    /// Constant-time check of `tag` against the MAC of the concatenation of `parts`.
    pub(super) fn verifies(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        self.over(parts).verify_slice(tag).is_ok()
    }

    fn over(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac
    }
}

impl fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HmacKey([redacted])")
    }
}

/// Length in bytes of an HMAC-SHA256 tag.
pub(super) const TAG_LEN: usize = 32;

pub(super) fn check_header_name(name: &str, at: &str) -> Result<(), ConfigError> {
    HeaderName::from_bytes(name.as_bytes())
        .map(drop)
        .map_err(|_| ConfigError::at(at, format!("`{name}` is not a valid HTTP header name")))
}

/// The value of header `name`: `Missing` if absent, `Malformed` if not visible ASCII.
pub(super) fn header<'a>(req: &RawRequest<'a>, name: &str) -> Result<&'a str, Rejection> {
    let value = req.headers.get(name).ok_or(Rejection::Missing)?;
    value.to_str().map_err(|_| Rejection::Malformed)
}

/// The credentials of an `Authorization`-style value `<scheme> <credentials>`; the scheme word is case-insensitive.
pub(super) fn credentials<'a>(value: &'a str, scheme: &str) -> Result<&'a str, Rejection> {
    match value.trim().split_once(' ') {
        Some((word, rest)) if word.eq_ignore_ascii_case(scheme) && !rest.trim().is_empty() => Ok(rest.trim()),
        _ => Err(Rejection::Malformed),
    }
}

pub(super) fn parse_unix_seconds(value: &str) -> Result<i64, Rejection> {
    value.parse().map_err(|_| Rejection::BadTimestamp)
}

/// Accepts `timestamp` (Unix seconds) when it is at most `tolerance_secs` away from `now`, in either direction.
pub(super) fn check_window(timestamp: i64, now: SystemTime, tolerance_secs: u64) -> Result<(), Rejection> {
    if unix_seconds(now).abs_diff(timestamp) > tolerance_secs {
        return Err(Rejection::StaleTimestamp);
    }
    Ok(())
}

pub(super) type Claims = Map<String, Value>;

/// Decodes `token` with the first of `keys` whose signature matches, then checks `exp`/`nbf` against `now`.
///
/// `validation` must leave `exp`/`nbf` to us (`validate_exp = false`, `validate_nbf = false`) so that the
/// caller's clock is the one used. A rejection other than `TokenInvalid` means the signature matched that key,
/// so it is reported as is.
pub(super) fn decode_with_any<'k>(
    token: &str,
    keys: impl IntoIterator<Item = &'k DecodingKey>,
    validation: &Validation,
    now: SystemTime,
    leeway_secs: u64,
) -> Result<Claims, Rejection> {
    let mut outcome = Err(Rejection::TokenInvalid);
    for key in keys {
        outcome = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| jwt_rejection(e.kind()))
            .and_then(|data| check_token_times(&data.claims, now, leeway_secs).map(|()| data.claims));
        if !matches!(outcome, Err(Rejection::TokenInvalid)) {
            break;
        }
    }
    outcome
}

fn jwt_rejection(kind: &ErrorKind) -> Rejection {
    match kind {
        ErrorKind::ExpiredSignature | ErrorKind::ImmatureSignature => Rejection::TokenExpired,
        ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Rejection::ClaimMismatch,
        _ => Rejection::TokenInvalid,
    }
}

/// `exp` (required) must not be more than `leeway_secs` in the past, `nbf` (optional) not more than that in the future.
fn check_token_times(claims: &Claims, now: SystemTime, leeway_secs: u64) -> Result<(), Rejection> {
    let now = unix_seconds(now);
    let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
    let exp = claims.get("exp").and_then(numeric_date).ok_or(Rejection::TokenInvalid)?;
    if exp.saturating_add(leeway) < now {
        return Err(Rejection::TokenExpired);
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = numeric_date(nbf).ok_or(Rejection::TokenInvalid)?;
        if nbf.saturating_sub(leeway) > now {
            return Err(Rejection::TokenExpired);
        }
    }
    Ok(())
}

fn numeric_date(value: &Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

#[cfg(test)]
pub(super) mod test_support {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};

    use super::super::{Outgoing, RawRequest, SignedHeaders};
    use crate::secret::SecretRef;

    pub(crate) const PATH: &str = "/webhooks/test";

    /// An owned request to borrow a `RawRequest` from.
    pub(crate) struct TestRequest {
        pub(crate) method: String,
        pub(crate) path: String,
        pub(crate) query: String,
        pub(crate) headers: HeaderMap,
        pub(crate) body: Vec<u8>,
    }

    impl TestRequest {
        pub(crate) fn raw(&self) -> RawRequest<'_> {
            RawRequest {
                method: &self.method,
                path: &self.path,
                query: &self.query,
                headers: &self.headers,
                body: &self.body,
            }
        }

        pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
            self.headers
                .insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
            self
        }

        pub(crate) fn without_header(mut self, name: &str) -> Self {
            self.headers.remove(name);
            self
        }
    }

    /// `POST /webhooks/test` with these headers and body.
    pub(crate) fn req(headers: &[(&str, &str)], body: &[u8]) -> TestRequest {
        let request = TestRequest {
            method: "POST".into(),
            path: PATH.into(),
            query: String::new(),
            headers: HeaderMap::new(),
            body: body.to_vec(),
        };
        headers.iter().fold(request, |r, (name, value)| r.with_header(name, value))
    }

    /// The request that `sign` described.
    pub(crate) fn signed(out: &Outgoing<'_>, headers: &SignedHeaders) -> TestRequest {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let mut request = req(&pairs, out.body);
        request.method = out.method.into();
        request.path = out.path.into();
        request.query = out.query.into();
        request
    }

    pub(crate) fn outgoing(body: &[u8], now: SystemTime) -> Outgoing<'_> {
        Outgoing {
            method: "POST",
            path: PATH,
            query: "",
            body,
            now,
            delivery_id: "0190d5f2-0000-7000-8000-000000000001",
            private_key_pem: None,
        }
    }

    pub(crate) fn at(unix_secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_secs).unwrap())
    }

    /// A file holding `value`, referenced the way a config would.
    pub(crate) fn secret_file(value: &str) -> SecretRef {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("grantbridge-schemes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("secret-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, value).unwrap();
        SecretRef::File(path)
    }

    pub(crate) fn secret_files(values: &[&str]) -> Vec<SecretRef> {
        values.iter().map(|v| secret_file(v)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::at;
    use super::*;

    #[test]
    fn window_is_inclusive_in_both_directions() {
        let now = at(1_000_000);
        assert_eq!(check_window(1_000_300, now, 300), Ok(()));
        assert_eq!(check_window(999_700, now, 300), Ok(()));
        assert_eq!(check_window(1_000_301, now, 300), Err(Rejection::StaleTimestamp));
        assert_eq!(check_window(999_699, now, 300), Err(Rejection::StaleTimestamp));
    }

    #[test]
    fn credentials_need_the_scheme_word() {
        assert_eq!(credentials("bearer abc", "Bearer"), Ok("abc"));
        assert_eq!(credentials("JWT  abc ", "JWT"), Ok("abc"));
        assert_eq!(credentials("Basic abc", "Bearer"), Err(Rejection::Malformed));
        assert_eq!(credentials("Bearer", "Bearer"), Err(Rejection::Malformed));
        assert_eq!(credentials("Bearer ", "Bearer"), Err(Rejection::Malformed));
    }

    #[test]
    fn base64_padding_is_optional() {
        use base64::Engine;
        assert_eq!(BASE64.decode("YWI=").unwrap(), b"ab");
        assert_eq!(BASE64.decode("YWI").unwrap(), b"ab");
        assert_eq!(BASE64.encode(b"ab"), "YWI=");
    }

    #[test]
    fn an_empty_secret_list_is_refused() {
        let err = resolve_secrets(&[], "sources.x.verify[0]").unwrap_err();
        assert!(err.to_string().starts_with("sources.x.verify[0].secrets:"), "{err}");
    }

    #[test]
    fn every_scheme_builds_from_its_config_table() {
        use super::super::{SchemeConfig, SchemeName};
        use super::test_support::secret_file;

        let SecretRef::File(secret) = secret_file("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") else { unreachable!() };
        let secret = format!("{{ file = \"{}\" }}", secret.display());
        let tables = [
            (SchemeName::JiraHubSignature, format!("scheme = \"jira_hub_signature\"\nsecrets = [{secret}]")),
            (
                SchemeName::HmacSha256,
                format!("scheme = \"hmac_sha256\"\nheader = \"X-Signature\"\nencoding = \"hex\"\nsecrets = [{secret}]"),
            ),
            (SchemeName::StandardWebhooks, format!("scheme = \"standard_webhooks\"\nsecrets = [{secret}]")),
            (
                SchemeName::JwtBearer,
                format!(
                    "scheme = \"jwt_bearer\"\nissuer = \"i\"\naudience = \"a\"\nkeys = [{{ alg = \"HS256\", secret = {secret} }}]"
                ),
            ),
            (
                SchemeName::JiraConnectJwt,
                format!("scheme = \"jira_connect_jwt\"\nclient_key = \"jira:1\"\nsecrets = [{secret}]"),
            ),
            (
                SchemeName::SharedSecretHeader,
                format!("scheme = \"shared_secret_header\"\nheader = \"X-Token\"\nsecrets = [{secret}]"),
            ),
        ];
        for (name, table) in tables {
            let config: SchemeConfig = toml::from_str(&table).map_err(|e| format!("{table}\n{e}")).unwrap();
            assert_eq!(config.build("src").unwrap().name(), name);
            assert!(toml::from_str::<SchemeConfig>(&format!("{table}\nunknown = 1")).is_err(), "{table}");
        }
    }

    #[test]
    fn hmac_key_debug_is_redacted() {
        let key = HmacKey::new(b"canary-key", "k").unwrap();
        assert_eq!(format!("{key:?}"), "HmacKey([redacted])");
    }
}
