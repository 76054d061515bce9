//! A webhook event that has been verified and parsed, ready to be stored.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Time-ordered event identifier (UUIDv7), so that ids sort by arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        EventId(Uuid::now_v7())
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(EventId)
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event whose signature was verified and whose body is a JSON object.
///
/// Only `inbound` constructs it (from a `VerifiedWebhook`), so nothing unverified can reach the store.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    pub(crate) id: EventId,
    pub(crate) source: String,
    pub(crate) dedup_key: String,
    pub(crate) replay_key: Option<String>,
    pub(crate) delivery_id: Option<String>,
    pub(crate) scheme: &'static str,
    pub(crate) body_sha256: String,
    pub(crate) body: String,
    pub(crate) meta: String,
    pub(crate) received_at_ms: i64,
}

impl IncomingEvent {
    pub fn id(&self) -> EventId {
        self.id
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn dedup_key(&self) -> &str {
        &self.dedup_key
    }

    /// The body hash when the delivery id is not signed; unique per source like `dedup_key`.
    pub fn replay_key(&self) -> Option<&str> {
        self.replay_key.as_deref()
    }

    pub fn delivery_id(&self) -> Option<&str> {
        self.delivery_id.as_deref()
    }

    pub fn scheme(&self) -> &'static str {
        self.scheme
    }

    pub fn body_sha256(&self) -> &str {
        &self.body_sha256
    }

    pub fn body(&self) -> &str {
        &self.body
    }

    pub fn meta(&self) -> &str {
        &self.meta
    }

    pub fn received_at_ms(&self) -> i64 {
        self.received_at_ms
    }
}
