//! The audit trail: every step grantbridge takes, as an append-only hash chain that `grantbridge audit verify`
//! checks and `grantbridge audit export` hands to a SIEM.
//!
//! # The chain
//!
//! Entries are numbered `seq` = 1, 2, 3, ... with no gaps. Each carries `prev_hash`, the `hash` of the entry
//! before it (64 zeros for entry 1), and its own `hash`, which covers every field, `seq` and `prev_hash`
//! included. Changing an entry breaks its own hash; deleting, inserting or reordering entries breaks the
//! numbering or the link to the entry before. Removing entries from the end leaves a shorter chain that is
//! still whole: that is only visible against a head recorded earlier (an export kept elsewhere, or the
//! `seq:hash` that `audit verify` prints), which `audit verify --expect-head` checks. Likewise, someone who
//! can write the database can recompute every hash after a change; the head kept outside the database is
//! what proves the chain up to it unchanged.
//!
//! # The hash, for an independent verifier
//!
//! `hash` is the lowercase hex SHA-256 of the bytes `grantbridge-audit-v1\n` followed by these ten fields,
//! in this order: `seq`, `at_ms`, `kind`, `actor`, `source`, `ticket_key`, `event_id`, `grant_id`, `detail`,
//! `prev_hash`. A NULL field is the single byte `0x00`. Any other field is the byte `0x01`, the length of
//! its UTF-8 text as 8 bytes big-endian, then that text. `seq` and `at_ms` are written as decimal text
//! (`-` for a negative, no leading zeros); `prev_hash` as its 64 lowercase hex digits; `detail` is the exact
//! text stored. In Python:
//!
//! ```text
//! def entry_hash(e):
//!     h = hashlib.sha256(b"grantbridge-audit-v1\n")
//!     for v in (str(e["seq"]), str(e["at_ms"]), e["kind"], e["actor"], e["source"], e["ticket_key"],
//!               e["event_id"], e["grant_id"], e["detail"], e["prev_hash"]):
//!         if v is None:
//!             h.update(b"\x00")
//!         else:
//!             b = v.encode("utf-8")
//!             h.update(b"\x01" + len(b).to_bytes(8, "big") + b)
//!     return h.hexdigest()
//! ```
//!
//! `detail` is JSON text written compactly with object keys in byte order (what `json.dumps(d,
//! separators=(",", ":"), sort_keys=True, ensure_ascii=False)` writes for the strings, integers and
//! booleans grantbridge puts there), so the object in an export line re-serialized that way gives the text
//! that was hashed. It holds reasons, codes and hashes; never a secret and never a webhook body.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `actor` of the steps grantbridge takes by itself; an operator's steps carry the operator's identity.
pub const SERVICE_ACTOR: &str = "grantbridge";

const DOMAIN: &[u8] = b"grantbridge-audit-v1\n";

/// What an entry records. Stored as text, so that later versions can add kinds an older verifier still checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A verified webhook was stored as a new event.
    Received,
    /// A delivery for a configured source was refused (signature, payload, delivery id, size, media type).
    Rejected,
    /// A verified webhook was a repeat of a stored event.
    Duplicate,
    /// An event was decided: a plan, or not an access decision.
    Decided,
    /// The policy refused a request.
    Refused,
    Granted,
    Failed,
    CallbackDelivered,
    CallbackFailed,
    Revoked,
    Expired,
    OperatorAction,
    Reconciled,
}

