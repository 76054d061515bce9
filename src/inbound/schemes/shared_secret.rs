//! A static shared secret in a header, for senders that cannot sign (Jira Automation "Send web request").
//!
//! This is the weakest scheme: the secret travels with every request and covers neither the body nor a
//! timestamp, so anyone who sees one request (a proxy, a log of headers) can send any body, any number of
//! times. Prefer a signing scheme whenever the sender can produce one; use this only over TLS.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::common::{OneOrMore, check_header_name, header, resolve_secrets};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignedHeaders};
use crate::config::ConfigError;
use crate::secret::{Secret, SecretRef};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedSecretConfig {
    /// The header carrying the secret, e.g. `X-Grantbridge-Token`.
    pub header: String,
    /// Accepted values; any of them is accepted.
    pub secrets: Vec<SecretRef>,
}

impl SharedSecretConfig {
    pub fn build(self, at: &str) -> Result<SharedSecretScheme, ConfigError> {
        check_header_name(&self.header, &format!("{at}.header"))?;
        Ok(SharedSecretScheme { secrets: resolve_secrets(&self.secrets, at)?, header: self.header })
    }
}

#[derive(Debug)]
pub struct SharedSecretScheme {
    header: String,
    secrets: OneOrMore<Secret>,
}

impl SharedSecretScheme {
    pub fn verify(&self, req: &RawRequest<'_>) -> Result<Proof, Rejection> {
        // Comparing fixed-size digests keeps both the content and the length of the secrets out of the timing.
        let given = Sha256::digest(header(req, &self.header)?.as_bytes());
        let matched = self
            .secrets
            .iter()
            .fold(Choice::from(0), |acc, secret| acc | Sha256::digest(secret.expose_bytes()).ct_eq(&given));
        if !bool::from(matched) {
            return Err(Rejection::Mismatch);
        }
        Ok(Proof { scheme: SchemeName::SharedSecretHeader, signed_delivery_id: None })
    }

    pub fn sign(&self, _out: &Outgoing<'_>) -> SignedHeaders {
        vec![(self.header.clone(), self.secrets.first().expose().to_owned())]
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_support::{at, outgoing, req, secret_files, signed};
    use super::*;

    const HEADER: &str = "X-Grantbridge-Token";

    fn scheme(secrets: &[&str]) -> SharedSecretScheme {
        SharedSecretConfig { header: HEADER.into(), secrets: secret_files(secrets) }.build("src").unwrap()
    }

    fn verify(s: &SharedSecretScheme, value: &str) -> Result<Proof, Rejection> {
        s.verify(&req(&[(HEADER, value)], b"{}").raw())
    }

    #[test]
    fn sign_then_verify() {
        let s = scheme(&["s3cret-token"]);
        let out = outgoing(b"{}", at(0));
        let headers = s.sign(&out);
        assert_eq!(headers, vec![(HEADER.to_owned(), "s3cret-token".to_owned())]);
        let proof = s.verify(&signed(&out, &headers).raw()).unwrap();
        assert_eq!(proof.scheme, SchemeName::SharedSecretHeader);
    }

    #[test]
    fn wrong_truncated_or_extended_values_are_refused() {
        let s = scheme(&["s3cret-token"]);
        for wrong in ["s3cret-tokeN", "s3cret-toke", "s3cret-token2", "", "other"] {
            assert_eq!(verify(&s, wrong), Err(Rejection::Mismatch), "{wrong}");
        }
        assert_eq!(s.verify(&req(&[], b"{}").raw()), Err(Rejection::Missing));
    }

    #[test]
    fn rotation() {
        let during = scheme(&["new-token", "old-token"]);
        assert!(verify(&during, "old-token").is_ok());
        assert!(verify(&during, "new-token").is_ok());
        let after = scheme(&["new-token"]);
        assert_eq!(verify(&after, "old-token"), Err(Rejection::Mismatch));
    }

    #[test]
    fn config_validation_and_redaction() {
        let err =
            SharedSecretConfig { header: "X Bad".into(), secrets: secret_files(&["t"]) }.build("src").unwrap_err();
        assert!(err.to_string().starts_with("src.header:"), "{err}");
        let err = SharedSecretConfig { header: HEADER.into(), secrets: vec![] }.build("src").unwrap_err();
        assert!(err.to_string().starts_with("src.secrets:"), "{err}");
        assert!(!format!("{:?}", scheme(&["canary-token"])).contains("canary"));
    }
}
