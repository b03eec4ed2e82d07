//! The admin HTTP API: `GET /status` (JSON), `GET /config` (the resources being served),
//! `GET /healthz` and `GET /readyz`. Read-only; it binds loopback by default.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::render;
use crate::snapshot::Snapshot;
use crate::status::Registry;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/config", get(config))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn status(State(s): State<AdminState>) -> Json<crate::status::StatusReport> {
    Json(s.registry.report())
}

async fn config(State(s): State<AdminState>) -> Response {
    let snapshot = s.snapshots.borrow().clone();
    match snapshot {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid config loaded yet\n",
        )
            .into_response(),
        Some(snap) => match render::snapshot_json(&snap) {
            Ok(v) => Json(v).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
    }
}

/// Ready once a valid deployment file has been loaded.
async fn readyz(State(s): State<AdminState>) -> Response {
    if s.snapshots.borrow().is_some() {
        "ready\n".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid config loaded yet\n",
        )
            .into_response()
    }
}
