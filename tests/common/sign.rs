//! Test-side signers, written against the senders' documentation with the crypto crates directly, so that
//! the service is checked by code that does not share its own implementation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Jira admin webhook: `X-Hub-Signature: sha256=<hex>`.
pub fn hub_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), body)))
}

/// ServiceNow business rule: base64 HMAC of `timestamp.body`.
pub fn servicenow_timestamped(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut data = format!("{timestamp}.").into_bytes();
    data.extend_from_slice(body);
    STANDARD.encode(hmac_sha256(secret.as_bytes(), &data))
}

/// Standard Webhooks `v1,<base64>` over `id.timestamp.body` with a `whsec_` secret.
pub fn standard_webhooks(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut data = format!("{id}.{timestamp}.").into_bytes();
    data.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(hmac_sha256(&key, &data)))
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A JWT signed with the given algorithm and key, claims as given.
pub fn jwt(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).unwrap()
}

/// `alg: none` token: header and payload, empty signature.
pub fn unsigned_jwt(claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}.", b64.encode(br#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims.to_string()))
}

/// An HS256 token whose HMAC key is the bytes of an RSA public key: the classic algorithm-confusion forgery.
pub fn confused_jwt(public_key_pem: &[u8], claims: &serde_json::Value) -> String {
    jwt(jsonwebtoken::Algorithm::HS256, &jsonwebtoken::EncodingKey::from_secret(public_key_pem), claims)
}

/// Atlassian Connect query string hash for a request without query parameters.
pub fn connect_qsh(method: &str, path: &str) -> String {
    hex::encode(Sha256::digest(format!("{method}&{path}&").as_bytes()))
}
