//! The validated policy: rules, what they match, and the targets each may grant. Built only by `PolicyConfig::build`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{GrantTarget, TicketEvent};
use crate::policy::shown;

/// How many matching rules contribute grants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    /// The first matching rule in file order decides alone.
    #[default]
    FirstMatch,
    /// Every matching rule must pass its requirements, and each contributes its grants.
    AllMatches,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::FirstMatch => "first_match",
            PolicyMode::AllMatches => "all_matches",
        }
    }
}

/// A validated policy. Immutable once built, so evaluating it needs no locking.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) mode: PolicyMode,
    pub(crate) dry_run: bool,
    pub(crate) rules: Vec<Rule>,
}

/// One target a rule may grant, with the name plans and comments show for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredTarget {
    pub target: GrantTarget,
    pub label: String,
}

/// What reconciliation may repair for one declared `group_member` target. Both off by default: drift is reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileFlags {
    /// Re-add a member whose grant is active but who left the group.
    pub restore_missing: bool,
    /// Remove members the ledger does not know.
    pub authoritative: bool,
}

/// A group whose membership grantbridge manages (a `group_member` target of some rule): what reconciliation
/// compares with the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedGroup {
    /// Lower-case GUID.
    pub group_id: String,
    /// The label of its first declaration.
    pub label: String,
    /// Any declaration of the group says `authoritative = true`: members the ledger does not know are removed.
    pub authoritative: bool,
    /// The rules whose declaration of the group says `restore_missing = true`: their grants' missing members are
    /// re-added.
    pub restore_missing_rules: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum GrantSpec {
    Fixed(DeclaredTarget),
    /// The ticket field's value picks one option; `options` keys are trimmed and lower-cased, sorted.
    Chosen {
        field: String,
        options: Vec<(String, DeclaredTarget)>,
    },
}

impl GrantSpec {
    /// Its fixed target, or every option of its choice.
    pub(crate) fn targets(&self) -> Vec<&DeclaredTarget> {
        match self {
            GrantSpec::Fixed(d) => vec![d],
            GrantSpec::Chosen { options, .. } => options.iter().map(|(_, d)| d).collect(),
        }
    }
}

/// A validated rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) name: String,
    pub(crate) sources: Option<Vec<String>>,
    /// Trimmed and lower-cased.
    pub(crate) request_types: Option<Vec<String>>,
    /// Field name -> allowed values, trimmed and lower-cased.
    pub(crate) fields: BTreeMap<String, Vec<String>>,
    pub(crate) dry_run: bool,
    pub(crate) require_confirmation: bool,
    pub(crate) min_approvals: u32,
    pub(crate) approver_not_requester: bool,
    pub(crate) approver_group: Option<String>,
    pub(crate) require_justification: bool,
    pub(crate) default_duration: Option<Duration>,
    pub(crate) max_duration: Option<Duration>,
    pub(crate) notify_before_expiry: Option<Duration>,
    /// Ticket actions (lower case) that withdraw the request.
    pub(crate) withdraw_on: Vec<String>,
    pub(crate) grants: Vec<GrantSpec>,
    /// Reconciliation flags of the targets whose declaration sets one.
    pub(crate) reconcile: BTreeMap<GrantTarget, ReconcileFlags>,
}

/// Case- and whitespace-insensitive, as ticket systems are about these values.
pub(crate) fn fold(s: &str) -> String {
    s.trim().to_lowercase()
}

impl Policy {
    pub fn mode(&self) -> PolicyMode {
        self.mode
    }

    /// The global dry-run switch.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// The rules that match the ticket, in file order: at most one in `first_match` mode.
    ///
    /// Matching looks only at the source, request type and fields, not at the action or approvals, so the
    /// caller can learn which approver groups to check before the decision.
    pub fn matching_rules(&self, ticket: &TicketEvent) -> Vec<&Rule> {
        let mut matching = self.rules.iter().filter(|r| r.matches(ticket));
        match self.mode {
            PolicyMode::FirstMatch => matching.next().into_iter().collect(),
            PolicyMode::AllMatches => matching.collect(),
        }
    }

    /// The Entra groups whose membership the caller must look up for each approver (`ApproverFacts::groups`).
    pub fn approver_groups_needed(&self, rules: &[&Rule]) -> BTreeSet<String> {
        rules.iter().filter_map(|r| r.approver_group.clone()).collect()
    }

