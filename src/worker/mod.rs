//! Background workers: claim a stored event (lease), decide it with no transaction open, record the decision.
//! New events wake them at once; a timer catches retries and leases left behind by a crashed replica.

mod execute;
mod listen;

pub use execute::{BATCH_FILL_WINDOW, Executor, ExecutorContext};
pub use listen::spawn as listen_for_work;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::callbacks::{CallbackSettings, CallbackerContext, TicketRef, spawn_callbackers};
use crate::clock::Clock;
use crate::config::WorkerSettings;
use crate::decide::{Decided, Decider};
use crate::domain::{Decision, Refusal, RefusalCode};
use crate::inbound::Source;
use crate::inbound::normalize::{Normalized, normalize};
use crate::metrics::Metrics;
use crate::store::{
    ClaimedEvent, DecisionRecord, Leased, NewGrant, Store, StoreError, StoredDecision, Withdrawal, batch_key,
};

/// What a worker needs; shared by all workers of a process.
pub struct WorkerContext {
    pub store: Store,
    pub decider: Decider,
    pub sources: HashMap<String, Arc<Source>>,
    pub settings: WorkerSettings,
    pub metrics: Arc<Metrics>,
    /// Notified by the intake when it stored new events.
    pub wake: Arc<Notify>,
    /// Notified when a decision queued grant jobs: one idle executor per batch of them.
    pub jobs_wake: Arc<Notify>,
    /// Notified when a decision queued grant jobs: a batch waiting to fill looks again.
    pub jobs_queued: Arc<Notify>,
    /// What is posted back to tickets; callbacks are enqueued with the decision that they report.
    pub callbacks: Arc<CallbackSettings>,
    /// Notified when callbacks were enqueued.
    pub callbacks_wake: Arc<Notify>,
    /// When events are due and decisions are made: the start of a grant's time, hence its expiry.
    pub clock: Arc<dyn Clock>,
}

pub struct Worker {
    id: String,
    ctx: Arc<WorkerContext>,
}

impl Worker {
    pub fn new(ctx: Arc<WorkerContext>, index: usize) -> Worker {
        // Unique per process and start, so a restarted replica never mistakes an old lease for its own.
        Worker { id: format!("{}-{}-{index}", std::process::id(), uuid::Uuid::now_v7().simple()), ctx }
    }

    /// Claims up to [`DECIDE_BATCH`] events, decides them concurrently, and records every decision in one
    /// transaction; `Ok(false)` when there was nothing to do.
    pub async fn run_once(&self) -> Result<bool, StoreError> {
        let now = self.ctx.clock.now_ms();
        let events = self.ctx.store.claim_events(&self.id, now, self.ctx.settings.lease, DECIDE_BATCH).await?;
        if events.is_empty() {
            return Ok(false);
        }
        let lease = self.ctx.settings.lease;
        let decide_all = futures_util::future::join_all(events.iter().map(|event| self.decide(event)));
        let (store, clock) = (&self.ctx.store, &*self.ctx.clock);
        let outcomes = with_heartbeat(store, clock, Leased::EventsOf(&self.id), &self.id, lease, decide_all).await;
        let mut records = Vec::with_capacity(events.len());
        let mut labels = Vec::with_capacity(events.len());
        for (event, outcome) in events.iter().zip(outcomes) {
            match outcome {
                Outcome::Decided(decided) => {
                    labels.push((event, decision_label(&decided.decision)));
                    records.push(self.record_of(event, *decided));
                }
                Outcome::Postponed { at_ms } => self.ctx.store.release_event(event.id, &self.id, at_ms).await?,
            }
        }
        if records.is_empty() {
            return Ok(true);
        }
        let kept = match self.ctx.store.record_decisions(&records, &self.id).await {
            Ok(kept) => kept.into_iter().map(Recorded::from).collect(),
            Err(e) if records.len() > 1 => {
                tracing::warn!(error = %e, events = records.len(), "a batch of decisions could not be recorded: recording them one by one");
                self.record_one_by_one(&records, &labels).await?
            }
            Err(e) => return Err(e),
        };
        if records.iter().zip(&kept).any(|(r, k)| *k == Recorded::Kept && !r.callbacks.is_empty()) {
            self.ctx.callbacks_wake.notify_one();
        }
        let mut queued_jobs = 0;
        for ((record, (event, label)), kept) in records.iter().zip(&labels).zip(kept) {
            let decision = &record.decision;
            if kept == Recorded::Kept {
                queued_jobs += record.grants.len();
                self.ctx.metrics.record_decision(&event.source, label);
                tracing::info!(event_id = %event.id, source = %event.source, outcome = %decision.outcome, code = decision.code.as_deref(), ticket = decision.ticket_key.as_deref(), "event decided");
            } else if kept == Recorded::LeaseLost {
                tracing::warn!(event_id = %event.id, "lease lost while deciding: another worker took the event over; this decision is dropped");
            }
        }
        // One executor per batch of new grants: a new job wakes one of them, not every idle one.
        for _ in 0..queued_jobs.div_ceil(crate::providers::MAX_MEMBERS_PER_PATCH) {
            self.ctx.jobs_wake.notify_one();
        }
        if queued_jobs > 0 {
            // One waiting batch looks; the others look again on their own within the poll interval.
            self.ctx.jobs_queued.notify_one();
        }
        Ok(true)
    }

