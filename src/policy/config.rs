//! The `[policy]` table as written in the config file, and its validation into a [`Policy`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::domain::{GrantTarget, PimAccess};
use crate::policy::duration::{format_duration, parse_config_duration};
use crate::policy::ids;
use crate::policy::rules::{DeclaredTarget, GrantSpec, Policy, PolicyMode, ReconcileFlags, Rule, fold};

/// `[policy]`. Absent from the file, it is the default: no rules, so every approved ticket is refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: PolicyMode,
    pub dry_run: bool,
    pub rules: Vec<RuleConfig>,
}

/// `[[policy.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    pub name: String,
    pub sources: Option<Vec<String>>,
    pub request_types: Option<Vec<String>>,
    pub fields: BTreeMap<String, Vec<String>>,
    pub dry_run: bool,
    pub require_confirmation: bool,
    pub min_approvals: u32,
    pub approver_not_requester: bool,
    pub approver_group: Option<String>,
    pub require_justification: bool,
    pub default_duration: Option<String>,
    pub max_duration: Option<String>,
    pub notify_before_expiry: Option<String>,
    /// Ticket actions that withdraw the request: the grants this rule gave for the ticket end.
    pub withdraw_on: Vec<String>,
    pub grants: Vec<GrantConfig>,
}

/// Ticket actions that end a rule's grants for the ticket unless the rule says otherwise.
pub const DEFAULT_WITHDRAW_ON: [&str; 3] = ["cancelled", "rejected", "reopened"];
/// Ticket actions `withdraw_on` may name.
pub const WITHDRAW_ACTIONS: [&str; 4] = ["cancelled", "rejected", "reopened", "closed"];

/// The safe defaults, the same whether a rule comes from the file or from code.
impl Default for RuleConfig {
    fn default() -> Self {
        RuleConfig {
            name: String::new(),
            sources: None,
            request_types: None,
            fields: BTreeMap::new(),
            dry_run: false,
            require_confirmation: true,
            min_approvals: 1,
            approver_not_requester: true,
            approver_group: None,
            require_justification: false,
            default_duration: None,
            max_duration: None,
            notify_before_expiry: None,
            withdraw_on: DEFAULT_WITHDRAW_ON.iter().map(|a| a.to_string()).collect(),
            grants: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    GroupMember,
    PimGroup,
    PimRole,
    AzureRbac,
}

impl GrantKind {
    fn as_str(self) -> &'static str {
        match self {
            GrantKind::GroupMember => "group_member",
            GrantKind::PimGroup => "pim_group",
            GrantKind::PimRole => "pim_role",
            GrantKind::AzureRbac => "azure_rbac",
        }
    }

    /// The target keys this kind takes, besides `label`.
    fn keys(self) -> &'static [&'static str] {
        match self {
            GrantKind::GroupMember => &["group_id"],
            GrantKind::PimGroup => &["group_id", "access"],
            GrantKind::PimRole => &["role_definition_id", "directory_scope_id"],
            GrantKind::AzureRbac => &["scope", "role_definition_id"],
        }
    }

    fn time_bound(self) -> bool {
        matches!(self, GrantKind::PimGroup | GrantKind::PimRole)
    }
}

/// `[[policy.rules.grants]]`: a fixed target, or `choose_by` a ticket field among `options`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    pub kind: GrantKind,
    pub group_id: Option<String>,
    /// A group by display name instead of id: resolved with Microsoft Graph when the config is loaded online.
    pub group_name: Option<String>,
    pub access: Option<String>,
    pub role_definition_id: Option<String>,
    pub directory_scope_id: Option<String>,
    pub scope: Option<String>,
    pub label: Option<String>,
    pub choose_by: Option<String>,
    pub options: Option<BTreeMap<String, TargetConfig>>,
    /// Reconciliation re-adds a member whose grant (of this rule, for this target) is active but who is no longer
    /// in the group; `false`: reported only. `group_member` only.
    #[serde(default)]
    pub restore_missing: bool,
    /// Reconciliation removes members of this group that the ledger does not know; `false`: reported only.
    /// `group_member` only.
    #[serde(default)]
    pub authoritative: bool,
}

