//! Jira Connect app webhooks: `Authorization: JWT <token>`, HS256 with the install `sharedSecret`,
//! `iss` = the install's `clientKey`, and a `qsh` claim binding the token to the method, path and query.
//!
//! The body is not covered by the token: Connect does not sign it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode_header, encode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::common::{Claims, OneOrMore, credentials, decode_with_any, header, resolve_secrets};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignError, SignedHeaders, unix_seconds};
use crate::config::ConfigError;
use crate::secret::{Secret, SecretRef};

const HEADER: &str = "Authorization";
const AUTH_SCHEME: &str = "JWT";
const LIFETIME_SECS: i64 = 180;

/// RFC 3986: everything but the unreserved characters `A-Z a-z 0-9 - . _ ~` is percent-encoded.
const RFC3986: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectJwtConfig {
    /// The install's `clientKey`; the token's `iss` must equal it.
    pub client_key: String,
    /// The install's `sharedSecret`(s); any of them is accepted.
    pub secrets: Vec<SecretRef>,
    /// Path of the app's `baseUrl`, which Connect leaves out of the canonical path, e.g. `/grantbridge`.
    #[serde(default)]
    pub base_path: String,
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
}

fn default_leeway_secs() -> u64 {
    60
}

impl ConnectJwtConfig {
    pub fn build(self, at: &str) -> Result<ConnectJwtScheme, ConfigError> {
        if self.client_key.is_empty() {
            return Err(ConfigError::at(format!("{at}.client_key"), "must not be empty"));
        }
        let base_path = self.base_path.trim_end_matches('/');
        if !base_path.is_empty() && !base_path.starts_with('/') {
            return Err(ConfigError::at(format!("{at}.base_path"), "must be empty or start with `/`"));
        }
        Ok(ConnectJwtScheme {
            secrets: resolve_secrets(&self.secrets, at)?,
            base_path: base_path.to_owned(),
            client_key: self.client_key,
            leeway_secs: self.leeway_secs,
        })
    }
}

#[derive(Debug)]
pub struct ConnectJwtScheme {
    client_key: String,
    secrets: OneOrMore<Secret>,
    base_path: String,
    leeway_secs: u64,
}

impl ConnectJwtScheme {
    pub fn verify(&self, req: &RawRequest<'_>, now: SystemTime) -> Result<Proof, Rejection> {
        let token = credentials(header(req, HEADER)?, AUTH_SCHEME)?;
        let token_header = decode_header(token).map_err(|_| Rejection::TokenInvalid)?;
        if token_header.alg != Algorithm::HS256 {
            return Err(Rejection::AlgorithmNotAllowed);
        }
        let keys: Vec<DecodingKey> =
            self.secrets.iter().map(|secret| DecodingKey::from_secret(secret.expose_bytes())).collect();
        let claims = decode_with_any(token, &keys, &self.validation(), now, self.leeway_secs)?;
        let expected = query_string_hash(req.method, self.relative_path(req.path), req.query);
        if claims.get("qsh").and_then(Value::as_str) != Some(expected.as_str()) {
            return Err(Rejection::QshMismatch);
        }
        Ok(Proof { scheme: SchemeName::JiraConnectJwt, signed_delivery_id: None })
    }

    pub fn sign(&self, out: &Outgoing<'_>) -> Result<SignedHeaders, SignError> {
        let now = unix_seconds(out.now);
        let qsh = query_string_hash(out.method, self.relative_path(out.path), out.query);
        let mut claims = Claims::new();
        claims.insert("iss".into(), self.client_key.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(LIFETIME_SECS).into());
        claims.insert("qsh".into(), qsh.into());
        let key = EncodingKey::from_secret(self.secrets.first().expose_bytes());
        let token =
            encode(&Header::new(Algorithm::HS256), &claims, &key).map_err(|e| SignError::Failed(e.to_string()))?;
        Ok(vec![(HEADER.to_owned(), format!("{AUTH_SCHEME} {token}"))])
    }

    fn validation(&self) -> Validation {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
        validation.set_issuer(&[&self.client_key]);
        validation
    }