impl AuditKind {
    pub const ALL: [AuditKind; 13] = [
        AuditKind::Received,
        AuditKind::Rejected,
        AuditKind::Duplicate,
        AuditKind::Decided,
        AuditKind::Refused,
        AuditKind::Granted,
        AuditKind::Failed,
        AuditKind::CallbackDelivered,
        AuditKind::CallbackFailed,
        AuditKind::Revoked,
        AuditKind::Expired,
        AuditKind::OperatorAction,
        AuditKind::Reconciled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Received => "received",
            AuditKind::Rejected => "rejected",
            AuditKind::Duplicate => "duplicate",
            AuditKind::Decided => "decided",
            AuditKind::Refused => "refused",
            AuditKind::Granted => "granted",
            AuditKind::Failed => "failed",
            AuditKind::CallbackDelivered => "callback_delivered",
            AuditKind::CallbackFailed => "callback_failed",
            AuditKind::Revoked => "revoked",
            AuditKind::Expired => "expired",
            AuditKind::OperatorAction => "operator_action",
            AuditKind::Reconciled => "reconciled",
        }
    }

    pub fn parse(s: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step to record, before it has a place in the chain.
///
/// `detail` says why and how (reason codes, delivery ids, hashes); it must never hold a secret or a webhook
/// body, because an export leaves the service's trust boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    kind: AuditKind,
    actor: String,
    at_ms: Option<i64>,
    source: Option<String>,
    ticket_key: Option<String>,
    event_id: Option<String>,
    grant_id: Option<String>,
    detail: String,
}

impl AuditEntry {
    /// A step grantbridge took by itself.
    pub fn service(kind: AuditKind) -> AuditEntry {
        AuditEntry::operator(kind, SERVICE_ACTOR)
    }

    /// A step an operator took; `identity` is who, as the admin API authenticated them.
    pub fn operator(kind: AuditKind, identity: impl Into<String>) -> AuditEntry {
        AuditEntry {
            kind,
            actor: identity.into(),
            at_ms: None,
            source: None,
            ticket_key: None,
            event_id: None,
            grant_id: None,
            detail: "{}".to_string(),
        }
    }

    /// When the step happened; by default, when the entry is appended.
    pub fn at(mut self, at_ms: i64) -> AuditEntry {
        self.at_ms = Some(at_ms);
        self
    }

    pub fn source(mut self, source: impl Into<String>) -> AuditEntry {
        self.source = Some(source.into());
        self
    }

    pub fn ticket(mut self, ticket_key: impl Into<String>) -> AuditEntry {
        self.ticket_key = Some(ticket_key.into());
        self
    }

    pub fn event(mut self, event_id: impl fmt::Display) -> AuditEntry {
        self.event_id = Some(event_id.to_string());
        self
    }

    pub fn grant(mut self, grant_id: impl Into<String>) -> AuditEntry {
        self.grant_id = Some(grant_id.into());
        self
    }

    /// Stored as compact JSON with sorted keys (serde_json's maps are ordered), the form the module doc
    /// describes. Not an object: stored under `{"value": ...}`, so that `detail` is always an object.
    pub fn detail(mut self, detail: serde_json::Value) -> AuditEntry {
        let detail = match detail {
            serde_json::Value::Object(_) => detail,
            other => serde_json::json!({ "value": other }),
        };
        self.detail = detail.to_string();
        self
    }

    pub fn kind(&self) -> AuditKind {
        self.kind
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn detail_text(&self) -> &str {
        &self.detail
    }
}

/// The last entry of a chain: what an operator keeps outside the database to detect a shortened chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: i64,
    pub hash: String,
}

/// Written `SEQ:HASH`, the form `audit verify --expect-head` reads.
impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub kind: String,
    pub actor: String,
    pub source: Option<String>,
    pub ticket_key: Option<String>,
    pub event_id: Option<String>,
    pub grant_id: Option<String>,
    /// Exported as the JSON object it holds (as a string if it is not JSON, which grantbridge never writes).
    #[serde(serialize_with = "detail_as_json")]
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

fn detail_as_json<S: serde::Serializer>(detail: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<serde_json::Value>(detail) {
        Ok(value) => value.serialize(serializer),
        Err(_) => serializer.serialize_str(detail),
    }
}