/// One option of a choice: the target keys of the grant's kind, and a label.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub group_id: Option<String>,
    pub group_name: Option<String>,
    pub access: Option<String>,
    pub role_definition_id: Option<String>,
    pub directory_scope_id: Option<String>,
    pub scope: Option<String>,
    pub label: Option<String>,
}

/// A resolved name becomes the id (and the label, unless one is given); an unresolved one stays for `build` to refuse.
fn resolve_name(
    group_id: &mut Option<String>,
    group_name: &mut Option<String>,
    label: &mut Option<String>,
    ids: &BTreeMap<String, String>,
) {
    if group_id.is_some() {
        return;
    }
    if let Some(id) = group_name.as_ref().and_then(|name| ids.get(name)) {
        *group_id = Some(id.clone());
        if let Some(name) = group_name.take() {
            label.get_or_insert(name);
        }
    }
}

impl TargetConfig {
    fn resolve_group_name(&mut self, ids: &BTreeMap<String, String>) {
        resolve_name(&mut self.group_id, &mut self.group_name, &mut self.label, ids);
    }

    fn present_keys(&self) -> Vec<&'static str> {
        [
            ("group_id", self.group_id.is_some()),
            ("group_name", self.group_name.is_some()),
            ("access", self.access.is_some()),
            ("role_definition_id", self.role_definition_id.is_some()),
            ("directory_scope_id", self.directory_scope_id.is_some()),
            ("scope", self.scope.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect()
    }
}

/// Builds `origin: policy.rules[2] (portal-access).grants[0].group_id`.
struct At<'a> {
    origin: &'a str,
    prefix: String,
}

impl At<'_> {
    fn key(&self, key: &str) -> String {
        let path = if key.is_empty() { self.prefix.clone() } else { format!("{}.{key}", self.prefix) };
        if self.origin.is_empty() { path } else { format!("{}: {path}", self.origin) }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.key(key), message)
    }
}

impl PolicyConfig {
    /// Validates the policy. `origin` prefixes error locations (usually the config file path); `known_sources`
    /// are the configured `[sources.NAME]` names that `sources = [...]` may refer to.
    /// Every group given by `group_name`, to be resolved before `build`.
    pub fn group_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for grant in self.rules.iter().flat_map(|r| &r.grants) {
            names.extend(grant.group_name.clone());
            for option in grant.options.iter().flat_map(|o| o.values()) {
                names.extend(option.group_name.clone());
            }
        }
        names
    }

    /// Replaces each resolved `group_name` by its `group_id` (the name becomes the label unless one is given).
    pub fn resolve_group_names(&mut self, ids: &BTreeMap<String, String>) {
        for grant in self.rules.iter_mut().flat_map(|r| r.grants.iter_mut()) {
            resolve_name(&mut grant.group_id, &mut grant.group_name, &mut grant.label, ids);
            for option in grant.options.iter_mut().flat_map(|o| o.values_mut()) {
                option.resolve_group_name(ids);
            }
        }
    }

    pub fn build(self, origin: &str, known_sources: &[&str]) -> Result<Policy, ConfigError> {
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, raw) in self.rules.into_iter().enumerate() {
            let plain = At { origin, prefix: format!("policy.rules[{i}]") };
            if !ids::valid_rule_name(&raw.name) {
                let problem = if raw.name.is_empty() { "missing".to_string() } else { format!("`{}` is", raw.name) };
                return Err(plain.err(
                    "name",
                    format!("{problem}: a rule name is 1-63 characters of a-z, 0-9, '-' and '_', unique in the policy"),
                ));
            }
            let at = At { origin, prefix: format!("policy.rules[{i}] ({})", raw.name) };
            if let Some(first) = names.get(&raw.name) {
                return Err(at.err("name", format!("duplicate rule name: policy.rules[{first}] already uses it")));
            }
            names.insert(raw.name.clone(), i);
            rules.push(build_rule(raw, &at, known_sources)?);
        }
        Ok(Policy { mode: self.mode, dry_run: self.dry_run, rules })
    }
}

