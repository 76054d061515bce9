//! The admin API under `/v1/`: events, grants and dead letters to read, each route behind `[admin]`
//! authentication. `POST /v1/plan` lives in `http::plan` and uses the same guard.

pub mod auth;
pub mod config;
mod operate;
mod params;
mod reconcile;
mod revoke;
mod views;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

pub use auth::{AdminAuth, Authorized, Operate, Operator, Read, Via};
pub use config::{AdminConfig, AdminSettings, Role};

use self::params::{CursorKind, Params, encode_cursor};
use self::views::{DeadLetterView, DecisionView, EventListItem, EventView, GrantView, GrantWithJobs};
use super::{ApiError, AppState};
use crate::domain::EventId;
use crate::store::{EventFilter, GrantFilter, Page, StoreError};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/v1/events", list_events))
        .service(get_only("/v1/events/{id}", event))
        .service(get_only("/v1/grants", list_grants))
        .service(get_only("/v1/dead-letters", list_dead_letters))
        .service(get_only("/v1/audit", operate::list_audit))
        .service(get_only("/v1/audit/head", operate::audit_head))
        .service(web::resource("/v1/events/{id}/replay").route(web::post().to(operate::replay)).default_service(
            web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "POST" }) }),
        ))
        .service(web::resource("/v1/grants/{id}/revoke").route(web::post().to(revoke::revoke)).default_service(
            web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "POST" }) }),
        ));
    reconcile::routes(cfg);
}

fn get_only<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow: "GET" }) }))
}

#[derive(Serialize)]
struct List<T> {
    #[serde(flatten)]
    items: T,
    /// Hand it back as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

fn list<T, V, W>(page: Page<T>, kind: CursorKind, wrap: impl FnOnce(Vec<V>) -> W) -> List<W>
where
    V: From<T>,
{
    let next_cursor = page.next.as_ref().map(|key| encode_cursor(kind, key));
    List { items: wrap(page.items.into_iter().map(V::from).collect()), next_cursor }
}

fn unreadable(error: StoreError) -> ApiError {
    tracing::warn!(error = %error, "admin query failed");
    ApiError::StoreUnreadable
}

#[derive(Serialize)]
struct Events {
    events: Vec<EventListItem>,
}

const EVENT_PARAMS: [&str; 7] = ["source", "ticket", "status", "received_after", "received_before", "limit", "cursor"];

/// `GET /v1/events`: newest first.
#[tracing::instrument(name = "admin_events", skip_all)]
async fn list_events(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &EVENT_PARAMS)?;
    let filter = EventFilter {
        source: params.text("source"),
        ticket: params.text("ticket"),
        state: params.word("status")?,
        received_after_ms: params.time("received_after")?,
        received_before_ms: params.time("received_before")?,
    };
    let (limit, after) = (params.limit()?, params.cursor(CursorKind::Events)?);
    let page = state.store.list_events(&filter, after.as_ref(), limit).await.map_err(unreadable)?;
    Ok(HttpResponse::Ok().json(list(page, CursorKind::Events, |events| Events { events })))
}

#[derive(Serialize)]
struct EventDetail {
    event: EventView,
    decision: Option<DecisionView>,
    grants: Vec<GrantWithJobs>,
}

/// `GET /v1/events/{id}`: the event, its decision, and the grants it created with their jobs. The stored body
/// only with `include=body`, and only for operators: it holds whatever the ticketing system sent.
#[tracing::instrument(name = "admin_event", skip_all, fields(event_id = %path.as_str()))]
async fn event(
    auth: Authorized<Read>,
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &["include"])?;
    let include_body = match params.text("include").as_deref() {
        None => false,
        Some("body") => {
            auth.operator.require(Role::Operate)?;
            true
        }
        Some(_) => return Err(ApiError::InvalidParameter("`include` takes one value: `body`".into())),
    };
    let id = EventId::parse(&path).ok_or(ApiError::UnknownEvent)?;
    let store = &state.store;
    let record = store.event_record(id).await.map_err(unreadable)?.ok_or(ApiError::UnknownEvent)?;
    let decision = store.decision(id).await.map_err(unreadable)?;
    let grants = store.grants_of_event(id).await.map_err(unreadable)?;
    let jobs = store.jobs_of_event(id).await.map_err(unreadable)?;
    let body = if include_body {
        tracing::info!(operator = %auth.operator.id, "stored event body read");
        store.event(id).await.map_err(unreadable)?.map(|e| e.body)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(EventDetail {
        event: EventView::new(record, body),
        decision: decision.map(DecisionView::from),
        grants: GrantWithJobs::group(grants, jobs),
    }))
}

#[derive(Serialize)]
struct Grants {
    grants: Vec<GrantView>,
}

const GRANT_PARAMS: [&str; 9] =
    ["ticket", "source", "principal", "target", "kind", "state", "expiring_before", "limit", "cursor"];

/// `GET /v1/grants`: newest first.
#[tracing::instrument(name = "admin_grants", skip_all)]
async fn list_grants(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &GRANT_PARAMS)?;
    let filter = GrantFilter {
        ticket: params.text("ticket"),
        source: params.text("source"),
        principal: params.text("principal"),
        target: params.text("target"),
        kind: params.word("kind")?,
        state: params.word("state")?,
        expiring_before_ms: params.time("expiring_before")?,
    };
    let (limit, after) = (params.limit()?, params.cursor(CursorKind::Grants)?);
    let page = state.store.list_grants(&filter, after.as_ref(), limit).await.map_err(unreadable)?;
    Ok(HttpResponse::Ok().json(list(page, CursorKind::Grants, |grants| Grants { grants })))
}

#[derive(Serialize)]
struct DeadLetters {
    dead_letters: Vec<DeadLetterView>,
}

/// `GET /v1/dead-letters`: jobs that gave up, most recent first.
#[tracing::instrument(name = "admin_dead_letters", skip_all)]
async fn list_dead_letters(
    _: Authorized<Read>,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(request.query_string(), &["limit", "cursor"])?;
    let (limit, after) = (params.limit()?, params.cursor(CursorKind::DeadLetters)?);
    let page = state.store.list_dead_letters(after.as_ref(), limit).await.map_err(unreadable)?;
    Ok(HttpResponse::Ok().json(list(page, CursorKind::DeadLetters, |dead_letters| DeadLetters { dead_letters })))
}
