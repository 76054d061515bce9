//! Signature schemes: each proves that a webhook came from its sender, and can sign one the same way (for `send`).
//!
//! Every scheme works on the raw request (method, path, query, headers, body bytes) before any parsing,
//! accepts several secrets at once (rotation), and compares in constant time.

mod common;
mod connect_jwt;
mod hmac_sha256;
mod hub_signature;
mod jwt_bearer;
mod shared_secret;
mod standard_webhooks;

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderMap;
use serde::Deserialize;

pub use connect_jwt::{ConnectJwtConfig, ConnectJwtScheme, query_string_hash};
pub use hmac_sha256::{HmacConfig, HmacScheme, SignatureEncoding};
pub use hub_signature::{HubSignatureConfig, HubSignatureScheme};
pub use jwt_bearer::{JwtBearerConfig, JwtBearerScheme, JwtKeyConfig};
pub use shared_secret::{SharedSecretConfig, SharedSecretScheme};
pub use standard_webhooks::{StandardWebhooksConfig, StandardWebhooksScheme};

use crate::config::ConfigError;

/// The parts of an HTTP request that a signature can cover, exactly as received.
#[derive(Clone, Copy)]
pub struct RawRequest<'a> {
    pub method: &'a str,
    /// Path as received, e.g. `/webhooks/jira` (no query).
    pub path: &'a str,
    /// Query string as received, without the leading `?` (may be empty).
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl RawRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What a scheme proved about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub scheme: SchemeName,
    /// A delivery id covered by the signature (Standard Webhooks `webhook-id`), if the scheme has one.
    pub signed_delivery_id: Option<String>,
}

/// Why a request was not accepted. Never shown to the sender; logged and counted by `reason()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the signature header is missing")]
    Missing,
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature does not match any active secret")]
    Mismatch,
    #[error("the signed timestamp is malformed")]
    BadTimestamp,
    #[error("the signed timestamp is outside the tolerance window")]
    StaleTimestamp,
    #[error("the token has expired or is not yet valid")]
    TokenExpired,
    #[error("the token is malformed or its signature is invalid")]
    TokenInvalid,
    #[error("the token's algorithm is not allowed for any configured key")]
    AlgorithmNotAllowed,
    #[error("the token's issuer or audience is not the configured one")]
    ClaimMismatch,
    #[error("the token's query string hash does not match the request")]
    QshMismatch,
    #[error("the token does not cover this body")]
    BodyHashMismatch,
}

impl Rejection {
    /// Stable label for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Missing => "missing_signature",
            Rejection::Malformed => "malformed_signature",
            Rejection::Mismatch => "signature_mismatch",
            Rejection::BadTimestamp => "malformed_timestamp",
            Rejection::StaleTimestamp => "timestamp_out_of_window",
            Rejection::TokenExpired => "token_expired",
            Rejection::TokenInvalid => "token_invalid",
            Rejection::AlgorithmNotAllowed => "algorithm_not_allowed",
            Rejection::ClaimMismatch => "claim_mismatch",
            Rejection::QshMismatch => "qsh_mismatch",
            Rejection::BodyHashMismatch => "body_hash_mismatch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemeName {
    JiraHubSignature,
    HmacSha256,
    StandardWebhooks,
    JwtBearer,
    JiraConnectJwt,
    SharedSecretHeader,
}

impl SchemeName {
    /// A static shared secret proves the sender knows it, but nothing about the body.
    pub fn is_weak(self) -> bool {
        self == SchemeName::SharedSecretHeader
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SchemeName::JiraHubSignature => "jira_hub_signature",
            SchemeName::HmacSha256 => "hmac_sha256",
            SchemeName::StandardWebhooks => "standard_webhooks",
            SchemeName::JwtBearer => "jwt_bearer",
            SchemeName::JiraConnectJwt => "jira_connect_jwt",
            SchemeName::SharedSecretHeader => "shared_secret_header",
        }
    }
}

