//! Callbacks built from outcomes: the ticket they go to, the message rendered from the templates, and an id
//! derived from the outcome, so that enqueueing the same outcome twice yields one callback.
//!
//! Messages say what happened in words for requesters and IAM administrators. They carry stable codes and the
//! labels the policy gives to grants, never an upstream's error text.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::templates::{CallbackSettings, Field, Kind, KindSettings};
use crate::domain::{Decision, GrantTarget, Plan, Principal, Refusal, RefusalCode, TicketEvent};
use crate::inbound::SourceKind;
use crate::policy::format_duration;
use crate::store::{GrantRecord, NewCallback};

/// Namespace of callback ids (UUIDv5); fixed forever, or a re-enqueued outcome would post twice across versions.
const CALLBACK_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x2d7e_91c4_58a3_4f0b_9e61_c3a8_04f2_7b15);

/// `{reason}` is cut to this many characters: a sentence, not a document.
const MAX_REASON_CHARS: usize = 600;

/// The callback id of an outcome: the same source, ticket, kind and outcome always give the same id.
pub fn callback_id(source: &str, ticket_key: &str, kind: &str, outcome_key: &str) -> String {
    let name = format!("{source}\n{ticket_key}\n{kind}\n{outcome_key}");
    uuid::Uuid::new_v5(&CALLBACK_NAMESPACE, name.as_bytes()).to_string()
}

/// Where a callback goes, and who it is about: what the grant ledger does not hold (the Jira issue id or the
/// ServiceNow sys_id and table) comes from the ticket event, which the stored decision keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketRef {
    pub source: String,
    pub system: SourceKind,
    pub ticket_key: String,
    /// Jira issue id or ServiceNow sys_id.
    pub ticket_id: String,
    /// ServiceNow table.
    pub table: Option<String>,
    /// Who receives access, as people know them (user principal name, name or e-mail), when known.
    pub principal: Option<String>,
}

#[derive(Deserialize)]
struct StoredDecided {
    ticket: Option<StoredTicket>,
    #[serde(default)]
    decision: Option<Value>,
}

#[derive(Deserialize)]
struct StoredTicket {
    source: String,
    system: SourceKind,
    ticket_key: String,
    ticket_id: String,
    #[serde(default)]
    table: Option<String>,
    #[serde(default)]
    requested_for: Option<StoredPerson>,
}

#[derive(Deserialize)]
struct StoredPerson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl TicketRef {
    /// The ticket of an event; `principal` is who the plan gives access to, when there is a plan.
    pub fn from_ticket(ticket: &TicketEvent, principal: Option<&Principal>) -> TicketRef {
        let requested = ticket
            .requested_for
            .as_ref()
            .and_then(|p| p.email.clone().or_else(|| p.name.clone()).or_else(|| p.id.clone()));
        TicketRef {
            source: ticket.source.clone(),
            system: ticket.system,
            ticket_key: ticket.ticket_key.clone(),
            ticket_id: ticket.ticket_id.clone(),
            table: ticket.table.clone(),
            principal: principal.and_then(principal_text).or(requested),
        }
    }

    /// The ticket of a stored decision (the `detail` JSON of `StoredDecision`); `None` when the decision was about
    /// no ticket (an ignored event) or the JSON is not a decision.
    pub fn from_decision_detail(detail: &str) -> Option<TicketRef> {
        let decided: StoredDecided = serde_json::from_str(detail).ok()?;
        let ticket = decided.ticket?;
        let planned = decided.decision.as_ref().and_then(|d| d.get("principal")).and_then(|p| {
            let text = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string).filter(|s| !s.is_empty());
            text("user_principal_name").or_else(|| text("display_name")).or_else(|| text("object_id"))
        });
        let requested = ticket.requested_for.and_then(|p| p.email.or(p.name).or(p.id)).filter(|s| !s.trim().is_empty());
        Some(TicketRef {
            source: ticket.source,
            system: ticket.system,
            ticket_key: ticket.ticket_key,
            ticket_id: ticket.ticket_id,
            table: ticket.table,
            principal: planned.or(requested),
        })
    }
}

