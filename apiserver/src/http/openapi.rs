//! The OpenAPI 3 document served at /v1/openapi.json (hand-written in `openapi.json`).

use serde_json::{Value, json};

const DOCUMENT: &str = include_str!("openapi.json");

/// With a token configured, every /v1 operation declares the `X-Auth-Token` requirement and its
/// 401 answer; without one it declares neither (fuzzers check both ways).
pub fn document(auth_required: bool) -> String {
    let mut document: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON");
    if auth_required {
        require_token(&mut document);
    }
    let mut text = serde_json::to_string(&document).expect("a Value always serialises");
    text.push('\n');
    text
}

fn require_token(document: &mut Value) {
    document["components"]["securitySchemes"] = json!({
        "token": {"type": "apiKey", "in": "header", "name": crate::http::auth::HEADER}
    });
    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, operations) in paths.iter_mut() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let Some(operations) = operations.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let unauthorized = match path.as_str() {
                "/v1/ip" => json!({"$ref": "#/components/responses/Ip"}),
                _ => json!({"$ref": "#/components/responses/Error"}),
            };
            operation["security"] = json!([{"token": []}]);
            operation["responses"]["401"] = unauthorized;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let document: Value = serde_json::from_str(&document(false)).unwrap();
        for path in [
            "/v1/ip",
            "/v1/mac",
            "/v1/status",
            "/v1/config",
            "/v1/openapi.json",
        ] {
            assert!(document["paths"][path].is_object(), "{path} missing");
        }
        assert!(document["paths"]["/v1/ip"]["post"]["security"].is_null());
    }

    #[test]
    fn token_requirement_is_declared_only_when_configured() {
        let document: Value = serde_json::from_str(&document(true)).unwrap();
        let post_ip = &document["paths"]["/v1/ip"]["post"];
        assert_eq!(post_ip["security"], json!([{"token": []}]));
        assert!(post_ip["responses"]["401"].is_object());
        assert!(document["paths"]["/healthz"]["get"]["security"].is_null());
    }
}
