//! From a stored webhook body to a `TicketEvent`: one module per ticketing system, driven by the source's
//! `[sources.NAME.ticket]` table (field ids differ per Jira site; variable names per ServiceNow catalog).

mod jira;
mod servicenow;

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::config::ConfigError;
use crate::domain::TicketEvent;
use crate::inbound::SourceKind;

/// How to read tickets of one source. Every key is optional; the defaults fit Jira Service Management and
/// the ServiceNow business rule shipped in `examples/servicenow/`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketMappingConfig {
    /// Browse URL of the instance (`https://example.atlassian.net`), for links in plans and comments.
    pub url: Option<String>,
    /// Jira: the JSM "Request Type" field (`com.atlassian.servicedesk:vp-origin`), e.g. `customfield_10010`.
    pub request_type_field: Option<String>,
    /// Jira: a user-picker field naming who receives access; default: the reporter.
    /// ServiceNow: a variable naming the user; default: `requested_for`.
    pub requested_for_field: Option<String>,
    /// Jira: the JSM approvals field (`com.atlassian.servicedesk.approvals-plugin:sd-approvals`).
    pub approvals_field: Option<String>,
    /// Jira field id or ServiceNow variable holding the business justification.
    pub justification_field: Option<String>,
    /// Jira field id or ServiceNow variable holding a requested duration (`8h`, `PT8H`, or hours).
    pub duration_field: Option<String>,
    /// Policy field name -> Jira field id or ServiceNow variable name. ServiceNow variables are also
    /// available under their own names without a mapping.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Jira status names (case-insensitive) that mean each action.
    pub approved_statuses: Option<Vec<String>>,
    pub rejected_statuses: Option<Vec<String>>,
    pub cancelled_statuses: Option<Vec<String>>,
    pub closed_statuses: Option<Vec<String>>,
    pub reopened_statuses: Option<Vec<String>>,
}

/// A validated mapping.
#[derive(Debug, Clone)]
pub struct TicketMapping {
    kind: SourceKind,
    config: TicketMappingConfig,
}

impl TicketMappingConfig {
    pub fn build(self, kind: SourceKind, at: &str) -> Result<TicketMapping, ConfigError> {
        if let Some(url) = &self.url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::at(format!("{at}.url"), "must be an http(s) URL"));
        }
        if kind == SourceKind::Servicenow {
            for (key, set) in [
                ("request_type_field", self.request_type_field.is_some()),
                ("approvals_field", self.approvals_field.is_some()),
                ("approved_statuses", self.approved_statuses.is_some()),
                ("rejected_statuses", self.rejected_statuses.is_some()),
                ("cancelled_statuses", self.cancelled_statuses.is_some()),
                ("closed_statuses", self.closed_statuses.is_some()),
                ("reopened_statuses", self.reopened_statuses.is_some()),
            ] {
                if set {
                    return Err(ConfigError::at(format!("{at}.{key}"), "applies to Jira sources only"));
                }
            }
        }
        Ok(TicketMapping { kind, config: self })
    }
}

impl TicketMapping {
    pub fn default_for(kind: SourceKind) -> Self {
        TicketMapping { kind, config: TicketMappingConfig::default() }
    }

    /// The field (Jira) or catalog variable (ServiceNow) naming who receives access, when not the default.
    pub fn requested_for_field(&self) -> Option<&str> {
        self.config.requested_for_field.as_deref()
    }
}

/// What a stored event turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Normalized {
    Ticket(Box<TicketEvent>),
    /// Not about an access decision; recorded with the reason, not an error.
    Ignored(String),
}

/// Parses a stored body. A body that is valid JSON but not a ticket event is `Ignored`, never an error:
/// senders post all kinds of events to the same URL.
pub fn normalize(
    source: &str,
    mapping: &TicketMapping,
    body: &str,
    delivery_id: Option<&str>,
    received_at_ms: i64,
) -> Normalized {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return Normalized::Ignored("the stored body is not JSON".into());
    };
    if holds_nul(&value) {
        // No ticketing system sends one; PostgreSQL cannot store one in a text column.
        return Normalized::Ignored("the body holds a NUL character (\\u0000)".into());
    }
    let header = Header { source, delivery_id, received_at_ms };
    let result = match mapping.kind {
        SourceKind::Jira => jira::normalize(&header, &mapping.config, &value),
        SourceKind::Servicenow => servicenow::normalize(&header, &mapping.config, &value),
    };
    match result {
        Ok(ticket) => Normalized::Ticket(Box::new(ticket)),
        Err(reason) => Normalized::Ignored(reason),
    }
}

/// Whether any string or key in `value` holds a NUL character.
fn holds_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(holds_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

struct Header<'a> {
    source: &'a str,
    delivery_id: Option<&'a str>,
    received_at_ms: i64,
}

/// A field value as text: strings as they are, numbers printed, option objects by `value` or `name`,
/// arrays joined with `,`.
fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => ["value", "name", "displayName", "accountId"].iter().find_map(|k| o.get(*k).and_then(text)),
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(text).collect();
            (!parts.is_empty()).then(|| parts.join(","))
        }
        _ => None,
    }
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
}
