//! HTTP surface: routes, shared state and the server's lifecycle.

pub mod admin;
mod error;
mod health;
mod plan;
mod webhooks;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{App, HttpResponse, HttpServer, web};

pub use error::ApiError;

use crate::inbound::Source;
use crate::intake::Intake;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::worker::WorkerContext;

pub struct AppState {
    pub sources: HashMap<String, Arc<Source>>,
    /// The deciding side, for `/v1/plan`.
    pub work: Arc<WorkerContext>,
    /// The largest body any source accepts: a declared length above it is refused before the source lookup.
    pub max_body_bytes: usize,
    pub intake: Intake,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Checks the credentials of every `/v1/` request.
    pub admin: Arc<admin::AdminAuth>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhooks/{source}")
            .route(web::post().to(webhooks::receive))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .service(
        web::resource("/v1/plan")
            .route(web::post().to(plan::plan))
            .default_service(web::to(|| method_not_allowed("POST"))),
    )
    .configure(admin::routes)
    .service(read_only("/healthz").route(web::get().to(health::healthz)).route(web::head().to(health::healthz)))
    .service(read_only("/readyz").route(web::get().to(health::readyz)).route(web::head().to(health::readyz)))
    .service(read_only("/metrics").route(web::get().to(health::metrics)).route(web::head().to(health::metrics)))
    .default_service(web::to(not_found));
}

fn read_only(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|| method_not_allowed("GET, HEAD")))
}

async fn method_not_allowed(allow: &'static str) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed { allow })
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Builds the server on an already bound listener (tests bind port 0). Signals are handled by the caller.
pub fn server(listener: TcpListener, state: AppState, workers: Option<usize>) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let mut server = HttpServer::new(move || App::new().app_data(state.clone()).configure(routes))
        .disable_signals()
        .shutdown_timeout(30)
        .listen(listener)?;
    if let Some(n) = workers {
        server = server.workers(n);
    }
    Ok(server.run())
}
