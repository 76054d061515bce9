//! The configuration file: one TOML file, environment overrides, secrets by reference, validated before use.
//!
//! Loading goes `file text -> RawConfig (serde, unknown keys refused) -> Settings (secrets read, keys parsed)`.
//! Every error names the file, the line where we know it, the key and the problem.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::callbacks::{CallbackSettings, CallbacksConfig};
use crate::decide::PrincipalConfig;
use crate::entra::{Entra, EntraConfig};
use crate::http::admin::{AdminConfig, AdminSettings};
use crate::inbound::normalize::TicketMappingConfig;
use crate::inbound::schemes::SchemeConfig;
use crate::inbound::{DeliveryIdRule, Source, SourceKind};
use crate::itsm::{ItsmApi, ItsmApiConfig};
use crate::policy::{Policy, PolicyConfig};
use crate::secret::{Secret, SecretRef};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://grantbridge.db";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_BODY_CEILING: usize = 64 * 1024 * 1024;
/// Reconciliation runs hourly unless `[reconcile] interval_secs` says otherwise.
pub const DEFAULT_RECONCILE_INTERVAL_SECS: u64 = 3600;

/// A configuration problem, located as precisely as we can: `file:line:col: key: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    location: String,
    message: String,
}

impl ConfigError {
    /// `at` says where: a key path such as `sources.jira.verify[0].secrets[1]`, possibly prefixed by `file:line:`.
    pub fn at(at: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { location: at.into(), message: message.into() }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.location.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.location, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    intake: RawIntake,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    sources: BTreeMap<String, Spanned<RawSource>>,
    #[serde(default)]
    policy: PolicyConfig,
    entra: Option<EntraConfig>,
    #[serde(default)]
    principals: PrincipalConfig,
    #[serde(default)]
    workers: RawWorkers,
    admin: Option<AdminConfig>,
    #[serde(default)]
    callbacks: CallbacksConfig,
    #[serde(default)]
    reconcile: RawReconcile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconcile {
    interval_secs: Option<u64>,
    dry_run: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkers {
    count: Option<usize>,
    lease_secs: Option<u64>,
    poll_ms: Option<u64>,
    max_attempts: Option<i64>,
    executors: Option<usize>,
    graph_concurrency: Option<usize>,
    arm_concurrency: Option<usize>,
    graph_write_budget: Option<u32>,
    graph_write_window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    workers: Option<usize>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    password: Option<SecretRef>,
    max_connections: Option<u32>,
    busy_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntake {
    max_batch: Option<usize>,
    queue_capacity: Option<usize>,
    store_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    kind: SourceKind,
    max_body_bytes: Option<usize>,
    delivery_id: Option<RawDeliveryId>,
    #[serde(default)]
    verify: Vec<Spanned<SchemeConfig>>,
    ticket: Option<TicketMappingConfig>,
    api: Option<ItsmApiConfig>,
    /// Confirm approvals with `api` before any grant; default: yes whenever `api` is configured.
    confirm: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeliveryId {
    header: Option<String>,
    field: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, human-readable when it is.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug)]
pub struct Settings {
    pub origin: String,
    pub listen: SocketAddr,
    pub http_workers: Option<usize>,
    pub database: DatabaseSettings,
    pub intake: IntakeSettings,
    pub log: LogSettings,
    pub sources: Vec<Source>,
    pub policy: Policy,
    pub entra: Option<Entra>,
    pub principals: PrincipalConfig,
    pub workers: WorkerSettings,
    /// `[admin]`: who may call the admin API; nobody without it.
    pub admin: AdminSettings,
    /// `[callbacks]`: what is posted back to tickets.
    pub callbacks: CallbackSettings,
    pub reconcile: ReconcileSettings,
}

/// `[reconcile]`: the periodic comparison of the grant ledger with Entra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// How often `serve` reconciles, across replicas; `None` when it does not (`interval_secs = 0`).
    pub interval: Option<Duration>,
    /// Report drift, repair nothing.
    pub dry_run: bool,
}

/// `[workers]`: how events are decided in the background.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// 0 runs intake only (an API-only replica); other replicas do the work.
    pub count: usize,
    /// How long a worker owns an event it claimed; a crashed worker's events are taken over after it.
    pub lease: Duration,
    /// How often idle workers look for events whose retry time or lease has come (new events wake them at once).
    pub poll: Duration,
    /// Tries before an event whose upstreams stay unreachable is refused, or a grant job is given up.
    pub max_attempts: i64,
    /// Grant jobs executed at once; several adds to one group then go out as one batched request.
    pub executors: usize,
    /// Calls in flight at once to Microsoft Graph, and to Azure Resource Manager.
    pub graph_concurrency: usize,
    pub arm_concurrency: usize,
    /// Microsoft Graph writes allowed per window (Graph's documented identity-and-access limit: 3,000 per 150 s per
    /// app and tenant); `None` when pacing is switched off (`graph_write_budget = 0`).
    pub graph_write_budget: Option<(u32, Duration)>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub password: Option<Secret>,
    pub max_connections: u32,
    pub busy_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct IntakeSettings {
    pub max_batch: usize,
    pub queue_capacity: usize,
    pub store_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

impl DatabaseSettings {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseSettings { url: url.into(), password: None, max_connections: 8, busy_timeout: Duration::from_secs(5) }
    }

    /// The URL without any password, fit for logs.
    pub fn display_url(&self) -> String {
        redact_url_password(&self.url)
    }
}

/// Environment variables that override the file, for deployments that template only the environment.
pub struct EnvOverrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
}

impl EnvOverrides {
    pub fn from_process() -> Self {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        EnvOverrides {
            listen: get("GRANTBRIDGE_LISTEN"),
            database_url: get("GRANTBRIDGE_DATABASE_URL"),
            log_format: get("GRANTBRIDGE_LOG_FORMAT"),
            log_level: get("GRANTBRIDGE_LOG"),
        }
    }

    pub fn none() -> Self {
        EnvOverrides { listen: None, database_url: None, log_format: None, log_level: None }
    }
}

impl Settings {
    /// Reads and validates a config file, applying the process environment's overrides.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::at(&origin, format!("cannot read the config file: {e}")))?;
        Settings::parse(&text, &origin, &EnvOverrides::from_process())
    }

    /// Like `load`, and resolves groups the policy names by `group_name` with Microsoft Graph (`[entra]`),
    /// refusing a name that matches no group, several groups, or a group whose members Graph cannot change.
    pub async fn load_online(path: &Path) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::at(&origin, format!("cannot read the config file: {e}")))?;
        let env = EnvOverrides::from_process();
        let raw = raw_config(&text, &origin)?;
        let names = raw.policy.group_names();
        if names.is_empty() {
            return Settings::parse(&text, &origin, &env);
        }
        let Some(entra) = raw.entra else {
            let list: Vec<String> = names.into_iter().collect();
            return Err(ConfigError::at(
                format!("{origin}: policy"),
                format!(
                    "groups given by name ({}) are resolved with Microsoft Graph, which needs [entra]",
                    list.join(", ")
                ),
            ));
        };
        let entra = entra.build(&format!("{origin}: entra"))?;
        let mut ids = BTreeMap::new();
        for name in names {
            let at = format!("{origin}: policy: group_name `{name}`");
            let groups = entra
                .directory
                .group_by_name(&name)
                .await
                .map_err(|e| ConfigError::at(&at, format!("cannot be resolved: {e}")))?;
            let group = match groups.as_slice() {
                [group] => group,
                [] => return Err(ConfigError::at(at, "no Entra group has this display name")),
                many => {
                    return Err(ConfigError::at(
                        at,
                        format!("{} Entra groups have this display name: give the group_id instead", many.len()),
                    ));
                }
            };
            if group.is_dynamic() || group.is_synced_from_on_premises() {
                let why = if group.is_dynamic() { "has dynamic membership" } else { "is synced from on-premises AD" };
                return Err(ConfigError::at(
                    at,
                    format!("group {} {why}: its members cannot be changed through Microsoft Graph", group.id),
                ));
            }
            ids.insert(name, group.id.clone());
        }
        Settings::parse_resolved(&text, &origin, &env, &ids)
    }

    /// Validates config text; `origin` names it in errors (usually the file path).
    pub fn parse(text: &str, origin: &str, env: &EnvOverrides) -> Result<Settings, ConfigError> {
        Settings::parse_resolved(text, origin, env, &BTreeMap::new())
    }

    /// For commands that only sign or store (`send`, `migrate`): everything but the policy, which may name groups
    /// that only Microsoft Graph can resolve.
    pub fn load_without_policy(path: &Path) -> Result<Settings, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::at(&origin, format!("cannot read the config file: {e}")))?;
        let mut raw = raw_config(&text, &origin)?;
        raw.policy = PolicyConfig::default();
        Settings::from_raw(raw, &text, &origin, &EnvOverrides::from_process())
    }

    fn parse_resolved(
        text: &str,
        origin: &str,
        env: &EnvOverrides,
        group_ids: &BTreeMap<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut raw = raw_config(text, origin)?;
        raw.policy.resolve_group_names(group_ids);
        Settings::from_raw(raw, text, origin, env)
    }

    fn from_raw(raw: RawConfig, text: &str, origin: &str, env: &EnvOverrides) -> Result<Settings, ConfigError> {
        let here = |span: std::ops::Range<usize>, key: &str| format!("{origin}:{}: {key}", line_col(text, span.start));

        let listen_text = env.listen.clone().or(raw.server.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            ConfigError::at(format!("{origin}: server.listen"), format!("`{listen_text}` is not an address:port"))
        })?;
        if raw.server.workers == Some(0) {
            return Err(ConfigError::at(format!("{origin}: server.workers"), "must be at least 1"));
        }
        let default_max_body = raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        check_body_limit(default_max_body, &format!("{origin}: server.max_body_bytes"))?;

        let database = build_database(raw.database, env, origin)?;
        let intake = build_intake(raw.intake, origin)?;
        let log = LogSettings {
            format: match &env.log_format {
                Some(f) => parse_log_format(f)
                    .ok_or_else(|| ConfigError::at("GRANTBRIDGE_LOG_FORMAT", "must be auto, json or pretty"))?,
                None => raw.log.format.unwrap_or(LogFormat::Auto),
            },
            level: env.log_level.clone().or(raw.log.level).unwrap_or_else(|| "info".to_string()),
        };
        if !valid_log_filter(&log.level) {
            return Err(ConfigError::at(
                format!("{origin}: log.level"),
                format!("`{}` is not a level or filter (e.g. info, debug, grantbridge=debug,info)", log.level),
            ));
        }

        if raw.sources.is_empty() {
            return Err(ConfigError::at(
                origin,
                "no sources are configured: add at least one [sources.NAME] table with a [[sources.NAME.verify]] scheme",
            ));
        }
        let mut sources = Vec::with_capacity(raw.sources.len());
        for (name, spanned) in raw.sources {
            let span = spanned.span();
            let src = spanned.into_inner();
            let key = format!("sources.{name}");
            if !valid_source_name(&name) {
                return Err(ConfigError::at(
                    here(span, &key),
                    "a source name is 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
                ));
            }
            let max_body_bytes = src.max_body_bytes.unwrap_or(default_max_body);
            check_body_limit(max_body_bytes, &here(span.clone(), &format!("{key}.max_body_bytes")))?;
            let delivery_id = match src.delivery_id {
                None => DeliveryIdRule::Auto,
                Some(RawDeliveryId { header: Some(h), field: None }) => {
                    actix_web::http::header::HeaderName::try_from(h.as_str()).map_err(|_| {
                        ConfigError::at(
                            here(span.clone(), &format!("{key}.delivery_id.header")),
                            "not a valid header name",
                        )
                    })?;
                    DeliveryIdRule::Header(h)
                }
                Some(RawDeliveryId { header: None, field: Some(f) }) => {
                    if !f.starts_with('/') {
                        return Err(ConfigError::at(
                            here(span, &format!("{key}.delivery_id.field")),
                            "must be a JSON pointer such as \"/delivery/id\"",
                        ));
                    }
                    DeliveryIdRule::Field(f)
                }
                Some(_) => {
                    return Err(ConfigError::at(
                        here(span, &format!("{key}.delivery_id")),
                        "give exactly one of header or field",
                    ));
                }
            };
            if src.verify.is_empty() {
                return Err(ConfigError::at(
                    here(span, &key),
                    "no verification scheme: add at least one [[sources.NAME.verify]] table",
                ));
            }
            let mut schemes = Vec::with_capacity(src.verify.len());
            for (i, scheme) in src.verify.into_iter().enumerate() {
                let at = here(scheme.span(), &format!("{key}.verify[{i}]"));
                schemes.push(scheme.into_inner().build(&at)?);
            }
            let tickets =
                src.ticket.unwrap_or_default().build(src.kind, &here(span.clone(), &format!("{key}.ticket")))?;
            let api_at = here(span.clone(), &format!("{key}.api"));
            let api = match src.api {
                Some(api) => Some(match src.kind {
                    SourceKind::Jira => ItsmApi::Jira(api.build_jira(&api_at)?),
                    SourceKind::Servicenow => ItsmApi::ServiceNow(api.build_servicenow(&api_at)?),
                }),
                None => None,
            };
            if src.confirm == Some(true) && api.is_none() {
                return Err(ConfigError::at(
                    here(span, &format!("{key}.confirm")),
                    "confirming approvals needs the ticketing API: add [sources.NAME.api]",
                ));
            }
            let confirm = src.confirm.unwrap_or(api.is_some());
            sources.push(
                Source::new(name, src.kind, max_body_bytes, delivery_id, schemes, tickets).with_api(api, confirm),
            );
        }
        let names: Vec<&str> = sources.iter().map(Source::name).collect();
        let policy = raw.policy.build(origin, &names)?;
        let kinds: Vec<(&str, SourceKind)> = sources.iter().map(|s| (s.name(), s.kind())).collect();
        let callbacks = raw.callbacks.build(&format!("{origin}: callbacks"), &kinds)?;
        let entra = raw.entra.map(|e| e.build(&format!("{origin}: entra"))).transpose()?;
        raw.principals.validate(&format!("{origin}: principals"))?;
        let admin = raw.admin.map(|a| a.build(&format!("{origin}: admin"))).transpose()?.unwrap_or_default();
        let workers = WorkerSettings {
            count: raw.workers.count.unwrap_or(2),
            lease: Duration::from_secs(raw.workers.lease_secs.unwrap_or(120).max(1)),
            poll: Duration::from_millis(raw.workers.poll_ms.unwrap_or(1_000).max(10)),
            max_attempts: raw.workers.max_attempts.unwrap_or(6).max(1),
            executors: raw.workers.executors.unwrap_or(32).clamp(1, 256),
            graph_concurrency: raw.workers.graph_concurrency.unwrap_or(8).clamp(1, 64),
            arm_concurrency: raw.workers.arm_concurrency.unwrap_or(4).clamp(1, 64),
            graph_write_budget: match raw.workers.graph_write_budget.unwrap_or(3_000) {
                0 => None,
                writes => {
                    Some((writes, Duration::from_secs(raw.workers.graph_write_window_secs.unwrap_or(150).max(1))))
                }
            },
        };

        let reconcile = ReconcileSettings {
            interval: match raw.reconcile.interval_secs.unwrap_or(DEFAULT_RECONCILE_INTERVAL_SECS) {
                0 => None,
                secs => Some(Duration::from_secs(secs)),
            },
            dry_run: raw.reconcile.dry_run.unwrap_or(false),
        };

        Ok(Settings {
            origin: origin.to_string(),
            listen,
            http_workers: raw.server.workers,
            database,
            intake,
            log,
            sources,
            policy,
            entra,
            principals: raw.principals,
            workers,
            admin,
            callbacks,
            reconcile,
        })
    }
}

