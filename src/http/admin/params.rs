//! Query parameters of the admin routes: known names only, each at most once, values checked, and opaque
//! page cursors. Every problem is a `400` with a stable code, never actix's own plain-text answer.

use std::collections::BTreeMap;

use actix_web::web;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::http::ApiError;
use crate::store::PageKey;
use crate::upstream::days_from_civil;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

/// Which list a cursor belongs to: a cursor from one list is refused by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    Events,
    Grants,
    DeadLetters,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            CursorKind::Events => "events",
            CursorKind::Grants => "grants",
            CursorKind::DeadLetters => "dead_letters",
        }
    }
}

/// `base64url("{list}.{time}.{id}")`: opaque to clients, which only hand it back.
pub fn encode_cursor(kind: CursorKind, key: &PageKey) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}.{}", kind.tag(), key.at_ms, key.id))
}

fn decode_cursor(kind: CursorKind, text: &str) -> Option<PageKey> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (tag, rest) = text.split_once('.')?;
    let (at, id) = rest.split_once('.')?;
    if tag != kind.tag() || id.is_empty() || id.chars().any(char::is_control) {
        return None;
    }
    Some(PageKey { at_ms: at.parse().ok()?, id: id.to_string() })
}

/// The audit trail's cursor: `base64url("audit.{seq}")`, the seq of the last entry of the page before.
pub fn encode_audit_cursor(after_seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("audit.{after_seq}"))
}

fn decode_audit_cursor(text: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let seq = text.strip_prefix("audit.")?;
    if !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok()
}

#[derive(Debug)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    /// Parses `query`, refusing names not in `allowed`, repeated names and empty values.
    pub fn parse(query: &str, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
            .map_err(|_| ApiError::InvalidParameter("the query string cannot be decoded".into()))?
            .into_inner();
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                let known = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(ApiError::InvalidParameter(format!(
                    "unknown query parameter `{}`; this route takes: {known}",
                    shorten(&name)
                )));
            }
            if value.is_empty() {
                return Err(ApiError::InvalidParameter(format!("`{name}` is empty")));
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(ApiError::InvalidParameter(format!("`{name}` is given more than once")));
            }
        }
        Ok(Params(params))
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// A state, status or kind: 1-32 characters of a-z and `_`.
    pub fn word(&self, name: &str) -> Result<Option<String>, ApiError> {
        let Some(value) = self.0.get(name) else { return Ok(None) };
        if value.len() > 32 || !value.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(ApiError::InvalidParameter(format!("`{name}` must be a lowercase word such as `decided`")));
        }
        Ok(Some(value.clone()))
    }

    /// A time as Unix milliseconds or RFC 3339 (`2026-05-01T08:00:00Z`, `2026-05-01T10:00:00.5+02:00`).
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.0.get(name) else { return Ok(None) };
        parse_time(value).map(Some).ok_or_else(|| {
            ApiError::InvalidParameter(format!(
                "`{name}` must be Unix milliseconds or an RFC 3339 time such as 2026-05-01T08:00:00Z"
            ))
        })
    }

    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(value) = self.0.get("limit") else { return Ok(DEFAULT_LIMIT) };
        match value.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::InvalidParameter(format!("`limit` must be a whole number from 1 to {MAX_LIMIT}"))),
        }
    }

    /// The seq after which a page of the audit trail starts.
    pub fn audit_cursor(&self) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.0.get("cursor") else { return Ok(None) };
        decode_audit_cursor(value).map(Some).ok_or(ApiError::InvalidCursor)
    }

    pub fn cursor(&self, kind: CursorKind) -> Result<Option<PageKey>, ApiError> {
        let Some(value) = self.0.get("cursor") else { return Ok(None) };
        decode_cursor(kind, value).map(Some).ok_or(ApiError::InvalidCursor)
    }
}

/// Parameter names are echoed in errors; a long one is cut.
fn shorten(name: &str) -> String {
    let mut short: String = name.chars().take(40).filter(|c| !c.is_control()).collect();
    if name.chars().count() > 40 {
        short.push_str("...");
    }
    short
}