impl AuditRecord {
    /// The hash its fields give (the module doc describes the encoding).
    pub fn computed_hash(&self) -> String {
        let seq = self.seq.to_string();
        let at = self.at_ms.to_string();
        let fields: [Option<&str>; 10] = [
            Some(&seq),
            Some(&at),
            Some(&self.kind),
            Some(&self.actor),
            self.source.as_deref(),
            self.ticket_key.as_deref(),
            self.event_id.as_deref(),
            self.grant_id.as_deref(),
            Some(&self.detail),
            Some(&self.prev_hash),
        ];
        let mut hasher = Sha256::new();
        hasher.update(DOMAIN);
        for field in fields {
            match field {
                None => hasher.update([0u8]),
                Some(text) => {
                    hasher.update([1u8]);
                    hasher.update((text.len() as u64).to_be_bytes());
                    hasher.update(text.as_bytes());
                }
            }
        }
        hex::encode(hasher.finalize())
    }

    pub fn head(&self) -> Head {
        Head { seq: self.seq, hash: self.hash.clone() }
    }

    /// One line of `audit export`: every field, hashes included.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Places `entries` after `head` (None: an empty chain): numbers, links and hashes them.
pub fn link(head: Option<&Head>, now_ms: i64, entries: &[AuditEntry]) -> Vec<AuditRecord> {
    let (mut seq, mut prev) = match head {
        Some(h) => (h.seq, h.hash.clone()),
        None => (0, GENESIS_HASH.to_string()),
    };
    let mut records = Vec::with_capacity(entries.len());
    for e in entries {
        seq += 1;
        let mut record = AuditRecord {
            seq,
            at_ms: e.at_ms.unwrap_or(now_ms),
            kind: e.kind.as_str().to_string(),
            actor: e.actor.clone(),
            source: e.source.clone(),
            ticket_key: e.ticket_key.clone(),
            event_id: e.event_id.clone(),
            grant_id: e.grant_id.clone(),
            detail: e.detail.clone(),
            prev_hash: prev,
            hash: String::new(),
        };
        record.hash = record.computed_hash();
        prev = record.hash.clone();
        records.push(record);
    }
    records
}

/// A head recorded earlier, which the chain must still contain: `HASH`, or `SEQ:HASH` to also name its place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: Option<i64>,
    pub hash: String,
}

impl FromStr for Anchor {
    type Err = String;

