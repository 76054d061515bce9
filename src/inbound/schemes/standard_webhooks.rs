//! Standard Webhooks (standardwebhooks.com): `webhook-id`, `webhook-timestamp` and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, space-separated for rotation).

use std::time::SystemTime;

use base64::Engine;
use serde::Deserialize;

use super::common::{BASE64, HmacKey, OneOrMore, TAG_LEN, check_window, header, parse_unix_seconds, resolve_secrets};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignedHeaders, unix_seconds};
use crate::config::ConfigError;
use crate::secret::SecretRef;

const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";
const SECRET_PREFIX: &str = "whsec_";
const VERSION: &str = "v1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksConfig {
    /// Signing secrets, `whsec_<base64 key>`; any of them is accepted.
    pub secrets: Vec<SecretRef>,
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
}

fn default_tolerance_secs() -> u64 {
    300
}

impl StandardWebhooksConfig {
    pub fn build(self, at: &str) -> Result<StandardWebhooksScheme, ConfigError> {
        let keys = resolve_secrets(&self.secrets, at)?.try_map(|i, secret| {
            let at = format!("{at}.secrets[{i}]");
            let encoded = secret.expose().strip_prefix(SECRET_PREFIX).unwrap_or(secret.expose());
            match BASE64.decode(encoded) {
                Ok(key) if !key.is_empty() => HmacKey::new(&key, &at),
                _ => Err(ConfigError::at(at, "is not a Standard Webhooks secret (`whsec_` followed by base64)")),
            }
        })?;
        Ok(StandardWebhooksScheme { keys, tolerance_secs: self.tolerance_secs })
    }
}

#[derive(Debug)]
pub struct StandardWebhooksScheme {
    keys: OneOrMore<HmacKey>,
    tolerance_secs: u64,
}