fn principal_text(p: &Principal) -> Option<String> {
    p.user_principal_name
        .clone()
        .or_else(|| p.display_name.clone())
        .or_else(|| Some(p.object_id.clone()))
        .filter(|s| !s.is_empty())
}

/// The values placeholders take; empty ones render as a dash.
#[derive(Default)]
struct Values {
    principal: Option<String>,
    grants: Vec<String>,
    until: Option<String>,
    code: Option<String>,
    reason: Option<String>,
    rules: BTreeSet<String>,
    action: Option<String>,
}

impl CallbackSettings {
    /// The callback for a decision: a refusal, or the plan of a dry run. A plan to execute has its callbacks
    /// once its grants are done (`for_granted`, `for_failed`); an ignored event has none.
    pub fn for_decision(&self, ticket: &TicketRef, decision: &Decision, event_id: &str) -> Option<NewCallback> {
        match decision {
            Decision::Refused(refusal) => self.for_refusal(ticket, refusal, event_id),
            Decision::Plan(plan) if plan.dry_run => self.for_dry_run(ticket, plan, event_id),
            Decision::Plan(_) | Decision::Ignored { .. } => None,
        }
    }

    /// Why no access follows, with the refusal's code and sentence.
    pub fn for_refusal(&self, ticket: &TicketRef, refusal: &Refusal, event_id: &str) -> Option<NewCallback> {
        let values = Values {
            principal: ticket.principal.clone(),
            code: Some(refusal.code.as_str().to_string()),
            reason: Some(refusal_sentence(refusal, ticket.system)),
            rules: refusal.rule.iter().cloned().collect(),
            action: Some(refusal_action(refusal.code).to_string()),
            ..Values::default()
        };
        self.build(ticket, Kind::Refused, event_id, event_id, None, &values)
    }

    /// What a dry run would have granted.
    pub fn for_dry_run(&self, ticket: &TicketRef, plan: &Plan, event_id: &str) -> Option<NewCallback> {
        if plan.grants.is_empty() {
            return None;
        }
        let grants: Vec<String> = plan
            .grants
            .iter()
            .map(|g| {
                let until = g.duration.map_or("until revoked".to_string(), |d| format!("for {}", format_duration(d)));
                format!("- {} ({}), {until}", g.label, target_text(&g.target))
            })
            .collect();
        let durations: BTreeSet<Option<Duration>> = plan.grants.iter().map(|g| g.duration).collect();
        let until = match durations.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(d)] => format!("for {}", format_duration(*d)),
            [None] => "until revoked".to_string(),
            _ => "for the times listed".to_string(),
        };
        let values = Values {
            principal: plan.principal.as_ref().and_then(principal_text).or_else(|| ticket.principal.clone()),
            grants,
            until: Some(until),
            rules: plan.grants.iter().map(|g| g.rule.clone()).collect(),
            ..Values::default()
        };
        self.build(ticket, Kind::DryRun, event_id, event_id, None, &values)
    }

    /// Access that is now in place, each grant with when it ends.
    pub fn for_granted(&self, ticket: &TicketRef, grants: &[GrantRecord]) -> Option<NewCallback> {
        let values = grant_values(ticket, grants, true);
        self.for_grants(ticket, Kind::Granted, grants, &grants_key(grants, true), &values)
    }

    /// Grants that could not be made after every retry. `code` is a stable code (the provider's error code, e.g.
    /// `Authorization_RequestDenied`, `http_403`, `refused`); the upstream's text is never posted.
    pub fn for_failed(&self, ticket: &TicketRef, grants: &[GrantRecord], code: &str) -> Option<NewCallback> {
        let code = stable_code(code);
        let values = Values {
            action: Some(failure_action(&code).to_string()),
            code: Some(code),
            ..grant_values(ticket, grants, false)
        };
        self.for_grants(ticket, Kind::Failed, grants, &grants_key(grants, false), &values)
    }

    /// Access taken away; `reason` is a sentence for the requester (e.g. "the access expired",
    /// "the request was withdrawn").
    pub fn for_revoked(&self, ticket: &TicketRef, grants: &[GrantRecord], reason: &str) -> Option<NewCallback> {
        let values = Values {
            reason: Some(shorten(reason.trim().trim_end_matches('.'))),
            ..grant_values(ticket, grants, false)
        };
        self.for_grants(ticket, Kind::Revoked, grants, &grants_key(grants, false), &values)
    }

    /// A reminder that time-bound access ends soon.
    pub fn for_expiring(&self, ticket: &TicketRef, grants: &[GrantRecord]) -> Option<NewCallback> {
        let values = grant_values(ticket, grants, true);
        self.for_grants(ticket, Kind::Expiring, grants, &grants_key(grants, true), &values)
    }

    fn for_grants(
        &self,
        ticket: &TicketRef,
        kind: Kind,
        grants: &[GrantRecord],
        key: &str,
        values: &Values,
    ) -> Option<NewCallback> {
        let first = grants.first()?;
        let grant_id = match grants {
            [only] => Some(only.id.clone()),
            _ => None,
        };
        self.build(ticket, kind, &first.event_id, key, grant_id, values)
    }

    fn build(
        &self,
        ticket: &TicketRef,
        kind: Kind,
        event_id: &str,
        outcome_key: &str,
        grant_id: Option<String>,
        values: &Values,
    ) -> Option<NewCallback> {
        let settings: &KindSettings = self.kind(&ticket.source, kind)?;
        let message = settings.template.render(|field| value(field, ticket, values));
        let (transition, ticket_state) = match ticket.system {
            SourceKind::Jira => (settings.transition.clone(), None),
            SourceKind::Servicenow => (None, settings.state.clone()),
        };
        Some(NewCallback {
            id: callback_id(&ticket.source, &ticket.ticket_key, kind.as_str(), outcome_key),
            event_id: event_id.to_string(),
            grant_id,
            source: ticket.source.clone(),
            system: ticket.system.as_str().to_string(),
            ticket_key: ticket.ticket_key.clone(),
            ticket_id: ticket.ticket_id.clone(),
            ticket_table: ticket.table.clone(),
            kind: kind.as_str().to_string(),
            message,
            visibility: settings.visibility.as_str().to_string(),
            transition,
            ticket_state,
        })
    }
}