/// One `[[sources.NAME.verify]]` table of the config file, tagged by `scheme`.
#[derive(Debug, Deserialize)]
#[serde(tag = "scheme", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchemeConfig {
    JiraHubSignature(HubSignatureConfig),
    HmacSha256(HmacConfig),
    StandardWebhooks(StandardWebhooksConfig),
    JwtBearer(JwtBearerConfig),
    JiraConnectJwt(ConnectJwtConfig),
    SharedSecretHeader(SharedSecretConfig),
}

/// A ready-to-use scheme: secrets resolved, keys parsed.
pub enum Scheme {
    JiraHubSignature(HubSignatureScheme),
    HmacSha256(HmacScheme),
    StandardWebhooks(StandardWebhooksScheme),
    JwtBearer(JwtBearerScheme),
    JiraConnectJwt(ConnectJwtScheme),
    SharedSecretHeader(SharedSecretScheme),
}

/// Headers (name, value) to add to an outgoing request so that the scheme accepts it.
pub type SignedHeaders = Vec<(String, String)>;

/// What `sign` needs to know about the request it signs.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body: &'a [u8],
    pub now: SystemTime,
    /// A fresh unique id the scheme may use as its delivery id.
    pub delivery_id: &'a str,
    /// A private key (PEM) for asymmetric JWT signing; only `jwt_bearer` with RS256/ES256 needs it.
    pub private_key_pem: Option<&'a [u8]>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{0}")]
    Unsupported(String),
    #[error("signing failed: {0}")]
    Failed(String),
}

impl SchemeConfig {
    /// Resolves secrets and parses keys. `at` names the table in errors, e.g. `sources.jira.verify[0]`.
    pub fn build(self, at: &str) -> Result<Scheme, ConfigError> {
        Ok(match self {
            SchemeConfig::JiraHubSignature(c) => Scheme::JiraHubSignature(c.build(at)?),
            SchemeConfig::HmacSha256(c) => Scheme::HmacSha256(c.build(at)?),
            SchemeConfig::StandardWebhooks(c) => Scheme::StandardWebhooks(c.build(at)?),
            SchemeConfig::JwtBearer(c) => Scheme::JwtBearer(c.build(at)?),
            SchemeConfig::JiraConnectJwt(c) => Scheme::JiraConnectJwt(c.build(at)?),
            SchemeConfig::SharedSecretHeader(c) => Scheme::SharedSecretHeader(c.build(at)?),
        })
    }
}

impl Scheme {
    pub fn name(&self) -> SchemeName {
        match self {
            Scheme::JiraHubSignature(_) => SchemeName::JiraHubSignature,
            Scheme::HmacSha256(_) => SchemeName::HmacSha256,
            Scheme::StandardWebhooks(_) => SchemeName::StandardWebhooks,
            Scheme::JwtBearer(_) => SchemeName::JwtBearer,
            Scheme::JiraConnectJwt(_) => SchemeName::JiraConnectJwt,
            Scheme::SharedSecretHeader(_) => SchemeName::SharedSecretHeader,
        }
    }

    pub fn verify(&self, req: &RawRequest<'_>, now: SystemTime) -> Result<Proof, Rejection> {
        match self {
            Scheme::JiraHubSignature(s) => s.verify(req),
            Scheme::HmacSha256(s) => s.verify(req, now),
            Scheme::StandardWebhooks(s) => s.verify(req, now),
            Scheme::JwtBearer(s) => s.verify(req, now),
            Scheme::JiraConnectJwt(s) => s.verify(req, now),
            Scheme::SharedSecretHeader(s) => s.verify(req),
        }
    }

    pub fn sign(&self, out: &Outgoing<'_>) -> Result<SignedHeaders, SignError> {
        match self {
            Scheme::JiraHubSignature(s) => Ok(s.sign(out)),
            Scheme::HmacSha256(s) => Ok(s.sign(out)),
            Scheme::StandardWebhooks(s) => Ok(s.sign(out)),
            Scheme::JwtBearer(s) => s.sign(out),
            Scheme::JiraConnectJwt(s) => s.sign(out),
            Scheme::SharedSecretHeader(s) => Ok(s.sign(out)),
        }
    }
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}
