//! `GET /v1/reconcile/runs` and `GET /v1/reconcile/runs/{id}`: the runs reconciliation recorded, and one run's
//! report with its drift, as `grantbridge reconcile --json` prints it.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::Value;

use super::params::{CursorKind, Params};
use super::{ApiError, AppState, Authorized, Read, get_only, list, unreadable};
use crate::store::{ReconcileRun, ReconcileRunSummary};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/v1/reconcile/runs", list_runs)).service(get_only("/v1/reconcile/runs/{id}", run));
}

#[derive(Serialize)]
struct RunView {
    id: String,
    started_at_ms: i64,
    finished_at_ms: i64,
    /// `schedule` (the periodic job of `serve`) or `cli` (`grantbridge reconcile`).
    started_by: String,
    dry_run: bool,
    /// Drift found, of every kind.
    drift: i64,
    /// Groups that could not be compared, and repairs that failed.
    errors: i64,
}

impl From<ReconcileRunSummary> for RunView {
    fn from(r: ReconcileRunSummary) -> Self {
        RunView {
            id: r.id,
            started_at_ms: r.started_at_ms,
            finished_at_ms: r.finished_at_ms,
            started_by: r.started_by,
            dry_run: r.dry_run,
            drift: r.drift,
            errors: r.errors,
        }
    }
}

#[derive(Serialize)]
struct Runs {
    runs: Vec<RunView>,
}

/// `GET /v1/reconcile/runs`: the latest started first.
#[tracing::instrument(name = "admin_reconcile_runs", skip_all)]
async fn list_runs(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &["limit", "cursor"])?;
    let (limit, after) = (params.limit()?, params.cursor(CursorKind::ReconcileRuns)?);
    let page = state.store.list_reconcile_runs(after.as_ref(), limit).await.map_err(unreadable)?;
    Ok(HttpResponse::Ok().json(list(page, CursorKind::ReconcileRuns, |runs| Runs { runs })))
}

#[derive(Serialize)]
struct RunDetail {
    run: RunView,
    /// The report as recorded: totals, every group with its missing, lingering and unknown members and what was
    /// done about each, and the targets not reconciled.
    report: Value,
}

/// `GET /v1/reconcile/runs/{id}`: one run and its report.
#[tracing::instrument(name = "admin_reconcile_run", skip_all, fields(run_id = %path.as_str()))]
async fn run(
    _: Authorized<Read>,
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    Params::parse(request.query_string(), &[])?;
    // Run ids are UUIDs, stored in their lowercase hyphenated form; anything else names no run.
    let id = uuid::Uuid::try_parse(&path).map_err(|_| ApiError::UnknownReconcileRun)?;
    let ReconcileRun { id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors, report } = state
        .store
        .reconcile_run(&id.hyphenated().to_string())
        .await
        .map_err(unreadable)?
        .ok_or(ApiError::UnknownReconcileRun)?;
    let report = serde_json::from_str(&report).unwrap_or(Value::String(report));
    let run = RunView { id, started_at_ms, finished_at_ms, started_by, dry_run, drift, errors };
    Ok(HttpResponse::Ok().json(RunDetail { run, report }))
}
