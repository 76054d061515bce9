//! Certificate credentials: an X.509 certificate and its RSA key, checked at load to belong together, and the client
//! assertion (a short-lived JWT signed with the key) that stands in for a client secret in each token request.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523), for certificates and federated tokens alike.
pub const JWT_BEARER_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The identity platform asks for assertions that expire 5 to 10 minutes after `nbf`.
const ASSERTION_LIFETIME_SECS: u64 = 10 * 60;

const DER_INTEGER: u8 = 0x02;
const DER_BIT_STRING: u8 = 0x03;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT`: the optional version field that opens a v2/v3 `TBSCertificate`.
const DER_CONTEXT_0: u8 = 0xa0;
/// The contents of the rsaEncryption object identifier, 1.2.840.113549.1.1.1.
const RSA_ENCRYPTION_OID: [u8; 9] = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// How the client assertion is signed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256, what the identity platform documents today.
    #[default]
    #[serde(rename = "PS256")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, for an endpoint that does not take PSS.
    #[serde(rename = "RS256")]
    Rs256,
}

impl AssertionAlgorithm {
    fn jwt(self) -> Algorithm {
        match self {
            AssertionAlgorithm::Ps256 => Algorithm::PS256,
            AssertionAlgorithm::Rs256 => Algorithm::RS256,
        }
    }
}

/// Why a certificate and key cannot be used. The message names the problem, never the PEM or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    #[error("{0}")]
    Certificate(String),
    /// Includes a key that does not belong to the certificate.
    #[error("{0}")]
    PrivateKey(String),
}

fn cert_error(message: impl Into<String>) -> CertificateError {
    CertificateError::Certificate(message.into())
}

fn key_error(message: impl Into<String>) -> CertificateError {
    CertificateError::PrivateKey(message.into())
}

/// A certificate registered on the app, and its private key.
#[derive(Clone)]
pub struct CertificateCredential {
    key: EncodingKey,
    algorithm: AssertionAlgorithm,
    thumbprint_s256: String,
}

impl fmt::Debug for CertificateCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateCredential")
            .field("algorithm", &self.algorithm)
            .field("thumbprint_s256", &self.thumbprint_s256)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: u64,
    iat: u64,
    exp: u64,
}

impl CertificateCredential {
    /// `certificate_pem` holds a `CERTIFICATE` block (the first one is used, so a chain may follow it);
    /// `private_key_pem` a PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY` block, unencrypted. Both may be the same
    /// text. The key must belong to the certificate: a mismatch would otherwise surface only as AADSTS700027.
    pub fn from_pem(
        certificate_pem: &str,
        private_key_pem: &str,
        algorithm: AssertionAlgorithm,
    ) -> Result<Self, CertificateError> {
        let certificate_der = certificate_der(certificate_pem)?;
        let public_key = rsa_public_key(&certificate_der)?;
        let key = rsa_private_key(private_key_pem)?;
        check_pair(&key, &public_key, algorithm.jwt())?;
        let thumbprint_s256 = URL_SAFE_NO_PAD.encode(Sha256::digest(&certificate_der));
        Ok(CertificateCredential { key, algorithm, thumbprint_s256 })
    }

    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// The `x5t#S256` header: base64url SHA-256 of the certificate's DER bytes, which the identity platform uses to
    /// find the certificate among those registered on the app.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// A fresh assertion for the token endpoint `audience`, issued by and about `client_id`. The message of an error
    /// holds no key material.
    pub(crate) fn assertion(&self, audience: &str, client_id: &str) -> Result<Secret, String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "cannot sign a client assertion: the system clock is set before 1970".to_owned())?
            .as_secs();
        let mut header = Header::new(self.algorithm.jwt());
        header.x5t_s256 = Some(self.thumbprint_s256.clone());
        let claims = AssertionClaims {
            aud: audience,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::now_v7().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
        };
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| format!("cannot sign the client assertion: {e}"))
    }
}

fn certificate_der(pem: &str) -> Result<Vec<u8>, CertificateError> {
    let blocks = pem_blocks(pem);
    let block = blocks
        .iter()
        .find(|b| b.label == "CERTIFICATE")
        .ok_or_else(|| cert_error("no -----BEGIN CERTIFICATE----- block: give the certificate in PEM form"))?;
    STANDARD.decode(&block.body).map_err(|_| cert_error("the CERTIFICATE block is not valid base64"))
}