impl StandardWebhooksScheme {
    pub fn verify(&self, req: &RawRequest<'_>, now: SystemTime) -> Result<Proof, Rejection> {
        let id = header(req, ID_HEADER)?;
        let timestamp = header(req, TIMESTAMP_HEADER)?;
        let signatures = header(req, SIGNATURE_HEADER)?;
        check_window(parse_unix_seconds(timestamp)?, now, self.tolerance_secs)?;
        let tags: Vec<Vec<u8>> = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| entry.strip_prefix(VERSION)?.strip_prefix(','))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .filter(|tag| tag.len() == TAG_LEN)
            .collect();
        if tags.is_empty() {
            return Err(Rejection::Malformed);
        }
        let signed: &[&[u8]] = &[id.as_bytes(), b".", timestamp.as_bytes(), b".", req.body];
        if !tags.iter().any(|tag| self.keys.iter().any(|key| key.verifies(signed, tag))) {
            return Err(Rejection::Mismatch);
        }
        Ok(Proof { scheme: SchemeName::StandardWebhooks, signed_delivery_id: Some(id.to_owned()) })
    }

    pub fn sign(&self, out: &Outgoing<'_>) -> SignedHeaders {
        let timestamp = unix_seconds(out.now).to_string();
        let tag = self.keys.first().tag(&[out.delivery_id.as_bytes(), b".", timestamp.as_bytes(), b".", out.body]);
        vec![
            (ID_HEADER.to_owned(), out.delivery_id.to_owned()),
            (TIMESTAMP_HEADER.to_owned(), timestamp),
            (SIGNATURE_HEADER.to_owned(), format!("{VERSION},{}", BASE64.encode(tag))),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_support::{TestRequest, at, outgoing, req, secret_files, signed};
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn scheme(secrets: &[&str]) -> StandardWebhooksScheme {
        StandardWebhooksConfig { secrets: secret_files(secrets), tolerance_secs: 300 }.build("src").unwrap()
    }

    fn vector_request(signature: &str) -> TestRequest {
        let ts = TIMESTAMP.to_string();
        req(&[("webhook-id", ID), ("webhook-timestamp", &ts), ("webhook-signature", signature)], BODY)
    }

    #[test]
    fn published_test_vector() {
        let s = scheme(&[SECRET]);
        let proof = s.verify(&vector_request(SIGNATURE).raw(), at(TIMESTAMP)).unwrap();
        assert_eq!(proof, Proof { scheme: SchemeName::StandardWebhooks, signed_delivery_id: Some(ID.to_owned()) });
        let mut out = outgoing(BODY, at(TIMESTAMP));
        out.delivery_id = ID;
        assert_eq!(s.sign(&out)[2], ("webhook-signature".to_owned(), SIGNATURE.to_owned()));
    }

    #[test]
    fn agrees_with_the_standardwebhooks_python_package() {
        // `Webhook(SECRET).sign("msg_2", 1700000000, '{"a":"é"}')` with `standardwebhooks` 1.1.0 (PyPI).
        let s = scheme(&[SECRET]);
        let mut out = outgoing("{\"a\":\"é\"}".as_bytes(), at(1_700_000_000));
        out.delivery_id = "msg_2";
        let expected = "v1,B+bOh3psNk00nPHQuBusSRDthL0iupORt9wgIafc17c=";
        assert_eq!(s.sign(&out)[2].1, expected);
    }

    #[test]
    fn a_secret_without_prefix_is_base64_as_is() {
        let s = scheme(&["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]);
        assert!(s.verify(&vector_request(SIGNATURE).raw(), at(TIMESTAMP)).is_ok());
    }

    #[test]
    fn sign_then_verify() {
        let s = scheme(&[SECRET, "whsec_c2Vjb25k"]);
        let out = outgoing(b"{}", at(1_700_000_000));
        let proof = s.verify(&signed(&out, &s.sign(&out)).raw(), at(1_700_000_000)).unwrap();
        assert_eq!(proof.signed_delivery_id.as_deref(), Some(out.delivery_id));
    }

    #[test]
    fn several_signatures_and_other_versions() {
        let s = scheme(&[SECRET]);
        let other = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let listed = format!("v1a,xyz {other}  {SIGNATURE} v2,abc");
        assert!(s.verify(&vector_request(&listed).raw(), at(TIMESTAMP)).is_ok());
        assert_eq!(s.verify(&vector_request(other).raw(), at(TIMESTAMP)), Err(Rejection::Mismatch));
        for bad in [
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "v1,###",
            "v1,g0hM9SsE",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            "",
        ] {
            assert_eq!(s.verify(&vector_request(bad).raw(), at(TIMESTAMP)), Err(Rejection::Malformed), "{bad}");
        }
    }

    #[test]
    fn changed_body_id_or_secret_is_a_mismatch() {
        let s = scheme(&[SECRET]);
        let mut changed = vector_request(SIGNATURE);
        changed.body[2] = b'T';
        assert_eq!(s.verify(&changed.raw(), at(TIMESTAMP)), Err(Rejection::Mismatch));
        let other_id = vector_request(SIGNATURE).with_header("webhook-id", "msg_other");
        assert_eq!(s.verify(&other_id.raw(), at(TIMESTAMP)), Err(Rejection::Mismatch));
        let wrong = scheme(&["whsec_c2Vjb25k"]);
        assert_eq!(wrong.verify(&vector_request(SIGNATURE).raw(), at(TIMESTAMP)), Err(Rejection::Mismatch));
    }

    #[test]
    fn rotation() {
        let during = scheme(&["whsec_bmV3IGtleQ==", SECRET]);
        assert!(during.verify(&vector_request(SIGNATURE).raw(), at(TIMESTAMP)).is_ok());
        let after = scheme(&["whsec_bmV3IGtleQ=="]);
        assert_eq!(after.verify(&vector_request(SIGNATURE).raw(), at(TIMESTAMP)), Err(Rejection::Mismatch));
    }

    #[test]
    fn timestamps() {
        let s = scheme(&[SECRET]);
        let verify = |now: i64| s.verify(&vector_request(SIGNATURE).raw(), at(now));
        assert!(verify(TIMESTAMP + 300).is_ok());
        assert!(verify(TIMESTAMP - 300).is_ok());
        assert_eq!(verify(TIMESTAMP + 301), Err(Rejection::StaleTimestamp), "stale");
        assert_eq!(verify(TIMESTAMP - 301), Err(Rejection::StaleTimestamp), "future");
        for bad in ["1614265330.0", "soon", ""] {
            let request = vector_request(SIGNATURE).with_header("webhook-timestamp", bad);
            assert_eq!(s.verify(&request.raw(), at(TIMESTAMP)), Err(Rejection::BadTimestamp), "{bad}");
        }
    }

    #[test]
    fn every_header_is_required() {
        let s = scheme(&[SECRET]);
        for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
            let request = vector_request(SIGNATURE).without_header(name);
            assert_eq!(s.verify(&request.raw(), at(TIMESTAMP)), Err(Rejection::Missing), "{name}");
        }
    }

    #[test]
    fn config_errors_name_the_key_never_the_value() {
        let config =
            StandardWebhooksConfig { secrets: secret_files(&[SECRET, "whsec_not*base64"]), tolerance_secs: 300 };
        let err = config.build("sources.x.verify[0]").unwrap_err().to_string();
        assert!(err.starts_with("sources.x.verify[0].secrets[1]:"), "{err}");
        assert!(!err.contains("not*base64"), "{err}");
        let config: StandardWebhooksConfig = toml::from_str("secrets = []").unwrap();
        assert_eq!(config.tolerance_secs, 300);
        assert!(config.build("src").is_err());
        assert!(!format!("{:?}", scheme(&[SECRET])).contains("MfKQ9r8"));
    }
}
