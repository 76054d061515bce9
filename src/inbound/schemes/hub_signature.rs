//! Jira admin webhooks: `X-Hub-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>` (WebSub style).
//!
//! Nothing else is signed: `X-Atlassian-Webhook-Identifier` is not covered, and there is no timestamp,
//! so replay protection has to come from de-duplication.

use serde::Deserialize;

use super::common::{HmacKey, OneOrMore, TAG_LEN, header, hmac_keys};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignedHeaders};
use crate::config::ConfigError;
use crate::secret::SecretRef;

const HEADER: &str = "X-Hub-Signature";
const METHOD: &str = "sha256";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSignatureConfig {
    /// The webhook secret(s) given to Jira; any of them is accepted.
    pub secrets: Vec<SecretRef>,
}

impl HubSignatureConfig {
    pub fn build(self, at: &str) -> Result<HubSignatureScheme, ConfigError> {
        Ok(HubSignatureScheme { keys: hmac_keys(&self.secrets, at)? })
    }
}

#[derive(Debug)]
pub struct HubSignatureScheme {
    keys: OneOrMore<HmacKey>,
}

impl HubSignatureScheme {
    pub fn verify(&self, req: &RawRequest<'_>) -> Result<Proof, Rejection> {
        let value = header(req, HEADER)?;
        let (method, signature) = value.trim().split_once('=').ok_or(Rejection::Malformed)?;
        if !method.eq_ignore_ascii_case(METHOD) {
            return Err(Rejection::Malformed);
        }
        let tag = hex::decode(signature).map_err(|_| Rejection::Malformed)?;
        if tag.len() != TAG_LEN {
            return Err(Rejection::Malformed);
        }
        if !self.keys.iter().any(|key| key.verifies(&[req.body], &tag)) {
            return Err(Rejection::Mismatch);
        }
        Ok(Proof { scheme: SchemeName::JiraHubSignature, signed_delivery_id: None })
    }

    pub fn sign(&self, out: &Outgoing<'_>) -> SignedHeaders {
        let tag = self.keys.first().tag(&[out.body]);
        vec![(HEADER.to_owned(), format!("{METHOD}={}", hex::encode(tag)))]
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_support::{at, outgoing, req, secret_files, signed};
    use super::*;

    const VECTOR_SECRET: &str = "It's a Secret to Everybody";
    const VECTOR_SIGNATURE: &str = "sha256=a4771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9";

    fn scheme(secrets: &[&str]) -> HubSignatureScheme {
        HubSignatureConfig { secrets: secret_files(secrets) }.build("sources.jira.verify[0]").unwrap()
    }

    fn verify(scheme: &HubSignatureScheme, signature: &str, body: &[u8]) -> Result<Proof, Rejection> {
        scheme.verify(&req(&[(HEADER, signature)], body).raw())
    }

    #[test]
    fn atlassian_test_vector() {
        let s = scheme(&[VECTOR_SECRET]);
        let proof = verify(&s, VECTOR_SIGNATURE, b"Hello World!").unwrap();
        assert_eq!(proof, Proof { scheme: SchemeName::JiraHubSignature, signed_delivery_id: None });
        let out = outgoing(b"Hello World!", at(0));
        assert_eq!(s.sign(&out), vec![(HEADER.to_owned(), VECTOR_SIGNATURE.to_owned())]);
    }

    #[test]
    fn hex_is_case_insensitive_and_header_name_too() {
        let s = scheme(&[VECTOR_SECRET]);
        let upper = format!("sha256={}", VECTOR_SIGNATURE["sha256=".len()..].to_uppercase());
        assert!(s.verify(&req(&[("x-hub-signature", &upper)], b"Hello World!").raw()).is_ok());
    }

    #[test]
    fn sign_then_verify() {
        let s = scheme(&["first", "second"]);
        let out = outgoing(br#"{"webhookEvent":"jira:issue_updated"}"#, at(1_700_000_000));
        assert!(s.verify(&signed(&out, &s.sign(&out)).raw()).is_ok());
    }

    #[test]
    fn one_changed_byte_or_wrong_secret_is_a_mismatch() {
        let s = scheme(&[VECTOR_SECRET]);
        assert_eq!(verify(&s, VECTOR_SIGNATURE, b"Hello World?"), Err(Rejection::Mismatch));
        let other = scheme(&["another secret"]);
        assert_eq!(verify(&other, VECTOR_SIGNATURE, b"Hello World!"), Err(Rejection::Mismatch));
    }

    #[test]
    fn rotation_accepts_any_active_secret_and_refuses_a_removed_one() {
        let old = scheme(&["old secret"]);
        let out = outgoing(b"payload", at(0));
        let signed_with_old = old.sign(&out);
        let during = scheme(&["new secret", "old secret"]);
        assert!(during.verify(&signed(&out, &signed_with_old).raw()).is_ok());
        let after = scheme(&["new secret"]);
        assert_eq!(after.verify(&signed(&out, &signed_with_old).raw()), Err(Rejection::Mismatch));
    }

    #[test]
    fn missing_and_malformed_headers() {
        let s = scheme(&[VECTOR_SECRET]);
        assert_eq!(s.verify(&req(&[], b"Hello World!").raw()), Err(Rejection::Missing));
        let hex = &VECTOR_SIGNATURE["sha256=".len()..];
        for bad in [
            hex,
            &format!("sha1={hex}"),
            &format!("sha512={hex}"),
            &VECTOR_SIGNATURE[..VECTOR_SIGNATURE.len() - 1],
            &VECTOR_SIGNATURE[..VECTOR_SIGNATURE.len() - 2],
            &format!("{VECTOR_SIGNATURE}00"),
            "sha256=zz771c39fbe90f317c7824e83ddef3caae9cb3d976c214ace1f2937e133263c9",
            "sha256=",
            "",
        ] {
            assert_eq!(verify(&s, bad, b"Hello World!"), Err(Rejection::Malformed), "{bad}");
        }
    }

    #[test]
    fn config_needs_a_secret_and_debug_hides_it() {
        let err = HubSignatureConfig { secrets: vec![] }.build("sources.jira.verify[0]").unwrap_err();
        assert!(err.to_string().contains("sources.jira.verify[0].secrets"), "{err}");
        let s = scheme(&["canary-secret-value"]);
        assert!(!format!("{s:?}").contains("canary"));
    }
}
