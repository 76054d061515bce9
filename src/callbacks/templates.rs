//! The `[callbacks]` settings: what is posted to the ticket for each kind of outcome, how visibly, and what
//! transition (Jira) or state (ServiceNow) goes with it; globally, with per-source overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::inbound::SourceKind;

/// Messages longer than this are cut: Jira refuses comments over 32,767 characters.
pub(crate) const MAX_MESSAGE_CHARS: usize = 30_000;

/// What happened, as far as the ticket is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Granted,
    Refused,
    Failed,
    DryRun,
    Revoked,
    Expiring,
}

impl Kind {
    pub const ALL: [Kind; 6] =
        [Kind::Granted, Kind::Refused, Kind::Failed, Kind::DryRun, Kind::Revoked, Kind::Expiring];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Granted => "granted",
            Kind::Refused => "refused",
            Kind::Failed => "failed",
            Kind::DryRun => "dry_run",
            Kind::Revoked => "revoked",
            Kind::Expiring => "expiring",
        }
    }

    /// The placeholders a message of this kind can fill.
    fn fields(self) -> &'static [Field] {
        use Field::*;
        match self {
            Kind::Granted => &[Ticket, Principal, Grants, Until, Rule],
            Kind::Refused => &[Ticket, Principal, Code, Reason, Rule, Action],
            Kind::Failed => &[Ticket, Principal, Grants, Code, Rule, Action],
            Kind::DryRun => &[Ticket, Principal, Grants, Until, Rule],
            Kind::Revoked => &[Ticket, Principal, Grants, Reason, Rule],
            Kind::Expiring => &[Ticket, Principal, Grants, Until, Rule],
        }
    }

    fn default_template(self) -> &'static str {
        match self {
            Kind::Granted => {
                "Access granted for {ticket}.\n\
                 {principal} now has:\n\
                 {grants}\n\
                 The access stays in place {until}. Granted automatically by grantbridge (policy rule {rule})."
            }
            Kind::Refused => {
                "No access was granted for {ticket}.\n\
                 Reason ({code}): {reason}\n\
                 {action}\n\
                 Decided automatically by grantbridge; nothing was changed in Microsoft Entra."
            }
            Kind::Failed => {
                "grantbridge could not grant the access requested in {ticket}, after several attempts.\n\
                 Not in place for {principal}:\n\
                 {grants}\n\
                 Error code: {code}\n\
                 What to do: {action}"
            }
            Kind::DryRun => {
                "Dry run for {ticket}: nothing was changed in Microsoft Entra.\n\
                 grantbridge would give {principal}:\n\
                 {grants}\n\
                 (policy rule {rule}). Turn off dry_run for this rule to grant such requests automatically."
            }
            Kind::Revoked => {
                "Access from {ticket} has been removed: {reason}.\n\
                 {principal} no longer has:\n\
                 {grants}"
            }
            Kind::Expiring => {
                "Access from {ticket} ends soon.\n\
                 {principal} has this access {until}:\n\
                 {grants}\n\
                 To keep it, raise a new request: an extension needs a new approval and is never automatic."
            }
        }
    }

    fn default_visibility(self) -> Visibility {
        match self {
            Kind::Failed | Kind::DryRun => Visibility::Internal,
            Kind::Granted | Kind::Refused | Kind::Revoked | Kind::Expiring => Visibility::Public,
        }
    }

    /// ServiceNow RITM states: 3 Closed Complete, 4 Closed Incomplete.
    fn default_state(self) -> Option<&'static str> {
        match self {
            Kind::Granted => Some("3"),
            Kind::Refused => Some("4"),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who can read the message: `internal` is a Jira Service Management internal comment or a ServiceNow work
/// note; `public` is a comment the requester sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Internal,
    Public,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Internal => "internal",
            Visibility::Public => "public",
        }
    }

    pub fn parse(text: &str) -> Option<Visibility> {
        match text {
            "internal" => Some(Visibility::Internal),
            "public" => Some(Visibility::Public),
            _ => None,
        }
    }
}

