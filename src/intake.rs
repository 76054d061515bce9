//! Group commit: concurrent webhook requests hand their events to one writer task, which stores whatever has
//! queued up in a single transaction. One fsync then acknowledges many requests, which is what lets durable
//! (synchronous=FULL) intake keep up with thousands of requests per second.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

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
        let writer = tokio::spawn(write_batches(store, rx, settings.max_batch, wake));
        (Intake { queue, timeout: settings.store_timeout }, writer)
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
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Pending>, max_batch: usize, wake: Arc<Notify>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        // A requester that gave up (timeout) must not cost a write.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let events: Vec<&IncomingEvent> = batch.iter().map(|p| &p.event).collect();
        let result = store.insert_events(&events).await;
        drop(events);
        match result {
            Ok(outcomes) => {
                if outcomes.iter().any(|o| matches!(o, Inserted::Accepted(_))) {
                    wake.notify_waiters();
                }
                for (pending, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = pending.reply.send(Ok(outcome));
                }
            }
            // One event the store refuses must not fail the requests that happened to share its transaction.
            Err(error) if batch.len() > 1 => {
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

fn log_store_error(error: &StoreError, count: usize) {
    tracing::error!(error = %error, cause = ?std::error::Error::source(error).map(ToString::to_string), events = count,
        "could not store webhook events; answering 503");
}