fn build_rule(raw: RuleConfig, at: &At<'_>, known_sources: &[&str]) -> Result<Rule, ConfigError> {
    let sources = match raw.sources {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(at.err("sources", "empty: the rule could never match; remove the key to match every source"));
        }
        Some(list) => {
            for (j, s) in list.iter().enumerate() {
                if !known_sources.contains(&s.as_str()) {
                    let known = if known_sources.is_empty() { "none".to_string() } else { known_sources.join(", ") };
                    return Err(
                        at.err(&format!("sources[{j}]"), format!("unknown source `{s}`; configured sources: {known}"))
                    );
                }
            }
            Some(list)
        }
    };

    let request_types = match raw.request_types {
        None => None,
        Some(list) if list.is_empty() => {
            return Err(at.err("request_types", "empty: the rule could never match; remove the key to match any type"));
        }
        Some(list) => {
            if let Some(j) = list.iter().position(|t| t.trim().is_empty()) {
                return Err(at.err(&format!("request_types[{j}]"), "empty request type name"));
            }
            Some(list.iter().map(|t| fold(t)).collect())
        }
    };

    let mut fields = BTreeMap::new();
    for (name, values) in raw.fields {
        if name.trim().is_empty() || name.trim() != name {
            return Err(at.err(&format!("fields.{name:?}"), "a field name is not empty and has no surrounding spaces"));
        }
        if values.is_empty() {
            return Err(at.err(&format!("fields.{name}"), "no values: the rule could never match"));
        }
        if let Some(j) = values.iter().position(|v| v.trim().is_empty()) {
            return Err(at.err(&format!("fields.{name}[{j}]"), "empty value"));
        }
        fields.insert(name, values.iter().map(|v| fold(v)).collect::<Vec<_>>());
    }

    if sources.is_none() && request_types.is_none() && fields.is_empty() {
        return Err(
            at.err("", "the rule matches every approved ticket: give at least one of sources, request_types or fields")
        );
    }

    if raw.min_approvals == 0 {
        return Err(at.err(
            "min_approvals",
            "must be at least 1: a rule that grants access without any approval is not something this bridge does",
        ));
    }

    let approver_group = match raw.approver_group {
        None => None,
        Some(g) => Some(ids::guid(&g).ok_or_else(|| {
            at.err("approver_group", format!("`{g}` is not an Entra group object id (a GUID, 8-4-4-4-12 hex)"))
        })?),
    };

    let duration = |key: &str, value: &Option<String>| -> Result<Option<Duration>, ConfigError> {
        value.as_deref().map(parse_config_duration).transpose().map_err(|e| at.err(key, e))
    };
    let default_duration = duration("default_duration", &raw.default_duration)?;
    let max_duration = duration("max_duration", &raw.max_duration)?;
    let notify_before_expiry = duration("notify_before_expiry", &raw.notify_before_expiry)?;
    if let (Some(d), Some(m)) = (default_duration, max_duration)
        && d > m
    {
        return Err(at.err(
            "default_duration",
            format!("{} is longer than max_duration ({})", format_duration(d), format_duration(m)),
        ));
    }
    if let Some(n) = notify_before_expiry {
        // The shortest grant the rule gives without a request is the one the reminder must fit in.
        if let Some((key, limit)) = [("default_duration", default_duration), ("max_duration", max_duration)]
            .into_iter()
            .find_map(|(k, d)| d.filter(|d| n >= *d).map(|d| (k, d)))
        {
            return Err(at.err(
                "notify_before_expiry",
                format!("{} is not shorter than {key} ({})", format_duration(n), format_duration(limit)),
            ));
        }
    }

    let mut withdraw_on = Vec::with_capacity(raw.withdraw_on.len());
    for action in &raw.withdraw_on {
        let folded = action.trim().to_ascii_lowercase();
        if !WITHDRAW_ACTIONS.contains(&folded.as_str()) {
            return Err(at.err(
                "withdraw_on",
                format!(
                    "`{action}` is not a ticket action that can withdraw a request; use {}",
                    WITHDRAW_ACTIONS.join(", ")
                ),
            ));
        }
        if !withdraw_on.contains(&folded) {
            withdraw_on.push(folded);
        }
    }

    if raw.grants.is_empty() {
        return Err(at.err("grants", "no grants: a rule declares at least one [[policy.rules.grants]]"));
    }
    let has_duration = default_duration.is_some() || max_duration.is_some();
    let mut grants = Vec::with_capacity(raw.grants.len());
    let mut fixed_seen: Vec<(GrantTarget, usize)> = Vec::new();
    let mut reconcile: BTreeMap<GrantTarget, ReconcileFlags> = BTreeMap::new();
    for (j, g) in raw.grants.into_iter().enumerate() {
        let key = format!("grants[{j}]");
        let flags = ReconcileFlags { restore_missing: g.restore_missing, authoritative: g.authoritative };
        let set = [("restore_missing", flags.restore_missing), ("authoritative", flags.authoritative)]
            .into_iter()
            .find_map(|(name, set)| set.then_some(name));
        if let Some(flag) = set
            && g.kind != GrantKind::GroupMember
        {
            return Err(at.err(
                &format!("{key}.{flag}"),
                format!(
                    "reconciliation repairs group_member grants only; a {} grant is not reconciled",
                    g.kind.as_str()
                ),
            ));
        }
        if g.kind.time_bound() && !has_duration {
            return Err(at.err(
                &key,
                format!(
                    "{} assignments are time-bound: set default_duration or max_duration on the rule",
                    g.kind.as_str()
                ),
            ));
        }
        let spec = build_grant(g, at, &key)?;
        if flags != ReconcileFlags::default() {
            for d in spec.targets() {
                let entry = reconcile.entry(d.target.clone()).or_default();
                entry.restore_missing |= flags.restore_missing;
                entry.authoritative |= flags.authoritative;
            }
        }
        if let GrantSpec::Fixed(d) = &spec {
            if let Some((_, first)) = fixed_seen.iter().find(|(t, _)| *t == d.target) {
                return Err(at.err(&key, format!("the same target as grants[{first}]")));
            }
            fixed_seen.push((d.target.clone(), j));
        }
        grants.push(spec);
    }

    Ok(Rule {
        name: raw.name,
        sources,
        request_types,
        fields,
        dry_run: raw.dry_run,
        require_confirmation: raw.require_confirmation,
        min_approvals: raw.min_approvals,
        approver_not_requester: raw.approver_not_requester,
        approver_group,
        require_justification: raw.require_justification,
        default_duration,
        max_duration,
        notify_before_expiry,
        withdraw_on,
        grants,
        reconcile,
    })
}