/// How comments reach a Jira issue: the Jira Service Management request API (which knows internal from public)
/// or the plain Jira issue API (comments in Atlassian Document Format, visible to everyone who sees the issue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JiraComments {
    #[default]
    ServiceDesk,
    Issue,
}

/// A placeholder of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// The ticket key.
    Ticket,
    /// Who receives access.
    Principal,
    /// One line per grant: what, and until when.
    Grants,
    /// When the access ends.
    Until,
    /// The refusal or failure code.
    Code,
    /// The refusal's sentence, or why access was removed.
    Reason,
    /// The policy rule(s).
    Rule,
    /// What to do next.
    Action,
}

impl Field {
    const ALL: [Field; 8] = [
        Field::Ticket,
        Field::Principal,
        Field::Grants,
        Field::Until,
        Field::Code,
        Field::Reason,
        Field::Rule,
        Field::Action,
    ];

    fn name(self) -> &'static str {
        match self {
            Field::Ticket => "ticket",
            Field::Principal => "principal",
            Field::Grants => "grants",
            Field::Until => "until",
            Field::Code => "code",
            Field::Reason => "reason",
            Field::Rule => "rule",
            Field::Action => "action",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(Field),
}

/// A message template, parsed: text with `{placeholder}`s; `{{` and `}}` are literal braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Parses `text`, refusing placeholders that a `kind` message cannot fill.
    fn parse(text: &str, kind: Kind) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for c in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(format!("`{{{name}` is not closed; write `{{{{` for a literal brace"));
                    }
                    let field = Field::ALL.into_iter().find(|f| f.name() == name.trim()).ok_or_else(|| {
                        format!("unknown placeholder {{{name}}}; a {kind} message can use {}", list(kind.fields()))
                    })?;
                    if !kind.fields().contains(&field) {
                        return Err(format!(
                            "a {kind} message has no {{{}}}; it can use {}",
                            field.name(),
                            list(kind.fields())
                        ));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(field));
                }
                '}' => return Err("a lone `}`; write `}}` for a literal brace".into()),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        if pieces.iter().all(|p| matches!(p, Piece::Text(t) if t.trim().is_empty())) {
            return Err("the template is empty".into());
        }
        Ok(Template { pieces })
    }

    /// The message, with each placeholder replaced by `value(field)`.
    pub(crate) fn render(&self, value: impl Fn(Field) -> String) -> String {
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(text) => out.push_str(text),
                Piece::Field(field) => out.push_str(&value(*field)),
            }
        }
        let out = out.trim().to_string();
        if out.chars().count() > MAX_MESSAGE_CHARS {
            let mut cut: String = out.chars().take(MAX_MESSAGE_CHARS).collect();
            cut.push_str("\n[message shortened]");
            cut
        } else {
            out
        }
    }
}

fn list(fields: &[Field]) -> String {
    fields.iter().map(|f| format!("{{{}}}", f.name())).collect::<Vec<_>>().join(", ")
}

/// What is posted for one kind of outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindSettings {
    pub enabled: bool,
    pub template: Template,
    pub visibility: Visibility,
    /// Jira transition to make, by name.
    pub transition: Option<String>,
    /// ServiceNow state value to set.
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceSettings {
    enabled: bool,
    jira_comments: JiraComments,
    kinds: BTreeMap<Kind, KindSettings>,
}

/// The validated `[callbacks]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackSettings {
    pub enabled: bool,
    /// Callbacks delivered at once.
    pub workers: usize,
    /// Attempts before a callback becomes a dead letter.
    pub max_attempts: i64,
    /// First back-off after a failed attempt; doubles per attempt up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The longest `Retry-After` honoured as asked; longer ones are clamped to it.
    pub max_retry_after: Duration,
    kinds: BTreeMap<Kind, KindSettings>,
    sources: BTreeMap<String, SourceSettings>,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        let kinds =
            Kind::ALL.into_iter().map(|kind| (kind, default_kind(kind))).collect::<BTreeMap<Kind, KindSettings>>();
        CallbackSettings {
            enabled: true,
            workers: DEFAULT_WORKERS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_base: Duration::from_secs(DEFAULT_RETRY_BASE_SECS),
            retry_cap: Duration::from_secs(DEFAULT_RETRY_CAP_SECS),
            max_retry_after: Duration::from_secs(DEFAULT_MAX_RETRY_AFTER_SECS),
            kinds,
            sources: BTreeMap::new(),
        }
    }
}

