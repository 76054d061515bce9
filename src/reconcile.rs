//! Reconciliation: the grant ledger compared with Microsoft Entra, for every group whose membership the policy
//! manages, and drift reported and, where the policy says so, repaired.
//!
//! For one group, the direct members are read from Graph (every page) and then the ledger's grants for the group.
//! In that order: a grant's ledger row (and a revocation's revoke job) is written before Entra is changed, so a
//! ledger read after the member read never misses what explains a change the member read saw. Then, at an injected
//! time `now`:
//!
//! - **missing**: an active grant that has not expired (`expires_at_ms` absent or after `now`), but the principal
//!   is not a member. Reported; re-added only when the grant's rule declares the group with `restore_missing`.
//! - **lingering**: a member whose ledger grants for the group have all ended (revoked, failed, expired, or being
//!   revoked). Removed. A member with one grant still live (active and unexpired, or pending) is never removed,
//!   whatever its other grants: two tickets can grant the same membership.
//! - **unknown**: a member the ledger has no grant for. Reported; removed only when the group is `authoritative`.
//!
//! PIM member assignments of the group show as direct members too: they count as ledger knowledge (a member with
//! one is not unknown, and a live one keeps the member), but PIM's own schedule is not reconciled, nor are Azure
//! RBAC assignments; the report lists those targets as not reconciled. A dry run reports what it would do and
//! writes nothing to Entra. Every run, dry or not, is recorded in `reconcile_runs` with its report, and counted in
//! `grantbridge_reconcile_drift_total` and `grantbridge_reconcile_actions_total`. The audit trail gets, in the
//! transaction that records the run, one `reconciled` entry with the run's counts and one per repair attempted.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::audit::{AuditEntry, AuditKind};
use crate::metrics::Metrics;
use crate::policy::{ManagedGroup, Policy};
use crate::providers::{GrantOutcome, GraphGroups, ProviderError};
use crate::store::{LedgerGrant, ReconcileRun, Store, StoreError};

/// `started_by` of the periodic job's runs: the ones its schedule is computed from.
pub const STARTED_BY_SCHEDULE: &str = "schedule";
/// `started_by` of `grantbridge reconcile`.
pub const STARTED_BY_CLI: &str = "cli";

pub use crate::clock::{Clock, SystemClock};

/// What classification finds in one group, each list sorted by principal id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classified {
    pub missing: Vec<Missing>,
    pub lingering: Vec<Lingering>,
    /// Members the ledger has no grant for.
    pub unknown: Vec<String>,
}

/// A principal with a live, active grant who is not a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub principal_id: String,
    /// The active, unexpired grants that say it should be a member.
    pub grant_ids: Vec<String>,
    /// One of those grants comes from a rule that declares the group with `restore_missing`.
    pub restore: bool,
}

/// A member whose grants for the group have all ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lingering {
    pub principal_id: String,
    /// Its ended `group_member` grants.
    pub grant_ids: Vec<String>,
}

/// Whether a grant still holds the membership: pending (its job will add it), or active and not yet expired; never
/// once a revoke job exists for it.
fn live(grant: &LedgerGrant, now_ms: i64) -> bool {
    if grant.revoking {
        return false;
    }
    match grant.state.as_str() {
        "pending" => true,
        "active" => grant.expires_at_ms.is_none_or(|at| at > now_ms),
        _ => false,
    }
}

fn active(grant: &LedgerGrant, now_ms: i64) -> bool {
    grant.state == "active" && live(grant, now_ms)
}

