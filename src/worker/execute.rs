//! Executing the grant ledger: lease a job (or a batch of adds to one group), call Entra with no transaction open,
//! record the outcomes in one transaction.
//! Throttling and outages are retried later (the provider already retried the call itself); refusals and
//! permanent errors end the job at once as a dead letter, with the reason kept on the grant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Step, drain, later, retry_delay, with_heartbeat};
use crate::callbacks::{CallbackSettings, TicketRef};
use crate::clock::Clock;
use crate::domain::GrantTarget;
use crate::inbound::{Source, SourceKind};
use crate::metrics::Metrics;
use crate::providers::{GrantOutcome, GrantRequest, MAX_MEMBERS_PER_PATCH, ProviderError, Providers};
use crate::store::{
    ClaimedJob, GrantRecord, JobResult, Leased, NewCallback, REASON_EXPIRED, Settled, SharedAccess, Store, StoreError,
    ended_state,
};

/// How long a batch that is not full waits for more adds to the same group before it is sent.
pub const BATCH_FILL_WINDOW: Duration = Duration::from_millis(150);
/// The longest a batch waits to fill while the write budget has no token for it.
const MAX_FILL_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting batch looks for more when no new jobs were announced (jobs queued by another replica).
const FILL_POLL: Duration = Duration::from_millis(50);

pub struct ExecutorContext {
    pub store: Store,
    pub providers: Providers,
    pub sources: HashMap<String, Arc<Source>>,
    /// Whether any source has a ticketing API to post outcomes to; without one, nothing is reported.
    pub reports_to_tickets: bool,
    pub lease: Duration,
    pub poll: Duration,
    pub max_attempts: i64,
    pub metrics: Arc<Metrics>,
    /// Notified when a decision queued new jobs: wakes one idle executor per batch of them.
    pub wake: Arc<Notify>,
    /// Notified whenever jobs were queued in this process: a batch waiting to fill looks again.
    pub queued: Arc<Notify>,
    /// What is posted back to tickets once their grants are done.
    pub callbacks: Arc<CallbackSettings>,
    /// Notified when callbacks were enqueued.
    pub callbacks_wake: Arc<Notify>,
    /// When jobs are due, leases run out and grants expire.
    pub clock: Arc<dyn Clock>,
}

pub struct Executor {
    id: String,
    ctx: Arc<ExecutorContext>,
}

impl Executor {
    pub fn new(ctx: Arc<ExecutorContext>, index: usize) -> Executor {
        Executor { id: format!("{}-{}-x{index}", std::process::id(), uuid::Uuid::now_v7().simple()), ctx }
    }

    /// Executes one due job, or one batch of jobs that a single upstream call serves (adds to one group);
    /// `Ok(false)` when nothing was due.
    pub async fn run_once(&self) -> Result<bool, StoreError> {
        let now = self.ctx.clock.now_ms();
        let jobs = self.ctx.store.claim_jobs(&self.id, now, self.ctx.lease, MAX_MEMBERS_PER_PATCH).await?;
        if jobs.is_empty() {
            return Ok(false);
        }
        let jobs = self.fill(jobs).await?;
        let results = with_heartbeat(
            &self.ctx.store,
            &*self.ctx.clock,
            Leased::JobsOf(&self.id),
            &self.id,
            self.ctx.lease,
            self.execute(&jobs),
        )
        .await;
        let now = self.ctx.clock.now_ms();
        let outcomes: Vec<(&ClaimedJob, JobResult)> = jobs.iter().zip(results).collect();
        let kept = if self.ctx.reports_to_tickets {
            let report = |settled: Settled<'_>| self.report(settled);
            let (kept, callbacks) =
                self.ctx.store.finish_jobs_reporting(&outcomes, &self.id, now, Some(&report)).await?;
            if callbacks > 0 {
                self.ctx.callbacks_wake.notify_one();
            }
            kept
        } else {
            // No ticketing API to post to: nothing to report.
            self.ctx.store.finish_jobs(&outcomes, &self.id, now).await?
        };
        for ((job, _), kept) in outcomes.iter().zip(kept) {
            if !kept {
                tracing::warn!(job = %job.id, "lease lost while executing: another executor took the job over");
            }
        }
        Ok(true)
    }