const DEFAULT_WORKERS: usize = 2;
/// With the default back-off (10 s doubling to 15 min) this keeps trying for about four hours: a ticketing system
/// that is down for an hour loses nothing.
const DEFAULT_MAX_ATTEMPTS: i64 = 20;
const DEFAULT_RETRY_BASE_SECS: u64 = 10;
const DEFAULT_RETRY_CAP_SECS: u64 = 15 * 60;
const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 60 * 60;

fn default_kind(kind: Kind) -> KindSettings {
    KindSettings {
        enabled: true,
        // The defaults use only the kind's own placeholders; a test holds that.
        template: Template::parse(kind.default_template(), kind)
            .unwrap_or_else(|_| Template { pieces: vec![Piece::Text(kind.default_template().to_string())] }),
        visibility: kind.default_visibility(),
        transition: None,
        state: kind.default_state().map(str::to_string),
    }
}

impl CallbackSettings {
    /// Whether callbacks are posted to `source` at all.
    pub fn enabled_for(&self, source: &str) -> bool {
        self.enabled && self.sources.get(source).is_none_or(|s| s.enabled)
    }

    /// What to post to `source` for `kind`; `None` when that is turned off.
    pub fn kind(&self, source: &str, kind: Kind) -> Option<&KindSettings> {
        if !self.enabled_for(source) {
            return None;
        }
        let settings = match self.sources.get(source) {
            Some(s) => s.kinds.get(&kind),
            None => self.kinds.get(&kind),
        };
        settings.filter(|k| k.enabled)
    }

    /// How comments reach `source`'s Jira issues.
    pub fn jira_comments(&self, source: &str) -> JiraComments {
        self.sources.get(source).map(|s| s.jira_comments).unwrap_or_default()
    }
}

/// The `[callbacks]` table as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksConfig {
    enabled: Option<bool>,
    workers: Option<usize>,
    max_attempts: Option<i64>,
    retry_base_secs: Option<u64>,
    retry_cap_secs: Option<u64>,
    max_retry_after_secs: Option<u64>,
    granted: Option<KindConfig>,
    refused: Option<KindConfig>,
    failed: Option<KindConfig>,
    dry_run: Option<KindConfig>,
    revoked: Option<KindConfig>,
    expiring: Option<KindConfig>,
    #[serde(default)]
    sources: BTreeMap<String, SourceCallbacksConfig>,
}

#[derive(Debug, Default, Clone)]
struct KindsConfig {
    granted: Option<KindConfig>,
    refused: Option<KindConfig>,
    failed: Option<KindConfig>,
    dry_run: Option<KindConfig>,
    revoked: Option<KindConfig>,
    expiring: Option<KindConfig>,
}

impl KindsConfig {
    fn get(&self, kind: Kind) -> Option<&KindConfig> {
        match kind {
            Kind::Granted => self.granted.as_ref(),
            Kind::Refused => self.refused.as_ref(),
            Kind::Failed => self.failed.as_ref(),
            Kind::DryRun => self.dry_run.as_ref(),
            Kind::Revoked => self.revoked.as_ref(),
            Kind::Expiring => self.expiring.as_ref(),
        }
    }
}

/// `[callbacks.KIND]` or `[callbacks.sources.NAME.KIND]`. An empty `transition` or `state` means none.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct KindConfig {
    enabled: Option<bool>,
    template: Option<String>,
    visibility: Option<Visibility>,
    transition: Option<String>,
    state: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SourceCallbacksConfig {
    enabled: Option<bool>,
    jira_comments: Option<JiraComments>,
    granted: Option<KindConfig>,
    refused: Option<KindConfig>,
    failed: Option<KindConfig>,
    dry_run: Option<KindConfig>,
    revoked: Option<KindConfig>,
    expiring: Option<KindConfig>,
}

