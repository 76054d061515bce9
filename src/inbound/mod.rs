//! Inbound webhooks: the sources we accept, the proof we require of each request, and the parse into an event.
//!
//! `RawRequest` --`Source::verify`--> `VerifiedWebhook` --`parse`--> `IncomingEvent`. Nothing else builds one.

pub mod normalize;
pub mod schemes;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::domain::{EventId, IncomingEvent};
use crate::itsm::ItsmApi;
use normalize::TicketMapping;
use schemes::{Proof, RawRequest, Rejection, Scheme, SchemeName};

const JIRA_DELIVERY_HEADER: &str = "x-atlassian-webhook-identifier";
const MAX_DELIVERY_ID_LEN: usize = 256;
/// Ticket payloads nest a dozen levels at most; far deeper input is hostile and would be costly to process later.
pub const MAX_JSON_DEPTH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Jira,
    Servicenow,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Jira => "jira",
            SourceKind::Servicenow => "servicenow",
        }
    }
}

/// Where the delivery id (the de-duplication key) of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryIdRule {
    /// The scheme's signed id (Standard Webhooks), else Jira's `X-Atlassian-Webhook-Identifier` for Jira sources.
    Auto,
    Header(String),
    /// A JSON pointer into the body.
    Field(String),
}

/// A configured webhook source.
pub struct Source {
    name: String,
    kind: SourceKind,
    max_body_bytes: usize,
    delivery_id: DeliveryIdRule,
    schemes: Vec<Scheme>,
    tickets: TicketMapping,
    api: Option<ItsmApi>,
    confirm: bool,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("delivery_id", &self.delivery_id)
            .field("schemes", &self.schemes.iter().map(|s| s.name().as_str()).collect::<Vec<_>>())
            .field("api", &self.api.is_some())
            .field("confirm", &self.confirm)
            .finish()
    }
}

/// A request whose signature one of the source's schemes accepted. The body is still unparsed bytes.
pub struct VerifiedWebhook<'a> {
    source: &'a Source,
    request: RawRequest<'a>,
    proof: Proof,
}

/// Why a verified request still cannot become an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON object")]
    NotAnObject,
    #[error("the JSON nests deeper than {MAX_JSON_DEPTH} levels")]
    TooDeep,
    #[error("the delivery id must be 1 to 256 visible ASCII characters")]
    BadDeliveryId,
}

impl Source {
    pub fn new(
        name: String,
        kind: SourceKind,
        max_body_bytes: usize,
        delivery_id: DeliveryIdRule,
        schemes: Vec<Scheme>,
        tickets: TicketMapping,
    ) -> Self {
        Source { name, kind, max_body_bytes, delivery_id, schemes, tickets, api: None, confirm: false }
    }

    /// The ticketing API to read tickets back from, and whether approvals must be confirmed with it.
    pub fn with_api(mut self, api: Option<ItsmApi>, confirm: bool) -> Self {
        self.api = api;
        self.confirm = confirm;
        self
    }

    pub fn api(&self) -> Option<&ItsmApi> {
        self.api.as_ref()
    }

    /// Whether approvals are read back from the ticketing system before any grant.
    pub fn confirms(&self) -> bool {
        self.confirm && self.api.is_some()
    }

    /// How to read this source's tickets.
    pub fn tickets(&self) -> &TicketMapping {
        &self.tickets
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> SourceKind {
        self.kind
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body_bytes
    }

    pub fn delivery_id_rule(&self) -> &DeliveryIdRule {
        &self.delivery_id
    }

    pub fn schemes(&self) -> &[Scheme] {
        &self.schemes
    }

    /// Accepts the request if any configured scheme does. When all refuse, the most telling reason is returned:
    /// a scheme whose header was present and wrong says more than one whose header was absent.
    pub fn verify<'a>(&'a self, request: RawRequest<'a>, now: SystemTime) -> Result<VerifiedWebhook<'a>, Rejection> {
        let mut reason = Rejection::Missing;
        for scheme in &self.schemes {
            match scheme.verify(&request, now) {
                Ok(proof) => return Ok(VerifiedWebhook { source: self, request, proof }),
                Err(Rejection::Missing) => {}
                Err(r) if reason == Rejection::Missing => reason = r,
                Err(_) => {}
            }
        }
        Err(reason)
    }
}

impl VerifiedWebhook<'_> {
    pub fn scheme(&self) -> SchemeName {
        self.proof.scheme
    }

