//! Every HTTP route of the apiserver, in one place.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use crate::MacAddr;
use crate::backend::BackendError;
use crate::http::auth;
use crate::http::state::AppState;
use crate::http::wire::{self, ERROR, IpAnswer, SUCCESS, TIMEOUT};
use crate::original_json::GoAllocation;

/// Time a backend gets past its own deadline to answer `Timeout` itself (with the allocation id)
/// before the route gives up on it regardless.
const BACKEND_GRACE: Duration = Duration::from_millis(250);

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource("/healthz", &[Method::GET]).route(web::get().to(healthz)))
        .service(resource("/readyz", &[Method::GET]).route(web::get().to(readyz)))
        .service(resource("/metrics", &[Method::GET]).route(web::get().to(metrics)))
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(auth::require_token))
                .service(
                    resource("/ip", &[Method::POST, Method::DELETE])
                        .route(web::post().to(obtain_ip))
                        .route(web::delete().to(return_ip)),
                )
                .service(
                    resource("/mac", &[Method::POST, Method::DELETE])
                        .route(web::post().to(add_macs))
                        .route(web::delete().to(remove_macs)),
                )
                .service(resource("/status", &[Method::GET]).route(web::get().to(status)))
                .service(resource("/config", &[Method::GET]).route(web::get().to(config_cidrs)))
                .service(resource("/openapi.json", &[Method::GET]).route(web::get().to(openapi)))
                .default_service(web::to(not_found)),
        )
        .default_service(web::to(not_found));
}

/// A resource whose other methods get a JSON 405 with `Allow`.
fn resource(path: &str, allowed: &'static [Method]) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |request: HttpRequest| async move {
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        let message = format!(
            "method {} not allowed; use {}",
            request.method(),
            allow.join(", ")
        );
        let mut answer = wire::error_for(&request, StatusCode::METHOD_NOT_ALLOWED, message);
        answer.headers_mut().insert(
            header::ALLOW,
            allow.join(", ").parse().expect("method names are valid"),
        );
        answer
    }))
}

async fn not_found(request: HttpRequest) -> HttpResponse {
    let message = format!("no route {} {}", request.method(), request.path());
    wire::error_for(&request, StatusCode::NOT_FOUND, message)
}

fn backend_status(error: &BackendError) -> StatusCode {
    match error {
        BackendError::NotFound(_) => StatusCode::NOT_FOUND,
        BackendError::Invalid(_) => StatusCode::BAD_REQUEST,
        BackendError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        BackendError::NoFreeMac | BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        BackendError::Refused(_) => StatusCode::BAD_GATEWAY,
    }
}

async fn obtain_ip(state: web::Data<AppState>, body: web::Json<Value>) -> HttpResponse {
    // The CRD's rule for every backend: option 12 is then always a DNS name, and a namespace
    // cannot carry `/`, `?`, `#` or `..` into a Kubernetes API path.
    let service = wire::string_field(&body, "service")
        .and_then(|service| dhcpmanager_crds::check_service_ref(service).map(|()| service));
    let service = match service {
        Ok(service) => service,
        Err(message) => {
            return wire::json(StatusCode::BAD_REQUEST, &wire::ip_error("", "", message));
        }
    };
    if let Err(wait) = state.take_allocation() {
        // Before any work: a client that POSTs in a loop (a MetalLB fork whose `cidrs` do not
        // cover our leases) takes MACs from the pool no faster than `allocate-rate`.
        let retry = wait.as_secs_f64().ceil().max(1.0) as u64;
        let message = format!(
            "too many allocations: at most {} per second (burst {}); retry in {retry} s",
            state.config.allocate_rate, state.config.allocate_burst
        );
        tracing::warn!(service, "{message}");
        let mut answer = wire::json(
            StatusCode::TOO_MANY_REQUESTS,
            &wire::ip_error("", "", message),
        );
        answer.headers_mut().insert(
            header::RETRY_AFTER,
            retry
                .to_string()
                .parse()
                .expect("digits are a valid header"),
        );
        return answer;
    }
    let started = Instant::now();
    let deadline = started + state.config.request_timeout;
    let allocate = state.backend.allocate(service, deadline);
    // The fork's client has no timeout: whatever the backend does, answer in bounded time.
    // Dropping the future withdraws the request (a Backend contract).
    let outcome = tokio::time::timeout(state.config.request_timeout + BACKEND_GRACE, allocate)
        .await
        .unwrap_or(Err(BackendError::Timeout { id: String::new() }));
    match outcome {
        Ok(allocation) => match allocation.ip {
            Some(ip) => {
                state.metrics.observe_allocation(SUCCESS, started.elapsed());
                tracing::info!(service, %ip, id = allocation.id, "address bound");
                let answer = IpAnswer {
                    ip: ip.to_string(),
                    id: allocation.id.clone(),
                    status: SUCCESS,
                    error: None,
                };
                let backend = state.backend.clone();
                wire::json_then(StatusCode::OK, &answer, move || {
                    backend.answered(&allocation.id)
                })
            }
            None => {
                // A backend bug; say so rather than hand out nothing as "success".
                state.metrics.observe_allocation(ERROR, started.elapsed());
                let message = "backend returned an allocation without an address".to_string();
                let answer = wire::ip_error("", &allocation.id, message);
                wire::json(StatusCode::INTERNAL_SERVER_ERROR, &answer)
            }
        },
        Err(error) => {
            let (status, id) = match &error {
                BackendError::Timeout { id } => (TIMEOUT, id.clone()),
                _ => (ERROR, String::new()),
            };
            state.metrics.observe_allocation(status, started.elapsed());
            tracing::warn!(service, id, %error, "no address");
            let answer = IpAnswer {
                ip: String::new(),
                id,
                status,
                error: Some(error.to_string()),
            };
            wire::json(backend_status(&error), &answer)
        }
    }
}