    /// The request path without the app's base path, as Connect hashes it.
    fn relative_path<'a>(&self, path: &'a str) -> &'a str {
        match path.strip_prefix(self.base_path.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => path,
        }
    }
}

/// Lowercase hex SHA-256 of `METHOD&canonical-path&canonical-query`, per Atlassian's
/// "Understanding JWT for Connect apps". `path` must already be relative to the app's base URL.
pub fn query_string_hash(method: &str, path: &str, query: &str) -> String {
    hex::encode(Sha256::digest(canonical_request(method, path, query).as_bytes()))
}

fn canonical_request(method: &str, path: &str, query: &str) -> String {
    format!("{}&{}&{}", method.to_ascii_uppercase(), canonical_path(path), canonical_query(query))
}

fn canonical_path(path: &str) -> String {
    let path = path.strip_suffix('/').unwrap_or(path).replace('&', "%26");
    if path.starts_with('/') { path } else { format!("/{path}") }
}

/// Parameters decoded (`+` is a space), `jwt` dropped, sorted by encoded name; repeated values sorted, joined by `,`.
fn canonical_query(query: &str) -> String {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = form_decode(name);
        if name != "jwt" {
            params.entry(name).or_default().push(form_decode(value));
        }
    }
    let mut encoded: Vec<(String, String)> = params
        .into_iter()
        .map(|(name, mut values)| {
            values.sort();
            let values: Vec<String> = values.iter().map(|v| rfc3986(v)).collect();
            (rfc3986(&name), values.join(","))
        })
        .collect();
    encoded.sort();
    encoded.iter().map(|(name, values)| format!("{name}={values}")).collect::<Vec<_>>().join("&")
}

