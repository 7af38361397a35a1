//! The /v1 bodies: how requests are read (like Go's decoder: keys matched case-insensitively,
//! unknown keys ignored) and the exact answer shapes, written compact with a trailing newline.

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::delivered::Delivered;

pub const SUCCESS: &str = "success";
pub const ERROR: &str = "error";
pub const TIMEOUT: &str = "timeout";

/// Answer of POST and DELETE /v1/ip (the only shape the MetalLB fork reads).
#[derive(Debug, Serialize)]
pub struct IpAnswer {
    pub ip: String,
    pub id: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Answer of POST /v1/mac, capitalised like the original's Go struct.
#[derive(Debug, Serialize)]
pub struct MacAddAnswer {
    #[serde(rename = "Status")]
    pub status: &'static str,
    #[serde(rename = "Rejected")]
    pub rejected: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct MacRemoveAnswer {
    #[serde(rename = "Status")]
    pub status: &'static str,
    #[serde(rename = "Unprocessed")]
    pub unprocessed: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct StatusAnswer {
    #[serde(rename = "Allocations")]
    pub allocations: Vec<crate::original_json::GoAllocation>,
    #[serde(rename = "AvailableMACs")]
    pub available_macs: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ConfigAnswer {
    pub cidrs: Vec<String>,
}

/// Every other error: malformed bodies, unknown routes, wrong methods, missing token.
#[derive(Debug, Serialize)]
pub struct ErrorAnswer {
    pub status: &'static str,
    pub error: String,
}

pub fn json<T: Serialize>(status: StatusCode, body: &T) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(json_text(body))
}

/// [`json`] that runs `on_delivered` once the answer was written to the connection.
pub fn json_then<T: Serialize>(
    status: StatusCode,
    body: &T,
    on_delivered: impl FnOnce() + Unpin + 'static,
) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("application/json")
        .body(Delivered::new(json_text(body), on_delivered))
}

fn json_text<T: Serialize>(body: &T) -> String {
    let mut text = serde_json::to_string(body).expect("answer types always serialise");
    text.push('\n');
    text
}

/// An error answer shaped for the route it concerns: /v1/ip errors keep the `ip`/`id` shape (a
/// DELETE with an unreadable body answers `"ip":"invalid"`, as the original did).
pub fn error_for(request: &HttpRequest, status: StatusCode, message: String) -> HttpResponse {
    if request.path().trim_start_matches('/') == "v1/ip" {
        let ip = match *request.method() {
            Method::DELETE => "invalid",
            _ => "",
        };
        return json(status, &ip_error(ip, "", message));
    }
    json(
        status,
        &ErrorAnswer {
            status: ERROR,
            error: message,
        },
    )
}

pub fn ip_error(ip: &str, id: &str, message: String) -> IpAnswer {
    IpAnswer {
        ip: ip.to_string(),
        id: id.to_string(),
        status: ERROR,
        error: Some(message),
    }
}

/// Go's encoding/json matching: the exact key first, then any key equal ignoring case.
pub fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    let object = body.as_object()?;
    object.get(key).or_else(|| {
        object
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

pub fn string_field<'a>(body: &'a Value, key: &str) -> Result<&'a str, String> {
    match field(body, key) {
        Some(Value::String(text)) => Ok(text),
        Some(other) => Err(format!("\"{key}\" must be a string, got {other}")),
        None if body.is_object() => Err(format!("missing \"{key}\"")),
        None => Err(format!("body must be a JSON object with \"{key}\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_match_case_insensitively_exact_first() {
        let body = json!({"MACS": ["a"], "macs": ["b"]});
        assert_eq!(field(&body, "macs"), Some(&json!(["b"])));
        let body = json!({"Macs": ["a"]});
        assert_eq!(field(&body, "macs"), Some(&json!(["a"])));
    }

    #[test]
    fn string_field_explains_what_is_wrong() {
        assert_eq!(
            string_field(&json!({"service": "a/b"}), "service"),
            Ok("a/b")
        );
        assert!(
            string_field(&json!({"service": 5}), "service")
                .unwrap_err()
                .contains("string")
        );
        assert!(
            string_field(&json!({}), "service")
                .unwrap_err()
                .contains("missing")
        );
        assert!(
            string_field(&json!([1]), "service")
                .unwrap_err()
                .contains("object")
        );
    }

    #[test]
    fn ip_answer_is_compact_in_the_original_order() {
        let answer = IpAnswer {
            ip: "192.168.1.100".into(),
            id: "x".into(),
            status: SUCCESS,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&answer).unwrap(),
            r#"{"ip":"192.168.1.100","id":"x","status":"success"}"#
        );
    }
}