fn value(field: Field, ticket: &TicketRef, values: &Values) -> String {
    let or_dash = |v: &Option<String>| v.clone().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "-".into());
    match field {
        Field::Ticket => ticket.ticket_key.clone(),
        Field::Principal => or_dash(&values.principal.clone().or_else(|| Some("the requester".into()))),
        Field::Grants => values.grants.join("\n"),
        Field::Until => or_dash(&values.until),
        Field::Code => or_dash(&values.code),
        Field::Reason => or_dash(&values.reason),
        Field::Rule => {
            if values.rules.is_empty() {
                "-".into()
            } else {
                values.rules.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        }
        Field::Action => or_dash(&values.action),
    }
}

/// Grant ids in order, with their expiry when it matters: a grant made again later with a new end is news.
/// What every message about grants says: who receives the access, one line per grant (with when it ends, when
/// `with_expiry`), and the rules that gave them.
fn grant_values(ticket: &TicketRef, grants: &[GrantRecord], with_expiry: bool) -> Values {
    let line = |g: &GrantRecord| {
        if with_expiry {
            format!("- {} ({}), {}", g.label, kind_text(&g.kind), grant_until(g))
        } else {
            format!("- {} ({})", g.label, kind_text(&g.kind))
        }
    };
    Values {
        principal: ticket.principal.clone().or_else(|| grants.first().map(|g| g.principal_id.clone())),
        grants: grants.iter().map(line).collect(),
        until: with_expiry.then(|| common_until(grants)),
        rules: grants.iter().map(|g| g.rule.clone()).collect(),
        ..Values::default()
    }
}

fn grants_key(grants: &[GrantRecord], with_expiry: bool) -> String {
    let mut parts: Vec<String> = grants
        .iter()
        .map(|g| match (with_expiry, g.expires_at_ms) {
            (true, Some(at)) => format!("{}@{at}", g.id),
            _ => g.id.clone(),
        })
        .collect();
    parts.sort();
    parts.dedup();
    parts.join(",")
}

