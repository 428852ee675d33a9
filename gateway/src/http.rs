//! The HTTP server for operators and monitoring: `/metrics` (Prometheus), `/healthz`, and
//! `/devices` (the device registry with each device's latest values, as JSON).

use crate::health::Health;
use crate::live::LiveState;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    health: Health,
    live: LiveState,
}

/// The content type of the OpenMetrics text format, which Prometheus scrapes natively.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let snapshot = state.health.snapshot();
    let code = if snapshot.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::to_string_pretty(&snapshot).unwrap_or_else(|_| "{}".to_owned());
    (code, [(header::CONTENT_TYPE, "application/json")], body + "\n")
}

async fn devices(State(state): State<AppState>) -> impl IntoResponse {
    let devices: Vec<serde_json::Value> = state
        .live
        .devices()
        .into_iter()
        .map(|(id, d)| {
            let latest: serde_json::Map<String, serde_json::Value> = d
                .latest
                .iter()
                .map(|(metric, l)| {
                    let v = serde_json::json!({
                        "value": l.value,
                        "ts": l.ts.to_string(),
                        "quality": l.quality.as_str(),
                    });
                    (metric.to_string(), v)
                })
                .collect();
            serde_json::json!({
                "device": id.as_str(),
                "source": d.source.as_str(),
                "first_seen": d.first_seen.to_string(),
                "last_seen": d.last_seen.to_string(),
                "readings": d.readings,
                "latest": latest,
            })
        })
        .collect();
    let body = serde_json::to_string_pretty(&devices).unwrap_or_else(|_| "[]".to_owned());
    ([(header::CONTENT_TYPE, "application/json")], body + "\n")
}

/// Serve `/metrics`, `/healthz` and `/devices` on `listener` until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    health: Health,
    live: LiveState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/devices", get(devices))
        .with_state(AppState { registry, health, live });
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
