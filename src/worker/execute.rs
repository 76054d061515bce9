//! Executing the grant ledger: lease a job, call Entra with no transaction open, record the outcome.
//! Throttling and outages are retried later (the provider already retried the call itself); refusals and
//! permanent errors end the job at once as a dead letter, with the reason kept on the grant.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use super::{Step, drain, retry_delay, with_heartbeat};
use crate::domain::GrantTarget;
use crate::inbound::{Source, SourceKind, unix_millis};
use crate::metrics::Metrics;
use crate::providers::{GrantOutcome, GrantRequest, ProviderError, Providers};
use crate::store::{ClaimedJob, JobResult, Leased, Store, StoreError};

pub struct ExecutorContext {
    pub store: Store,
    pub providers: Providers,
    pub sources: HashMap<String, Arc<Source>>,
    pub lease: Duration,
    pub poll: Duration,
    pub max_attempts: i64,
    pub metrics: Arc<Metrics>,
    /// Notified when a decision queued new jobs.
    pub wake: Arc<Notify>,
}

pub struct Executor {
    id: String,
    ctx: Arc<ExecutorContext>,
}

impl Executor {
    pub fn new(ctx: Arc<ExecutorContext>, index: usize) -> Executor {
        Executor { id: format!("{}-{}-x{index}", std::process::id(), uuid::Uuid::now_v7().simple()), ctx }
    }

    /// Executes one due job; `Ok(false)` when there was none.
    pub async fn run_once(&self) -> Result<bool, StoreError> {
        let now = unix_millis(SystemTime::now());
        let Some(job) = self.ctx.store.claim_job(&self.id, now, self.ctx.lease).await? else { return Ok(false) };
        let result =
            with_heartbeat(&self.ctx.store, Leased::Job(&job.id), &self.id, self.ctx.lease, self.execute(&job)).await;
        let now = unix_millis(SystemTime::now());
        if !self.ctx.store.finish_job(&job, &self.id, &result, now).await? {
            tracing::warn!(job = %job.id, "lease lost while executing: another executor took the job over");
        }
        Ok(true)
    }

    /// Executes everything that is due, then returns: what tests call instead of sleeping.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        drain(self).await
    }

    #[tracing::instrument(name = "execute", skip_all, fields(job = %job.id, grant = %job.grant.id, ticket = %job.grant.ticket_key, kind = %job.kind, attempt = job.attempts))]
    async fn execute(&self, job: &ClaimedJob) -> JobResult {
        let grant = &job.grant;
        let target: GrantTarget = match serde_json::from_str(&grant.target) {
            Ok(t) => t,
            Err(e) => return self.dead(grant.kind.clone(), format!("the stored target cannot be read: {e}")),
        };
        let system = match self.ctx.sources.get(&grant.source).map(|s| s.kind()) {
            Some(SourceKind::Servicenow) => "ServiceNow",
            _ => "Jira",
        };
        let request = GrantRequest {
            target,
            principal_id: grant.principal_id.clone(),
            duration: grant.requested_duration_secs.and_then(|s| u64::try_from(s).ok()).map(Duration::from_secs),
            ticket_number: grant.ticket_key.clone(),
            ticket_system: system.to_string(),
            justification: format!(
                "{} approved in {system}; granted by grantbridge rule {}",
                grant.ticket_key, grant.rule
            ),
        };
        let outcome = match job.kind.as_str() {
            "grant" => self.ctx.providers.grant(&request).await,
            "revoke" => self.ctx.providers.revoke(&request).await,
            other => return self.dead(grant.kind.clone(), format!("unknown job kind `{other}`")),
        };
        let now = SystemTime::now();
        match outcome {
            Ok(GrantOutcome::Granted { upstream_id, already }) => {
                self.ctx.metrics.record_job(&grant.kind, if already { "already" } else { "granted" });
                tracing::info!(already, "grant active");
                let expires_at_ms = request.duration.map(|d| unix_millis(now + d));
                JobResult::Done { grant_state: "active", upstream_id, expires_at_ms }
            }
            Ok(GrantOutcome::Revoked { already_gone }) => {
                self.ctx.metrics.record_job(&grant.kind, "revoked");
                tracing::info!(already_gone, "grant revoked");
                JobResult::Done { grant_state: "revoked", upstream_id: None, expires_at_ms: grant.expires_at_ms }
            }
            Err(ProviderError::Retryable { after, detail }) if job.attempts < self.ctx.max_attempts => {
                let delay = after.unwrap_or_else(|| retry_delay(job.attempts));
                self.ctx.metrics.record_job(&grant.kind, "retry");
                tracing::warn!(error = %detail, retry_in_secs = delay.as_secs(), "grant postponed");
                JobResult::Retry { at_ms: unix_millis(now + delay), error: detail }
            }
            Err(e) => self.dead(grant.kind.clone(), describe(&e, job.attempts)),
        }
    }

    fn dead(&self, kind: String, error: String) -> JobResult {
        self.ctx.metrics.record_job(&kind, "dead");
        tracing::error!(error = %error, "grant failed; the job is a dead letter");
        JobResult::Dead { error }
    }
}

impl Step for Executor {
    async fn step(&self) -> Result<bool, StoreError> {
        self.run_once().await
    }
}

fn describe(e: &ProviderError, attempts: i64) -> String {
    match e {
        ProviderError::Retryable { detail, .. } => format!("gave up after {attempts} attempts: {detail}"),
        ProviderError::Permanent { code, detail } => format!("{code}: {detail}"),
        ProviderError::Refused { reason } => format!("refused: {reason}"),
    }
}
