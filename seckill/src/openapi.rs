//! The API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! `docs/openapi.yaml` is its one source: `build.rs` renders it as JSON at
//! build time (a spec that does not parse fails the build), and the node
//! answers those bytes as they are, with no work per request.
//! `scripts/schemathesis.sh` checks a running node against it.

use crate::http::Reply;

/// The document as JSON, rendered from `docs/openapi.yaml` by `build.rs`.
pub const JSON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// `GET /openapi.json`: the document into `body`.
pub fn serve(body: &mut Vec<u8>) -> Reply {
    body.extend_from_slice(JSON);
    Reply {
        status: 200,
        content_type: "application/json",
        replayed: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> serde_json::Value {
        serde_json::from_slice(JSON).expect("the rendered spec is JSON")
    }

    #[test]
    fn is_openapi_3_1() {
        let spec = spec();
        assert_eq!(spec["openapi"], "3.1.0");
        assert!(spec["info"]["title"].is_string());
    }

    /// Every route `Core::route` serves, with its method, is in the spec.
    #[test]
    fn lists_every_route_of_the_node() {
        let spec = spec();
        let routes = [
            ("/sales/{sale_id}", "get"),
            ("/sales/{sale_id}/purchase", "post"),
            ("/orders/{order_id}", "get"),
            ("/orders/{order_id}/pay", "post"),
            ("/orders/{order_id}/cancel", "post"),
            ("/admin/sales/{sale_id}", "put"),
            ("/admin/sales/{sale_id}/pause", "post"),
            ("/admin/sales/{sale_id}/resume", "post"),
            ("/admin/sales/{sale_id}/close", "post"),
            ("/healthz", "get"),
            ("/metrics", "get"),
            ("/admin/stats", "get"),
            ("/dashboard", "get"),
            ("/openapi.json", "get"),
        ];
        for (path, method) in routes {
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} is missing from docs/openapi.yaml"
            );
        }
        assert_eq!(
            spec["paths"].as_object().map(|p| p.len()),
            Some(routes.len()),
            "docs/openapi.yaml has a path the node does not serve"
        );
    }

    /// Every `$ref` points at something that exists (the YAML anchors are
    /// already expanded in the JSON).
    #[test]
    fn every_reference_resolves() {
        fn walk(v: &serde_json::Value, root: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').expect("local references only");
                        assert!(root.pointer(pointer).is_some(), "dangling $ref {r}");
                    }
                    map.values().for_each(|v| walk(v, root));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, root)),
                _ => {}
            }
        }
        let spec = spec();
        walk(&spec, &spec);
    }

    /// The error codes the spec lists are the ones the node answers.
    #[test]
    fn error_codes_match_the_node() {
        let spec = spec();
        let listed: Vec<&str> = spec["components"]["schemas"]["Error"]["properties"]["error"]
            ["enum"]
            .as_array()
            .expect("an enum of codes")
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let mut body = Vec::new();
        let errors: Vec<crate::error::ApiError> = vec![
            crate::error::ApiError::BadRequestStatic("x"),
            crate::error::ApiError::Unauthorized,
            crate::error::ApiError::Unauthenticated("x"),
            crate::error::ApiError::NotFound("x"),
            crate::error::ApiError::MethodNotAllowed("GET"),
            crate::error::ApiError::BodyTooLarge,
            crate::error::ApiError::HeadersTooLarge,
            crate::error::ApiError::Overloaded,
            crate::error::ApiError::RateLimited {
                by: "user",
                retry_after_s: 1,
            },
            stock::StockError::SaleNotOpen.into(),
            stock::StockError::SoldOut.into(),
            stock::StockError::LimitExceeded.into(),
            stock::StockError::InProgress.into(),
            stock::StockError::InvalidState("x").into(),
            stock::StockError::KeyReused.into(),
            stock::StockError::Unavailable("x".into()).into(),
        ];
        for err in errors {
            let resp = err.render(&mut body);
            let v: serde_json::Value = serde_json::from_slice(resp.body).expect("JSON");
            let code = v["error"].as_str().expect("a code");
            assert!(
                listed.contains(&code),
                "{code} is not in the spec's Error enum"
            );
        }
    }
}