    /// Tops up a batch that is not full: for [`BATCH_FILL_WINDOW`] after the claim, and for as long as the write
    /// budget has no token for it anyway (at most [`MAX_FILL_WAIT`]). Under a steady stream of tickets for one group
    /// each write then carries up to 20 members, which is what spares the tenant's write budget.
    async fn fill(&self, mut jobs: Vec<ClaimedJob>) -> Result<Vec<ClaimedJob>, StoreError> {
        let Some(key) = jobs.first().and_then(|j| j.batch_key.clone()) else { return Ok(jobs) };
        let started = Instant::now();
        while jobs.len() < MAX_MEMBERS_PER_PATCH {
            let elapsed = started.elapsed();
            let budget_wait = self.ctx.providers.groups.write_wait();
            let until = BATCH_FILL_WINDOW.max(elapsed + budget_wait).min(MAX_FILL_WAIT);
            if elapsed >= until {
                break;
            }
            // Looks again when new jobs were queued in this process (or, for other replicas' jobs, after a while).
            let queued = self.ctx.queued.notified();
            tokio::select! {
                () = queued => {}
                () = tokio::time::sleep((until - elapsed).min(FILL_POLL)) => {}
            }
            let now = self.ctx.clock.now_ms();
            let room = MAX_MEMBERS_PER_PATCH - jobs.len();
            jobs = self.ctx.store.claim_more(&self.id, &key, now, self.ctx.lease, room).await?;
        }
        Ok(jobs)
    }