/// Compares the group's direct members with its ledger grants at `now_ms`. Pure: the time is given, never read.
pub fn classify(members: &[String], ledger: &[LedgerGrant], group: &ManagedGroup, now_ms: i64) -> Classified {
    let members: std::collections::BTreeSet<String> = members.iter().map(|m| m.trim().to_ascii_lowercase()).collect();
    let mut by_principal: BTreeMap<String, Vec<&LedgerGrant>> = BTreeMap::new();
    for grant in ledger {
        by_principal.entry(grant.principal_id.trim().to_ascii_lowercase()).or_default().push(grant);
    }
    let mut found = Classified::default();
    for (principal, grants) in &by_principal {
        if members.contains(principal) {
            continue;
        }
        let holding: Vec<&LedgerGrant> =
            grants.iter().copied().filter(|g| g.kind == "group_member" && active(g, now_ms)).collect();
        if holding.is_empty() {
            continue;
        }
        found.missing.push(Missing {
            principal_id: principal.clone(),
            grant_ids: holding.iter().map(|g| g.grant_id.clone()).collect(),
            restore: holding.iter().any(|g| group.restore_missing_rules.contains(&g.rule)),
        });
    }
    for member in &members {
        let Some(grants) = by_principal.get(member) else {
            found.unknown.push(member.clone());
            continue;
        };
        if grants.iter().any(|g| live(g, now_ms)) {
            continue;
        }
        // Known only through PIM assignments: PIM ends those itself.
        let ended: Vec<String> =
            grants.iter().filter(|g| g.kind == "group_member").map(|g| g.grant_id.clone()).collect();
        if !ended.is_empty() {
            found.lingering.push(Lingering { principal_id: member.clone(), grant_ids: ended });
        }
    }
    found
}

/// What was done, or would be done, about one finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Reported only: the policy does not ask for a repair.
    Reported,
    /// Dry run: it would be re-added.
    WouldRestore,
    Restored,
    /// Re-adding found it a member already (the member list was older than the add).
    AlreadyPresent,
    /// Dry run: it would be removed.
    WouldRemove,
    Removed,
    /// Removing found it gone already.
    AlreadyGone,
    /// The repair failed; see `error`.
    Failed,
}

impl Action {
    /// Whether Entra was written to (whatever came of it): the actions the audit trail records one by one.
    pub fn is_repair(self) -> bool {
        match self {
            Action::Restored | Action::AlreadyPresent | Action::Removed | Action::AlreadyGone | Action::Failed => true,
            Action::Reported | Action::WouldRestore | Action::WouldRemove => false,
        }
    }

    /// As in the report's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Reported => "reported",
            Action::WouldRestore => "would_restore",
            Action::Restored => "restored",
            Action::AlreadyPresent => "already_present",
            Action::WouldRemove => "would_remove",
            Action::Removed => "removed",
            Action::AlreadyGone => "already_gone",
            Action::Failed => "failed",
        }
    }
}

/// One principal's drift, and what came of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub principal_id: String,
    /// The ledger grants behind it: the active ones for `missing`, the ended ones for `lingering`, none for `unknown`.
    pub grant_ids: Vec<String>,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub missing: usize,
    pub lingering: usize,
    pub unknown: usize,
    pub restored: usize,
    pub removed: usize,
    /// Targets that could not be reconciled, and repairs that failed.
    pub errors: usize,
}

impl Counts {
    /// Drift found, of every kind.
    pub fn drift(&self) -> usize {
        self.missing + self.lingering + self.unknown
    }

    fn add(&mut self, other: &Counts) {
        self.missing += other.missing;
        self.lingering += other.lingering;
        self.unknown += other.unknown;
        self.restored += other.restored;
        self.removed += other.removed;
        self.errors += other.errors;
    }
}

/// One group, compared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetReport {
    pub kind: &'static str,
    pub group_id: String,
    pub label: String,
    pub authoritative: bool,
    /// Direct members read from Graph.
    pub members: usize,
    /// Ledger grants for the group, in any state.
    pub ledger_grants: usize,
    pub counts: Counts,
    pub missing: Vec<Finding>,
    pub lingering: Vec<Finding>,
    pub unknown: Vec<Finding>,
    /// Why the group could not be compared at all (nothing was changed in it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A declared target that reconciliation does not compare, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotReconciled {
    pub kind: &'static str,
    pub label: String,
    pub reason: &'static str,
}

/// What one run found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    pub id: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub dry_run: bool,
    pub totals: Counts,
    pub targets: Vec<TargetReport>,
    pub not_reconciled: Vec<NotReconciled>,
}

