//! Group commit: concurrent webhook requests hand their events to one writer task, which stores whatever has
//! queued up in a single transaction. One fsync then acknowledges many requests, which is what lets durable
//! (synchronous=FULL) intake keep up with thousands of requests per second.
//!
//! The same writer records refused deliveries in the audit trail. Those come through a second bounded queue
//! that a request never waits on: an entry is offered, and dropped (the caller counts and logs it) when the
//! queue is full. A flood of forged requests therefore costs the store at most a queue's worth of entries per
//! batch and never delays a genuine webhook's answer; the entries join the next batch's transaction.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::audit::AuditEntry;
use crate::config::IntakeSettings;
use crate::domain::IncomingEvent;
use crate::store::{Inserted, Store, StoreError};

struct Pending {
    event: IncomingEvent,
    reply: oneshot::Sender<Result<Inserted, ()>>,
}

/// The handle request handlers use; cheap to clone. The writer stops once every handle is dropped.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Pending>,
    audit: mpsc::Sender<AuditEntry>,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the store did not confirm the write")]
    Unavailable,
}

impl Intake {
    /// `wake` is notified whenever new events were stored, so that workers start on them at once.
    pub fn start(store: Store, settings: &IntakeSettings, wake: Arc<Notify>) -> (Intake, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(settings.queue_capacity);
        let (audit, audit_rx) = mpsc::channel(settings.queue_capacity);
        let writer = tokio::spawn(write_batches(store, rx, audit_rx, settings.max_batch, wake));
        (Intake { queue, audit, timeout: settings.store_timeout }, writer)
    }

    /// Resolves once the event is durably stored (or known to be a duplicate). An error means nothing may be
    /// acknowledged; the event may or may not have been written, and a retried delivery is de-duplicated.
    pub async fn submit(&self, event: IncomingEvent) -> Result<Inserted, IntakeError> {
        let (reply, answer) = oneshot::channel();
        let wait = async {
            self.queue.send(Pending { event, reply }).await.map_err(|_| IntakeError::Unavailable)?;
            answer.await.map_err(|_| IntakeError::Unavailable)?.map_err(|()| IntakeError::Unavailable)
        };
        tokio::time::timeout(self.timeout, wait).await.map_err(|_| IntakeError::Unavailable)?
    }

    /// Offers an entry for the audit trail, to be written with the next batch; never waits. False when it was
    /// dropped: the queue is full, or the writer has stopped.
    pub fn audit(&self, entry: AuditEntry) -> bool {
        self.audit.try_send(entry).is_ok()
    }
}

/// Moves what is already queued into `into`, up to `max` items, without waiting.
fn top_up<T>(rx: &mut mpsc::Receiver<T>, into: &mut Vec<T>, max: usize) {
    while into.len() < max {
        match rx.try_recv() {
            Ok(item) => into.push(item),
            Err(_) => break,
        }
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    mut audit_rx: mpsc::Receiver<AuditEntry>,
    max_batch: usize,
    wake: Arc<Notify>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    let mut audits: Vec<AuditEntry> = Vec::new();
    let (mut events_open, mut audit_open) = (true, true);
    while events_open || audit_open {
        tokio::select! {
            n = rx.recv_many(&mut batch, max_batch), if events_open => events_open = n > 0,
            n = audit_rx.recv_many(&mut audits, max_batch), if audit_open => audit_open = n > 0,
        }
        top_up(&mut rx, &mut batch, max_batch);
        top_up(&mut audit_rx, &mut audits, max_batch);
        // A requester that gave up (timeout) must not cost a write.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            if !audits.is_empty() {
                append_refusals(&store, &mut audits).await;
            }
            continue;
        }
        let events: Vec<&IncomingEvent> = batch.iter().map(|p| &p.event).collect();
        let result = store.insert_events_audited(&events, &audits).await;
        drop(events);
        match result {
            Ok(outcomes) => {
                audits.clear();
                if outcomes.iter().any(|o| matches!(o, Inserted::Accepted(_))) {
                    wake.notify_waiters();
                }
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            // One event the store refuses must not fail the requests that happened to share its transaction.
            Err(error) if batch.len() > 1 || !audits.is_empty() => {
                tracing::warn!(error = %error, events = batch.len(), "batch write failed; storing its events one by one");
                for pending in batch.drain(..) {
                    let outcome = store.insert_events(&[&pending.event]).await;
                    let reply = match outcome.map(|o| o.into_iter().next()) {
                        Ok(Some(inserted)) => Ok(inserted),
                        Ok(None) => Err(()),
                        Err(error) => {
                            log_store_error(&error, 1);
                            Err(())
                        }
                    };
                    if matches!(reply, Ok(Inserted::Accepted(_))) {
                        wake.notify_waiters();
                    }
                    let _ = pending.reply.send(reply);
                }
                append_refusals(&store, &mut audits).await;
            }
            Err(error) => {
                log_store_error(&error, batch.len());
                for pending in batch.drain(..) {
                    let _ = pending.reply.send(Err(()));
                }
            }
        }
        batch.clear();
    }
    tracing::debug!("intake writer stopped: every request handle is gone");
}

/// Audit entries with no event to share a transaction with.
async fn append_refusals(store: &Store, audits: &mut Vec<AuditEntry>) {
    if audits.is_empty() {
        return;
    }
    if let Err(error) = store.append_audit(audits).await {
        tracing::error!(error = %error, cause = ?std::error::Error::source(&error).map(ToString::to_string),
            entries = audits.len(), "could not write audit entries for refused webhooks; they are lost");
    }
    audits.clear();
}

fn log_store_error(error: &StoreError, count: usize) {
    tracing::error!(error = %error, cause = ?std::error::Error::source(error).map(ToString::to_string), events = count,
        "could not store webhook events; answering 503");
}