impl CallbacksConfig {
    fn kinds(&self) -> KindsConfig {
        KindsConfig {
            granted: self.granted.clone(),
            refused: self.refused.clone(),
            failed: self.failed.clone(),
            dry_run: self.dry_run.clone(),
            revoked: self.revoked.clone(),
            expiring: self.expiring.clone(),
        }
    }
}

impl SourceCallbacksConfig {
    fn kinds(&self) -> KindsConfig {
        KindsConfig {
            granted: self.granted.clone(),
            refused: self.refused.clone(),
            failed: self.failed.clone(),
            dry_run: self.dry_run.clone(),
            revoked: self.revoked.clone(),
            expiring: self.expiring.clone(),
        }
    }
}

impl CallbacksConfig {
    /// Validates the section. `at` prefixes the keys in errors (e.g. `grantbridge.toml: callbacks`); `sources` are
    /// the configured sources, which per-source settings must name.
    pub fn build(&self, at: &str, sources: &[(&str, SourceKind)]) -> Result<CallbackSettings, ConfigError> {
        let key = |k: &str| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") };
        let defaults = CallbackSettings::default();
        let workers = self.workers.unwrap_or(defaults.workers);
        if !(1..=64).contains(&workers) {
            return Err(ConfigError::at(key("workers"), "must be between 1 and 64"));
        }
        let max_attempts = self.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=1000).contains(&max_attempts) {
            return Err(ConfigError::at(key("max_attempts"), "must be between 1 and 1000"));
        }
        let secs = |v: Option<u64>, default: Duration, name: &str| -> Result<Duration, ConfigError> {
            match v {
                Some(0) => Err(ConfigError::at(key(name), "must be at least 1")),
                Some(n) => Ok(Duration::from_secs(n)),
                None => Ok(default),
            }
        };
        let retry_base = secs(self.retry_base_secs, defaults.retry_base, "retry_base_secs")?;
        let retry_cap = secs(self.retry_cap_secs, defaults.retry_cap, "retry_cap_secs")?;
        if retry_cap < retry_base {
            return Err(ConfigError::at(key("retry_cap_secs"), "must not be below retry_base_secs"));
        }
        let max_retry_after = secs(self.max_retry_after_secs, defaults.max_retry_after, "max_retry_after_secs")?;

        let global = self.kinds();
        let mut kinds = BTreeMap::new();
        for kind in Kind::ALL {
            let base = default_kind(kind);
            let merged = merge(base, global.get(kind), &key(kind.as_str()), kind, None)?;
            kinds.insert(kind, merged);
        }
        let mut per_source = BTreeMap::new();
        for (name, raw) in &self.sources {
            let at = key(&format!("sources.{name}"));
            let Some((_, system)) = sources.iter().find(|(n, _)| n == name) else {
                let known: Vec<&str> = sources.iter().map(|(n, _)| *n).collect();
                return Err(ConfigError::at(
                    at,
                    format!("there is no source `{name}`; configured sources: {}", known.join(", ")),
                ));
            };
            if raw.jira_comments.is_some() && *system != SourceKind::Jira {
                return Err(ConfigError::at(
                    format!("{at}.jira_comments"),
                    format!("source `{name}` is a {} source; jira_comments is for Jira sources", system.as_str()),
                ));
            }
            let overrides = raw.kinds();
            let mut merged_kinds = BTreeMap::new();
            for kind in Kind::ALL {
                let global = kinds.get(&kind).cloned().unwrap_or_else(|| default_kind(kind));
                let merged =
                    merge(global, overrides.get(kind), &format!("{at}.{}", kind.as_str()), kind, Some(*system))?;
                merged_kinds.insert(kind, merged);
            }
            per_source.insert(
                name.clone(),
                SourceSettings {
                    enabled: raw.enabled.unwrap_or(true),
                    jira_comments: raw.jira_comments.unwrap_or_default(),
                    kinds: merged_kinds,
                },
            );
        }
        Ok(CallbackSettings {
            enabled: self.enabled.unwrap_or(true),
            workers,
            max_attempts,
            retry_base,
            retry_cap,
            max_retry_after,
            kinds,
            sources: per_source,
        })
    }
}