    /// Every target any rule may grant: what the bridge may ever manage, e.g. for reconciliation.
    pub fn declared_targets(&self) -> Vec<&DeclaredTarget> {
        let mut seen = BTreeSet::new();
        self.rules.iter().flat_map(|r| r.declared_targets()).filter(|d| seen.insert(&d.target)).collect()
    }

    /// The groups whose membership reconciliation compares with the ledger: every `group_member` target, once, in
    /// the order of its first declaration, with the flags of all its declarations.
    pub fn managed_groups(&self) -> Vec<ManagedGroup> {
        let mut groups: Vec<ManagedGroup> = Vec::new();
        for rule in &self.rules {
            for declared in rule.declared_targets() {
                let GrantTarget::GroupMember { group_id } = &declared.target else { continue };
                let group_id = group_id.to_ascii_lowercase();
                let flags = rule.reconcile_flags(&declared.target);
                let position = match groups.iter().position(|g| g.group_id == group_id) {
                    Some(i) => i,
                    None => {
                        groups.push(ManagedGroup {
                            group_id,
                            label: declared.label.clone(),
                            authoritative: false,
                            restore_missing_rules: BTreeSet::new(),
                        });
                        groups.len() - 1
                    }
                };
                if let Some(group) = groups.get_mut(position) {
                    group.authoritative |= flags.authoritative;
                    if flags.restore_missing {
                        group.restore_missing_rules.insert(rule.name.clone());
                    }
                }
            }
        }
        groups
    }

    /// Declared targets that reconciliation does not compare (PIM and Azure RBAC: Entra and ARM keep their own
    /// schedules and assignments).
    pub fn unreconciled_targets(&self) -> Vec<&DeclaredTarget> {
        self.declared_targets().into_iter().filter(|d| !matches!(d.target, GrantTarget::GroupMember { .. })).collect()
    }
}

impl Rule {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn requires_confirmation(&self) -> bool {
        self.require_confirmation
    }

    pub fn min_approvals(&self) -> u32 {
        self.min_approvals
    }

    pub fn approver_group(&self) -> Option<&str> {
        self.approver_group.as_deref()
    }

    pub fn default_duration(&self) -> Option<Duration> {
        self.default_duration
    }

    pub fn max_duration(&self) -> Option<Duration> {
        self.max_duration
    }

    /// How long before a time-bound grant ends the ticket is told.
    pub fn notify_before_expiry(&self) -> Option<Duration> {
        self.notify_before_expiry
    }

    /// Whether a ticket event with `action` (e.g. `cancelled`) ends the grants this rule gave for the ticket.
    pub fn withdraws_on(&self, action: &str) -> bool {
        self.withdraw_on.iter().any(|a| a == action)
    }

    /// Every target this rule may grant: its fixed targets and all options of its choices, in config order.
    pub fn declared_targets(&self) -> Vec<&DeclaredTarget> {
        self.grants.iter().flat_map(GrantSpec::targets).collect()
    }

    /// What reconciliation may repair for `target` as this rule declares it (both off when it sets neither).
    pub fn reconcile_flags(&self, target: &GrantTarget) -> ReconcileFlags {
        self.reconcile.get(target).copied().unwrap_or_default()
    }

    /// Whether the ticket's source, request type and fields satisfy every condition the rule sets.
    pub fn matches(&self, ticket: &TicketEvent) -> bool {
        let source_ok = self.sources.as_ref().is_none_or(|s| s.contains(&ticket.source));
        let type_ok = match (&self.request_types, &ticket.request_type) {
            (None, _) => true,
            (Some(types), Some(t)) => types.contains(&fold(t)),
            (Some(_), None) => false,
        };
        let fields_ok = self
            .fields
            .iter()
            .all(|(name, allowed)| ticket.fields.get(name).is_some_and(|v| allowed.contains(&fold(v))));
        source_ok && type_ok && fields_ok
    }

    /// Which conditions the ticket met, for the plan's reasons.
    pub(crate) fn matched_because(&self, ticket: &TicketEvent) -> String {
        let mut parts = Vec::new();
        if self.sources.is_some() {
            parts.push(format!("source {}", shown(&ticket.source)));
        }
        if let (Some(_), Some(t)) = (&self.request_types, &ticket.request_type) {
            parts.push(format!("request type {}", shown(t)));
        }
        for name in self.fields.keys() {
            if let Some(v) = ticket.fields.get(name) {
                parts.push(format!("{name} = {}", shown(v)));
            }
        }
        format!("rule `{}` matched on {}", self.name, parts.join(", "))
    }
}