fn build_grant(g: GrantConfig, at: &At<'_>, key: &str) -> Result<GrantSpec, ConfigError> {
    let fixed = TargetConfig {
        group_id: g.group_id,
        group_name: g.group_name,
        access: g.access,
        role_definition_id: g.role_definition_id,
        directory_scope_id: g.directory_scope_id,
        scope: g.scope,
        label: g.label,
    };
    let has_fixed = !fixed.present_keys().is_empty();
    match (has_fixed, g.choose_by, g.options) {
        (true, None, None) => build_target(g.kind, &fixed, at, key).map(GrantSpec::Fixed),
        (true, _, _) => Err(at.err(
            key,
            "give either a fixed target or choose_by with options, not both: a choice's targets go in its options",
        )),
        (false, None, None) => {
            Err(at.err(key, format!("no target: give {}, or choose_by with options", g.kind.keys().join(" and "))))
        }
        (false, Some(_), None) => Err(at.err(&format!("{key}.options"), "choose_by needs options to choose among")),
        (false, None, Some(_)) => Err(at.err(
            &format!("{key}.choose_by"),
            "missing: options need choose_by, the ticket field whose value picks one",
        )),
        (false, Some(field), Some(options)) => {
            if field.trim().is_empty() || field.trim() != field {
                return Err(
                    at.err(&format!("{key}.choose_by"), "a field name is not empty and has no surrounding spaces")
                );
            }
            if fixed.label.is_some() {
                return Err(at.err(&format!("{key}.label"), "with choose_by, give each option its own label"));
            }
            if options.is_empty() {
                return Err(at.err(&format!("{key}.options"), "empty: declare at least one option"));
            }
            let mut built: Vec<(String, DeclaredTarget)> = Vec::with_capacity(options.len());
            let mut folded_seen = BTreeSet::new();
            for (value, target) in options {
                let option_key = format!("{key}.options.{value}");
                let folded = fold(&value);
                if folded.is_empty() {
                    return Err(at.err(&format!("{key}.options.{value:?}"), "an option is named by a non-empty value"));
                }
                if !folded_seen.insert(folded.clone()) {
                    return Err(at.err(
                        &option_key,
                        "another option differs only in case or spaces; field values are compared ignoring both",
                    ));
                }
                built.push((folded, build_target(g.kind, &target, at, &option_key)?));
            }
            // Sorted by the compared form, so messages list the allowed values in a stable, readable order.
            built.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(GrantSpec::Chosen { field, options: built })
        }
    }
}