/// `over` applied on top of `base`. `system` is known for per-source settings, which are then checked against it.
fn merge(
    base: KindSettings,
    over: Option<&KindConfig>,
    at: &str,
    kind: Kind,
    system: Option<SourceKind>,
) -> Result<KindSettings, ConfigError> {
    let Some(over) = over else { return Ok(base) };
    let template = match &over.template {
        Some(text) => Template::parse(text, kind).map_err(|e| ConfigError::at(format!("{at}.template"), e))?,
        None => base.template,
    };
    let transition = ticket_field(
        &over.transition,
        base.transition,
        &format!("{at}.transition"),
        check_transition,
        (system == Some(SourceKind::Servicenow))
            .then_some("a transition is made on Jira issues; for a ServiceNow source set `state`"),
    )?;
    let state = ticket_field(
        &over.state,
        base.state,
        &format!("{at}.state"),
        check_state,
        (system == Some(SourceKind::Jira))
            .then_some("a state is set on ServiceNow records; for a Jira source set `transition`"),
    )?;
    Ok(KindSettings {
        enabled: over.enabled.unwrap_or(base.enabled),
        template,
        visibility: over.visibility.unwrap_or(base.visibility),
        transition,
        state,
    })
}

/// An override of what one ticketing system alone has (a Jira transition, a ServiceNow state): refused with
/// `wrong_system` on a source of the other system, else checked; absent, the base value stays.
fn ticket_field(
    value: &Option<String>,
    base: Option<String>,
    at: &str,
    check: fn(&str) -> Result<Option<String>, String>,
    wrong_system: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else { return Ok(base) };
    if let Some(why) = wrong_system {
        return Err(ConfigError::at(at.to_string(), why));
    }
    check(value).map_err(|e| ConfigError::at(at.to_string(), e))
}

fn check_transition(name: &str) -> Result<Option<String>, String> {
    let name = name.trim();
    if name.is_empty() {
        return Ok(None);
    }
    if name.chars().count() > 255 || name.chars().any(char::is_control) {
        return Err("a Jira transition name is at most 255 characters, without control characters".into());
    }
    Ok(Some(name.to_string()))
}