fn raw_config(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => format!("{origin}:{}", line_col(text, span.start)),
            None => origin.to_string(),
        };
        ConfigError::at(at, e.message().trim_end().to_string())
    })
}

fn build_database(raw: RawDatabase, env: &EnvOverrides, origin: &str) -> Result<DatabaseSettings, ConfigError> {
    let url = env.database_url.clone().or(raw.url).unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
    let known = ["sqlite:", "postgres://", "postgresql://"];
    if !known.iter().any(|p| url.starts_with(p)) {
        return Err(ConfigError::at(
            format!("{origin}: database.url"),
            format!("`{}` is neither sqlite:PATH nor postgres://...", redact_url_password(&url)),
        ));
    }
    if raw.password.is_some() && url.starts_with("sqlite:") {
        return Err(ConfigError::at(
            format!("{origin}: database.password"),
            "SQLite takes no password; remove it or use a postgres:// URL",
        ));
    }
    let password = raw.password.map(|r| r.resolve(&format!("{origin}: database.password"))).transpose()?;
    let max_connections = raw.max_connections.unwrap_or(8);
    if max_connections == 0 {
        return Err(ConfigError::at(format!("{origin}: database.max_connections"), "must be at least 1"));
    }
    Ok(DatabaseSettings {
        url,
        password,
        max_connections,
        busy_timeout: Duration::from_millis(raw.busy_timeout_ms.unwrap_or(5_000)),
    })
}

