//! On PostgreSQL, several replicas share the work: each listens for the others' notifications, so new events
//! jobs and callbacks are picked up at once wherever they were stored. Lost notifications (a reconnect) cost at most one
//! poll interval.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::store::{Store, WORK_CALLBACKS, WORK_CHANNEL, WORK_EVENTS, WORK_JOBS};

/// Wakes `events`, `jobs` or `callbacks` when any replica stores that kind of work; `None` on SQLite, where the
/// process that stores work wakes its own workers.
pub fn spawn(store: &Store, events: Arc<Notify>, jobs: Arc<Notify>, callbacks: Arc<Notify>) -> Option<JoinHandle<()>> {
    let Store::Postgres(pool) = store else { return None };
    let pool = pool.clone();
    Some(tokio::spawn(async move {
        loop {
            match PgListener::connect_with(&pool).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(WORK_CHANNEL).await {
                        tracing::warn!(error = %e, "cannot LISTEN for work notifications; polling meanwhile");
                    } else {
                        // recv reconnects by itself after a lost connection.
                        loop {
                            match listener.recv().await {
                                Ok(n) if n.payload() == WORK_EVENTS => events.notify_waiters(),
                                Ok(n) if n.payload() == WORK_JOBS => jobs.notify_waiters(),
                                Ok(n) if n.payload() == WORK_CALLBACKS => callbacks.notify_waiters(),
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "work notifications interrupted; polling meanwhile");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect to listen for work notifications"),
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }))
}
