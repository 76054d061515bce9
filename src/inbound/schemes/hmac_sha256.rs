//! Generic HMAC-SHA256 of the raw body in a configurable header, optionally over `{timestamp}.{body}`.
//!
//! This is what a ServiceNow business rule produces with `GlideCertificateEncryption.generateMac`
//! (base64, keyed with the raw secret bytes). Without `timestamp_header` nothing but the body is signed,
//! and replay protection has to come from de-duplication.

use std::time::SystemTime;

use base64::Engine;
use serde::Deserialize;

use super::common::{
    BASE64, HmacKey, OneOrMore, TAG_LEN, check_header_name, check_window, header, hmac_keys, parse_unix_seconds,
};
use super::{Outgoing, Proof, RawRequest, Rejection, SchemeName, SignedHeaders, unix_seconds};
use crate::config::ConfigError;
use crate::secret::SecretRef;

/// From this value on, a timestamp is taken as Unix milliseconds (ServiceNow's `GlideDateTime.getNumericValue()`).
const MILLISECONDS_FROM: i64 = 100_000_000_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureEncoding {
    /// Hexadecimal, either case.
    Hex,
    /// Standard alphabet, padding optional.
    #[default]
    Base64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    /// The header carrying the signature, e.g. `X-Signature`.
    pub header: String,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    /// Text before the encoded signature, e.g. `sha256=`; required when set.
    pub prefix: Option<String>,
    /// When set, the signed content is `{timestamp}.{body}`, the timestamp taken from this header.
    pub timestamp_header: Option<String>,
    #[serde(default = "default_tolerance_secs")]
    pub tolerance_secs: u64,
    pub secrets: Vec<SecretRef>,
}

fn default_tolerance_secs() -> u64 {
    300
}

impl HmacConfig {
    pub fn build(self, at: &str) -> Result<HmacScheme, ConfigError> {
        check_header_name(&self.header, &format!("{at}.header"))?;
        if let Some(timestamp_header) = &self.timestamp_header {
            check_header_name(timestamp_header, &format!("{at}.timestamp_header"))?;
            if timestamp_header.eq_ignore_ascii_case(&self.header) {
                return Err(ConfigError::at(
                    format!("{at}.timestamp_header"),
                    "the timestamp and the signature need two different headers",
                ));
            }
        }
        Ok(HmacScheme {
            keys: hmac_keys(&self.secrets, at)?,
            header: self.header,
            encoding: self.encoding,
            prefix: self.prefix.unwrap_or_default(),
            timestamp_header: self.timestamp_header,
            tolerance_secs: self.tolerance_secs,
        })
    }
}

#[derive(Debug)]
pub struct HmacScheme {
    header: String,
    encoding: SignatureEncoding,
    prefix: String,
    timestamp_header: Option<String>,
    tolerance_secs: u64,
    keys: OneOrMore<HmacKey>,
}

impl HmacScheme {
    pub fn verify(&self, req: &RawRequest<'_>, now: SystemTime) -> Result<Proof, Rejection> {
        let tag = self.decode(header(req, &self.header)?)?;
        let timestamp = match &self.timestamp_header {
            Some(name) => Some(self.timestamp(req, name, now)?),
            None => None,
        };
        let signed: &[&[u8]] = match timestamp {
            Some(timestamp) => &[timestamp.as_bytes(), b".", req.body],
            None => &[req.body],
        };
        if !self.keys.iter().any(|key| key.verifies(signed, &tag)) {
            return Err(Rejection::Mismatch);
        }
        Ok(Proof { scheme: SchemeName::HmacSha256, signed_delivery_id: None })
    }

    pub fn sign(&self, out: &Outgoing<'_>) -> SignedHeaders {
        let key = self.keys.first();
        match &self.timestamp_header {
            Some(name) => {
                let timestamp = unix_seconds(out.now).to_string();
                let tag = key.tag(&[timestamp.as_bytes(), b".", out.body]);
                vec![(self.header.clone(), self.encode(&tag)), (name.clone(), timestamp)]
            }
            None => vec![(self.header.clone(), self.encode(&key.tag(&[out.body])))],
        }
    }