fn grant_until(g: &GrantRecord) -> String {
    match (g.expires_at_ms, g.requested_duration_secs) {
        (Some(at), _) => format!("until {}", utc_text(at)),
        (None, Some(secs)) => format!("for {}", format_duration(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))),
        (None, None) => "until revoked".to_string(),
    }
}

fn common_until(grants: &[GrantRecord]) -> String {
    let all: BTreeSet<String> = grants.iter().map(grant_until).collect();
    match all.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => one.clone(),
        _ => "until the times listed".to_string(),
    }
}

fn kind_text(kind: &str) -> &str {
    match kind {
        "group_member" => "Entra group membership",
        "pim_group" => "PIM group assignment",
        "pim_role" => "PIM directory role assignment",
        "azure_rbac" => "Azure role assignment",
        other => other,
    }
}

fn target_text(target: &GrantTarget) -> &'static str {
    match target {
        GrantTarget::GroupMember { .. } => "Entra group membership",
        GrantTarget::PimGroup { .. } => "PIM group assignment",
        GrantTarget::PimRole { .. } => "PIM directory role assignment",
        GrantTarget::AzureRbac { .. } => "Azure role assignment",
    }
}

/// The refusal's sentence, except where it may quote an upstream's answer: those get a fixed sentence.
fn refusal_sentence(refusal: &Refusal, system: SourceKind) -> String {
    match refusal.code {
        RefusalCode::ConfirmationUnavailable => {
            let system = match system {
                SourceKind::Jira => "Jira",
                SourceKind::Servicenow => "ServiceNow",
            };
            format!("grantbridge could not confirm the approval with {system}")
        }
        _ => shorten(refusal.message.trim()),
    }
}

fn refusal_action(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::NotApproved => "Access is granted only after the request is approved in the ticketing system.",
        RefusalCode::NotEnoughApprovals => "Raise a new request once it has every approval the access needs.",
        RefusalCode::SelfApproval => {
            "Someone other than the requester and the person receiving access must approve; raise a new request."
        }
        RefusalCode::ApproverNotAuthorized => {
            "The approval must come from an authorised approver; raise a new request."
        }
        RefusalCode::JustificationMissing => "Raise a new request with a business justification.",
        RefusalCode::RequestedForMissing => "Raise a new request that names who should receive the access.",
        RefusalCode::PrincipalNotFound => {
            "The person could not be found in Microsoft Entra ID: check who the request is for and raise a new request."
        }
        RefusalCode::InvalidFieldValue => "Raise a new request with one of the values the form allows.",
        RefusalCode::NoMatchingRule => {
            "This request is not handled automatically; the IAM team reviews it and grants access by hand if appropriate."
        }
        RefusalCode::ConfirmationFailed | RefusalCode::ConfirmationUnavailable => {
            "The IAM team should check grantbridge's connection to the ticketing system; then raise the request again."
        }
    }
}

/// Codes are identifiers (`Authorization_RequestDenied`, `http_403`, `AADSTS7000215`); anything else is not posted.
fn stable_code(code: &str) -> String {
    let code = code.trim();
    let ok = !code.is_empty()
        && code.len() <= 64
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok { code.to_string() } else { "unknown".to_string() }
}