fn build_intake(raw: RawIntake, origin: &str) -> Result<IntakeSettings, ConfigError> {
    let max_batch = raw.max_batch.unwrap_or(512);
    let queue_capacity = raw.queue_capacity.unwrap_or(8_192);
    if !(1..=10_000).contains(&max_batch) {
        return Err(ConfigError::at(format!("{origin}: intake.max_batch"), "must be between 1 and 10000"));
    }
    if queue_capacity < 1 {
        return Err(ConfigError::at(format!("{origin}: intake.queue_capacity"), "must be at least 1"));
    }
    Ok(IntakeSettings {
        max_batch,
        queue_capacity,
        store_timeout: Duration::from_millis(raw.store_timeout_ms.unwrap_or(5_000).max(1)),
    })
}

fn check_body_limit(limit: usize, at: &str) -> Result<(), ConfigError> {
    if (1024..=MAX_BODY_CEILING).contains(&limit) {
        Ok(())
    } else {
        Err(ConfigError::at(at, format!("must be between 1024 and {MAX_BODY_CEILING} bytes")))
    }
}

fn parse_log_format(s: &str) -> Option<LogFormat> {
    match s {
        "auto" => Some(LogFormat::Auto),
        "json" => Some(LogFormat::Json),
        "pretty" => Some(LogFormat::Pretty),
        _ => None,
    }
}

/// A `tracing` filter whose bare words are levels: `loud` parses as a target name, but is surely a typo.
fn valid_log_filter(filter: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    tracing_subscriber::EnvFilter::try_new(filter).is_ok()
        && filter
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .all(|d| d.contains('=') || d.contains('[') || LEVELS.iter().any(|l| l.eq_ignore_ascii_case(d)))
}

fn valid_source_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn line_col(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{col}")
}

/// `postgres://user:pw@host/db` -> `postgres://user:***@host/db`.
pub fn redact_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else { return url.to_string() };
    let rest_start = scheme_end + 3;
    let rest = url.get(rest_start..).unwrap_or("");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = rest.get(..authority_end).unwrap_or("");
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}{}:***{}", url.get(..rest_start).unwrap_or(""), &authority[..colon], &rest[at..])
        }
        _ => url.to_string(),
    }
}

impl Settings {
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name() == name)
    }

    pub fn config_path(&self) -> PathBuf {
        PathBuf::from(&self.origin)
    }
}