/// ServiceNow choice values such as `3` or `-5`: they are sent as JSON, but must stay plain values.
fn check_state(value: &str) -> Result<Option<String>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 40 || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("`{value}` is not a ServiceNow choice value (letters, digits, `-` and `_`)"));
    }
    Ok(Some(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(text: &str) -> Result<CallbackSettings, String> {
        let raw: CallbacksConfig = toml::from_str(text).map_err(|e: toml::de::Error| e.message().to_string())?;
        raw.build("callbacks", &[("jira", SourceKind::Jira), ("snow", SourceKind::Servicenow)])
            .map_err(|e| e.to_string())
    }

    #[test]
    fn default_templates_parse_with_their_own_placeholders() {
        for kind in Kind::ALL {
            assert!(Template::parse(kind.default_template(), kind).is_ok(), "{kind}");
        }
        let settings = build("").unwrap();
        assert_eq!(settings, CallbackSettings::default());
        let granted = settings.kind("jira", Kind::Granted).unwrap();
        assert_eq!((granted.visibility, granted.state.as_deref()), (Visibility::Public, Some("3")));
        assert_eq!(settings.kind("snow", Kind::Refused).unwrap().state.as_deref(), Some("4"));
        assert_eq!(settings.kind("snow", Kind::Failed).unwrap().state, None);
        assert_eq!(settings.kind("jira", Kind::Failed).unwrap().visibility, Visibility::Internal);
        assert_eq!(settings.jira_comments("jira"), JiraComments::ServiceDesk);
    }

    #[test]
    fn templates_render_fields_and_literal_braces() {
        let t = Template::parse("{{x}} {ticket}: {grants}", Kind::Granted).unwrap();
        let out = t.render(|f| match f {
            Field::Ticket => "ACC-1".into(),
            Field::Grants => "- g".into(),
            _ => "?".into(),
        });
        assert_eq!(out, "{x} ACC-1: - g");
        let long = Template::parse("{grants}", Kind::Granted).unwrap().render(|_| "x".repeat(40_000));
        assert!(long.chars().count() < 30_100 && long.ends_with("[message shortened]"));
    }

    #[test]
    fn bad_templates_are_refused_with_the_placeholders_that_work() {
        let err = build("[granted]\ntemplate = \"{ticket} {reasn}\"").unwrap_err();
        assert!(err.starts_with("callbacks.granted.template: unknown placeholder {reasn}"), "{err}");
        assert!(err.contains("{ticket}, {principal}, {grants}, {until}, {rule}"), "{err}");
        let err = build("[granted]\ntemplate = \"{code}\"").unwrap_err();
        assert!(err.contains("a granted message has no {code}"), "{err}");
        let err = build("[refused]\ntemplate = \"{ticket\"").unwrap_err();
        assert!(err.contains("not closed"), "{err}");
        let err = build("[refused]\ntemplate = \"a } b\"").unwrap_err();
        assert!(err.contains("lone"), "{err}");
        let err = build("[refused]\ntemplate = \"  \"").unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = build("[refused]\ntemplat = \"x\"").unwrap_err();
        assert!(err.contains("unknown field `templat`"), "{err}");
        let err = build("[granted]\nvisibility = \"secret\"").unwrap_err();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn per_source_settings_override_the_global_ones_and_are_checked_against_the_source() {
        let s = build(
            "[granted]\ntransition = \"Resolve\"\n\
             [sources.jira]\njira_comments = \"issue\"\n[sources.jira.refused]\nvisibility = \"internal\"\ntransition = \"Decline\"\n\
             [sources.snow.granted]\nstate = \"\"\n[sources.snow.dry_run]\nenabled = false",
        )
        .unwrap();
        assert_eq!(s.jira_comments("jira"), JiraComments::Issue);
        assert_eq!(s.kind("jira", Kind::Granted).unwrap().transition.as_deref(), Some("Resolve"));
        let refused = s.kind("jira", Kind::Refused).unwrap();
        assert_eq!((refused.visibility, refused.transition.as_deref()), (Visibility::Internal, Some("Decline")));
        assert_eq!(s.kind("snow", Kind::Granted).unwrap().state, None, "an empty state means none");
        assert!(s.kind("snow", Kind::DryRun).is_none());
        assert!(s.kind("other", Kind::DryRun).is_some(), "sources without overrides take the global settings");

        let err = build("[sources.nope]\nenabled = false").unwrap_err();
        assert!(err.starts_with("callbacks.sources.nope: there is no source `nope`"), "{err}");
        let err = build("[sources.snow]\njira_comments = \"issue\"").unwrap_err();
        assert!(err.contains("is for Jira sources"), "{err}");
        let err = build("[sources.snow.granted]\ntransition = \"Done\"").unwrap_err();
        assert!(err.starts_with("callbacks.sources.snow.granted.transition: "), "{err}");
        let err = build("[sources.jira.granted]\nstate = \"3\"").unwrap_err();
        assert!(err.starts_with("callbacks.sources.jira.granted.state: "), "{err}");
        let err = build("[granted]\nstate = \"3^active=true\"").unwrap_err();
        assert!(err.contains("not a ServiceNow choice value"), "{err}");
        let off = build("enabled = false").unwrap();
        assert!(off.kind("jira", Kind::Granted).is_none());
        let off = build("[sources.jira]\nenabled = false").unwrap();
        assert!(!off.enabled_for("jira") && off.enabled_for("snow"));
    }

    #[test]
    fn limits_are_checked() {
        assert!(build("workers = 0").unwrap_err().starts_with("callbacks.workers: "));
        assert!(build("max_attempts = 0").unwrap_err().starts_with("callbacks.max_attempts: "));
        assert!(build("retry_base_secs = 60\nretry_cap_secs = 10").unwrap_err().contains("retry_cap_secs"));
        let s = build("max_attempts = 3\nretry_base_secs = 1\nretry_cap_secs = 2\nmax_retry_after_secs = 30").unwrap();
        assert_eq!(
            (s.max_attempts, s.retry_base, s.max_retry_after),
            (3, Duration::from_secs(1), Duration::from_secs(30))
        );
    }
}