fn build_target(kind: GrantKind, t: &TargetConfig, at: &At<'_>, key: &str) -> Result<DeclaredTarget, ConfigError> {
    let takes_group = kind.keys().contains(&"group_id");
    if let Some(name) = &t.group_name
        && takes_group
    {
        // Resolution replaces a name by its id; a name still here was not resolved.
        let problem = if t.group_id.is_some() {
            "give group_id or group_name, not both".to_string()
        } else {
            format!("group `{name}` is given by name: names are resolved with Microsoft Graph, which needs [entra]")
        };
        return Err(at.err(&format!("{key}.group_name"), problem));
    }
    if let Some(extra) = t.present_keys().into_iter().find(|k| !kind.keys().contains(k)) {
        return Err(at.err(
            &format!("{key}.{extra}"),
            format!("does not apply to a {} grant, which takes {} and label", kind.as_str(), kind.keys().join(", ")),
        ));
    }
    let required = |name: &str, value: &Option<String>| -> Result<String, ConfigError> {
        value
            .clone()
            .ok_or_else(|| at.err(&format!("{key}.{name}"), format!("missing: a {} grant needs it", kind.as_str())))
    };
    let object_id = |name: &str, value: &Option<String>| -> Result<String, ConfigError> {
        let v = required(name, value)?;
        ids::guid(&v).ok_or_else(|| {
            at.err(&format!("{key}.{name}"), format!("`{v}` is not an Entra object id (a GUID, 8-4-4-4-12 hex)"))
        })
    };
    let (target, default_label) = match kind {
        GrantKind::GroupMember => {
            let group_id = object_id("group_id", &t.group_id)?;
            (GrantTarget::GroupMember { group_id: group_id.clone() }, group_id)
        }
        GrantKind::PimGroup => {
            let group_id = object_id("group_id", &t.group_id)?;
            let access = match required("access", &t.access)?.as_str() {
                "member" => PimAccess::Member,
                "owner" => PimAccess::Owner,
                other => {
                    return Err(at.err(&format!("{key}.access"), format!("`{other}`: must be \"member\" or \"owner\"")));
                }
            };
            let label = match access {
                PimAccess::Member => format!("{group_id} (member)"),
                PimAccess::Owner => format!("{group_id} (owner)"),
            };
            (GrantTarget::PimGroup { group_id, access }, label)
        }
        GrantKind::PimRole => {
            let role_definition_id = object_id("role_definition_id", &t.role_definition_id)?;
            let directory_scope_id = ids::directory_scope(t.directory_scope_id.as_deref().unwrap_or("/"))
                .map_err(|e| at.err(&format!("{key}.directory_scope_id"), e))?;
            let label = if directory_scope_id == "/" {
                role_definition_id.clone()
            } else {
                format!("{role_definition_id} at {directory_scope_id}")
            };
            (GrantTarget::PimRole { role_definition_id, directory_scope_id }, label)
        }
        GrantKind::AzureRbac => {
            let scope =
                ids::arm_scope(&required("scope", &t.scope)?).map_err(|e| at.err(&format!("{key}.scope"), e))?;
            let role_definition_id = object_id("role_definition_id", &t.role_definition_id)?;
            let label = format!("{role_definition_id} at {scope}");
            (GrantTarget::AzureRbac { scope, role_definition_id }, label)
        }
    };
    let label = match &t.label {
        None => default_label,
        Some(l) if l.trim().is_empty() || l.chars().count() > 200 || l.chars().any(char::is_control) => {
            return Err(at.err(&format!("{key}.label"), "a label is 1-200 printable characters"));
        }
        Some(l) => l.trim().to_string(),
    };
    Ok(DeclaredTarget { target, label })
}
