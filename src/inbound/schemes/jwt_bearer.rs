//! A JWT bearer token (ServiceNow `GlideJWTAPI`, Jira OAuth 2.0 dynamic webhooks): signature, issuer,
//! audience and lifetime checked against configured keys, and optionally a claim holding the body's SHA-256.
//!
//! Without `body_hash_claim` the token does not cover the body: whoever holds a valid token can send any body
//! until it expires.

use std::fmt;
use std::time::SystemTime;

use jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation, decode_header, encode};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::common::{Claims, OneOrMore, check_header_name, credentials, decode_with_any, header};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignError, SignedHeaders, unix_seconds};
use crate::config::ConfigError;
use crate::secret::{Secret, SecretRef};

const AUTH_SCHEME: &str = "Bearer";
const LIFETIME_SECS: i64 = 300;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtBearerConfig {
    /// The header carrying `Bearer <jwt>`.
    #[serde(default = "default_header")]
    pub header: String,
    /// Required value of the `iss` claim.
    pub issuer: String,
    /// Required value (or member) of the `aud` claim.
    pub audience: String,
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// A claim that must hold the lowercase hex SHA-256 of the raw body.
    pub body_hash_claim: Option<String>,
    /// Verification keys; a token is checked only against the keys of its own `alg`.
    pub keys: Vec<JwtKeyConfig>,
}

fn default_header() -> String {
    "Authorization".to_owned()
}

