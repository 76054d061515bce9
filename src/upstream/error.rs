//! Upstream failures, and reading the error bodies of Graph, the identity platform, Jira and ServiceNow.
//!
//! Only what the upstream answered goes into an error: never a request header, token or secret.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// Response headers that carry the upstream's id for the request, in the order we prefer them.
const REQUEST_ID_HEADERS: [&str; 5] = ["request-id", "x-ms-request-id", "x-request-id", "atl-traceid", "x-arequestid"];

/// Non-JSON error bodies are quoted only this far: enough to recognise a proxy or login page.
const SNIPPET_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream refused the request in a way that retrying cannot change (4xx other than 408/429, 3xx).
    #[error("{}", permanent_text(.status, .code, .message, .request_id))]
    Permanent { status: StatusCode, code: Option<String>, message: String, request_id: Option<String> },
    /// Every attempt failed with something retryable; `last` says what the last failure was, and `retry_after` how
    /// long the upstream asked us to wait after it, if it said.
    #[error("gave up after {attempts} attempts; last: {last}")]
    Exhausted { attempts: u32, last: String, retry_after: Option<std::time::Duration> },
    /// The request could not be sent, for a reason retrying would not fix.
    #[error("transport: {0}")]
    Transport(String),
    /// The upstream answered 2xx with a body we cannot use.
    #[error("unexpected response: {0}")]
    InvalidResponse(String),
    /// We were asked to send something the upstream must not receive (e.g. a malformed id).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

fn permanent_text(status: &StatusCode, code: &Option<String>, message: &str, request_id: &Option<String>) -> String {
    let mut text = format!("upstream answered {}", status.as_u16());
    if let Some(code) = code {
        text.push(' ');
        text.push_str(code);
    }
    text.push_str(": ");
    text.push_str(message);
    if let Some(id) = request_id {
        text.push_str(" (request-id ");
        text.push_str(id);
        text.push(')');
    }
    text
}

impl UpstreamError {
    /// The HTTP status of a permanent refusal.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            UpstreamError::Permanent { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether trying again later (a later job run, not an immediate retry) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, UpstreamError::Exhausted { .. })
    }

    pub(crate) fn is_not_found(&self) -> bool {
        self.status() == Some(StatusCode::NOT_FOUND)
    }

    /// Builds a `Permanent` error from what the upstream answered.
    pub fn from_response_parts(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> UpstreamError {
        let parsed = serde_json::from_slice::<Value>(body).ok().and_then(|v| parse_known_body(&v));
        let (code, message, body_request_id) = match parsed {
            Some(p) => (p.code, p.message, p.request_id),
            None => (None, fallback_message(status, body), None),
        };
        let request_id = body_request_id.or_else(|| request_id(headers));
        UpstreamError::Permanent { status, code, message, request_id }
    }
}

/// The upstream's id for a request, from the response headers.
pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    REQUEST_ID_HEADERS
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

struct Parsed {
    code: Option<String>,
    message: String,
    request_id: Option<String>,
}

fn parse_known_body(v: &Value) -> Option<Parsed> {
    match v.get("error") {
        Some(Value::Object(error)) => {
            let text = |k: &str| error.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(code) = text("code") {
                // Microsoft Graph / ARM: {"error":{"code","message","innerError":{"request-id",...}}}
                let inner = error.get("innerError").or_else(|| error.get("innererror"));
                let request_id = inner.and_then(|i| i.get("request-id")).and_then(Value::as_str).map(str::to_owned);
                return Some(Parsed {
                    code: Some(code.to_owned()),
                    message: text("message").unwrap_or(code).to_owned(),
                    request_id,
                });
            }
            // ServiceNow: {"error":{"message","detail"},"status":"failure"}
            let message = text("message")?;
            let message = match text("detail") {
                Some(detail) => format!("{message}: {detail}"),
                None => message.to_owned(),
            };
            Some(Parsed { code: None, message, request_id: None })
        }
        Some(Value::String(error)) => Some(parse_oauth_error(error, v)),
        _ => parse_jira_error(v),
    }
}

/// OAuth 2.0 token endpoint errors (RFC 6749 5.2), with the identity platform's AADSTS additions.
fn parse_oauth_error(error: &str, v: &Value) -> Parsed {
    let description = v.get("error_description").and_then(Value::as_str).unwrap_or("");
    // The identity platform appends "Trace ID: ... Correlation ID: ... Timestamp: ..." on further lines.
    let first_line = description.lines().next().unwrap_or("").trim();
    let aadsts = v
        .get("error_codes")
        .and_then(Value::as_array)
        .and_then(|codes| codes.first())
        .and_then(Value::as_u64)
        .map(|n| format!("AADSTS{n}"))
        .or_else(|| aadsts_in(first_line));
    let message = if first_line.is_empty() { error.to_owned() } else { format!("{error}: {first_line}") };
    let request_id = v.get("trace_id").and_then(Value::as_str).map(str::to_owned);
    Parsed { code: Some(aadsts.unwrap_or_else(|| error.to_owned())), message, request_id }
}

