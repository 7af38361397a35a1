//! A MetalLB fork `url` with a trailing slash requests `//v1/ip`: map exactly a leading `//v1/`
//! to `/v1/` (actix's NormalizePath would merge every slash everywhere, which is broader than needed).

use std::str::FromStr;

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Uri;
use actix_web::http::uri::PathAndQuery;
use actix_web::middleware::Next;

pub async fn map_double_slash_v1(
    mut request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if let Some(uri) = single_slash_uri(request.uri()) {
        request.match_info_mut().get_mut().update(&uri);
        request.head_mut().uri = uri;
    }
    next.call(request).await
}

fn single_slash_uri(uri: &Uri) -> Option<Uri> {
    let rest = uri.path().strip_prefix("//v1")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("/v1{rest}?{query}"),
        None => format!("/v1{rest}"),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(PathAndQuery::from_str(&path_and_query).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(uri: &str) -> Option<String> {
        single_slash_uri(&uri.parse().unwrap()).map(|u| u.to_string())
    }

    #[test]
    fn maps_only_a_leading_double_slash_v1() {
        assert_eq!(mapped("//v1/ip").as_deref(), Some("/v1/ip"));
        assert_eq!(mapped("//v1/status?x=1").as_deref(), Some("/v1/status?x=1"));
        assert_eq!(mapped("/v1/ip"), None);
        assert_eq!(mapped("//v1x/ip"), None);
        assert_eq!(mapped("///v1/ip"), None);
        assert_eq!(mapped("/v1//ip"), None);
    }
}