fn parse_time(value: &str) -> Option<i64> {
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok();
    }
    rfc3339_millis(value)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` -> Unix milliseconds. A space where the offset's `+`
/// belongs is taken for it: an unescaped `+` in a query string arrives as a space.
fn rfc3339_millis(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = text.get(range)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    if bytes.len() < 20 || bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    if !matches!(bytes.get(10), Some(b'T' | b't')) || bytes.get(13) != Some(&b':') || bytes.get(16) != Some(&b':') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = text.get(19..)?;
    let mut millis = 0;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let padded = format!("{:0<3}", fraction.get(..digits.min(3))?);
        millis = padded.parse::<i64>().ok()?;
        rest = fraction.get(digits..)?;
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' | b' ' => 1,
                b'-' => -1,
                _ => return None,
            };
            let offset = rest.get(1..)?;
            if offset.len() != 5 || offset.as_bytes().get(2) != Some(&b':') {
                return None;
            }
            let (h, m) = (offset.get(0..2)?.parse::<i64>().ok()?, offset.get(3..5)?.parse::<i64>().ok()?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 3600 + m * 60)
        }
    };
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: [&str; 4] = ["source", "limit", "cursor", "received_after"];

    fn params(query: &str) -> Result<Params, String> {
        Params::parse(query, &ALLOWED).map_err(|e| e.to_string())
    }

    #[test]
    fn times_in_both_forms() {
        assert_eq!(parse_time("1764316800000"), Some(1_764_316_800_000));
        assert_eq!(parse_time("2025-11-28T08:00:00Z"), Some(1_764_316_800_000));
        assert_eq!(parse_time("2025-11-28t08:00:00.25z"), Some(1_764_316_800_250));
        assert_eq!(parse_time("2025-11-28T10:00:00.123456+02:00"), Some(1_764_316_800_123));
        assert_eq!(parse_time("2025-11-28T10:00:00 02:00"), Some(1_764_316_800_000), "a `+` that became a space");
        assert_eq!(parse_time("2025-11-28T06:30:00-01:30"), Some(1_764_316_800_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        for bad in [
            "",
            "-5",
            "yesterday",
            "2025-11-28",
            "2025-11-28T08:00:00",
            "2025-13-28T08:00:00Z",
            "2025-02-29T08:00:00Z",
            "2025-04-31T08:00:00Z",
            "2025-11-28T24:00:00Z",
            "2025-11-28T08:00:00.Z",
            "2025-11-28T08:00:00+2:00",
            "2025-11-28T08:00:00+02:00x",
            "2025-11-28T08:00:00Zjunk",
            "2025-11-28 08:00:00Z",
            "+025-11-28T08:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_round_trip_and_belong_to_one_list() {
        let key = PageKey { at_ms: 1_764_316_800_000, id: "01a22115-d5cd-7322-925b-7d66094f3465".into() };
        let cursor = encode_cursor(CursorKind::Events, &key);
        assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe: {cursor}");
        assert_eq!(decode_cursor(CursorKind::Events, &cursor), Some(key.clone()));
        assert_eq!(decode_cursor(CursorKind::Grants, &cursor), None);
        let dotted = PageKey { at_ms: -1, id: "a.b.c".into() };
        assert_eq!(decode_cursor(CursorKind::Grants, &encode_cursor(CursorKind::Grants, &dotted)), Some(dotted));
        for bad in ["", "!!!", "ZXZlbnRz", &URL_SAFE_NO_PAD.encode("events.x.id"), &URL_SAFE_NO_PAD.encode("events.1.")]
        {
            assert_eq!(decode_cursor(CursorKind::Events, bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_repeated_and_empty_parameters_are_refused() {
        let p = params("source=jira&limit=10&received_after=2025-11-28T08%3A00%3A00Z").unwrap();
        assert_eq!(p.text("source").as_deref(), Some("jira"));
        assert_eq!(p.limit().unwrap(), 10);
        assert_eq!(p.time("received_after").unwrap(), Some(1_764_316_800_000));
        assert_eq!(params("").unwrap().limit().unwrap(), DEFAULT_LIMIT);
        assert!(params("sauce=jira").unwrap_err().contains("unknown query parameter `sauce`"));
        assert!(params("source=a&source=b").unwrap_err().contains("more than once"));
        assert!(params("source=").unwrap_err().contains("`source` is empty"));
        for limit in ["0", "201", "-1", "ten", "1.5"] {
            let err = params(&format!("limit={limit}")).unwrap().limit().unwrap_err();
            assert_eq!(err.code(), "invalid_parameter", "{limit}");
        }
        assert_eq!(params("limit=200").unwrap().limit().unwrap(), 200);
        assert_eq!(params("cursor=nope").unwrap().cursor(CursorKind::Events).unwrap_err().code(), "invalid_cursor");
        let long = "x".repeat(500);
        let err = params(&format!("{long}=1")).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn words_are_lowercase_identifiers() {
        let p = Params::parse("state=dead_letter&kind=Group&x=a%20b", &["state", "kind", "x"]).unwrap();
        assert_eq!(p.word("state").unwrap().as_deref(), Some("dead_letter"));
        assert!(p.word("kind").is_err());
        assert!(p.word("x").is_err());
        assert_eq!(p.word("missing").unwrap(), None);
    }
}
