//! The access policy: which approved tickets lead to which Entra grants, declared in `[policy]` and evaluated purely.
//!
//! A ticket can only ever cause grants its matching rule declares: every target is written in the policy, and a
//! ticket field may *choose* among a rule's declared options, never name a group or role itself.
//!
//! # Configuration
//!
//! ```toml
//! [policy]
//! mode = "first_match"      # default; or "all_matches"
//! dry_run = false           # true: every plan is recorded and posted, never executed
//!
//! [[policy.rules]]
//! name = "portal-access"                          # required, unique: 1-63 of a-z 0-9 - _
//! sources = ["servicenow"]                        # configured [sources.NAME] names; absent: any source
//! request_types = ["Permissions portal access"]   # JSM request type / catalog item; absent: any
//! fields = { environment = ["dev", "prod"] }      # each field must hold one of its values; absent: no condition
//! dry_run = false                                 # this rule's plans are not executed
//! require_confirmation = true                     # the approval must be read back from the ticketing system
//! min_approvals = 1                               # approvals by distinct, identifiable people; at least 1
//! approver_not_requester = true                   # no approver may be the requester or the receiver
//! approver_group = "<group guid>"                 # min_approvals approvers must be members of it
//! require_justification = false
//! default_duration = "8h"                         # when the ticket asks for none
//! max_duration = "24h"                            # a longer request is capped, and the plan says so
//! notify_before_expiry = "1h"                     # a notice on the ticket this long before time-bound access ends
//! withdraw_on = ["cancelled", "rejected", "reopened"]  # default; ticket actions that end the ticket's grants
//!                                                 # ("closed" allowed too); [] = a later event never revokes
//!
//! [[policy.rules.grants]]
//! kind = "group_member"
//! group_id = "<group guid>"
//! label = "EPM - User Portal Access"              # shown in plans and comments; default: the id
//! restore_missing = false                         # reconciliation re-adds members whose active grant is missing
//! authoritative = false                           # reconciliation removes members the ledger does not know
//!
//! [[policy.rules.grants]]
//! kind = "pim_group"                              # time-bound: the rule needs default_duration or max_duration
//! group_id = "<group guid>"
//! access = "member"                               # or "owner"; required
//!
//! [[policy.rules.grants]]
//! kind = "pim_role"                               # time-bound, like pim_group
//! role_definition_id = "<role definition guid>"
//! directory_scope_id = "/"                        # default; or /administrativeUnits/<guid>, or /<object guid>
//!
//! [[policy.rules.grants]]
//! kind = "azure_rbac"
//! scope = "/subscriptions/<guid>/resourceGroups/<name>"
//! role_definition_id = "<role definition guid>"
//!
//! [[policy.rules.grants]]                         # a choice: the field's value picks one option
//! kind = "group_member"
//! choose_by = "environment"
//! options = { dev = { group_id = "<guid>", label = "App Dev" }, prod = { group_id = "<guid>", label = "App Prod" } }
//! ```
//!
//! Durations are `90m`, `8h`, `2d`, `1w` or ISO 8601 (`PT8H`, `P1D`, `P1DT12H`), from one minute to ten years;
//! ticket values may also be a plain number of hours. Azure scopes are `/subscriptions/<guid>`, optionally followed
//! by `/resourceGroups/<name>` and `/providers/<Namespace>/<type>/<name>...`, or
//! `/providers/Microsoft.Management/managementGroups/<id>`. GUIDs are compared in lower case.
//!
//! Validation refuses, naming the rule and the key (`policy.rules[2] (portal-access).grants[0].group_id`):
//! invalid or duplicate rule names, unknown sources, empty condition lists, a rule with no condition at all (it
//! would match every approved ticket), `min_approvals = 0`, malformed ids, scopes and durations,
//! `default_duration` above `max_duration`, a reminder not shorter than the durations, a rule without grants, a
//! PIM grant in a rule without a duration, a grant with both or neither of a fixed target and `choose_by` +
//! `options`, keys that do not belong to the grant's kind, empty options, options differing only in case, the
//! same fixed target twice in one rule, and `restore_missing` or `authoritative` on a grant that is not
//! `group_member` (only group membership is reconciled, see `crate::reconcile`).
//!
//! # Matching
//!
//! A rule matches when every condition it sets holds: the ticket's source is listed; its request type equals one
//! listed (ignoring case and surrounding spaces); each listed field is present and holds one of its values (field
//! names exactly, values ignoring case and spaces). `first_match` takes the first matching rule in file order;
//! `all_matches` takes all.
//!
//! # Deciding
//!
//! Only an `approved` event is decided; anything else is `Ignored` (withdrawal is the lifecycle's job). For each
//! matching rule, in a fixed order: confirmation (`NotConfigured` is refused when the rule requires confirmation;
//! `Skipped`, offline planning, passes but makes the plan a dry run), rejection (any rejected approval refuses:
//! Jira Service Management and ServiceNow treat a rejection as final), the number of distinct approvers (pending
//! approvals and approvers with neither id, e-mail nor Entra principal do not count; one person twice counts once),
//! self-approval (an approver who is the requester or the receiver, by `PersonRef::same_person` or Entra object
//! id, refuses even when others approved too), approver group, justification. The first failure refuses the whole
//! decision, naming the rule; in `all_matches` mode too, because a partial grant is harder to explain than none.
//!
//! A grant's duration is the ticket's requested duration, else the rule's default, else its maximum; a request
//! above the maximum is capped to it. With none of the three, group membership and Azure RBAC grants are
//! permanent until revoked (PIM grants always have one, by validation). In `all_matches` mode, a target planned
//! by an earlier rule is not planned again: the earlier rule's grant is kept and the later rule's noted in its
//! reasons and in the plan's notes. The plan is a dry run when the policy, any matching rule, or an unconfirmed
//! (`Skipped`) approval says so.

mod config;
mod duration;
mod evaluate;
mod ids;
mod rules;

pub use config::{GrantConfig, GrantKind, PolicyConfig, RuleConfig, TargetConfig};
pub use duration::{format_duration, parse_duration};
pub use evaluate::{ApproverFacts, Facts};
pub use rules::{DeclaredTarget, ManagedGroup, Policy, PolicyMode, ReconcileFlags, Rule};

const SHOWN_CHARS: usize = 80;

/// Text from a ticket, made safe to quote in a message: control characters replaced, length bounded.
pub(crate) fn plain(s: &str) -> String {
    let mut out: String =
        s.chars().take(SHOWN_CHARS).map(|c| if c.is_control() || c == '`' { '?' } else { c }).collect();
    if s.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

/// [`plain`], in backticks.
pub(crate) fn shown(s: &str) -> String {
    format!("`{}`", plain(s))
}