    fn from_str(s: &str) -> Result<Anchor, String> {
        let (seq, hash) = match s.split_once(':') {
            Some((seq, hash)) => {
                let seq = seq.trim().parse::<i64>().ok().filter(|n| *n >= 1);
                let Some(seq) = seq else {
                    return Err(format!("`{s}`: the part before `:` must be a seq (1 or more)"));
                };
                (Some(seq), hash)
            }
            None => (None, s),
        };
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{s}` is not a head: expected HASH or SEQ:HASH, the hash 64 hex digits"));
        }
        Ok(Anchor { seq, hash })
    }
}

/// The chain checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub checked: u64,
    /// None for an empty chain.
    pub head: Option<Head>,
}

/// The first entry at which the chain does not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    /// The kind stored at `seq`; None when the entry is missing.
    pub kind: Option<String>,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stored hash is not the hash of the stored fields: the entry was changed (or moved here).
    Modified { stored: String, computed: String },
    /// The numbering skips from the entry before to this one: entries were deleted (or this one inserted).
    Gap { expected: i64 },
    /// The entry does not link to the one before it: an entry before it was replaced, or entries reordered.
    Unlinked { expected: String, found: String },
    /// The head recorded earlier sits at this seq with another hash: the chain was rewritten up to here.
    AnchorMismatch { expected: String, found: String },
    /// The head recorded earlier is not in the chain: entries were removed from the end, or rewritten.
    AnchorMissing { expected: Anchor, last: Option<i64> },
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry {}", self.seq)?;
        if let Some(kind) = &self.kind {
            write!(f, " ({kind})")?;
        }
        match &self.problem {
            Problem::Modified { stored, computed } => write!(
                f,
                ": modified: its fields hash to {computed}, but it carries {stored}; it was changed after it was written"
            ),
            Problem::Gap { expected } if *expected < self.seq => write!(
                f,
                ": deleted entries before it: the chain goes from {} to {}; entries {expected} to {} are missing",
                expected - 1,
                self.seq,
                self.seq - 1
            ),
            Problem::Gap { expected } => write!(f, ": out of order: expected entry {expected} here"),
            Problem::Unlinked { expected, found } => write!(
                f,
                ": its prev_hash {found} is not the hash of entry {} ({expected}); entries were deleted, replaced or reordered",
                self.seq - 1
            ),
            Problem::AnchorMismatch { expected, found } => write!(
                f,
                ": its hash {found} differs from the head recorded earlier ({expected}); the chain was rewritten"
            ),
            Problem::AnchorMissing { expected, last } => {
                let last = last.map_or_else(|| "the chain is empty".to_string(), |n| format!("the chain ends at {n}"));
                write!(
                    f,
                    ": missing: {last}, but a head recorded earlier is {}; entries were removed from the end or rewritten",
                    expected.hash
                )
            }
        }
    }
}

/// Checks a chain entry by entry, in ascending seq, without holding it: feed it page after page.
#[derive(Debug)]
pub struct Verifier {
    expected_seq: i64,
    prev_hash: String,
    checked: u64,
    anchor: Option<Anchor>,
    anchor_seen: bool,
}

impl Verifier {
    pub fn new(anchor: Option<Anchor>) -> Verifier {
        Verifier { expected_seq: 1, prev_hash: GENESIS_HASH.to_string(), checked: 0, anchor, anchor_seen: false }
    }

    pub fn check(&mut self, record: &AuditRecord) -> Result<(), Broken> {
        let broken = |problem| Err(Broken { seq: record.seq, kind: Some(record.kind.clone()), problem });
        if record.seq != self.expected_seq {
            return broken(Problem::Gap { expected: self.expected_seq });
        }
        if record.prev_hash != self.prev_hash {
            return broken(Problem::Unlinked { expected: self.prev_hash.clone(), found: record.prev_hash.clone() });
        }
        let computed = record.computed_hash();
        if computed != record.hash {
            return broken(Problem::Modified { stored: record.hash.clone(), computed });
        }
        if let Some(anchor) = &self.anchor {
            match anchor.seq {
                Some(seq) if seq == record.seq && anchor.hash != record.hash => {
                    return broken(Problem::AnchorMismatch {
                        expected: anchor.hash.clone(),
                        found: record.hash.clone(),
                    });
                }
                Some(seq) if seq == record.seq => self.anchor_seen = true,
                None if anchor.hash == record.hash => self.anchor_seen = true,
                _ => {}
            }
        }
        self.expected_seq += 1;
        self.prev_hash.clone_from(&record.hash);
        self.checked += 1;
        Ok(())
    }

    pub fn finish(self) -> Result<Verified, Broken> {
        let last = (self.checked > 0).then(|| self.expected_seq - 1);
        if let Some(anchor) = self.anchor
            && !self.anchor_seen
        {
            let seq = anchor.seq.unwrap_or(self.expected_seq);
            return Err(Broken { seq, kind: None, problem: Problem::AnchorMissing { expected: anchor, last } });
        }
        let head = last.map(|seq| Head { seq, hash: self.prev_hash });
        Ok(Verified { checked: self.checked, head })
    }
}

/// Verifies a whole chain held in memory (tests, exports); the store verifies page by page.
pub fn verify(records: impl IntoIterator<Item = AuditRecord>, anchor: Option<Anchor>) -> Result<Verified, Broken> {
    let mut verifier = Verifier::new(anchor);
    for record in records {
        verifier.check(&record)?;
    }
    verifier.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditRecord> {
        let entries: Vec<AuditEntry> = (0..n)
            .map(|i| AuditEntry::service(AuditKind::Received).source("jira").detail(serde_json::json!({ "n": i })))
            .collect();
        link(None, 1_000, &entries)
    }

    #[test]
    fn a_linked_chain_verifies_and_names_its_head() {
        let records = chain(3);
        assert_eq!(records[0].prev_hash, GENESIS_HASH);
        assert_eq!(records[1].prev_hash, records[0].hash);
        let verified = verify(records.clone(), None).unwrap();
        assert_eq!(verified.checked, 3);
        assert_eq!(verified.head, Some(Head { seq: 3, hash: records[2].hash.clone() }));
        assert_eq!(verify(Vec::new(), None).unwrap(), Verified { checked: 0, head: None });
    }

    #[test]
    fn null_and_empty_fields_hash_differently() {
        let mut a = chain(1).remove(0);
        let before = a.computed_hash();
        a.ticket_key = Some(String::new());
        assert_ne!(a.computed_hash(), before);
        // Moving text between adjacent fields changes the hash too: the lengths are part of it.
        let mut b = chain(1).remove(0);
        b.actor = "grantbridgej".into();
        b.source = Some("ira".into());
        assert_ne!(b.computed_hash(), before);
    }

    #[test]
    fn each_kind_of_damage_is_named_at_its_entry() {
        let mut modified = chain(4);
        modified[2].detail = r#"{"n":99}"#.into();
        assert!(matches!(verify(modified, None), Err(Broken { seq: 3, problem: Problem::Modified { .. }, .. })));

        let mut deleted = chain(4);
        deleted.remove(1);
        assert!(matches!(verify(deleted, None), Err(Broken { seq: 3, problem: Problem::Gap { expected: 2 }, .. })));

        let mut swapped = chain(4);
        let (first, second) = (swapped[1].clone(), swapped[2].clone());
        swapped[1] = AuditRecord { seq: 2, ..second };
        swapped[2] = AuditRecord { seq: 3, ..first };
        assert!(matches!(verify(swapped, None), Err(Broken { seq: 2, problem: Problem::Unlinked { .. }, .. })));
    }

    #[test]
    fn a_shortened_chain_is_only_caught_against_a_recorded_head() {
        let full = chain(4);
        let head: Anchor = full[3].head().to_string().parse().unwrap();
        let short: Vec<_> = full[..3].to_vec();
        assert!(verify(short.clone(), None).is_ok());
        let broken = verify(short.clone(), Some(head.clone())).unwrap_err();
        assert_eq!(broken.seq, 4);
        assert!(broken.to_string().contains("the chain ends at 3"), "{broken}");
        let by_hash = Anchor { seq: None, hash: head.hash.clone() };
        assert!(verify(short, Some(by_hash.clone())).is_err());
        assert!(verify(full.clone(), Some(by_hash)).is_ok());
        // A chain that grew since the head was recorded still contains it.
        let earlier: Anchor = full[1].head().to_string().parse().unwrap();
        assert!(verify(full, Some(earlier)).is_ok());
    }

    #[test]
    fn anchors_parse_with_or_without_seq() {
        let hash = "AB".repeat(32);
        assert_eq!(hash.parse::<Anchor>().unwrap(), Anchor { seq: None, hash: hash.to_ascii_lowercase() });
        assert_eq!(format!("7:{hash}").parse::<Anchor>().unwrap().seq, Some(7));
        assert!("7:abc".parse::<Anchor>().is_err());
        assert!(format!("0:{hash}").parse::<Anchor>().is_err());
    }

    #[test]
    fn kinds_round_trip() {
        for kind in AuditKind::ALL {
            assert_eq!(AuditKind::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn detail_is_compact_with_sorted_keys() {
        let e = AuditEntry::service(AuditKind::Rejected).detail(serde_json::json!({"z": 1, "a": "x"}));
        assert_eq!(e.detail_text(), r#"{"a":"x","z":1}"#);
    }
}