impl ReconcileReport {
    /// Its audit entries: one `reconciled` entry for the run with its counts, then one per repair attempted in
    /// Entra (see [`Action::is_repair`]), each naming the group, the principal, the drift and what came of it.
    pub fn audit_entries(&self, started_by: &str) -> Vec<AuditEntry> {
        let t = &self.totals;
        let run = AuditEntry::service(AuditKind::Reconciled).at(self.finished_at_ms).detail(serde_json::json!({
            "run_id": self.id,
            "started_by": started_by,
            "dry_run": self.dry_run,
            "groups": self.targets.len(),
            "missing": t.missing,
            "lingering": t.lingering,
            "unknown": t.unknown,
            "restored": t.restored,
            "removed": t.removed,
            "errors": t.errors,
        }));
        let mut entries = vec![run];
        for target in &self.targets {
            for (drift, findings) in
                [("missing", &target.missing), ("lingering", &target.lingering), ("unknown", &target.unknown)]
            {
                for finding in findings.iter().filter(|f| f.action.is_repair()) {
                    let mut detail = serde_json::json!({
                        "run_id": self.id,
                        "group_id": target.group_id,
                        "principal_id": finding.principal_id,
                        "drift": drift,
                        "action": finding.action.as_str(),
                        "grant_ids": finding.grant_ids.join(","),
                    });
                    if let Some(error) = &finding.error {
                        detail["error"] = serde_json::Value::String(error.clone());
                    }
                    let mut entry = AuditEntry::service(AuditKind::Reconciled).at(self.finished_at_ms).detail(detail);
                    if let [grant] = finding.grant_ids.as_slice() {
                        entry = entry.grant(grant.clone());
                    }
                    entries.push(entry);
                }
            }
        }
        entries
    }

    /// For people: one line for the run, one per group, one per finding.
    pub fn render(&self) -> String {
        let t = &self.totals;
        let mut out = String::new();
        let mode = if self.dry_run { "dry run, nothing changed" } else { "repairs made" };
        let _ = writeln!(
            out,
            "reconciliation {} ({mode}): {} group(s); drift: {} missing, {} lingering, {} unknown; {} restored, {} \
             removed; {} error(s)",
            self.id,
            self.targets.len(),
            t.missing,
            t.lingering,
            t.unknown,
            t.restored,
            t.removed,
            t.errors
        );
        for target in &self.targets {
            let authoritative = if target.authoritative { ", authoritative" } else { "" };
            let _ = writeln!(out, "group {} {}{authoritative}", target.group_id, target.label);
            if let Some(error) = &target.error {
                let _ = writeln!(out, "  not reconciled: {error}");
                continue;
            }
            let _ = writeln!(out, "  {} member(s), {} ledger grant(s)", target.members, target.ledger_grants);
            for (kind, findings) in
                [("missing", &target.missing), ("lingering", &target.lingering), ("unknown", &target.unknown)]
            {
                for f in findings {
                    let _ = write!(out, "  {kind:<9} {} {}", f.principal_id, f.action.as_str());
                    if let Some(error) = &f.error {
                        let _ = write!(out, ": {error}");
                    }
                    out.push('\n');
                }
            }
        }
        for skipped in &self.not_reconciled {
            let _ = writeln!(out, "not reconciled: {} {}: {}", skipped.kind, skipped.label, skipped.reason);
        }
        out
    }
}

/// Compares the ledger with Entra for the policy's groups.
#[derive(Clone)]
pub struct Reconciler {
    store: Store,
    groups: GraphGroups,
    managed: Vec<ManagedGroup>,
    not_reconciled: Vec<NotReconciled>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
}

