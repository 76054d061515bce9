//! Delivering the outbox: lease a callback, post it with no transaction open, record the result. Throttling and
//! outages are retried later with back-off (a server's `Retry-After` wins); refusals, and failures that outlast
//! every attempt, end the callback as a dead letter with the reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::deliver::{Deliverer, DeliveryError};
use super::templates::CallbackSettings;
use crate::clock::Clock;
use crate::inbound::Source;
use crate::metrics::Metrics;
use crate::store::{CallbackResult, ClaimedCallback, Leased, Store, StoreError};
use crate::worker::{Step, drain, later, run_until_stopped, with_heartbeat};

/// What callbackers need; shared by all callbackers of a process.
pub struct CallbackerContext {
    pub store: Store,
    pub deliverer: Deliverer,
    /// How long a callbacker owns a callback it claimed; a crashed one's callbacks are taken over after it.
    pub lease: Duration,
    /// How often idle callbackers look for callbacks whose retry time or lease has come.
    pub poll: Duration,
    pub max_attempts: i64,
    /// Back-off after a failed attempt: `retry_base` doubling per attempt, up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// The longest server-asked delay honoured as asked.
    pub max_retry_after: Duration,
    pub metrics: Arc<Metrics>,
    /// Notified when callbacks were enqueued.
    pub wake: Arc<Notify>,
    /// When a callback is due (a notice before expiry waits for its window).
    pub clock: Arc<dyn Clock>,
}

impl CallbackerContext {
    /// A context for the configured sources, with the `[callbacks]` retry settings.
    pub fn new(
        store: Store,
        sources: &HashMap<String, Arc<Source>>,
        settings: Arc<CallbackSettings>,
        lease: Duration,
        poll: Duration,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> CallbackerContext {
        CallbackerContext {
            store,
            deliverer: Deliverer::from_sources(sources, settings.clone()),
            lease,
            poll,
            max_attempts: settings.max_attempts,
            retry_base: settings.retry_base,
            retry_cap: settings.retry_cap,
            max_retry_after: settings.max_retry_after,
            metrics,
            wake,
            clock: crate::clock::system(),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
}

/// The wait before the attempt after `attempts` failed ones: the server's delay when it asked (clamped to
/// `max_asked`), else `base` doubling per attempt up to `cap`; a little jitter so that replicas do not retry in step.
fn retry_delay(attempts: i64, asked: Option<Duration>, base: Duration, cap: Duration, max_asked: Duration) -> Duration {
    let delay = match asked {
        Some(asked) => asked.min(max_asked),
        None => {
            let exp = u32::try_from(attempts.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
            base.saturating_mul(2u32.saturating_pow(exp)).min(cap)
        }
    };
    let jitter = u64::try_from(delay.as_millis() / 10).unwrap_or(0);
    delay + Duration::from_millis(fastrand::u64(0..=jitter))
}

pub struct Callbacker {
    id: String,
    ctx: Arc<CallbackerContext>,
}

impl Callbacker {
    pub fn new(ctx: Arc<CallbackerContext>, index: usize) -> Callbacker {
        // Unique per process and start, so a restarted replica never mistakes an old lease for its own.
        Callbacker { id: format!("{}-{}-c{index}", std::process::id(), uuid::Uuid::now_v7().simple()), ctx }
    }

    /// Delivers one due callback; `Ok(false)` when there was none.
    pub async fn run_once(&self) -> Result<bool, StoreError> {
        let ctx = &self.ctx;
        let now = ctx.clock.now_ms();
        let Some(claimed) = ctx.store.claim_callback(&self.id, now, ctx.lease).await? else { return Ok(false) };
        let result = with_heartbeat(
            &ctx.store,
            &*ctx.clock,
            Leased::Callback(claimed.id()),
            &self.id,
            ctx.lease,
            self.deliver(&claimed),
        )
        .await;
        let now = ctx.clock.now_ms();
        if !ctx.store.finish_callback(&claimed, &self.id, &result, now).await? {
            tracing::warn!(callback = claimed.id(), "lease lost while delivering: another callbacker took it over");
        }
        Ok(true)
    }

    /// Delivers everything that is due, then returns: what tests call instead of sleeping.
    pub async fn run_pending(&self) -> Result<usize, StoreError> {
        drain(self).await
    }

    #[tracing::instrument(name = "callback", skip_all, fields(callback = %claimed.callback.id, event_id = %claimed.callback.event_id, source = %claimed.callback.source, ticket = %claimed.callback.ticket_key, kind = %claimed.callback.kind, attempt = claimed.callback.attempts))]
    async fn deliver(&self, claimed: &ClaimedCallback) -> CallbackResult {
        let ctx = &self.ctx;
        let callback = &claimed.callback;
        let count = |outcome: &'static str| ctx.metrics.record_callback(&callback.source, &callback.kind, outcome);
        match ctx.deliverer.deliver(callback).await {
            Ok(delivered) => {
                count(if delivered.already { "already_delivered" } else { "delivered" });
                tracing::info!(
                    already = delivered.already,
                    remote_id = delivered.remote_id.as_deref(),
                    "callback delivered"
                );
                CallbackResult::Delivered { remote_id: delivered.remote_id }
            }
            Err(DeliveryError::Retry { after, reason }) if callback.attempts < ctx.max_attempts => {
                let delay = retry_delay(callback.attempts, after, ctx.retry_base, ctx.retry_cap, ctx.max_retry_after);
                count("retry");
                tracing::warn!(
                    error = %reason,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "callback postponed"
                );
                CallbackResult::Retry { at_ms: later(ctx.clock.now_ms(), delay), error: reason }
            }
            Err(DeliveryError::Retry { reason, .. }) => {
                self.dead(callback.attempts, format!("gave up after {} attempts: {reason}", callback.attempts), count)
            }
            Err(DeliveryError::Permanent { reason }) => self.dead(callback.attempts, reason, count),
        }
    }

    fn dead(&self, attempts: i64, error: String, count: impl Fn(&'static str)) -> CallbackResult {
        count("dead");
        tracing::error!(error = %error, attempts, "callback not delivered; it is a dead letter");
        CallbackResult::Dead { error }
    }
}

impl Step for Callbacker {
    async fn step(&self) -> Result<bool, StoreError> {
        self.run_once().await
    }
}

/// Starts `count` callbackers that work until `stop` turns true; the caller keeps the handles to await them.
pub fn spawn_callbackers(
    ctx: Arc<CallbackerContext>,
    count: usize,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    (0..count)
        .map(|i| {
            let callbacker = Callbacker::new(ctx.clone(), i);
            tokio::spawn(run_until_stopped(callbacker, ctx.wake.clone(), ctx.poll, stop.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_its_cap_and_a_server_delay_wins_up_to_its_limit() {
        let delay = |attempts, asked: Option<u64>| {
            let d = retry_delay(
                attempts,
                asked.map(Duration::from_secs),
                Duration::from_secs(10),
                Duration::from_secs(900),
                Duration::from_secs(3600),
            );
            d.as_secs_f64()
        };
        assert!((10.0..=11.0).contains(&delay(1, None)));
        assert!((20.0..=22.0).contains(&delay(2, None)));
        assert!((900.0..=990.0).contains(&delay(30, None)));
        assert!((120.0..=132.0).contains(&delay(1, Some(120))));
        assert!((3600.0..=3960.0).contains(&delay(1, Some(86_400))));
        assert_eq!(delay(1, Some(0)), 0.0);
    }
}