fn form_decode(text: &str) -> String {
    percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

fn rfc3986(text: &str) -> String {
    utf8_percent_encode(text, RFC3986).to_string()
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::super::common::test_support::{TestRequest, at, outgoing, req, secret_files, signed};
    use super::*;

    const CLIENT_KEY: &str = "jira:15489595";
    const SECRET: &str = "connect-shared-secret";
    const NOW: i64 = 1_700_000_000;

    fn scheme_with(secrets: &[&str], base_path: &str) -> ConnectJwtScheme {
        ConnectJwtConfig {
            client_key: CLIENT_KEY.into(),
            secrets: secret_files(secrets),
            base_path: base_path.into(),
            leeway_secs: 60,
        }
        .build("src")
        .unwrap()
    }

    fn scheme(secrets: &[&str]) -> ConnectJwtScheme {
        scheme_with(secrets, "")
    }

    fn token(claims: &Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn claims(qsh: &str) -> Value {
        json!({"iss": CLIENT_KEY, "iat": NOW, "exp": NOW + 180, "qsh": qsh})
    }

    fn webhook(token: &str) -> TestRequest {
        let mut request = req(&[("Authorization", &format!("JWT {token}"))], b"{}");
        request.path = "/webhooks/jira-connect".into();
        request
    }

    fn webhook_qsh() -> String {
        query_string_hash("POST", "/webhooks/jira-connect", "")
    }

    #[test]
    fn published_qsh_vector() {
        assert_eq!(
            query_string_hash("POST", "/installed", ""),
            "4a2e1de8ca74e6cafe8862d332fa3ac7a8e51e692bc6d798ea4dfedc14948bf4"
        );
        assert_eq!(canonical_request("post", "/installed", ""), "POST&/installed&");
    }

    #[test]
    fn atlassian_canonical_request_example() {
        let query = "zee_last=param&repeated=parameter+2&first=param&repeated=parameter%201";
        assert_eq!(
            canonical_request("GET", "/path/to/service", query),
            "GET&/path/to/service&first=param&repeated=parameter%201,parameter%202&zee_last=param"
        );
    }

    #[test]
    fn agrees_with_the_atlassian_jwt_python_package() {
        // Expected values computed with `atlassian_jwt.url_utils` 3.0.0 (PyPI), an implementation nobody here wrote.
        let query =
            "expand=names,renderedFields&fields=*all&jwt=x&b=%7Efoo+bar&a=2&a=10&a=1&%C3%A9t%C3%A9=%E2%9C%93&Z=(x)&e=";
        assert_eq!(
            canonical_request("post", "/rest/api/2/issue/", query),
            "POST&/rest/api/2/issue&%C3%A9t%C3%A9=%E2%9C%93&Z=%28x%29&a=1,10,2&b=~foo%20bar&e=\
             &expand=names%2CrenderedFields&fields=%2Aall"
        );
        assert_eq!(
            query_string_hash("post", "/rest/api/2/issue/", query),
            "4f647d9d893a0e15eec0c6cf6b7ec62adee14694d621e8a9497ba69f08923375"
        );
    }

    #[test]
    fn canonical_query_rules() {
        assert_eq!(canonical_query("b=2&a=1&B=3"), "B=3&a=1&b=2", "sorted by code point");
        assert_eq!(canonical_query("a=z&a=b&a=m"), "a=b,m,z", "repeated values sorted and joined");
        assert_eq!(canonical_query("q=a b&r=a+b&s=a%20b"), "q=a%20b&r=a%20b&s=a%20b", "space");
        assert_eq!(canonical_query("star=*&tilde=~&x=%7E"), "star=%2A&tilde=~&x=~", "* encoded, ~ not");
        assert_eq!(canonical_query("e=%c3%a9&k%2Cy=a,b"), "e=%C3%A9&k%2Cy=a%2Cb", "uppercase hex, commas encoded");
        assert_eq!(canonical_query("jwt=abc.def.ghi&a=1"), "a=1", "jwt dropped");
        assert_eq!(canonical_query("flag&&a="), "a=&flag=", "empty values kept");
        assert_eq!(canonical_query(""), "");
    }

    #[test]
    fn canonical_path_rules() {
        assert_eq!(canonical_path("/rest/api/"), "/rest/api", "trailing slash removed");
        assert_eq!(canonical_path("/"), "/");
        assert_eq!(canonical_path(""), "/");
        assert_eq!(canonical_path("/a&b"), "/a%26b");
        assert_eq!(canonical_path("installed"), "/installed");
    }

    #[test]
    fn base_path_is_stripped() {
        let s = scheme_with(&[SECRET], "/grantbridge/");
        assert_eq!(s.relative_path("/grantbridge/installed"), "/installed");
        assert_eq!(s.relative_path("/grantbridge"), "");
        assert_eq!(s.relative_path("/grantbridgex/installed"), "/grantbridgex/installed");
        let qsh = query_string_hash("POST", "/webhooks/jira-connect", "");
        let mut request = webhook(&token(&claims(&qsh), SECRET));
        request.path = "/grantbridge/webhooks/jira-connect".into();
        assert!(s.verify(&request.raw(), at(NOW)).is_ok());
    }

    #[test]
    fn valid_token() {
        let s = scheme(&[SECRET]);
        let proof = s.verify(&webhook(&token(&claims(&webhook_qsh()), SECRET)).raw(), at(NOW)).unwrap();
        assert_eq!(proof, Proof { scheme: SchemeName::JiraConnectJwt, signed_delivery_id: None });
        let mut lower = req(&[("authorization", &format!("jwt {}", token(&claims(&webhook_qsh()), SECRET)))], b"{}");
        lower.path = "/webhooks/jira-connect".into();
        assert!(s.verify(&lower.raw(), at(NOW)).is_ok());
    }

    #[test]
    fn sign_then_verify_with_query() {
        let s = scheme_with(&[SECRET], "/app");
        let mut out = outgoing(b"{}", at(NOW));
        out.path = "/app/webhooks/jira";
        out.query = "b=2&a=1";
        let request = signed(&out, &s.sign(&out).unwrap());
        assert!(s.verify(&request.raw(), at(NOW)).is_ok());
        let mut other_query = signed(&out, &s.sign(&out).unwrap());
        other_query.query = "b=2&a=2".into();
        assert_eq!(s.verify(&other_query.raw(), at(NOW)), Err(Rejection::QshMismatch));
    }

    #[test]
    fn qsh_must_match_the_request() {
        let s = scheme(&[SECRET]);
        let verify = |claims: &Value| s.verify(&webhook(&token(claims, SECRET)).raw(), at(NOW));
        assert_eq!(
            verify(&claims(&query_string_hash("GET", "/webhooks/jira-connect", ""))),
            Err(Rejection::QshMismatch)
        );
        assert_eq!(verify(&claims(&query_string_hash("POST", "/installed", ""))), Err(Rejection::QshMismatch));
        assert_eq!(verify(&claims("context-qsh")), Err(Rejection::QshMismatch));
        assert_eq!(verify(&json!({"iss": CLIENT_KEY, "exp": NOW + 180})), Err(Rejection::QshMismatch));
    }

    #[test]
    fn issuer_expiry_and_secret() {
        let s = scheme(&[SECRET]);
        let verify = |claims: Value, secret: &str| s.verify(&webhook(&token(&claims, secret)).raw(), at(NOW));
        let qsh = webhook_qsh();
        assert_eq!(
            verify(json!({"iss": "jira:other", "exp": NOW + 180, "qsh": qsh}), SECRET),
            Err(Rejection::ClaimMismatch)
        );
        assert_eq!(
            verify(json!({"iss": CLIENT_KEY, "exp": NOW - 61, "qsh": qsh}), SECRET),
            Err(Rejection::TokenExpired)
        );
        assert!(verify(json!({"iss": CLIENT_KEY, "exp": NOW - 60, "qsh": qsh}), SECRET).is_ok(), "within leeway");
        assert_eq!(
            verify(json!({"iss": CLIENT_KEY, "qsh": qsh}), SECRET),
            Err(Rejection::TokenInvalid),
            "exp required"
        );
        assert_eq!(verify(json!({"exp": NOW + 180, "qsh": qsh}), SECRET), Err(Rejection::TokenInvalid), "iss required");
        assert_eq!(verify(claims(&qsh), "wrong-secret"), Err(Rejection::TokenInvalid));
    }

    #[test]
    fn rotation() {
        let t = token(&claims(&webhook_qsh()), "old-secret");
        assert!(scheme(&["new-secret", "old-secret"]).verify(&webhook(&t).raw(), at(NOW)).is_ok());
        assert_eq!(scheme(&["new-secret"]).verify(&webhook(&t).raw(), at(NOW)), Err(Rejection::TokenInvalid));
    }

    #[test]
    fn only_hs256_and_well_formed_headers() {
        let s = scheme(&[SECRET]);
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims(&webhook_qsh()),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(s.verify(&webhook(&hs384).raw(), at(NOW)), Err(Rejection::AlgorithmNotAllowed));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims(&webhook_qsh()).to_string())
        );
        assert_eq!(s.verify(&webhook(&none).raw(), at(NOW)), Err(Rejection::TokenInvalid));
        let t = token(&claims(&webhook_qsh()), SECRET);
        assert_eq!(s.verify(&webhook(&t[..t.len() - 3]).raw(), at(NOW)), Err(Rejection::TokenInvalid));
        assert_eq!(s.verify(&req(&[], b"{}").raw(), at(NOW)), Err(Rejection::Missing));
        let bearer = req(&[("Authorization", &format!("Bearer {t}"))], b"{}");
        assert_eq!(s.verify(&bearer.raw(), at(NOW)), Err(Rejection::Malformed));
    }

    #[test]
    fn config() {
        let c: ConnectJwtConfig = toml::from_str("client_key = \"jira:1\"\nsecrets = []").unwrap();
        assert_eq!((c.base_path.as_str(), c.leeway_secs), ("", 60));
        assert!(c.build("src").unwrap_err().to_string().starts_with("src.secrets:"));
        let bad = ConnectJwtConfig {
            client_key: "k".into(),
            secrets: secret_files(&["s"]),
            base_path: "app".into(),
            leeway_secs: 0,
        };
        assert!(bad.build("src").unwrap_err().to_string().starts_with("src.base_path:"));
        assert!(!format!("{:?}", scheme(&["canary-secret"])).contains("canary"));
    }
}
