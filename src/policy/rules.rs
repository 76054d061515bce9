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

#[derive(Debug, Clone)]
pub(crate) enum GrantSpec {
    Fixed(DeclaredTarget),
    /// The ticket field's value picks one option; `options` keys are trimmed and lower-cased, sorted.
    Chosen {
        field: String,
        options: Vec<(String, DeclaredTarget)>,
    },
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
    pub(crate) grants: Vec<GrantSpec>,
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

    /// Kept for the expiry reminder; validated, not yet acted upon.
    pub fn notify_before_expiry(&self) -> Option<Duration> {
        self.notify_before_expiry
    }

    /// Every target this rule may grant: its fixed targets and all options of its choices, in config order.
    pub fn declared_targets(&self) -> Vec<&DeclaredTarget> {
        self.grants
            .iter()
            .flat_map(|g| match g {
                GrantSpec::Fixed(d) => vec![d],
                GrantSpec::Chosen { options, .. } => options.iter().map(|(_, d)| d).collect(),
            })
            .collect()
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