    fn decode(&self, value: &str) -> Result<Vec<u8>, Rejection> {
        let encoded = value.trim().strip_prefix(self.prefix.as_str()).ok_or(Rejection::Malformed)?;
        let tag = match self.encoding {
            SignatureEncoding::Hex => hex::decode(encoded).ok(),
            SignatureEncoding::Base64 => BASE64.decode(encoded).ok(),
        };
        tag.filter(|tag| tag.len() == TAG_LEN).ok_or(Rejection::Malformed)
    }

    fn encode(&self, tag: &[u8]) -> String {
        let encoded = match self.encoding {
            SignatureEncoding::Hex => hex::encode(tag),
            SignatureEncoding::Base64 => BASE64.encode(tag),
        };
        format!("{}{encoded}", self.prefix)
    }

    /// The timestamp header exactly as received, once it is known to be within the window.
    fn timestamp<'a>(&self, req: &RawRequest<'a>, name: &str, now: SystemTime) -> Result<&'a str, Rejection> {
        let value = header(req, name).map_err(|e| match e {
            Rejection::Missing => Rejection::Missing,
            _ => Rejection::BadTimestamp,
        })?;
        let mut seconds = parse_unix_seconds(value)?;
        if seconds >= MILLISECONDS_FROM {
            seconds /= 1000;
        }
        check_window(seconds, now, self.tolerance_secs)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::super::common::test_support::{at, outgoing, req, secret_files, signed};
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const VECTOR: &str = "4VWUI48lJvmGSF6MYmOVWA9c0hfu55Ur+3e+fUFFFr4=";

    fn config(toml: &str, secrets: &[&str]) -> HmacConfig {
        let mut config: HmacConfig = toml::from_str(toml).unwrap();
        config.secrets = secret_files(secrets);
        config
    }

    fn scheme(toml: &str, secrets: &[&str]) -> HmacScheme {
        config(toml, secrets).build("sources.servicenow.verify[0]").unwrap()
    }

    const PLAIN: &str = r#"header = "X-Signature"
secrets = []"#;
    const TIMESTAMPED: &str = r#"header = "X-Signature"