fn failure_action(code: &str) -> &'static str {
    let lower = code.to_ascii_lowercase();
    if lower == "refused" {
        "the target cannot be changed through its API (for example a dynamic or on-premises-synced group): \
         grant the access by hand or change the policy."
    } else if lower.contains("authorization")
        || lower.contains("forbidden")
        || lower.starts_with("aadsts")
        || matches!(lower.as_str(), "http_401" | "http_403")
    {
        "grantbridge's Entra application was refused: an Entra administrator should check its API permissions \
         and credential, then replay the grant."
    } else if matches!(lower.as_str(), "retryable" | "transport" | "timeout") {
        "Microsoft Entra or Azure did not answer in time: replay the grant later, or grant the access by hand."
    } else {
        "an IAM administrator should look at the failed grant in grantbridge (dead letters and logs), then replay \
         it or grant the access by hand."
    }
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_REASON_CHARS {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(MAX_REASON_CHARS).collect();
    cut.push('…');
    cut
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time in milliseconds.
pub(crate) fn utc_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = crate::clock::civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, (rem % 3600) / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_text(951_868_800_000), "2000-03-01 00:00 UTC");
        assert_eq!(utc_text(1_709_208_000_000 + 90_000), "2024-02-29 12:01 UTC");
        assert_eq!(utc_text(1_735_689_599_000), "2024-12-31 23:59 UTC");
    }

    #[test]
    fn codes_are_posted_only_when_they_are_identifiers() {
        assert_eq!(stable_code("Authorization_RequestDenied"), "Authorization_RequestDenied");
        assert_eq!(stable_code("http_403"), "http_403");
        assert_eq!(stable_code("upstream answered 500: stack trace ..."), "unknown");
        assert_eq!(stable_code(""), "unknown");
    }

    fn ticket(system: SourceKind) -> TicketRef {
        let (source, key, id, table) = match system {
            SourceKind::Jira => ("jira", "ACCESS-42", "10042", None),
            SourceKind::Servicenow => ("snow", "RITM0010001", "a83820b58f723300e7e16c7827bdeed2", Some("sc_req_item")),
        };
        TicketRef {
            source: source.into(),
            system,
            ticket_key: key.into(),
            ticket_id: id.into(),
            table: table.map(str::to_string),
            principal: Some("ada@contoso.com".into()),
        }
    }

    fn grant(id: &str, label: &str, kind: &str, expires_at_ms: Option<i64>) -> GrantRecord {
        GrantRecord {
            id: id.into(),
            event_id: "ev-1".into(),
            source: "jira".into(),
            ticket_key: "ACCESS-42".into(),
            rule: "portal-access".into(),
            kind: kind.into(),
            target: "{}".into(),
            label: label.into(),
            principal_id: "aaaaaaaa-1111-4111-8111-111111111111".into(),
            requested_duration_secs: expires_at_ms.map(|_| 8 * 3600),
            expires_at_ms,
            state: "active".into(),
            upstream_id: None,
            last_error: Some("upstream answered 403 Authorization_RequestDenied: tenant secret detail".into()),
            created_at_ms: 0,
            updated_at_ms: 0,
            ended_reason: None,
            ended_by: None,
            ended_at_ms: None,
            notify_before_secs: None,
        }
    }

    #[test]
    fn granted_lists_each_grant_with_its_end_and_is_keyed_by_the_grants() {
        let settings = CallbackSettings::default();
        let a = grant("g-a", "EPM - User Portal Access", "group_member", None);
        let b = grant("g-b", "Billing Administrators", "pim_group", Some(1_714_586_400_000));
        let snow = settings.for_granted(&ticket(SourceKind::Servicenow), &[a.clone(), b.clone()]).unwrap();
        assert_eq!(
            snow.message,
            "Access granted for RITM0010001.\nada@contoso.com now has:\n\
             - EPM - User Portal Access (Entra group membership), until revoked\n\
             - Billing Administrators (PIM group assignment), until 2024-05-01 18:00 UTC\n\
             The access stays in place until the times listed. Granted automatically by grantbridge (policy rule \
             portal-access)."
        );
        assert_eq!((snow.ticket_state.as_deref(), snow.transition.as_deref()), (Some("3"), None));
        assert_eq!(
            (snow.kind.as_str(), snow.visibility.as_str(), snow.system.as_str()),
            ("granted", "public", "servicenow")
        );
        assert_eq!((snow.event_id.as_str(), snow.grant_id.as_deref()), ("ev-1", None));
        assert_eq!(snow.ticket_table.as_deref(), Some("sc_req_item"));
        let reordered = settings.for_granted(&ticket(SourceKind::Servicenow), &[b.clone(), a.clone()]).unwrap();
        assert_eq!(snow.id, reordered.id, "the same grants are the same outcome");
        let one = settings.for_granted(&ticket(SourceKind::Jira), std::slice::from_ref(&b)).unwrap();
        assert_eq!((one.grant_id.as_deref(), one.ticket_state.as_deref()), (Some("g-b"), None));
        assert!(one.message.contains("stays in place until 2024-05-01 18:00 UTC."), "{}", one.message);
        let mut extended = b.clone();
        extended.expires_at_ms = Some(1_714_600_000_000);
        assert_ne!(one.id, settings.for_granted(&ticket(SourceKind::Jira), &[extended]).unwrap().id);
        assert!(settings.for_granted(&ticket(SourceKind::Jira), &[]).is_none());
    }

    #[test]
    fn failures_post_the_label_a_stable_code_and_what_to_do_never_the_upstream_text() {
        let settings = CallbackSettings::default();
        let g = grant("g-a", "EPM - User Portal Access", "group_member", None);
        let failed = settings
            .for_failed(&ticket(SourceKind::Jira), std::slice::from_ref(&g), "Authorization_RequestDenied")
            .unwrap();
        assert!(failed.message.contains("- EPM - User Portal Access (Entra group membership)"), "{}", failed.message);
        assert!(failed.message.contains("Error code: Authorization_RequestDenied"), "{}", failed.message);
        assert!(
            failed.message.contains("an Entra administrator should check its API permissions"),
            "{}",
            failed.message
        );
        assert!(!failed.message.contains("secret detail") && !failed.message.contains("upstream answered"));
        assert_eq!(failed.visibility, "internal");
        let odd = settings.for_failed(&ticket(SourceKind::Jira), &[g], "upstream answered 500: at Foo.bar()").unwrap();
        assert!(odd.message.contains("Error code: unknown") && !odd.message.contains("Foo.bar"), "{}", odd.message);
    }

    #[test]
    fn refusals_keep_our_sentence_but_not_an_upstream_answer() {
        let settings = CallbackSettings::default();
        let refused =
            Refusal::new(RefusalCode::SelfApproval, "Ada approved their own request").in_rule("portal-access");
        let cb = settings.for_refusal(&ticket(SourceKind::Jira), &refused, "ev-9").unwrap();
        assert_eq!(
            cb.message,
            "No access was granted for ACCESS-42.\nReason (self_approval): Ada approved their own request\n\
             Someone other than the requester and the person receiving access must approve; raise a new request.\n\
             Decided automatically by grantbridge; nothing was changed in Microsoft Entra."
        );
        assert_eq!(
            (cb.event_id.as_str(), cb.id.clone()),
            ("ev-9", callback_id("jira", "ACCESS-42", "refused", "ev-9"))
        );
        let unavailable = Refusal::new(
            RefusalCode::ConfirmationUnavailable,
            "Jira refused to show the issue: upstream answered 401: Client must be authenticated",
        );
        let cb = settings.for_refusal(&ticket(SourceKind::Jira), &unavailable, "ev-9").unwrap();
        assert!(
            cb.message.contains("could not confirm the approval with Jira") && !cb.message.contains("401"),
            "{}",
            cb.message
        );
    }

    #[test]
    fn dry_runs_revocations_and_reminders() {
        let settings = CallbackSettings::default();
        let plan = Plan {
            ticket_key: "ACCESS-42".into(),
            principal: Some(Principal {
                object_id: "aaaaaaaa-1111-4111-8111-111111111111".into(),
                user_principal_name: Some("ada@contoso.com".into()),
                display_name: None,
            }),
            grants: vec![crate::domain::PlannedGrant {
                rule: "billing-admins-pim".into(),
                target: GrantTarget::PimGroup { group_id: "g".into(), access: crate::domain::PimAccess::Member },
                label: "Billing Administrators".into(),
                duration: Some(Duration::from_secs(8 * 3600)),
                reasons: vec![],
            }],
            dry_run: true,
            confirmation: crate::domain::Confirmation::Skipped,
            mode: "first_match".into(),
            matched_rules: vec!["billing-admins-pim".into()],
            notes: vec![],
        };
        let decision = Decision::Plan(plan.clone());
        let dry = settings.for_decision(&ticket(SourceKind::Jira), &decision, "ev-1").unwrap();
        assert!(dry.message.starts_with("Dry run for ACCESS-42: nothing was changed"), "{}", dry.message);
        assert!(dry.message.contains("- Billing Administrators (PIM group assignment), for 8h"), "{}", dry.message);
        assert_eq!(dry.visibility, "internal");
        let executed = Decision::Plan(Plan { dry_run: false, ..plan });
        assert!(settings.for_decision(&ticket(SourceKind::Jira), &executed, "ev-1").is_none());
        assert!(
            settings.for_decision(&ticket(SourceKind::Jira), &Decision::Ignored { reason: "x".into() }, "e").is_none()
        );

        let g = grant("g-a", "EPM - User Portal Access", "group_member", Some(1_714_586_400_000));
        let revoked =
            settings.for_revoked(&ticket(SourceKind::Jira), std::slice::from_ref(&g), "the access expired.").unwrap();
        assert!(
            revoked.message.starts_with("Access from ACCESS-42 has been removed: the access expired.\n"),
            "{}",
            revoked.message
        );
        let expiring = settings.for_expiring(&ticket(SourceKind::Jira), &[g]).unwrap();
        assert!(expiring.message.contains("has this access until 2024-05-01 18:00 UTC:"), "{}", expiring.message);
        assert_ne!(revoked.id, expiring.id);
    }

    #[test]
    fn the_ticket_is_read_back_from_a_stored_decision() {
        let detail = r#"{"ticket":{"source":"snow","system":"servicenow","ticket_key":"RITM0010001",
            "ticket_id":"a83820b58f723300e7e16c7827bdeed2","table":"sc_req_item","url":null,"action":"approved",
            "requested_for":{"id":"u1","email":"ada@contoso.com","name":"ada"},"approvals":[],"fields":{}},
            "decision":{"outcome":"plan","principal":{"object_id":"oid","user_principal_name":"ada@contoso.onmicrosoft.com","display_name":"Ada"}}}"#;
        let t = TicketRef::from_decision_detail(detail).unwrap();
        assert_eq!(
            (t.source.as_str(), t.system, t.ticket_key.as_str()),
            ("snow", SourceKind::Servicenow, "RITM0010001")
        );
        assert_eq!(
            (t.ticket_id.as_str(), t.table.as_deref()),
            ("a83820b58f723300e7e16c7827bdeed2", Some("sc_req_item"))
        );
        assert_eq!(t.principal.as_deref(), Some("ada@contoso.onmicrosoft.com"), "the plan's principal comes first");
        let refused = detail.replace(r#""outcome":"plan","principal":{"object_id":"oid","user_principal_name":"ada@contoso.onmicrosoft.com","display_name":"Ada"}"#, r#""outcome":"refused","code":"not_approved""#);
        assert_eq!(TicketRef::from_decision_detail(&refused).unwrap().principal.as_deref(), Some("ada@contoso.com"));
        assert_eq!(TicketRef::from_decision_detail(r#"{"ticket":null,"decision":{"outcome":"ignored"}}"#), None);
        assert_eq!(TicketRef::from_decision_detail("{}"), None);
    }

    #[test]
    fn a_kind_turned_off_yields_no_callback() {
        let raw: super::super::templates::CallbacksConfig = toml::from_str("[refused]\nenabled = false").unwrap();
        let settings = raw.build("callbacks", &[]).unwrap();
        let refused = Refusal::new(RefusalCode::NotApproved, "x");
        assert!(settings.for_refusal(&ticket(SourceKind::Jira), &refused, "e").is_none());
    }

    #[test]
    fn ids_depend_on_every_part() {
        let a = callback_id("jira", "ACC-1", "granted", "g1");
        assert_eq!(a, callback_id("jira", "ACC-1", "granted", "g1"));
        for other in [
            callback_id("jira2", "ACC-1", "granted", "g1"),
            callback_id("jira", "ACC-2", "granted", "g1"),
            callback_id("jira", "ACC-1", "revoked", "g1"),
            callback_id("jira", "ACC-1", "granted", "g2"),
        ] {
            assert_ne!(a, other);
        }
    }
}
