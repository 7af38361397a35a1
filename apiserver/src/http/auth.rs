//! Optional shared-token authentication of the /v1 routes (the original had none).

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{Error, web};

use crate::http::state::AppState;
use crate::http::wire;

pub const HEADER: &str = "X-Auth-Token";

pub async fn require_token(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let expected = request
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.config.auth_token.clone());
    let Some(expected) = expected else {
        return next
            .call(request)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let presented = request
        .headers()
        .get(HEADER)
        .map(|value| value.as_bytes())
        .unwrap_or_default();
    if constant_time_eq(presented, expected.as_bytes()) {
        return next
            .call(request)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let message = format!("missing or wrong {HEADER} header");
    let answer = wire::error_for(request.request(), StatusCode::UNAUTHORIZED, message);
    Ok(request.into_response(answer).map_into_right_body())
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
/// (The length is not secret: tokens are long random strings.)
fn constant_time_eq(presented: &[u8], expected: &[u8]) -> bool {
    if presented.len() != expected.len() {
        return false;
    }
    presented
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3creT", b"s3cret"));
        assert!(!constant_time_eq(b"s3cre", b"s3cret"));
        assert!(!constant_time_eq(b"", b"s3cret"));
    }
}

/// The warning to log at start when `config` serves `/v1` beyond loopback without a token:
/// anyone who reaches the port can then DELETE every address and edit the MAC pool.
pub fn exposure_warning(config: &crate::config::Config) -> Option<String> {
    if config.auth_token.is_some() || config.bind.is_loopback() {
        return None;
    }
    Some(format!(
        "UNAUTHENTICATED: /v1 listens on {}:{} without auth-token; anyone who can reach this \
         port can allocate, DELETE every service address and edit the MAC pool. Set \
         DHCP_AUTH_TOKEN (the MetalLB fork sends it as X-Auth-Token) or bind = \"127.0.0.1\"",
        config.bind, config.port
    ))
}

#[cfg(test)]
mod exposure_tests {
    use super::exposure_warning;
    use crate::config::Config;

    #[test]
    fn only_an_open_port_without_a_token_is_warned_about() {
        let open = Config::default();
        let warning = exposure_warning(&open).expect("0.0.0.0 without a token");
        assert!(
            warning.contains("0.0.0.0:8000") && warning.contains("auth-token"),
            "{warning}"
        );
        let with_token = Config {
            auth_token: Some("t".into()),
            ..Config::default()
        };
        assert_eq!(exposure_warning(&with_token), None);
        for loopback in ["127.0.0.1", "::1"] {
            let local = Config {
                bind: loopback.parse().unwrap(),
                ..Config::default()
            };
            assert_eq!(exposure_warning(&local), None, "{loopback}");
        }
    }
}