timestamp_header = "X-Timestamp"
secrets = []"#;

    #[test]
    fn servicenow_generate_mac_vector() {
        let s = scheme(PLAIN, &["sample_key"]);
        assert!(s.verify(&req(&[("X-Signature", VECTOR)], b"sample_data").raw(), at(NOW)).is_ok());
        let unpadded = VECTOR.trim_end_matches('=');
        assert!(s.verify(&req(&[("X-Signature", unpadded)], b"sample_data").raw(), at(NOW)).is_ok());
        assert_eq!(s.sign(&outgoing(b"sample_data", at(NOW))), vec![("X-Signature".to_owned(), VECTOR.to_owned())]);
    }

    #[test]
    fn hex_with_prefix() {
        let s = scheme(
            r#"header = "X-Signature"
encoding = "hex"
prefix = "sha256="
secrets = []"#,
            &["sample_key"],
        );
        let hex = "e15594238f2526f986485e8c626395580f5cd217eee7952bfb77be7d414516be";
        let verify = |value: &str| s.verify(&req(&[("X-Signature", value)], b"sample_data").raw(), at(NOW));
        assert!(verify(&format!("sha256={hex}")).is_ok());
        assert!(verify(&format!("sha256={}", hex.to_uppercase())).is_ok());
        assert_eq!(verify(hex), Err(Rejection::Malformed));
        assert_eq!(verify(&format!("sha1={hex}")), Err(Rejection::Malformed));
        let out = outgoing(b"sample_data", at(NOW));
        assert_eq!(s.sign(&out), vec![("X-Signature".to_owned(), format!("sha256={hex}"))]);
    }

    #[test]
    fn sign_then_verify_with_and_without_timestamp() {
        for toml in [PLAIN, TIMESTAMPED] {
            let s = scheme(toml, &["k1", "k2"]);
            let out = outgoing(br#"{"number":"RITM0010001"}"#, at(NOW));
            assert!(s.verify(&signed(&out, &s.sign(&out)).raw(), at(NOW)).is_ok(), "{toml}");
        }
    }

    #[test]
    fn changed_body_wrong_secret_and_rotation() {
        let s = scheme(PLAIN, &["sample_key"]);
        assert_eq!(s.verify(&req(&[("X-Signature", VECTOR)], b"sample_datA").raw(), at(NOW)), Err(Rejection::Mismatch));
        let other = scheme(PLAIN, &["other_key"]);
        assert_eq!(
            other.verify(&req(&[("X-Signature", VECTOR)], b"sample_data").raw(), at(NOW)),
            Err(Rejection::Mismatch)
        );
        let rotating = scheme(PLAIN, &["new_key", "sample_key"]);
        assert!(rotating.verify(&req(&[("X-Signature", VECTOR)], b"sample_data").raw(), at(NOW)).is_ok());
        let rotated = scheme(PLAIN, &["new_key"]);
        assert_eq!(
            rotated.verify(&req(&[("X-Signature", VECTOR)], b"sample_data").raw(), at(NOW)),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn missing_truncated_and_garbled_signatures() {
        let s = scheme(PLAIN, &["sample_key"]);
        let verify = |headers: &[(&str, &str)]| s.verify(&req(headers, b"sample_data").raw(), at(NOW));
        assert_eq!(verify(&[]), Err(Rejection::Missing));
        assert_eq!(verify(&[("X-Signature", &VECTOR[..20])]), Err(Rejection::Malformed));
        assert_eq!(verify(&[("X-Signature", "not base64 at all!")]), Err(Rejection::Malformed));
        assert_eq!(verify(&[("X-Signature", "")]), Err(Rejection::Malformed));
    }

    #[test]
    fn timestamp_is_signed_and_must_be_within_tolerance() {
        let s = scheme(TIMESTAMPED, &["k"]);
        let body = b"{}";
        let request = |ts: &str| {
            let tag = BASE64.encode(HmacKey::new(b"k", "t").unwrap().tag(&[ts.as_bytes(), b".", body]));
            req(&[("X-Signature", &tag), ("X-Timestamp", ts)], body)
        };
        let verify = |ts: i64| s.verify(&request(&ts.to_string()).raw(), at(NOW));
        assert!(verify(NOW - 300).is_ok());
        assert!(verify(NOW + 300).is_ok());
        assert_eq!(verify(NOW - 301), Err(Rejection::StaleTimestamp));
        assert_eq!(verify(NOW + 301), Err(Rejection::StaleTimestamp));
        assert!(verify(NOW * 1000 + 999).is_ok(), "milliseconds");
        assert!(verify((NOW - 300) * 1000).is_ok());
        assert_eq!(verify((NOW - 301) * 1000), Err(Rejection::StaleTimestamp));
        assert_eq!(verify((NOW + 301) * 1000), Err(Rejection::StaleTimestamp));

        let replayed = request(&NOW.to_string()).with_header("X-Timestamp", &(NOW + 1).to_string());
        assert_eq!(s.verify(&replayed.raw(), at(NOW)), Err(Rejection::Mismatch));
        let no_timestamp = request(&NOW.to_string()).without_header("X-Timestamp");
        assert_eq!(s.verify(&no_timestamp.raw(), at(NOW)), Err(Rejection::Missing));
        for bad in ["soon", "1.7e9", ""] {
            assert_eq!(s.verify(&request(bad).raw(), at(NOW)), Err(Rejection::BadTimestamp), "{bad}");
        }
    }

    #[test]
    fn config_defaults_and_validation() {
        let c = config(PLAIN, &["k"]);
        assert_eq!((c.encoding, c.tolerance_secs, c.prefix.is_none()), (SignatureEncoding::Base64, 300, true));
        assert!(toml::from_str::<HmacConfig>("header = \"X-S\"\nsecrets = []\nsecret = 1").is_err());

        let err = config("header = \"bad header\"\nsecrets = []", &["k"]).build("src").unwrap_err();
        assert!(err.to_string().starts_with("src.header:"), "{err}");
        let err =
            config("header = \"X-S\"\ntimestamp_header = \"x-s\"\nsecrets = []", &["k"]).build("src").unwrap_err();
        assert!(err.to_string().starts_with("src.timestamp_header:"), "{err}");
        let err = config(PLAIN, &[]).build("src").unwrap_err();
        assert!(err.to_string().starts_with("src.secrets:"), "{err}");
        assert!(!format!("{:?}", scheme(PLAIN, &["canary-secret"])).contains("canary"));
    }
}