impl Reconciler {
    pub fn new(store: Store, groups: GraphGroups, policy: &Policy) -> Self {
        let not_reconciled = policy
            .unreconciled_targets()
            .into_iter()
            .map(|d| NotReconciled {
                kind: d.target.kind(),
                label: d.label.clone(),
                reason: "only group_member targets are reconciled: PIM and Azure RBAC keep their own assignments",
            })
            .collect();
        Reconciler {
            store,
            groups,
            managed: policy.managed_groups(),
            not_reconciled,
            clock: Arc::new(SystemClock),
            metrics: None,
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn managed_groups(&self) -> &[ManagedGroup] {
        &self.managed
    }

    /// Compares every managed group, one after the other, and repairs unless `dry_run`. A group that cannot be read
    /// is reported with its error and the others are still compared. Nothing is recorded.
    pub async fn run(&self, dry_run: bool) -> ReconcileReport {
        let id = uuid::Uuid::now_v7().to_string();
        let started_at_ms = self.clock.now_ms();
        tracing::info!(run = %id, dry_run, groups = self.managed.len(), "reconciliation started");
        let mut targets = Vec::with_capacity(self.managed.len());
        let mut totals = Counts::default();
        for group in &self.managed {
            let target = self.reconcile_group(group, dry_run).await;
            totals.add(&target.counts);
            if let Some(metrics) = &self.metrics {
                metrics.record_reconcile_drift("missing", count(target.counts.missing));
                metrics.record_reconcile_drift("lingering", count(target.counts.lingering));
                metrics.record_reconcile_drift("unknown", count(target.counts.unknown));
                metrics.record_reconcile_action("restored", count(target.counts.restored));
                metrics.record_reconcile_action("removed", count(target.counts.removed));
            }
            targets.push(target);
        }
        let report = ReconcileReport {
            id,
            started_at_ms,
            finished_at_ms: self.clock.now_ms(),
            dry_run,
            totals,
            targets,
            not_reconciled: self.not_reconciled.clone(),
        };
        tracing::info!(
            run = %report.id,
            dry_run,
            missing = totals.missing,
            lingering = totals.lingering,
            unknown = totals.unknown,
            restored = totals.restored,
            removed = totals.removed,
            errors = totals.errors,
            "reconciliation finished"
        );
        report
    }

    /// [`Reconciler::run`], then the report recorded in `reconcile_runs`.
    pub async fn run_and_record(&self, dry_run: bool, started_by: &str) -> Result<ReconcileReport, StoreError> {
        let report = self.run(dry_run).await;
        self.record(&report, started_by).await?;
        Ok(report)
    }

    /// Records a run's report in `reconcile_runs`, and its audit entries, in one transaction.
    pub async fn record(&self, report: &ReconcileReport, started_by: &str) -> Result<(), StoreError> {
        let json = serde_json::to_string(report)
            .map_err(|e| StoreError::Corrupt(format!("the reconciliation report cannot be written as JSON: {e}")))?;
        let run = ReconcileRun {
            id: report.id.clone(),
            started_at_ms: report.started_at_ms,
            finished_at_ms: report.finished_at_ms,
            started_by: started_by.to_owned(),
            dry_run: report.dry_run,
            drift: i64::try_from(report.totals.drift()).unwrap_or(i64::MAX),
            errors: i64::try_from(report.totals.errors).unwrap_or(i64::MAX),
            report: json,
        };
        self.store.record_reconcile_run(&run, &report.audit_entries(started_by)).await
    }

    /// One scheduled run, if it is due and no other replica is running one: under the reconciliation lock, the
    /// latest scheduled run is read again, and a run that started less than `interval` ago (on any replica) means
    /// there is nothing to do. `None` when nothing was run.
    pub async fn run_scheduled(
        &self,
        interval: Duration,
        dry_run: bool,
    ) -> Result<Option<ReconcileReport>, StoreError> {
        let Some(lock) = self.store.try_lock_reconcile().await? else {
            tracing::debug!("another replica is reconciling");
            return Ok(None);
        };
        let result = async {
            let last = self.store.last_reconcile_started_at(STARTED_BY_SCHEDULE).await?;
            if !until_due(last, interval, self.clock.now_ms()).is_zero() {
                return Ok(None);
            }
            self.run_and_record(dry_run, STARTED_BY_SCHEDULE).await.map(Some)
        }
        .await;
        lock.release().await;
        result
    }

    async fn reconcile_group(&self, group: &ManagedGroup, dry_run: bool) -> TargetReport {
        let mut report = TargetReport {
            kind: "group_member",
            group_id: group.group_id.clone(),
            label: group.label.clone(),
            authoritative: group.authoritative,
            members: 0,
            ledger_grants: 0,
            counts: Counts::default(),
            missing: Vec::new(),
            lingering: Vec::new(),
            unknown: Vec::new(),
            error: None,
        };
        let fail = |mut report: TargetReport, error: String| {
            tracing::warn!(group_id = %group.group_id, error = %error, "reconciliation: group not compared");
            report.error = Some(error);
            report.counts.errors += 1;
            report
        };
        // A group whose members Graph cannot change (dynamic, synced) would only be noise.
        if let Err(e) = self.groups.writable_group(&group.group_id).await {
            return fail(report, format!("the group cannot be reconciled: {e}"));
        }
        // Members first, then the ledger: see the module's comment.
        let members = match self.groups.list_members(&group.group_id).await {
            Ok(members) => members,
            Err(e) => return fail(report, format!("the group's members cannot be read: {e}")),
        };
        let ledger = match self.store.grants_for_group(&group.group_id).await {
            Ok(ledger) => ledger,
            Err(e) => return fail(report, format!("the ledger cannot be read: {e}")),
        };
        report.members = members.len();
        report.ledger_grants = ledger.len();
        let found = classify(&members, &ledger, group, self.clock.now_ms());
        report.counts.missing = found.missing.len();
        report.counts.lingering = found.lingering.len();
        report.counts.unknown = found.unknown.len();

        for missing in found.missing {
            let (action, error) = match (missing.restore, dry_run) {
                (false, _) => (Action::Reported, None),
                (true, true) => (Action::WouldRestore, None),
                (true, false) => self.restore(group, &missing.principal_id).await,
            };
            report.push_missing(missing.principal_id, missing.grant_ids, action, error);
        }
        for lingering in found.lingering {
            let (action, error) = if dry_run {
                (Action::WouldRemove, None)
            } else {
                self.remove(group, &lingering.principal_id, "lingering").await
            };
            report.push_lingering(lingering.principal_id, lingering.grant_ids, action, error);
        }
        for member in found.unknown {
            let (action, error) = match (group.authoritative, dry_run) {
                (false, _) => (Action::Reported, None),
                (true, true) => (Action::WouldRemove, None),
                (true, false) => self.remove(group, &member, "unknown").await,
            };
            report.push_unknown(member, action, error);
        }
        if report.counts.drift() > 0 {
            tracing::info!(
                group_id = %group.group_id,
                missing = report.counts.missing,
                lingering = report.counts.lingering,
                unknown = report.counts.unknown,
                restored = report.counts.restored,
                removed = report.counts.removed,
                dry_run,
                "reconciliation: drift found"
            );
        }
        report
    }

    async fn restore(&self, group: &ManagedGroup, principal_id: &str) -> (Action, Option<String>) {
        let outcome = self.groups.add(&group.group_id, principal_id).await;
        let result = match outcome {
            Ok(GrantOutcome::Granted { already: true, .. }) => (Action::AlreadyPresent, None),
            Ok(_) => (Action::Restored, None),
            Err(e) => (Action::Failed, Some(error_text(&e))),
        };
        tracing::info!(group_id = %group.group_id, principal = principal_id, action = result.0.as_str(), error = result.1.as_deref(), "reconciliation: member restore");
        result
    }

    async fn remove(&self, group: &ManagedGroup, principal_id: &str, kind: &'static str) -> (Action, Option<String>) {
        let outcome = self.groups.remove(&group.group_id, principal_id).await;
        let result = match outcome {
            Ok(GrantOutcome::Revoked { already_gone: true }) => (Action::AlreadyGone, None),
            Ok(_) => (Action::Removed, None),
            Err(e) => (Action::Failed, Some(error_text(&e))),
        };
        tracing::info!(group_id = %group.group_id, principal = principal_id, drift = kind, action = result.0.as_str(), error = result.1.as_deref(), "reconciliation: member removal");
        result
    }
}

impl TargetReport {
    fn tally(&mut self, action: Action) {
        match action {
            Action::Restored => self.counts.restored += 1,
            Action::Removed => self.counts.removed += 1,
            Action::Failed => self.counts.errors += 1,
            _ => {}
        }
    }

    fn push_missing(&mut self, principal_id: String, grant_ids: Vec<String>, action: Action, error: Option<String>) {
        self.tally(action);
        self.missing.push(Finding { principal_id, grant_ids, action, error });
    }

    fn push_lingering(&mut self, principal_id: String, grant_ids: Vec<String>, action: Action, error: Option<String>) {
        self.tally(action);
        self.lingering.push(Finding { principal_id, grant_ids, action, error });
    }

    fn push_unknown(&mut self, principal_id: String, action: Action, error: Option<String>) {
        self.tally(action);
        self.unknown.push(Finding { principal_id, grant_ids: Vec::new(), action, error });
    }
}

fn error_text(error: &ProviderError) -> String {
    format!("{}: {error}", error.code())
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// How long until a run is due, when the latest scheduled run started at `last` (zero: now).
pub fn until_due(last: Option<i64>, interval: Duration, now_ms: i64) -> Duration {
    let Some(last) = last else { return Duration::ZERO };
    let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    let due = last.saturating_add(interval_ms);
    Duration::from_millis(u64::try_from(due.saturating_sub(now_ms)).unwrap_or(0))
}

/// The periodic reconciliation of `serve`.
pub struct Scheduled {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl Scheduled {
    /// Runs `reconciler` every `interval`, once per interval across replicas, from the latest recorded scheduled
    /// run: a restart does not postpone it, and replicas do not run it twice.
    pub fn spawn(reconciler: Reconciler, interval: Duration, dry_run: bool) -> Scheduled {
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(run_periodically(reconciler, interval, dry_run, rx));
        Scheduled { stop, handle }
    }

    /// Lets a run in progress finish within `grace`, then stops.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let abort = self.handle.abort_handle();
        if tokio::time::timeout(grace, self.handle).await.is_err() {
            tracing::warn!("the reconciliation in progress did not finish within the shutdown grace period");
            abort.abort();
        }
    }
}

/// With no scheduled run recorded yet, the first waits this long (or the interval, if shorter) after the start:
/// a new installation's executors are then past the backlog they started with.
pub const FIRST_RUN_DELAY: Duration = Duration::from_secs(5 * 60);

async fn run_periodically(reconciler: Reconciler, interval: Duration, dry_run: bool, mut stop: watch::Receiver<bool>) {
    // After a failure, or while another replica runs: look again after this long.
    let later = interval.min(Duration::from_secs(60));
    let mut wait_first = Duration::ZERO;
    loop {
        if !wait_first.is_zero() && !sleep_or_stop(wait_first, &mut stop).await {
            return;
        }
        wait_first = later;
        let wait = match reconciler.store.last_reconcile_started_at(STARTED_BY_SCHEDULE).await {
            Ok(None) => interval.min(FIRST_RUN_DELAY),
            Ok(last) => until_due(last, interval, reconciler.clock.now_ms()),
            Err(e) => {
                tracing::warn!(error = %e, "reconciliation: cannot read the latest run; trying again later");
                continue;
            }
        };
        // A little jitter, so that replicas started together do not all ask for the lock at once.
        let jitter = Duration::from_millis(fastrand::u64(0..1_000));
        if !sleep_or_stop(wait + jitter, &mut stop).await {
            return;
        }
        match reconciler.run_scheduled(interval, dry_run).await {
            // Due again one interval after this run started.
            Ok(Some(_)) => wait_first = Duration::ZERO,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reconciliation could not run or be recorded"),
        }
    }
}

/// Sleeps for `wait`; false when asked to stop first.
async fn sleep_or_stop(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(wait) => !*stop.borrow(),
        _ = stop.changed() => false,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn group(restore: &[&str], authoritative: bool) -> ManagedGroup {
        ManagedGroup {
            group_id: "6f3c1a52-0d3e-4b8c-9f0a-2b7d4e5c1a90".into(),
            label: "Portal".into(),
            authoritative,
            restore_missing_rules: restore.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>(),
        }
    }

    fn grant(id: &str, principal: &str, state: &str, expires: Option<i64>) -> LedgerGrant {
        LedgerGrant {
            grant_id: id.into(),
            principal_id: principal.into(),
            rule: "portal".into(),
            kind: "group_member".into(),
            state: state.into(),
            expires_at_ms: expires,
            revoking: false,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_kind_of_drift_is_found_and_nothing_else() {
        let ledger = vec![
            grant("g-ok", "ok", "active", None),
            grant("g-missing", "missing", "active", Some(NOW + 1)),
            grant("g-gone", "gone", "revoked", None),
            grant("g-expired", "expired", "active", Some(NOW)),
            grant("g-failed", "failed", "failed", None),
            grant("g-pending", "pending", "pending", None),
            grant("g-shared-old", "shared", "revoked", None),
            grant("g-shared-new", "shared", "active", None),
            grant("g-ended-absent", "absent", "revoked", None),
        ];
        let members = ids(&["OK", "gone", "expired", "failed", "pending", "shared", "stranger"]);
        let found = classify(&members, &ledger, &group(&[], false), NOW);
        assert_eq!(
            found.missing,
            vec![Missing { principal_id: "missing".into(), grant_ids: ids(&["g-missing"]), restore: false }]
        );
        let lingering: Vec<(&str, Vec<String>)> =
            found.lingering.iter().map(|l| (l.principal_id.as_str(), l.grant_ids.clone())).collect();
        assert_eq!(
            lingering,
            vec![("expired", ids(&["g-expired"])), ("failed", ids(&["g-failed"])), ("gone", ids(&["g-gone"]))]
        );
        assert_eq!(found.unknown, ids(&["stranger"]));
    }

    #[test]
    fn expiry_is_judged_at_the_given_time() {
        let ledger = vec![grant("g", "p", "active", Some(NOW))];
        let before = classify(&ids(&["p"]), &ledger, &group(&[], false), NOW - 1);
        assert!(before.lingering.is_empty());
        let at = classify(&ids(&["p"]), &ledger, &group(&[], false), NOW);
        assert_eq!(at.lingering.len(), 1);
        assert!(classify(&[], &ledger, &group(&[], false), NOW).missing.is_empty(), "an expired grant is not missing");
        assert_eq!(classify(&[], &ledger, &group(&[], false), NOW - 1).missing.len(), 1);
    }

    #[test]
    fn restore_follows_the_rule_of_an_active_grant() {
        let mut other = grant("g-2", "p", "active", None);
        other.rule = "other".into();
        let ledger = vec![grant("g-1", "p", "revoked", None), other];
        assert!(!classify(&[], &ledger, &group(&["portal"], false), NOW).missing[0].restore);
        assert!(classify(&[], &ledger, &group(&["other"], false), NOW).missing[0].restore);
    }

    #[test]
    fn a_revocation_in_progress_neither_keeps_nor_misses_a_member() {
        let mut revoking = grant("g", "p", "active", None);
        revoking.revoking = true;
        let ledger = vec![revoking];
        assert!(classify(&[], &ledger, &group(&[], false), NOW).missing.is_empty());
        assert_eq!(classify(&ids(&["p"]), &ledger, &group(&[], false), NOW).lingering.len(), 1);
    }

    #[test]
    fn pim_member_assignments_are_known_but_not_reconciled() {
        let mut live_pim = grant("pim-1", "a", "active", Some(NOW + 10));
        live_pim.kind = "pim_group".into();
        let mut ended_pim = grant("pim-2", "b", "active", Some(NOW - 10));
        ended_pim.kind = "pim_group".into();
        let ledger = vec![live_pim, ended_pim, grant("g-a", "a", "revoked", None)];
        let found = classify(&ids(&["a", "b"]), &ledger, &group(&[], true), NOW);
        assert_eq!(found, Classified::default(), "a is kept by its live PIM assignment, b is left to PIM");
        let mut absent = grant("pim-3", "c", "active", None);
        absent.kind = "pim_group".into();
        assert!(classify(&[], &[absent], &group(&[], false), NOW).missing.is_empty());
    }

    #[test]
    fn actions_read_as_in_the_json() {
        for action in [
            Action::Reported,
            Action::WouldRestore,
            Action::Restored,
            Action::AlreadyPresent,
            Action::WouldRemove,
            Action::Removed,
            Action::AlreadyGone,
            Action::Failed,
        ] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
    }

    #[test]
    fn due_times() {
        let hour = Duration::from_secs(3600);
        assert_eq!(until_due(None, hour, NOW), Duration::ZERO);
        assert_eq!(until_due(Some(NOW - 1_000), hour, NOW), Duration::from_millis(3_599_000));
        assert_eq!(until_due(Some(NOW - 3_600_000), hour, NOW), Duration::ZERO);
        assert_eq!(until_due(Some(NOW - 9_000_000), hour, NOW), Duration::ZERO);
    }
}