    /// Executes everything that is due, then returns: what tests call instead of sleeping.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        drain(self).await
    }

    /// One result per job, in order. Adds to a group go out as one PATCH (of one member, or of the whole batch);
    /// anything else one by one.
    async fn execute(&self, jobs: &[ClaimedJob]) -> Vec<JobResult> {
        let requests: Vec<Result<GrantRequest, JobResult>> = jobs.iter().map(|job| self.request(job)).collect();
        let group = match (jobs, requests.first()) {
            ([first, ..], Some(Ok(GrantRequest { target: GrantTarget::GroupMember { group_id }, .. })))
                if first.kind == "grant" =>
            {
                Some(group_id.clone())
            }
            _ => None,
        };
        let Some(group_id) = group else {
            let mut results = Vec::with_capacity(jobs.len());
            for (job, request) in jobs.iter().zip(requests) {
                results.push(match request {
                    Ok(request) => self.execute_one(job, &request).await,
                    Err(result) => result,
                });
            }
            return results;
        };
        self.add_to_group(jobs, requests, &group_id).await
    }

    /// A batch of additions to one group: one PATCH of up to 20 members (with Graph's refusal of the whole batch
    /// answered by single adds), then each job's own result.
    #[tracing::instrument(name = "execute_batch", skip_all, fields(group_id = %group_id, jobs = jobs.len()))]
    async fn add_to_group(
        &self,
        jobs: &[ClaimedJob],
        requests: Vec<Result<GrantRequest, JobResult>>,
        group_id: &str,
    ) -> Vec<JobResult> {
        // A batch key is only ever shared by grant jobs of one group; anything else here is executed on its own.
        let batchable = |job: &ClaimedJob, request: &GrantRequest| {
            job.kind == "grant" && matches!(&request.target, GrantTarget::GroupMember { group_id: g } if g == group_id)
        };
        let principals: Vec<String> = jobs
            .iter()
            .zip(&requests)
            .filter_map(|(job, r)| r.as_ref().ok().filter(|r| batchable(job, r)).map(|r| r.principal_id.clone()))
            .collect();
        let mut answers = self.ctx.providers.groups.add_many(group_id, &principals).await.into_iter();
        let mut results = Vec::with_capacity(jobs.len());
        for (job, request) in jobs.iter().zip(requests) {
            let result = match request {
                Err(result) => result,
                Ok(request) if batchable(job, &request) => match answers.next() {
                    Some((_, outcome)) => self.settle(job, &request, outcome),
                    None => self.dead(job, "internal: the batch ended without an answer for this grant".into()),
                },
                Ok(request) => self.execute_one(job, &request).await,
            };
            results.push(result);
        }
        results
    }

    /// What the job asks the provider for, or why it cannot be asked.
    fn request(&self, job: &ClaimedJob) -> Result<GrantRequest, JobResult> {
        let grant = &job.grant;
        let target: GrantTarget = serde_json::from_str(&grant.target)
            .map_err(|e| self.dead(job, format!("invalid_target: the stored target cannot be read: {e}")))?;
        if !matches!(job.kind.as_str(), "grant" | "revoke" | "expire") {
            return Err(self.dead(job, format!("invalid_job: unknown job kind `{}`", job.kind)));
        }
        let system = match self.ctx.sources.get(&grant.source).map(|s| s.kind()) {
            Some(SourceKind::Servicenow) => "ServiceNow",
            _ => "Jira",
        };
        Ok(GrantRequest {
            target,
            principal_id: grant.principal_id.clone(),
            duration: grant.requested_duration_secs.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
            ticket_number: grant.ticket_key.clone(),
            ticket_system: system.to_string(),
            justification: format!(
                "{} approved in {system}; granted by grantbridge rule {}",
                grant.ticket_key, grant.rule
            ),
        })
    }

    #[tracing::instrument(name = "execute", skip_all, fields(job = %job.id, grant = %job.grant.id, ticket = %job.grant.ticket_key, kind = %job.kind, attempt = job.attempts))]
    async fn execute_one(&self, job: &ClaimedJob, request: &GrantRequest) -> JobResult {
        let outcome = match job.kind.as_str() {
            "revoke" | "expire" => match self.end(job, request).await {
                Ok(result) => return result,
                Err(outcome) => outcome,
            },
            _ => self.ctx.providers.grant(request).await,
        };
        self.settle(job, request, outcome)
    }

    /// Ends a grant (see docs/lifecycle.md): nothing while its grant job is still running; for PIM, a check that
    /// Entra ended the assignment; otherwise a removal upstream unless another grant still needs the same access.
    /// `Err` carries the upstream's answer for [`Executor::settle`].
    async fn end(
        &self,
        job: &ClaimedJob,
        request: &GrantRequest,
    ) -> Result<JobResult, Result<GrantOutcome, ProviderError>> {
        let now = self.ctx.clock.now_ms();
        if job.grant.state == "pending" {
            return Ok(JobResult::Retry {
                at_ms: later(now, PENDING_RETRY),
                error: "grant_pending: the grant is still being executed; revoking after it".into(),
            });
        }
        if job.kind == "expire" {
            return Ok(match self.ctx.providers.pim.is_assigned(request).await {
                Ok(false) => {
                    self.ctx.metrics.record_job(&job.grant.kind, "expired");
                    tracing::info!(job = %job.id, grant = %job.grant.id, ticket = %job.grant.ticket_key, "PIM assignment ended in Entra");
                    JobResult::Done {
                        grant_state: "expired",
                        upstream_id: None,
                        expires_at_ms: job.grant.expires_at_ms,
                    }
                }
                // Entra ends it on its own clock: a little later.
                Ok(true) if job.attempts < self.ctx.max_attempts => JobResult::Retry {
                    at_ms: later(now, EXPIRY_RECHECK),
                    error: "pim_still_assigned: the assignment is still active in Entra past its end".into(),
                },
                Ok(true) => self.dead(job, "pim_still_assigned: the assignment is still active in Entra".into()),
                Err(e) => return Err(Err(e)),
            });
        }
        match self.ctx.store.check_shared_access(job, &self.id, now).await {
            Ok(SharedAccess::Remove) => Err(self.ctx.providers.revoke(request).await),
            Ok(SharedAccess::Kept { note }) => {
                self.ctx.metrics.record_job(&job.grant.kind, "kept");
                tracing::info!(job = %job.id, grant = %job.grant.id, ticket = %job.grant.ticket_key, %note, "grant ended; the access stays for another grant");
                Ok(JobResult::Done {
                    grant_state: ended_state(job),
                    upstream_id: None,
                    expires_at_ms: job.grant.expires_at_ms,
                })
            }
            Ok(SharedAccess::LeaseLost) => Ok(JobResult::Retry { at_ms: now, error: "lease lost".into() }),
            Err(e) => Ok(JobResult::Retry {
                at_ms: later(now, PENDING_RETRY),
                error: format!("store_unavailable: cannot check who else needs the access: {e}"),
            }),
        }
    }

    /// The job's result from the provider's answer: done, retried later, or dead.
    fn settle(
        &self,
        job: &ClaimedJob,
        request: &GrantRequest,
        outcome: Result<GrantOutcome, ProviderError>,
    ) -> JobResult {
        let grant = &job.grant;
        let now = self.ctx.clock.now_ms();
        match outcome {
            Ok(GrantOutcome::Granted { upstream_id, already }) => {
                self.ctx.metrics.record_job(&grant.kind, if already { "already" } else { "granted" });
                tracing::info!(job = %job.id, grant = %grant.id, ticket = %grant.ticket_key, already, "grant active");
                // Added again for a grant of the same access (docs/lifecycle.md): its end stays where it was.
                let expires_at_ms = grant.expires_at_ms.or_else(|| request.duration.map(|d| later(now, d)));
                JobResult::Done { grant_state: "active", upstream_id, expires_at_ms }
            }
            Ok(GrantOutcome::Revoked { already_gone }) => {
                self.ctx.metrics.record_job(&grant.kind, "revoked");
                tracing::info!(job = %job.id, grant = %grant.id, ticket = %grant.ticket_key, already_gone, "grant revoked");
                JobResult::Done { grant_state: ended_state(job), upstream_id: None, expires_at_ms: grant.expires_at_ms }
            }
            Err(ProviderError::Retryable { after, detail }) if job.attempts < self.ctx.max_attempts => {
                let delay = after.unwrap_or_else(|| retry_delay(job.attempts));
                self.ctx.metrics.record_job(&grant.kind, "retry");
                tracing::warn!(job = %job.id, grant = %grant.id, error = %detail, retry_in_secs = delay.as_secs(), "grant postponed");
                JobResult::Retry { at_ms: later(now, delay), error: detail }
            }
            Err(e) => self.dead(job, describe(&e, job.attempts)),
        }
    }

    /// What the ticket is told about what a batch settled: the grants made and those that failed, or a revocation.
    /// Nothing for a source without a ticketing API.
    fn report(&self, settled: Settled<'_>) -> Vec<NewCallback> {
        let detail = match settled {
            Settled::Executed { decision_detail, .. }
            | Settled::Revoked { decision_detail, .. }
            | Settled::Expiring { decision_detail, .. } => decision_detail,
        };
        let Some(ticket) = TicketRef::from_decision_detail(detail) else { return Vec::new() };
        if self.ctx.sources.get(&ticket.source).is_none_or(|s| s.api().is_none()) {
            return Vec::new();
        }
        let callbacks = &self.ctx.callbacks;
        match settled {
            Settled::Executed { grants, .. } => {
                let (active, failed): (Vec<GrantRecord>, Vec<GrantRecord>) =
                    grants.iter().cloned().partition(|g| g.state == "active");
                let code = failed.first().and_then(|g| g.last_error.as_deref()).map_or("failed", failure_code);
                [
                    (!active.is_empty()).then(|| callbacks.for_granted(&ticket, &active)).flatten(),
                    (!failed.is_empty()).then(|| callbacks.for_failed(&ticket, &failed, code)).flatten(),
                ]
                .into_iter()
                .flatten()
                .collect()
            }
            Settled::Revoked { grant, .. } => {
                let reason = ended_text(grant);
                callbacks.for_revoked(&ticket, std::slice::from_ref(grant), &reason).into_iter().collect()
            }
            Settled::Expiring { grant, .. } => {
                callbacks.for_expiring(&ticket, std::slice::from_ref(grant)).into_iter().collect()
            }
        }
    }

    fn dead(&self, job: &ClaimedJob, error: String) -> JobResult {
        self.ctx.metrics.record_job(&job.grant.kind, "dead");
        tracing::error!(job = %job.id, grant = %job.grant.id, ticket = %job.grant.ticket_key, error = %error, "grant failed; the job is a dead letter");
        JobResult::Dead { error }
    }
}