/// The PKCS#1 `RSAPublicKey` in a certificate's `subjectPublicKeyInfo`.
fn rsa_public_key(certificate_der: &[u8]) -> Result<Vec<u8>, CertificateError> {
    let not_x509 = || cert_error("the CERTIFICATE block does not hold a DER X.509 certificate");
    let spki = subject_public_key_info(certificate_der).ok_or_else(not_x509)?;
    let (algorithm, rest) = expect(spki, DER_SEQUENCE).ok_or_else(not_x509)?;
    let (oid, _) = expect(algorithm, DER_OID).ok_or_else(not_x509)?;
    if oid != RSA_ENCRYPTION_OID {
        return Err(cert_error(
            "the certificate's public key is not an RSA key; client assertions are signed with RSA (PS256 or RS256)",
        ));
    }
    let (bits, _) = expect(rest, DER_BIT_STRING).ok_or_else(not_x509)?;
    match bits.split_first() {
        // The first byte counts unused bits in the last byte: a DER key has none.
        Some((0, key)) if !key.is_empty() => Ok(key.to_vec()),
        _ => Err(not_x509()),
    }
}

/// Walks `Certificate -> TBSCertificate` past version, serial, signature, issuer, validity and subject.
fn subject_public_key_info(der: &[u8]) -> Option<&[u8]> {
    let (certificate, trailing) = expect(der, DER_SEQUENCE)?;
    if !trailing.is_empty() {
        return None;
    }
    let (tbs, _) = expect(certificate, DER_SEQUENCE)?;
    let mut fields = tbs;
    if fields.first() == Some(&DER_CONTEXT_0) {
        fields = der_element(fields)?.2;
    }
    let (_, mut fields) = expect(fields, DER_INTEGER)?;
    for _ in ["signature", "issuer", "validity", "subject"] {
        fields = expect(fields, DER_SEQUENCE)?.1;
    }
    expect(fields, DER_SEQUENCE).map(|(spki, _)| spki)
}

fn rsa_private_key(pem: &str) -> Result<EncodingKey, CertificateError> {
    let blocks = pem_blocks(pem);
    if blocks.iter().any(|b| b.label == "ENCRYPTED PRIVATE KEY" || (b.label.ends_with("PRIVATE KEY") && b.has_headers))
    {
        return Err(key_error(
            "the private key is encrypted; give it unencrypted (openssl pkcs8 -topk8 -nocrypt) in a file only this \
             service can read",
        ));
    }
    if let Some(block) = blocks.iter().find(|b| b.label == "RSA PRIVATE KEY") {
        let der =
            STANDARD.decode(&block.body).map_err(|_| key_error("the RSA PRIVATE KEY block is not valid base64"))?;
        return Ok(EncodingKey::from_rsa_der(&der));
    }
    if let Some(block) = blocks.iter().find(|b| b.label == "PRIVATE KEY") {
        let der = STANDARD.decode(&block.body).map_err(|_| key_error("the PRIVATE KEY block is not valid base64"))?;
        return pkcs8_rsa_key(&der).map(EncodingKey::from_rsa_der);
    }
    if blocks.iter().any(|b| b.label == "EC PRIVATE KEY") {
        return Err(key_error("the private key is an EC key; client assertions are signed with an RSA key"));
    }
    Err(key_error(
        "no -----BEGIN PRIVATE KEY----- (PKCS#8) or -----BEGIN RSA PRIVATE KEY----- (PKCS#1) block: give the key in \
         PEM form",
    ))
}

/// The PKCS#1 key inside a PKCS#8 `PrivateKeyInfo`, if it is an RSA key.
fn pkcs8_rsa_key(der: &[u8]) -> Result<&[u8], CertificateError> {
    let malformed = || key_error("the PRIVATE KEY block does not hold a DER PKCS#8 key");
    let (info, _) = expect(der, DER_SEQUENCE).ok_or_else(malformed)?;
    let (_, rest) = expect(info, DER_INTEGER).ok_or_else(malformed)?;
    let (algorithm, rest) = expect(rest, DER_SEQUENCE).ok_or_else(malformed)?;
    let (oid, _) = expect(algorithm, DER_OID).ok_or_else(malformed)?;
    if oid != RSA_ENCRYPTION_OID {
        return Err(key_error("the private key is not an RSA key; client assertions are signed with an RSA key"));
    }
    expect(rest, DER_OCTET_STRING).map(|(key, _)| key).ok_or_else(malformed)
}

/// Signs and verifies a probe: proves that the key parses (RSA, 2048 to 8192 bits) and belongs to the certificate.
fn check_pair(key: &EncodingKey, public_key: &[u8], algorithm: Algorithm) -> Result<(), CertificateError> {
    const PROBE: &[u8] = b"grantbridge: does this key belong to the certificate?";
    let signature = jsonwebtoken::crypto::sign(PROBE, key, algorithm)
        .map_err(|_| key_error("the private key does not parse as an RSA private key of 2048 to 8192 bits"))?;
    let verified = jsonwebtoken::crypto::verify(&signature, PROBE, &DecodingKey::from_rsa_der(public_key), algorithm)
        .map_err(|_| {
        cert_error("the certificate's RSA public key does not parse (2048 to 8192 bits are accepted)")
    })?;
    if verified { Ok(()) } else { Err(key_error("the private key does not belong to the certificate")) }
}