    /// Checks the body is a JSON object, works out the delivery id and builds the event to store.
    pub fn parse(self, now: SystemTime) -> Result<IncomingEvent, PayloadError> {
        let body = std::str::from_utf8(self.request.body).map_err(|_| PayloadError::NotUtf8)?;
        if nesting_exceeds(body.as_bytes(), MAX_JSON_DEPTH) {
            return Err(PayloadError::TooDeep);
        }
        let field_id = match &self.source.delivery_id {
            DeliveryIdRule::Field(pointer) => {
                let value: serde_json::Value =
                    serde_json::from_str(body).map_err(|e| PayloadError::NotJson(json_error(&e)))?;
                if !value.is_object() {
                    return Err(PayloadError::NotAnObject);
                }
                Some(match value.pointer(pointer) {
                    Some(serde_json::Value::String(s)) => Some(s.clone()),
                    Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                })
            }
            _ => {
                serde_json::from_str::<IgnoredObject>(body).map_err(|e| match e.classify() {
                    serde_json::error::Category::Data => PayloadError::NotAnObject,
                    _ => PayloadError::NotJson(json_error(&e)),
                })?;
                None
            }
        };
        // The id a scheme signed (Standard Webhooks) can be trusted to tell deliveries apart; any other id could
        // be changed by whoever replays a captured request, so the body hash guards those too.
        let (delivery_id, signed) = match (&self.source.delivery_id, field_id) {
            (DeliveryIdRule::Field(_), id) => (id.flatten(), false),
            (DeliveryIdRule::Header(name), _) => (self.request.header(name).map(str::to_string), false),
            (DeliveryIdRule::Auto, _) => match &self.proof.signed_delivery_id {
                Some(id) => (Some(id.clone()), true),
                None => match self.source.kind {
                    SourceKind::Jira => (self.request.header(JIRA_DELIVERY_HEADER).map(str::to_string), false),
                    SourceKind::Servicenow => (None, false),
                },
            },
        };
        if let Some(id) = &delivery_id
            && (id.is_empty() || id.len() > MAX_DELIVERY_ID_LEN || !id.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(PayloadError::BadDeliveryId);
        }
        let body_sha256 = hex::encode(Sha256::digest(body.as_bytes()));
        let (dedup_key, replay_key) = match &delivery_id {
            Some(id) if signed => (format!("id:{id}"), None),
            Some(id) => (format!("id:{id}"), Some(body_sha256.clone())),
            None => (format!("sha256:{body_sha256}"), None),
        };
        let meta = serde_json::json!({
            "scheme": self.proof.scheme.as_str(),
            "content_type": self.request.header("content-type"),
            "user_agent": self.request.header("user-agent"),
            "retry": self.request.header("x-atlassian-webhook-retry"),
            "flow": self.request.header("x-atlassian-webhook-flow"),
        });
        Ok(IncomingEvent {
            id: EventId::new(),
            source: self.source.name.clone(),
            dedup_key,
            replay_key,
            delivery_id,
            scheme: self.proof.scheme.as_str(),
            body_sha256,
            body: body.to_string(),
            meta: meta.to_string(),
            received_at_ms: unix_millis(now),
        })
    }
}

/// Whether brackets nest deeper than `limit` outside of strings; a linear scan, no recursion.
fn nesting_exceeds(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn json_error(e: &serde_json::Error) -> String {
    // serde_json's message is about the input's shape and position only; it never quotes the input.
    e.to_string()
}

pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Validates "a JSON object" without building it: the intake path only needs to know the body is well-formed.
struct IgnoredObject;

impl<'de> Deserialize<'de> for IgnoredObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = IgnoredObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IgnoredObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(IgnoredObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::nesting_exceeds;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a":[{"b":1}]}"#, 3));
        assert!(nesting_exceeds(br#"{"a":[{"b":[1]}]}"#, 3));
        assert!(!nesting_exceeds(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(nesting_exceeds(&[b'['; 65], 64));
    }
}