impl Step for Executor {
    async fn step(&self) -> Result<bool, StoreError> {
        self.run_once().await
    }

    /// Until the earliest queued job is due or running lease runs out (a grant's end is a job due at its
    /// expiry), at most `poll`: no polling of the store while nothing is due.
    async fn idle(&self, poll: Duration) -> Duration {
        match self.ctx.store.next_job_due_ms().await {
            Ok(Some(due)) => {
                let wait = due.saturating_sub(self.ctx.clock.now_ms()).max(0);
                Duration::from_millis(u64::try_from(wait).unwrap_or(0)).min(poll)
            }
            Ok(None) | Err(_) => poll,
        }
    }
}

/// What the ticket says when access was taken away, from the grant's `ended_reason`.
fn ended_text(grant: &GrantRecord) -> String {
    let reason = grant.ended_reason.as_deref().unwrap_or(REASON_EXPIRED);
    // The note about a kept membership is for the ledger, not the requester.
    let reason = reason.split(KEPT_SEPARATOR).next().unwrap_or(reason);
    if grant.state == "expired" || reason == REASON_EXPIRED {
        "the access expired; an extension needs a new request and a new approval".to_string()
    } else if let Some(action) = reason.strip_prefix("withdrawn: ") {
        format!("the request was withdrawn (the ticket was {action})")
    } else if let Some(why) = reason.strip_prefix("operator: ") {
        format!("an administrator revoked it: {why}")
    } else {
        "the access was revoked".to_string()
    }
}

/// Between an ending reason and the note naming the grant that keeps the access.
const KEPT_SEPARATOR: &str = "; kept for grant ";
/// A revocation waiting for its grant job to finish looks again after this.
const PENDING_RETRY: Duration = Duration::from_secs(5);
/// A PIM assignment still listed past its end (clocks differ) is looked at again after this.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);

/// The stable code a failed grant's error starts with (see [`describe`]).
fn failure_code(error: &str) -> &str {
    error.split_once(": ").map_or(error, |(code, _)| code)
}

/// A failed grant's error for the ledger: a stable code, then what happened.
fn describe(e: &ProviderError, attempts: i64) -> String {
    match e {
        ProviderError::Retryable { detail, .. } => {
            format!("retries_exhausted: gave up after {attempts} attempts: {detail}")
        }
        ProviderError::Permanent { code, detail } => format!("{code}: {detail}"),
        ProviderError::Refused { reason } => format!("refused: {reason}"),
    }
}