fn aadsts_in(text: &str) -> Option<String> {
    let start = text.find("AADSTS")?;
    let rest = text.get(start..)?;
    let end = rest.char_indices().skip(6).find(|(_, c)| !c.is_ascii_digit()).map_or(rest.len(), |(i, _)| i);
    (end > 6).then(|| rest.get(..end).map(str::to_owned)).flatten()
}

/// Jira: {"errorMessages":["..."],"errors":{"field":"message"}}
fn parse_jira_error(v: &Value) -> Option<Parsed> {
    let messages = v.get("errorMessages").and_then(Value::as_array);
    let fields = v.get("errors").and_then(Value::as_object);
    if messages.is_none() && fields.is_none() {
        return None;
    }
    let mut parts: Vec<String> = messages.into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect();
    for (field, message) in fields.into_iter().flatten() {
        let message = message.as_str().map_or_else(|| message.to_string(), str::to_owned);
        parts.push(format!("{field}: {message}"));
    }
    let message = if parts.is_empty() { "no error message given".to_owned() } else { parts.join("; ") };
    Some(Parsed { code: None, message, request_id: None })
}

fn fallback_message(status: StatusCode, body: &[u8]) -> String {
    let reason = status.canonical_reason().unwrap_or("error").to_owned();
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return reason;
    }
    if text.starts_with('<') {
        return format!("{reason} (HTML body omitted)");
    }
    let snippet: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(SNIPPET_CHARS).collect();
    format!("{reason}: {snippet}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permanent(status: u16, body: &str) -> (Option<String>, String, Option<String>) {
        let status = StatusCode::from_u16(status).unwrap();
        match UpstreamError::from_response_parts(status, &HeaderMap::new(), body.as_bytes()) {
            UpstreamError::Permanent { code, message, request_id, .. } => (code, message, request_id),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn graph_error_body() {
        let (code, message, id) = permanent(
            400,
            r#"{"error":{"code":"Request_BadRequest","message":"Invalid object identifier 'x'.",
                "innerError":{"date":"2024-01-01T00:00:00","request-id":"r-1","client-request-id":"c-1"}}}"#,
        );
        assert_eq!(code.as_deref(), Some("Request_BadRequest"));
        assert_eq!(message, "Invalid object identifier 'x'.");
        assert_eq!(id.as_deref(), Some("r-1"));
    }

    #[test]
    fn identity_platform_error_body() {
        let (code, message, id) = permanent(
            401,
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.\r\nTrace ID: t\r\nCorrelation ID: c","error_codes":[7000215],"trace_id":"t-1","correlation_id":"c-1"}"#,
        );
        assert_eq!(code.as_deref(), Some("AADSTS7000215"));
        assert_eq!(message, "invalid_client: AADSTS7000215: Invalid client secret provided.");
        assert_eq!(id.as_deref(), Some("t-1"));
        let (code, _, _) = permanent(400, r#"{"error":"invalid_scope","error_description":"AADSTS70011: bad scope"}"#);
        assert_eq!(code.as_deref(), Some("AADSTS70011"));
        let (code, message, _) = permanent(401, r#"{"error":"access_denied","error_description":"access_denied"}"#);
        assert_eq!(code.as_deref(), Some("access_denied"));
        assert_eq!(message, "access_denied: access_denied");
    }

    #[test]
    fn jira_and_servicenow_error_bodies() {
        let (code, message, _) =
            permanent(400, r#"{"errorMessages":["Issue does not exist"],"errors":{"summary":"required"}}"#);
        assert_eq!(code, None);
        assert_eq!(message, "Issue does not exist; summary: required");
        let (_, message, _) = permanent(
            404,
            r#"{"error":{"message":"No Record found","detail":"Record doesn't exist or ACL restricts the record retrieval"},"status":"failure"}"#,
        );
        assert_eq!(message, "No Record found: Record doesn't exist or ACL restricts the record retrieval");
    }

    #[test]
    fn other_bodies_are_quoted_briefly_and_html_not_at_all() {
        assert_eq!(permanent(401, "").1, "Unauthorized");
        assert_eq!(permanent(401, "Client must be\n authenticated").1, "Unauthorized: Client must be authenticated");
        assert_eq!(permanent(403, "<html><body>login</body></html>").1, "Forbidden (HTML body omitted)");
        assert!(permanent(400, &"x".repeat(5000)).1.len() < 300);
    }

    #[test]
    fn request_id_falls_back_to_headers_and_display_names_it() {
        let mut headers = HeaderMap::new();
        headers.insert("request-id", "hdr-1".parse().unwrap());
        let err = UpstreamError::from_response_parts(StatusCode::FORBIDDEN, &headers, b"{}");
        assert_eq!(err.to_string(), "upstream answered 403: Forbidden: {} (request-id hdr-1)");
    }
}
