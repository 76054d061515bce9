//! A decision in words, for `grantbridge plan` and, later, for the comment posted to the ticket.

use std::fmt::Write;

use crate::domain::{Confirmation, Decision, GrantTarget, PimAccess, TicketEvent};
use crate::policy::format_duration;

pub fn render(ticket: Option<&TicketEvent>, decision: &Decision) -> String {
    let mut out = String::new();
    if let Some(t) = ticket {
        let _ = writeln!(
            out,
            "ticket:   {} ({} via source {}), {}",
            t.ticket_key,
            t.system.as_str(),
            t.source,
            t.action.as_str()
        );
        if let Some(rt) = &t.request_type {
            let _ = writeln!(out, "request:  {rt}");
        }
        if let Some(p) = &t.requested_for {
            let who = p.email.as_deref().or(p.name.as_deref()).or(p.id.as_deref()).unwrap_or("?");
            let _ = writeln!(out, "for:      {who}");
        }
    }
    match decision {
        Decision::Ignored { reason } => {
            let _ = writeln!(out, "decision: ignored: {reason}");
        }
        Decision::Refused(r) => {
            let rule = r.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
            let _ = writeln!(out, "decision: refused{rule}: {}", r.code.as_str());
            let _ = writeln!(out, "          {}", r.message);
        }
        Decision::Plan(plan) => {
            let mode = if plan.dry_run { "plan (dry run: nothing will be executed)" } else { "plan" };
            let _ = writeln!(out, "decision: {mode}; rules: {} ({})", plan.matched_rules.join(", "), plan.mode);
            let confirmation = match &plan.confirmation {
                Confirmation::Confirmed { detail } => format!("confirmed with the ticketing system: {detail}"),
                Confirmation::NotConfigured => "not confirmed: no ticketing API is configured for this source".into(),
                Confirmation::Skipped => "not attempted (offline)".into(),
            };
            let _ = writeln!(out, "approval: {confirmation}");
            if let Some(p) = &plan.principal {
                let upn = p.user_principal_name.as_deref().unwrap_or("");
                let _ = writeln!(out, "receiver: {} {upn}", p.object_id);
            }
            for grant in &plan.grants {
                let until =
                    grant.duration.map_or("until revoked".to_string(), |d| format!("for {}", format_duration(d)));
                let _ = writeln!(out, "  grant:  {} {}, {until}", describe(&grant.target), grant.label);
                for reason in &grant.reasons {
                    let _ = writeln!(out, "          - {reason}");
                }
            }
            for note in &plan.notes {
                let _ = writeln!(out, "note:     {note}");
            }
        }
    }
    out
}

fn describe(target: &GrantTarget) -> String {
    match target {
        GrantTarget::GroupMember { group_id } => format!("member of group {group_id}"),
        GrantTarget::PimGroup { group_id, access } => {
            let access = match access {
                PimAccess::Member => "member",
                PimAccess::Owner => "owner",
            };
            format!("PIM {access} of group {group_id}")
        }
        GrantTarget::PimRole { role_definition_id, directory_scope_id } => {
            format!("PIM directory role {role_definition_id} at {directory_scope_id}")
        }
        GrantTarget::AzureRbac { scope, role_definition_id } => format!("Azure role {role_definition_id} at {scope}"),
    }
}