async fn return_ip(state: web::Data<AppState>, body: web::Json<Value>) -> HttpResponse {
    let ip = match wire::string_field(&body, "ip") {
        Ok(text) => text
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("{text:?} is not an IPv4 address")),
        Err(message) => Err(message),
    };
    let ip = match ip {
        Ok(ip) => ip,
        Err(message) => {
            return wire::json(
                StatusCode::BAD_REQUEST,
                &wire::ip_error("invalid", "", message),
            );
        }
    };
    match state.backend.release(ip).await {
        Ok(allocation) => {
            tracing::info!(%ip, id = allocation.id, "address released");
            let answer = IpAnswer {
                ip: ip.to_string(),
                id: allocation.id,
                status: SUCCESS,
                error: None,
            };
            wire::json(StatusCode::OK, &answer)
        }
        Err(error) => {
            let answer = wire::ip_error(&ip.to_string(), "", error.to_string());
            wire::json(backend_status(&error), &answer)
        }
    }
}

/// The `macs` list split into parsed MACs and the entries that are not MACs (as given).
fn read_macs(body: &Value) -> Result<(Vec<MacAddr>, Vec<String>), String> {
    let Some(Value::Array(entries)) = wire::field(body, "macs") else {
        return Err("body must be a JSON object with an array \"macs\"".into());
    };
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    for entry in entries {
        match entry.as_str().map(str::parse::<MacAddr>) {
            Some(Ok(mac)) => valid.push(mac),
            Some(Err(_)) => invalid.push(entry.as_str().unwrap_or_default().to_string()),
            None => invalid.push(entry.to_string()),
        }
    }
    Ok((valid, invalid))
}

fn bad_request(request: &HttpRequest, message: String) -> HttpResponse {
    wire::error_for(request, StatusCode::BAD_REQUEST, message)
}

fn backend_failure(request: &HttpRequest, error: BackendError) -> HttpResponse {
    wire::error_for(request, backend_status(&error), error.to_string())
}

async fn add_macs(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (valid, mut rejected) = match read_macs(&body) {
        Ok(split) => split,
        Err(message) => return bad_request(&request, message),
    };
    // All-zero, broadcast and multicast MACs parse, but no host may send from them: every POST
    // that picked one would fail. Refused like unreadable entries.
    let (valid, unusable): (Vec<MacAddr>, Vec<MacAddr>) =
        valid.into_iter().partition(MacAddr::is_usable_source);
    rejected.extend(unusable.iter().map(MacAddr::to_string));
    // As the original: the valid ones are added even when others are rejected.
    if let Err(error) = state.backend.add_macs(valid).await {
        return backend_failure(&request, error);
    }
    let (code, status, rejected) = match rejected.is_empty() {
        true => (StatusCode::OK, SUCCESS, None),
        false => (StatusCode::BAD_REQUEST, ERROR, Some(rejected)),
    };
    wire::json(code, &wire::MacAddAnswer { status, rejected })
}

async fn remove_macs(
    request: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (valid, invalid) = match read_macs(&body) {
        Ok(split) => split,
        Err(message) => return bad_request(&request, message),
    };
    let in_use = match state.backend.remove_macs(valid).await {
        Ok(in_use) => in_use,
        Err(error) => return backend_failure(&request, error),
    };
    let code = match (invalid.is_empty(), in_use.is_empty()) {
        (true, true) => StatusCode::OK,
        (false, _) => StatusCode::BAD_REQUEST,
        (true, false) => StatusCode::CONFLICT,
    };
    let unprocessed: Vec<String> = invalid
        .into_iter()
        .chain(in_use.iter().map(MacAddr::to_string))
        .collect();
    let answer = match unprocessed.is_empty() {
        true => wire::MacRemoveAnswer {
            status: SUCCESS,
            unprocessed: None,
        },
        false => wire::MacRemoveAnswer {
            status: ERROR,
            unprocessed: Some(unprocessed),
        },
    };
    wire::json(code, &answer)
}

async fn status(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match state.backend.status().await {
        Ok(snapshot) => wire::json(
            StatusCode::OK,
            &wire::StatusAnswer {
                allocations: snapshot
                    .allocations
                    .iter()
                    .map(GoAllocation::from)
                    .collect(),
                available_macs: snapshot
                    .available_macs
                    .iter()
                    .map(MacAddr::to_string)
                    .collect(),
            },
        ),
        Err(error) => backend_failure(&request, error),
    }
}

/// Configured CIDRs plus the subnets of bound leases; an unreachable backend still leaves the
/// configured ones (an old fork commit calls this before every allocation).
async fn config_cidrs(state: web::Data<AppState>) -> HttpResponse {
    let mut cidrs = state.config.cidrs.clone();
    match state.backend.lease_cidrs().await {
        Ok(leased) => {
            for cidr in leased {
                if !cidrs.contains(&cidr) {
                    cidrs.push(cidr);
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "lease subnets unavailable; answering configured cidrs")
        }
    }
    wire::json(StatusCode::OK, &wire::ConfigAnswer { cidrs })
}

async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi.clone())
}

async fn healthz() -> HttpResponse {
    wire::json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
}

async fn readyz(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match state.backend.ready().await {
        Ok(()) => wire::json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        Err(error) => backend_failure(&request, error),
    }
}

async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Ok(snapshot) = state.backend.status().await {
        let unconfirmed = snapshot
            .allocations
            .iter()
            .filter(|a| a.unconfirmed)
            .count();
        state.metrics.set_unconfirmed(unconfirmed);
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.encode())
}