    /// After a batch failed to record: each decision in a transaction of its own, so that one the store refuses
    /// does not hold up the others. The event of a refused one is released and decided again after a back-off.
    async fn record_one_by_one(
        &self,
        records: &[DecisionRecord],
        labels: &[(&ClaimedEvent, &'static str)],
    ) -> Result<Vec<Recorded>, StoreError> {
        let mut kept = Vec::with_capacity(records.len());
        for (record, (event, _)) in records.iter().zip(labels) {
            match self.ctx.store.record_decisions(std::slice::from_ref(record), &self.id).await {
                Ok(one) => kept.push(one.first().copied().map_or(Recorded::LeaseLost, Recorded::from)),
                Err(e) => {
                    let delay = retry_delay(event.attempts);
                    tracing::error!(event_id = %event.id, error = %e, retry_in_secs = delay.as_secs(), "the decision of this event could not be recorded; it is decided again later");
                    let at_ms =
                        self.ctx.clock.now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    self.ctx.store.release_event(event.id, &self.id, at_ms).await?;
                    kept.push(Recorded::Refused);
                }
            }
        }
        Ok(kept)
    }

    /// Decides everything that is due, then returns: what tests call instead of sleeping.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        drain(self).await
    }

    #[tracing::instrument(name = "decide", skip_all, fields(event_id = %event.id, source = %event.source, attempt = event.attempts))]
    async fn decide(&self, event: &ClaimedEvent) -> Outcome {
        let ctx = &self.ctx;
        let Some(source) = ctx.sources.get(&event.source) else {
            let reason = format!("source `{}` is no longer configured", event.source);
            return Outcome::Decided(Box::new(Decided { ticket: None, decision: Decision::Ignored { reason } }));
        };
        let decided = ctx.decider.decide(source, &event.body, event.delivery_id.as_deref(), event.received_at_ms).await;
        match decided {
            Ok(decided) => Outcome::Decided(Box::new(decided)),
            Err(transient) if event.attempts < ctx.settings.max_attempts => {
                let delay = retry_delay(event.attempts);
                tracing::warn!(error = %transient, retry_in_secs = delay.as_secs(), "deciding postponed");
                Outcome::Postponed { at_ms: later(ctx.clock.now_ms(), delay) }
            }
            Err(transient) => {
                let message = format!("gave up after {} attempts: {transient}", event.attempts);
                let refusal = Refusal::new(RefusalCode::ConfirmationUnavailable, message);
                // Keep the ticket on the record, so that the refusal can be found by ticket and posted to it.
                let ticket = match normalize(source.name(), source.tickets(), &event.body, None, event.received_at_ms) {
                    Normalized::Ticket(t) => Some(*t),
                    Normalized::Ignored(_) => None,
                };
                Outcome::Decided(Box::new(Decided { ticket, decision: Decision::Refused(refusal) }))
            }
        }
    }

    fn record_of(&self, event: &ClaimedEvent, decided: Decided) -> DecisionRecord {
        let code = match &decided.decision {
            Decision::Refused(r) => Some(r.code.as_str().to_string()),
            _ => None,
        };
        let decision = StoredDecision {
            outcome: decided.decision.outcome().to_string(),
            code,
            ticket_key: decided.ticket.as_ref().map(|t| t.ticket_key.clone()),
            detail: serde_json::to_string(&decided).unwrap_or_else(|_| "{}".to_string()),
            decided_at_ms: self.ctx.clock.now_ms(),
        };
        let policy = &self.ctx.decider.policy;
        let grants = grants_to_execute(&event.source, &decided, |rule| {
            policy.rule(rule).and_then(|r| r.notify_before_expiry()).and_then(|d| i64::try_from(d.as_secs()).ok())
        });
        let withdraw = decided.ticket.as_ref().and_then(|t| {
            let action = t.action.as_str();
            let rules: Vec<String> =
                policy.rules().iter().filter(|r| r.withdraws_on(action)).map(|r| r.name().to_string()).collect();
            (!rules.is_empty()).then(|| Withdrawal {
                source: event.source.clone(),
                ticket_key: t.ticket_key.clone(),
                action: action.to_string(),
                rules,
            })
        });
        let callbacks = match (&decided.ticket, self.ctx.sources.get(&event.source)) {
            // Only where there is a ticketing API to post with.
            (Some(ticket), Some(source)) if source.api().is_some() => {
                let principal = match &decided.decision {
                    Decision::Plan(plan) => plan.principal.as_ref(),
                    _ => None,
                };
                let ticket = TicketRef::from_ticket(ticket, principal);
                self.ctx.callbacks.for_decision(&ticket, &decided.decision, &event.id.to_string()).into_iter().collect()
            }
            _ => Vec::new(),
        };
        DecisionRecord { event: event.id, state: decided.state(), decision, grants, callbacks, withdraw }
    }
}

/// How recording one decision went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recorded {
    Kept,
    /// Another worker holds the event now: this decision is dropped.
    LeaseLost,
    /// The store refused it: the event is decided again later.
    Refused,
}

