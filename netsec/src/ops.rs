//! The operational endpoints every Orrery listener serves beside its API, as Thanos's
//! components do: `/metrics` (OpenMetrics text of a `prometheus_client` registry),
//! `/-/healthy` (the process answers) and `/-/ready` (the component can do its job;
//! 503 with the reason otherwise). One implementation, so every component answers the
//! same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

/// The OpenMetrics content type `/metrics` answers with.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `/metrics`: the registry's metrics (a 500 naming the error if they cannot be encoded).
pub fn metrics_response(registry: &Mutex<Registry>) -> Response {
    let mut out = String::new();
    let r = {
        let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &reg)
    };
    match r {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], out).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {e}\n"),
        )
            .into_response(),
    }
}

/// `/-/ready`: 200 `OK`, or 503 `not ready: <reason>`.
pub fn ready_response(state: Result<(), String>) -> Response {
    match state {
        Ok(()) => (StatusCode::OK, "OK\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// [`ops_router`] for a component that is ready once `ready` is set (the compactor
/// after its first start, the store gateway after its first bucket sync); until then
/// `/-/ready` answers 503 with `starting`.
pub fn flag_ops_router(
    registry: Arc<Mutex<Registry>>,
    ready: Arc<AtomicBool>,
    starting: &'static str,
) -> Router {
    ops_router(registry, move || {
        if ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(starting.into())
        }
    })
}

/// A router with the three endpoints; `ready` says whether the component is ready
/// (`Err` = why not).
pub fn ops_router<F>(registry: Arc<Mutex<Registry>>, ready: F) -> Router
where
    F: Fn() -> Result<(), String> + Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { metrics_response(&registry) }
            }),
        )
        .route("/-/healthy", get(|| async { "OK\n" }))
        .route(
            "/-/ready",
            get(move || {
                let ready = ready.clone();
                async move { ready_response(ready()) }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    async fn get_text(r: &Router, path: &str) -> (StatusCode, Option<String>, String) {
        let resp = r
            .clone()
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = resp.status();
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, ct, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn metrics_healthy_and_ready_answer_as_thanos_components_do() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        reg.register("orrery_test_things", "Things.", c.clone());
        c.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let r = ops_router(Arc::new(Mutex::new(reg)), move || {
            if flag.load(Ordering::Acquire) {
                Ok(())
            } else {
                Err("initial sync in progress".into())
            }
        });
        let (s, ct, body) = get_text(&r, "/metrics").await;
        assert_eq!((s, ct.as_deref()), (StatusCode::OK, Some(OPENMETRICS)));
        assert!(
            body.contains("orrery_test_things_total 1") && body.ends_with("# EOF\n"),
            "{body}"
        );
        assert_eq!(get_text(&r, "/-/healthy").await.0, StatusCode::OK);
        let (s, _, body) = get_text(&r, "/-/ready").await;
        assert_eq!(
            (s, body.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: initial sync in progress\n"
            )
        );
        ready.store(true, Ordering::Release);
        assert_eq!(get_text(&r, "/-/ready").await.0, StatusCode::OK);
    }
}