struct PemBlock<'t> {
    label: &'t str,
    body: String,
    /// RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`) mark an OpenSSL-encrypted traditional key.
    has_headers: bool,
}

/// The complete `-----BEGIN X----- ... -----END X-----` blocks of `text`, in order; text around them is ignored.
fn pem_blocks(text: &str) -> Vec<PemBlock<'_>> {
    let mut blocks = Vec::new();
    let mut open: Option<PemBlock<'_>> = None;
    for line in text.lines().map(str::trim) {
        let armour = |kind: &str| line.strip_prefix(kind).and_then(|l| l.strip_suffix("-----"));
        if let Some(label) = armour("-----BEGIN ") {
            open = Some(PemBlock { label, body: String::new(), has_headers: false });
        } else if let Some(label) = armour("-----END ") {
            if let Some(block) = open.take().filter(|b| b.label == label) {
                blocks.push(block);
            }
        } else if let Some(block) = open.as_mut() {
            if line.contains(':') {
                block.has_headers = true;
            } else {
                block.body.push_str(line);
            }
        }
    }
    blocks
}

/// One DER element: its tag, its contents and what follows it. Single-byte tags and definite lengths only, which is
/// all the structures read here use.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        (bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)), rest)
    };
    let (contents, rest) = rest.split_at_checked(length)?;
    Some((tag, contents, rest))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    der_element(input).filter(|(t, _, _)| *t == tag).map(|(_, contents, rest)| (contents, rest))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/entra").join(name)).unwrap()
    }

    fn decode_part(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn the_thumbprint_is_the_one_openssl_computes() {
        let c = CertificateCredential::from_pem(&fixture("cert.pem"), &fixture("key.pem"), AssertionAlgorithm::Ps256)
            .unwrap();
        assert_eq!(c.thumbprint_s256(), fixture("cert.x5t-s256.txt").trim());
        let debug = format!("{c:?}");
        let key_line = fixture("key.pem").lines().nth(1).unwrap().to_owned();
        assert!(debug.contains("[redacted]") && !debug.contains(&key_line), "{debug}");
    }

    #[test]
    fn the_assertion_has_the_documented_header_and_claims() {
        let c =
            CertificateCredential::from_pem(&fixture("cert.pem"), &fixture("key-pkcs1.pem"), AssertionAlgorithm::Rs256)
                .unwrap();
        let jwt = c.assertion("https://login.example/t/oauth2/v2.0/token", "client-1").unwrap();
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], c.thumbprint_s256());
        let claims = decode_part(parts[1]);
        assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["nbf"], claims["iat"]);
        assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 600);
        let again = c.assertion("a", "b").unwrap();
        assert_ne!(decode_part(again.expose().split('.').nth(1).unwrap())["jti"], claims["jti"]);
    }

    #[test]
    fn bad_certificates_and_keys_are_refused_without_quoting_them() {
        let (cert, key) = (fixture("cert.pem"), fixture("key.pem"));
        let canary = "-----BEGIN CERTIFICATE-----\nnot*base64*canary\n-----END CERTIFICATE-----\n";
        let cases: Vec<(String, String, CertificateError)> = vec![
            ("".into(), key.clone(), cert_error("no -----BEGIN CERTIFICATE-----")),
            (canary.into(), key.clone(), cert_error("not valid base64")),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----".into(),
                key.clone(),
                cert_error("does not hold a DER X.509"),
            ),
            (key.clone(), key.clone(), cert_error("no -----BEGIN CERTIFICATE-----")),
            (cert.clone(), cert.clone(), key_error("no -----BEGIN PRIVATE KEY-----")),
            (cert.clone(), fixture("other-key.pem"), key_error("does not belong to the certificate")),
            (
                cert.clone(),
                "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----".into(),
                key_error("does not parse as an RSA private key"),
            ),
            (
                cert.clone(),
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----".into(),
                key_error("is encrypted"),
            ),
            (
                cert.clone(),
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----".into(),
                key_error("is encrypted"),
            ),
        ];
        for (cert_pem, key_pem, expected) in cases {
            let err = CertificateCredential::from_pem(&cert_pem, &key_pem, AssertionAlgorithm::Ps256).unwrap_err();
            let same_part = matches!(
                (&err, &expected),
                (CertificateError::Certificate(_), CertificateError::Certificate(_))
                    | (CertificateError::PrivateKey(_), CertificateError::PrivateKey(_))
            );
            assert!(same_part && err.to_string().contains(&expected.to_string()), "{err:?} vs {expected:?}");
            assert!(!err.to_string().contains("canary") && !err.to_string().contains("MII"), "{err}");
        }
    }

    #[test]
    fn a_combined_pem_file_serves_as_both_certificate_and_key() {
        let combined = format!("Bag Attributes: x\n{}{}", fixture("key.pem"), fixture("cert.pem"));
        assert!(CertificateCredential::from_pem(&combined, &combined, AssertionAlgorithm::Ps256).is_ok());
    }
}