impl From<bool> for Recorded {
    fn from(kept: bool) -> Recorded {
        if kept { Recorded::Kept } else { Recorded::LeaseLost }
    }
}

/// Events one worker claims and decides together, recorded in one transaction.
pub const DECIDE_BATCH: usize = 32;

/// What deciding one event came to.
enum Outcome {
    Decided(Box<Decided>),
    /// The ticketing system or the directory could not be reached: try again at `at_ms`.
    Postponed {
        at_ms: i64,
    },
}

/// The metric label of a decision: the refusal code, or the outcome.
fn decision_label(decision: &Decision) -> &'static str {
    match decision {
        Decision::Refused(r) => r.code.as_str(),
        other => other.outcome(),
    }
}

/// Runs `work` while renewing the lease on what it works on every third of the lease, so that slow upstreams
/// (a long Retry-After) never make another worker take over work that is still in progress.
pub(crate) async fn with_heartbeat<T>(
    store: &Store,
    clock: &dyn Clock,
    what: Leased<'_>,
    owner: &str,
    lease: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(lease / 3);
    ticker.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = ticker.tick() => {
                let until = later(clock.now_ms(), lease);
                match store.extend_lease(what, owner, until).await {
                    Ok(true) => {}
                    Ok(false) => tracing::warn!("lease lost during the work; its outcome will be discarded"),
                    Err(e) => tracing::warn!(error = %e, "cannot renew the lease"),
                }
            }
        }
    }
}

/// The ledger rows a plan asks for; a dry run asks for none.
fn grants_to_execute(source: &str, decided: &Decided, notify_before: impl Fn(&str) -> Option<i64>) -> Vec<NewGrant> {
    let (Decision::Plan(plan), Some(ticket)) = (&decided.decision, &decided.ticket) else { return Vec::new() };
    let Some(principal) = plan.principal.as_ref().filter(|_| !plan.dry_run) else { return Vec::new() };
    plan.grants
        .iter()
        .map(|g| NewGrant {
            id: g.grant_id(source, &ticket.ticket_key, &principal.object_id),
            source: source.to_string(),
            ticket_key: ticket.ticket_key.clone(),
            rule: g.rule.clone(),
            kind: g.target.kind().to_string(),
            target: serde_json::to_string(&g.target).unwrap_or_default(),
            label: g.label.clone(),
            principal_id: principal.object_id.clone(),
            requested_duration_secs: g.duration.and_then(|d| i64::try_from(d.as_secs()).ok()),
            notify_before_secs: g.duration.and_then(|_| notify_before(&g.rule)),
            batch_key: batch_key(g.target.kind(), &g.target),
        })
        .collect()
}