fn default_leeway_secs() -> u64 {
    60
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKeyConfig {
    /// When a token names a `kid` that a key has, only that key is tried.
    pub kid: Option<String>,
    /// `HS256`, `RS256` or `ES256`.
    pub alg: Algorithm,
    /// HS256 only: the shared secret.
    pub secret: Option<SecretRef>,
    /// RS256 / ES256 only: the PEM public key.
    pub public_key: Option<SecretRef>,
}

impl JwtBearerConfig {
    pub fn build(self, at: &str) -> Result<JwtBearerScheme, ConfigError> {
        check_header_name(&self.header, &format!("{at}.header"))?;
        for (field, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if value.is_empty() {
                return Err(ConfigError::at(format!("{at}.{field}"), "must not be empty"));
            }
        }
        if self.body_hash_claim.as_deref() == Some("") {
            return Err(ConfigError::at(format!("{at}.body_hash_claim"), "must not be empty"));
        }
        let keys = self
            .keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| key.build(&format!("{at}.keys[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let keys =
            OneOrMore::from_vec(keys).ok_or_else(|| ConfigError::at(format!("{at}.keys"), "give at least one key"))?;
        Ok(JwtBearerScheme {
            header: self.header,
            issuer: self.issuer,
            audience: self.audience,
            leeway_secs: self.leeway_secs,
            body_hash_claim: self.body_hash_claim,
            keys,
        })
    }
}

impl JwtKeyConfig {
    fn build(self, at: &str) -> Result<JwtKey, ConfigError> {
        let (decoding, secret) = match (self.alg, self.secret, self.public_key) {
            (Algorithm::HS256, Some(secret), None) => {
                let secret = secret.resolve(&format!("{at}.secret"))?;
                (DecodingKey::from_secret(secret.expose_bytes()), Some(secret))
            }
            (Algorithm::RS256, None, Some(pem)) => {
                let at = format!("{at}.public_key");
                (rsa_public_key(&public_pem(&pem, &at)?, &at)?, None)
            }
            (Algorithm::ES256, None, Some(pem)) => {
                let at = format!("{at}.public_key");
                (p256_public_key(&public_pem(&pem, &at)?, &at)?, None)
            }
            (Algorithm::HS256, ..) => {
                return Err(ConfigError::at(at, "an HS256 key takes `secret`, and no `public_key`"));
            }
            (alg @ (Algorithm::RS256 | Algorithm::ES256), ..) => {
                return Err(ConfigError::at(at, format!("an {alg:?} key takes `public_key` (PEM), and no `secret`")));
            }
            (alg, ..) => {
                return Err(ConfigError::at(
                    format!("{at}.alg"),
                    format!("{alg:?} is not supported: use HS256, RS256 or ES256"),
                ));
            }
        };
        Ok(JwtKey { kid: self.kid, alg: self.alg, decoding, secret })
    }
}

fn public_pem(pem: &SecretRef, at: &str) -> Result<Secret, ConfigError> {
    let pem = pem.resolve(at)?;
    if pem.expose().contains("PRIVATE KEY") {
        return Err(ConfigError::at(at, "holds a private key: give the public key (`openssl pkey -pubout`)"));
    }
    Ok(pem)
}

fn rsa_public_key(pem: &Secret, at: &str) -> Result<DecodingKey, ConfigError> {
    let invalid = || ConfigError::at(at, "is not an RSA public key in PEM form");
    let key = DecodingKey::from_rsa_pem(pem.expose_bytes()).map_err(|_| invalid())?;
    // `from_rsa_pem` only unwraps the PEM; parsing the key now turns a bad key into a config error.
    match key.kind() {
        DecodingKeyKind::SecretOrDer(der) => {
            (DEFAULT_PROVIDER.key_utils.rsa_pub_components_from_public_key)(der).map_err(|_| invalid())?;
        }
        DecodingKeyKind::RsaModulusExponent { .. } => {}
    }
    Ok(key)
}

fn p256_public_key(pem: &Secret, at: &str) -> Result<DecodingKey, ConfigError> {
    let key = DecodingKey::from_ec_pem(pem.expose_bytes())
        .map_err(|_| ConfigError::at(at, "is not an EC public key in PEM form"))?;
    // An uncompressed P-256 point: 0x04, then 32 bytes each of x and y.
    if !matches!(key.kind(), DecodingKeyKind::SecretOrDer(point) if point.len() == 65 && point.first() == Some(&4)) {
        return Err(ConfigError::at(at, "is not a P-256 public key, which ES256 needs"));
    }
    Ok(key)
}

struct JwtKey {
    kid: Option<String>,
    alg: Algorithm,
    decoding: DecodingKey,
    /// HS256 only, to sign with.
    secret: Option<Secret>,
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtKey").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct JwtBearerScheme {
    header: String,
    issuer: String,
    audience: String,
    leeway_secs: u64,
    body_hash_claim: Option<String>,
    keys: OneOrMore<JwtKey>,
}

impl JwtBearerScheme {
    pub fn verify(&self, req: &RawRequest<'_>, now: SystemTime) -> Result<Proof, Rejection> {
        let token = credentials(header(req, &self.header)?, AUTH_SCHEME)?;
        let token_header = decode_header(token).map_err(|_| Rejection::TokenInvalid)?;
        let same_alg: Vec<&JwtKey> = self.keys.iter().filter(|key| key.alg == token_header.alg).collect();
        if same_alg.is_empty() {
            return Err(Rejection::AlgorithmNotAllowed);
        }
        let named: Vec<&JwtKey> = match &token_header.kid {
            Some(kid) => same_alg.iter().copied().filter(|key| key.kid.as_ref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let candidates = if named.is_empty() { same_alg } else { named };
        let claims = decode_with_any(
            token,
            candidates.iter().map(|key| &key.decoding),
            &self.validation(token_header.alg),
            now,
            self.leeway_secs,
        )?;
        if let Some(claim) = &self.body_hash_claim {
            let expected = body_hash(req.body);
            if !claims.get(claim).and_then(Value::as_str).is_some_and(|hash| hash.eq_ignore_ascii_case(&expected)) {
                return Err(Rejection::BodyHashMismatch);
            }
        }
        Ok(Proof { scheme: SchemeName::JwtBearer, signed_delivery_id: None })
    }

    /// Signs with the first HS256 key, or, given `private_key_pem`, with the RS256/ES256 key it belongs to.
    pub fn sign(&self, out: &Outgoing<'_>) -> Result<SignedHeaders, SignError> {
        let claims = self.claims(out);
        let token = match out.private_key_pem {
            Some(pem) => self.sign_with_private_key(&claims, pem)?,
            None => self.sign_with_secret(&claims)?,
        };
        Ok(vec![(self.header.clone(), format!("{AUTH_SCHEME} {token}"))])
    }

    fn sign_with_secret(&self, claims: &Claims) -> Result<String, SignError> {
        let Some((key, secret)) = self.keys.iter().find_map(|key| key.secret.as_ref().map(|secret| (key, secret)))
        else {
            return Err(SignError::Unsupported(
                "this source has only RS256/ES256 keys: signing needs --signing-key with the private key (PEM)"
                    .to_owned(),
            ));
        };
        encode(&token_header(key), claims, &EncodingKey::from_secret(secret.expose_bytes()))
            .map_err(|e| SignError::Failed(e.to_string()))
    }

    fn sign_with_private_key(&self, claims: &Claims, pem: &[u8]) -> Result<String, SignError> {
        let mut asymmetric = self.keys.iter().filter(|key| key.secret.is_none()).peekable();
        if asymmetric.peek().is_none() {
            return Err(SignError::Unsupported(
                "this source has only HS256 keys: it signs with its secret, --signing-key is not used".to_owned(),
            ));
        }
        for key in asymmetric {
            let encoding = match key.alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
                _ => EncodingKey::from_ec_pem(pem),
            };
            let Ok(token) = encoding.and_then(|encoding| encode(&token_header(key), claims, &encoding)) else {
                continue;
            };
            if let Some((message, signature)) = token.rsplit_once('.')
                && jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.decoding, key.alg).unwrap_or(false)
            {
                return Ok(token);
            }
        }
        Err(SignError::Failed(
            "the --signing-key is not the private key of any configured RS256/ES256 public key".to_owned(),
        ))
    }

    fn claims(&self, out: &Outgoing<'_>) -> Claims {
        let now = unix_seconds(out.now);
        let mut claims = Claims::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        claims.insert("exp".into(), now.saturating_add(LIFETIME_SECS).into());
        claims.insert("jti".into(), out.delivery_id.into());
        if let Some(claim) = &self.body_hash_claim {
            claims.insert(claim.clone(), body_hash(out.body).into());
        }
        claims
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation
    }
}

fn token_header(key: &JwtKey) -> Header {
    Header { kid: key.kid.clone(), ..Header::new(key.alg) }
}

fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;

    use super::super::common::test_support::{TestRequest, at, outgoing, req, secret_file, signed};
    use super::*;

    const RSA_PRIVATE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pem"));
    const RSA_PUBLIC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/rsa.pub.pem"));
    const EC_PRIVATE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/ec.pem"));
    const EC_PUBLIC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys/ec.pub.pem"));

    const ISSUER: &str = "https://dev12345.service-now.com";
    const AUDIENCE: &str = "grantbridge";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"number":"RITM0010001","approval":"approved"}"#;

    fn hs256(kid: Option<&str>, secret: &str) -> JwtKeyConfig {
        JwtKeyConfig {
            kid: kid.map(Into::into),
            alg: Algorithm::HS256,
            secret: Some(secret_file(secret)),
            public_key: None,
        }
    }

    fn public(alg: Algorithm, kid: Option<&str>, pem: &str) -> JwtKeyConfig {
        JwtKeyConfig { kid: kid.map(Into::into), alg, secret: None, public_key: Some(secret_file(pem)) }
    }

    fn config(keys: Vec<JwtKeyConfig>) -> JwtBearerConfig {
        JwtBearerConfig {
            header: default_header(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway_secs: 60,
            body_hash_claim: None,
            keys,
        }
    }

    fn scheme(keys: Vec<JwtKeyConfig>) -> JwtBearerScheme {
        config(keys).build("src").unwrap()
    }

    fn claims() -> Value {
        json!({"iss": ISSUER, "aud": AUDIENCE, "iat": NOW, "exp": NOW + 300})
    }

    fn with(mut claims: Value, name: &str, value: Value) -> Value {
        claims[name] = value;
        claims
    }

    fn hs_token(claims: &Value, secret: &[u8], kid: Option<&str>) -> String {
        let header = Header { kid: kid.map(Into::into), ..Header::new(Algorithm::HS256) };
        encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn bearer(token: &str) -> TestRequest {
        req(&[("Authorization", &format!("Bearer {token}"))], BODY)
    }

    fn verify(s: &JwtBearerScheme, token: &str) -> Result<Proof, Rejection> {
        s.verify(&bearer(token).raw(), at(NOW))
    }

    #[test]
    fn hs256_token_is_accepted() {
        let s = scheme(vec![hs256(None, "hs-secret")]);
        let proof = verify(&s, &hs_token(&claims(), b"hs-secret", None)).unwrap();
        assert_eq!(proof, Proof { scheme: SchemeName::JwtBearer, signed_delivery_id: None });
        let lower = req(&[("authorization", &format!("bearer {}", hs_token(&claims(), b"hs-secret", None)))], BODY);
        assert!(s.verify(&lower.raw(), at(NOW)).is_ok());
    }

    #[test]
    fn lifetime_issuer_and_audience() {
        let s = scheme(vec![hs256(None, "hs-secret")]);
        let check = |claims: Value| verify(&s, &hs_token(&claims, b"hs-secret", None));
        assert_eq!(check(with(claims(), "exp", json!(NOW - 61))), Err(Rejection::TokenExpired), "expired");
        assert!(check(with(claims(), "exp", json!(NOW - 60))).is_ok(), "expired within leeway");
        assert_eq!(check(with(claims(), "nbf", json!(NOW + 61))), Err(Rejection::TokenExpired), "not yet valid");
        assert!(check(with(claims(), "nbf", json!(NOW + 60))).is_ok(), "nbf within leeway");
        assert_eq!(check(with(claims(), "nbf", json!("soon"))), Err(Rejection::TokenInvalid));
        assert_eq!(check(with(claims(), "iss", json!("https://evil.service-now.com"))), Err(Rejection::ClaimMismatch));
        assert_eq!(check(with(claims(), "aud", json!("someone-else"))), Err(Rejection::ClaimMismatch));
        assert!(check(with(claims(), "aud", json!(["someone-else", AUDIENCE]))).is_ok());
        for required in ["exp", "iss", "aud"] {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(required);
            assert_eq!(check(c), Err(Rejection::TokenInvalid), "{required} is required");
        }
    }

    #[test]
    fn wrong_secret_rotation_and_garbage() {
        let s = scheme(vec![hs256(None, "new-secret"), hs256(None, "old-secret")]);
        assert!(verify(&s, &hs_token(&claims(), b"old-secret", None)).is_ok());
        assert_eq!(verify(&s, &hs_token(&claims(), b"other", None)), Err(Rejection::TokenInvalid));
        let rotated = scheme(vec![hs256(None, "new-secret")]);
        assert_eq!(verify(&rotated, &hs_token(&claims(), b"old-secret", None)), Err(Rejection::TokenInvalid));
        let t = hs_token(&claims(), b"new-secret", None);
        assert_eq!(verify(&rotated, &t[..t.len() - 2]), Err(Rejection::TokenInvalid));
        assert_eq!(verify(&rotated, "not.a.jwt"), Err(Rejection::TokenInvalid));
        assert_eq!(rotated.verify(&req(&[], BODY).raw(), at(NOW)), Err(Rejection::Missing));
        let basic = req(&[("Authorization", "Basic dXNlcjpwYXNz")], BODY);
        assert_eq!(rotated.verify(&basic.raw(), at(NOW)), Err(Rejection::Malformed));
    }

    #[test]
    fn alg_none_is_refused() {
        let s = scheme(vec![hs256(None, "hs-secret")]);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        );
        assert_eq!(verify(&s, &none), Err(Rejection::TokenInvalid));
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let forged = hs_token(&claims(), RSA_PUBLIC.as_bytes(), None);
        let rsa_only = scheme(vec![public(Algorithm::RS256, None, RSA_PUBLIC)]);
        assert_eq!(verify(&rsa_only, &forged), Err(Rejection::AlgorithmNotAllowed));
        let both = scheme(vec![public(Algorithm::RS256, None, RSA_PUBLIC), hs256(None, "hs-secret")]);
        assert_eq!(verify(&both, &forged), Err(Rejection::TokenInvalid));
    }

    #[test]
    fn rs256_and_es256_with_real_keys() {
        for (alg, private, public_pem) in
            [(Algorithm::RS256, RSA_PRIVATE, RSA_PUBLIC), (Algorithm::ES256, EC_PRIVATE, EC_PUBLIC)]
        {
            let s = scheme(vec![public(alg, Some("k1"), public_pem)]);
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(private).unwrap(),
                _ => EncodingKey::from_ec_pem(private).unwrap(),
            };
            let token = encode(&Header::new(alg), &claims(), &key).unwrap();
            assert!(verify(&s, &token).is_ok(), "{alg:?}");
            let expired = encode(&Header::new(alg), &with(claims(), "exp", json!(NOW - 3600)), &key).unwrap();
            assert_eq!(verify(&s, &expired), Err(Rejection::TokenExpired), "{alg:?}");
            let (message, _) = token.rsplit_once('.').unwrap();
            let (_, other_signature) = expired.rsplit_once('.').unwrap();
            assert_eq!(verify(&s, &format!("{message}.{other_signature}")), Err(Rejection::TokenInvalid), "{alg:?}");
        }
    }

    #[test]
    fn kid_selects_the_key() {
        let s = scheme(vec![hs256(Some("a"), "secret-a"), hs256(Some("b"), "secret-b")]);
        assert!(verify(&s, &hs_token(&claims(), b"secret-b", Some("b"))).is_ok());
        assert!(verify(&s, &hs_token(&claims(), b"secret-b", None)).is_ok(), "no kid: every key is tried");
        assert!(
            verify(&s, &hs_token(&claims(), b"secret-b", Some("unknown"))).is_ok(),
            "unknown kid: every key is tried"
        );
        assert_eq!(
            verify(&s, &hs_token(&claims(), b"secret-b", Some("a"))),
            Err(Rejection::TokenInvalid),
            "named key only"
        );
    }

    #[test]
    fn body_hash_claim() {
        let mut c = config(vec![hs256(None, "hs-secret")]);
        c.body_hash_claim = Some("body_sha256".into());
        let s = c.build("src").unwrap();
        let hash = hex::encode(Sha256::digest(BODY));
        assert!(verify(&s, &hs_token(&with(claims(), "body_sha256", json!(hash)), b"hs-secret", None)).is_ok());
        let upper = json!(hash.to_uppercase());
        assert!(verify(&s, &hs_token(&with(claims(), "body_sha256", upper), b"hs-secret", None)).is_ok());
        let t = hs_token(&with(claims(), "body_sha256", json!(hash)), b"hs-secret", None);
        let changed = req(&[("Authorization", &format!("Bearer {t}"))], b"{}");
        assert_eq!(s.verify(&changed.raw(), at(NOW)), Err(Rejection::BodyHashMismatch));
        assert_eq!(verify(&s, &hs_token(&claims(), b"hs-secret", None)), Err(Rejection::BodyHashMismatch));
    }

    #[test]
    fn sign_then_verify() {
        let mut c = config(vec![public(Algorithm::RS256, Some("r"), RSA_PUBLIC), hs256(Some("h"), "hs-secret")]);
        c.body_hash_claim = Some("body_sha256".into());
        let s = c.build("src").unwrap();
        let out = outgoing(BODY, at(NOW));
        assert!(s.verify(&signed(&out, &s.sign(&out).unwrap()).raw(), at(NOW)).is_ok(), "HS256");
        assert!(s.verify(&signed(&out, &s.sign(&out).unwrap()).raw(), at(NOW + 361)).is_err(), "exp = now + 300");
        for (alg, private, public_pem) in
            [(Algorithm::RS256, RSA_PRIVATE, RSA_PUBLIC), (Algorithm::ES256, EC_PRIVATE, EC_PUBLIC)]
        {
            let s = scheme(vec![hs256(None, "hs-secret"), public(alg, Some("p"), public_pem)]);
            let mut out = outgoing(BODY, at(NOW));
            out.private_key_pem = Some(private);
            let headers = s.sign(&out).unwrap();
            let token = headers[0].1.strip_prefix("Bearer ").unwrap();
            let header = decode_header(token).unwrap();
            assert_eq!((header.alg, header.kid.as_deref()), (alg, Some("p")));
            assert!(s.verify(&signed(&out, &headers).raw(), at(NOW)).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn signing_needs_the_right_key() {
        let rsa_only = scheme(vec![public(Algorithm::RS256, None, RSA_PUBLIC)]);
        let mut out = outgoing(BODY, at(NOW));
        assert!(matches!(rsa_only.sign(&out), Err(SignError::Unsupported(m)) if m.contains("--signing-key")));
        out.private_key_pem = Some(EC_PRIVATE);
        assert!(matches!(rsa_only.sign(&out), Err(SignError::Failed(_))));
        let hs_only = scheme(vec![hs256(None, "hs-secret")]);
        assert!(matches!(hs_only.sign(&out), Err(SignError::Unsupported(_))));
    }

    #[test]
    fn key_config_errors() {
        let build = |key: JwtKeyConfig| config(vec![key]).build("src").unwrap_err().to_string();
        assert!(
            build(JwtKeyConfig { kid: None, alg: Algorithm::HS256, secret: None, public_key: None })
                .starts_with("src.keys[0]:")
        );
        let both = JwtKeyConfig { public_key: Some(secret_file(RSA_PUBLIC)), ..hs256(None, "s") };
        assert!(build(both).starts_with("src.keys[0]:"));
        let rs_with_secret = JwtKeyConfig { alg: Algorithm::RS256, ..hs256(None, "s") };
        assert!(build(rs_with_secret).starts_with("src.keys[0]:"));
        assert!(build(public(Algorithm::RS256, None, "not a pem")).starts_with("src.keys[0].public_key:"));
        assert!(build(public(Algorithm::RS256, None, EC_PUBLIC)).starts_with("src.keys[0].public_key:"));
        assert!(build(public(Algorithm::ES256, None, RSA_PUBLIC)).starts_with("src.keys[0].public_key:"));
        let private = build(public(Algorithm::RS256, None, std::str::from_utf8(RSA_PRIVATE).unwrap()));
        assert!(private.contains("private key") && !private.contains("MII"), "{private}");
        assert!(build(public(Algorithm::PS256, None, RSA_PUBLIC)).starts_with("src.keys[0].alg:"));
        let err = config(vec![]).build("src").unwrap_err().to_string();
        assert!(err.starts_with("src.keys:"), "{err}");
    }

    #[test]
    fn toml_config_and_debug() {
        let pem = secret_file(RSA_PUBLIC);
        let crate::secret::SecretRef::File(path) = pem else { unreachable!() };
        let toml = format!(
            r#"issuer = "{ISSUER}"
audience = "{AUDIENCE}"
[[keys]]
kid = "r1"
alg = "RS256"
public_key = {{ file = "{}" }}
"#,
            path.display()
        );
        let c: JwtBearerConfig = toml::from_str(&toml).unwrap();
        assert_eq!((c.header.as_str(), c.leeway_secs, c.body_hash_claim.is_none()), ("Authorization", 60, true));
        c.build("src").unwrap();
        assert!(toml::from_str::<JwtBearerConfig>(&format!("{toml}extra = 1")).is_err());
        let s = scheme(vec![hs256(Some("k"), "canary-secret")]);
        assert!(!format!("{s:?}").contains("canary"));
    }
}
