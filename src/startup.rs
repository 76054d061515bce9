//! Wiring: store, intake writer and HTTP server built from `Settings`, run until stopped, then drained.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;

use crate::clock::Clock;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use anyhow::Context;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::callbacks::{Callbacker, CallbackerContext};
use crate::config::Settings;
use crate::decide::Decider;
use crate::http::admin::AdminAuth;
use crate::http::{self, AppState};
use crate::inbound::Source;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::reconcile::{Reconciler, Scheduled};
use crate::store::Store;
use crate::upstream::http_client;
use crate::worker::{Executor, ExecutorContext, Worker, WorkerContext, Workers};

/// Time allowed to fetch the keys that sign admin tokens: a request waits for it.
const ADMIN_KEYS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Application {
    port: u16,
    server: Server,
    intake_writer: JoinHandle<()>,
    store: Store,
    workers: Workers,
    work: Arc<WorkerContext>,
    exec: Option<Arc<ExecutorContext>>,
    callbacks: Option<Arc<CallbackerContext>>,
    reconcile: Option<Scheduled>,
}

impl Application {
    /// Connects to the database, applies migrations and binds the listen address.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database)
            .await
            .with_context(|| format!("Failed to open the database {}", settings.database.display_url()))?;
        let applied = store.migrate().await.context("Failed to apply database migrations")?;
        if !applied.is_empty() {
            tracing::info!(?applied, backend = store.backend(), "database migrations applied");
        }
        Self::build_with_store(settings, store)
    }

    /// [`Application::build`] with workers that judge due jobs, leases and expiry by `clock` (tests move it).
    pub async fn build_with_clock(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        let store = Store::connect(&settings.database)
            .await
            .with_context(|| format!("Failed to open the database {}", settings.database.display_url()))?;
        store.migrate().await.context("Failed to apply database migrations")?;
        Self::build_with_store_and_clock(settings, store, clock)
    }

    pub fn build_with_store(settings: Settings, store: Store) -> anyhow::Result<Application> {
        Self::build_with_store_and_clock(settings, store, crate::clock::system())
    }

    pub fn build_with_store_and_clock(
        settings: Settings,
        store: Store,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Application> {
        let listener =
            TcpListener::bind(settings.listen).with_context(|| format!("Failed to listen on {}", settings.listen))?;
        let port = listener.local_addr().context("Failed to read the bound address")?.port();
        let wake = Arc::new(Notify::new());
        let (intake, intake_writer) = Intake::start(store.clone(), &settings.intake, wake.clone());
        let max_body_bytes = settings.sources.iter().map(|s| s.max_body_bytes()).max().unwrap_or(0);
        for source in &settings.sources {
            if source.schemes().iter().all(|s| s.name().is_weak()) {
                tracing::warn!(
                    source = source.name(),
                    "source accepts a static shared secret only: the body is not signed"
                );
            }
        }
        let sources: HashMap<String, Arc<Source>> =
            settings.sources.into_iter().map(|s| (s.name().to_string(), Arc::new(s))).collect();
        let metrics = Arc::new(Metrics::default());
        let jobs_wake = Arc::new(Notify::new());
        let jobs_queued = Arc::new(Notify::new());
        let callbacks_wake = Arc::new(Notify::new());
        let callback_settings = Arc::new(settings.callbacks);
        let callbacks = sources.values().any(|s| s.api().is_some()).then(|| {
            Arc::new(
                CallbackerContext::new(
                    store.clone(),
                    &sources,
                    callback_settings.clone(),
                    settings.workers.lease,
                    settings.workers.poll,
                    metrics.clone(),
                    callbacks_wake.clone(),
                )
                .with_clock(clock.clone()),
            )
        });
        let providers = settings.entra.as_ref().map(|e| {
            let providers = Providers::from_entra(e, e.arm_url.clone())
                .with_concurrency(settings.workers.graph_concurrency, settings.workers.arm_concurrency);
            match settings.workers.graph_write_budget {
                Some((writes, window)) => providers.with_graph_write_budget(writes, window),
                None => providers,
            }
        });
        // Reconciliation shares the executors' Graph concurrency and write budget. Like them, it runs only on
        // replicas with workers, and only with an Entra tenant to compare with.
        let reconcile = match (&providers, settings.reconcile.interval) {
            (Some(providers), Some(interval)) if settings.workers.count > 0 => {
                let reconciler = Reconciler::new(store.clone(), providers.groups.clone(), &settings.policy)
                    .with_metrics(metrics.clone());
                let dry_run = settings.reconcile.dry_run || settings.policy.dry_run();
                Some(Scheduled::spawn(reconciler, interval, dry_run))
            }
            _ => None,
        };
        let exec = providers.map(|providers| {
            Arc::new(ExecutorContext {
                store: store.clone(),
                providers,
                reports_to_tickets: sources.values().any(|s| s.api().is_some()),
                sources: sources.clone(),
                lease: settings.workers.lease,
                poll: settings.workers.poll,
                max_attempts: settings.workers.max_attempts,
                metrics: metrics.clone(),
                wake: jobs_wake.clone(),
                queued: jobs_queued.clone(),
                callbacks: callback_settings.clone(),
                callbacks_wake: callbacks_wake.clone(),
                clock: clock.clone(),
            })
        });
        let decider = Decider {
            policy: Arc::new(settings.policy),
            directory: settings.entra.map(|e| e.directory),
            principals: settings.principals,
        };
        let work = Arc::new(WorkerContext {
            store: store.clone(),
            decider,
            sources: sources.clone(),
            settings: settings.workers,
            metrics: metrics.clone(),
            wake,
            jobs_wake,
            jobs_queued,
            callbacks: callback_settings,
            callbacks_wake,
            clock,
        });
        if settings.admin.is_open_to_nobody() {
            tracing::info!("no [admin] section: every /v1/ route answers 401");
        }
        let admin = Arc::new(AdminAuth::new(settings.admin, http_client(ADMIN_KEYS_TIMEOUT)));
        let state =
            AppState { sources, work: work.clone(), max_body_bytes, intake, store: store.clone(), metrics, admin };
        let server = http::server(listener, state, settings.http_workers).context("Failed to start the HTTP server")?;
        let workers = Workers::spawn(work.clone(), exec.clone(), callbacks.clone());
        Ok(Application { port, server, intake_writer, store, workers, work, exec, callbacks, reconcile })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// A worker of this application's own, for tests that decide events deterministically (`run_pending`).
    pub fn worker(&self) -> Worker {
        Worker::new(self.work.clone(), usize::MAX)
    }

    /// An executor of this application's own (when an Entra tenant is configured), for tests.
    pub fn executor(&self) -> Option<Executor> {
        self.exec.clone().map(|ctx| Executor::new(ctx, usize::MAX))
    }

    /// A callbacker of this application's own (when a source has a ticketing API), for tests.
    pub fn callbacker(&self) -> Option<Callbacker> {
        self.callbacks.clone().map(|ctx| Callbacker::new(ctx, usize::MAX))
    }

    /// Serves until the handle stops the server, then lets the intake writer finish what it holds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.server.await.context("The HTTP server failed")?;
        if tokio::time::timeout(Duration::from_secs(30), self.intake_writer).await.is_err() {
            tracing::warn!("the intake writer did not finish within 30 s of shutdown");
        }
        self.workers.shutdown(Duration::from_secs(30)).await;
        if let Some(reconcile) = self.reconcile {
            reconcile.shutdown(Duration::from_secs(30)).await;
        }
        self.store.close().await;
        Ok(())
    }
}