/// One unit of queued work at a time: deciding an event, or executing a grant job.
pub(crate) trait Step {
    /// Does one due unit of work; `Ok(false)` when there was none.
    async fn step(&self) -> Result<bool, StoreError>;

    /// How long to wait, when idle, before looking again unless woken: at most `poll`.
    async fn idle(&self, poll: Duration) -> Duration {
        poll
    }
}

impl Step for Worker {
    async fn step(&self) -> Result<bool, StoreError> {
        self.run_once().await
    }
}

/// Does everything that is due, then returns.
pub(crate) async fn drain(work: &impl Step) -> Result<usize, StoreError> {
    let mut done = 0;
    while work.step().await? {
        done += 1;
    }
    Ok(done)
}

/// Works until stopped: at once when `wake` is notified, else every `poll` (for retry times and expired leases).
pub(crate) async fn run_until_stopped(
    work: impl Step,
    wake: Arc<Notify>,
    poll: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            break;
        }
        // Registered before looking, so a wake-up between the empty look and the wait is not lost.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match work.step().await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot reach the store"),
        }
        let wait = work.idle(poll).await;
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

/// `now_ms` plus `delay`, in milliseconds.
pub(crate) fn later(now_ms: i64, delay: Duration) -> i64 {
    now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

/// 5 s, 10 s, 20 s ... up to 10 minutes, with jitter so that replicas do not retry in step.
fn retry_delay(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 10)).unwrap_or(10);
    let base = Duration::from_secs(5).saturating_mul(2u32.saturating_pow(exp)).min(Duration::from_secs(600));
    base + Duration::from_millis(fastrand::u64(0..1_000))
}

/// The running workers of a process.
pub struct Workers {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    listener: Option<JoinHandle<()>>,
}

impl Workers {
    /// Deciding workers, executors when there is an Entra tenant to execute against, and callbackers when a
    /// source has a ticketing API to post to.
    pub fn spawn(
        ctx: Arc<WorkerContext>,
        exec: Option<Arc<ExecutorContext>>,
        callbacks: Option<Arc<CallbackerContext>>,
    ) -> Workers {
        let (stop, rx) = watch::channel(false);
        let mut handles: Vec<JoinHandle<()>> = (0..ctx.settings.count)
            .map(|i| {
                let worker = Worker::new(ctx.clone(), i);
                tokio::spawn(run_until_stopped(worker, ctx.wake.clone(), ctx.settings.poll, rx.clone()))
            })
            .collect();
        let listener = (ctx.settings.count > 0)
            .then(|| listen::spawn(&ctx.store, ctx.wake.clone(), ctx.jobs_wake.clone(), ctx.callbacks_wake.clone()))
            .flatten();
        if let Some(exec) = exec {
            let count = if ctx.settings.count == 0 { 0 } else { ctx.settings.executors };
            handles.extend((0..count).map(|i| {
                let executor = Executor::new(exec.clone(), i);
                tokio::spawn(run_until_stopped(executor, exec.wake.clone(), exec.poll, rx.clone()))
            }));
        }
        if let Some(callbacks) = callbacks.filter(|_| ctx.settings.count > 0) {
            handles.extend(spawn_callbackers(callbacks, ctx.callbacks.workers, rx.clone()));
        }
        Workers { stop, handles, listener }
    }

    /// Lets each worker finish the event in hand, then stops them.
    pub async fn shutdown(self, grace: Duration) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        let _ = self.stop.send(true);
        for handle in self.handles {
            if tokio::time::timeout(grace, handle).await.is_err() {
                tracing::warn!("a worker did not finish its event within the shutdown grace period");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::retry_delay;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        assert!(retry_delay(1) >= std::time::Duration::from_secs(5));
        assert!(retry_delay(2) >= std::time::Duration::from_secs(10));
        assert!(retry_delay(50) <= std::time::Duration::from_secs(601));
    }
}
