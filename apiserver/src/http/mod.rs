//! The HTTP side of the apiserver: the actix-web server (body limits, middleware order, binding)
//! and, in its submodules, the routes, the token check, the OpenAPI document, the request metrics
//! and the original's wire shapes. Everything below `http` reads shared data from [`AppState`].

pub mod auth;
pub mod delivered;
pub mod double_slash;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod state;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::error::{InternalError, JsonPayloadError};
use actix_web::http::StatusCode;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpServer, web};

use crate::backend::Backend;
use crate::config::Config;
use crate::error::Error;
use metrics::{Metrics, count_requests};
pub use state::AppState;

/// Malformed, mistyped, empty or oversized bodies: a JSON 4xx in the route's shape, never a panic.
fn json_error(error: JsonPayloadError, request: &HttpRequest) -> actix_web::Error {
    let status = match &error {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let message = format!("unreadable JSON body: {error}");
    let answer = wire::error_for(request, status, message);
    InternalError::from_response(error, answer).into()
}

/// Binds (port 0 picks a free one) and returns the not-yet-awaited server with its address.
pub fn bind(config: Config, backend: Arc<dyn Backend>) -> Result<(Server, SocketAddr), Error> {
    let metrics = Arc::new(Metrics::new(backend.engine_metrics()));
    let counted = web::Data::from(metrics.clone());
    let state = web::Data::new(AppState {
        allocations: AppState::allocation_limit(&config),
        openapi: openapi::document(config.auth_token.is_some()),
        metrics,
        backend,
        config: Arc::new(config.clone()),
    });
    let json_config = web::JsonConfig::default()
        .limit(config.max_body_bytes)
        // The original never looked at Content-Type; curl -d sends form encoding.
        .content_type_required(false)
        .error_handler(json_error);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(counted.clone())
            .app_data(json_config.clone())
            .configure(routes::configure)
            .wrap(from_fn(count_requests))
            // Registered last, so it runs first: routing sees the mapped path.
            .wrap(from_fn(double_slash::map_double_slash_v1))
    })
    // Long enough for a pending POST to reach its own timeout answer.
    .shutdown_timeout(config.request_timeout.as_secs() + 2)
    // main decides what SIGTERM means (graceful stop); tests must not have their signals taken.
    .disable_signals()
    .bind((config.bind, config.port))
    .map_err(Error::Serve)?;
    let address = *server
        .addrs()
        .first()
        .ok_or_else(|| Error::Serve(std::io::Error::other("bound to no address")))?;
    Ok((server.run(), address))
}
