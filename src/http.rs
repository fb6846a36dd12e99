//! The HTTP server of `vigil run` on `metrics.listen`, on the process's
//! tokio runtime:
//!
//! - `GET /metrics`: Prometheus text format;
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 once partitions are assigned, their state restored
//!   and the consumer within `metrics.ready_lag` records of their ends, else
//!   503; both with a JSON body saying where the consumer stands;
//! - `GET /v1/keys/{key}`: what the store holds of a cache key as of the
//!   last checkpoint ([`inspect::KeyView`], JSON), 404 if nothing;
//! - `GET /v1/entities/{table}/{pk}`: the same of a row (`pk` the primary
//!   key as a JSON object, as violations name it: `{"id":42}`, URL-encoded
//!   or not) ([`inspect::EntityView`]), 404 if nothing;
//! - `GET /v1/storms`: the storms in progress as of the last checkpoint;
//! - `GET /v1/incidents`: the consistency incidents open as of the last
//!   checkpoint.
//!
//! With `metrics.bearer_token`, every path but the two probes asks for
//! `Authorization: Bearer <token>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::config::MetricsConfig;
use crate::inspect;
use crate::state::Store;
use crate::telemetry::{Progress, Stats};

/// How often the recorder's histograms are compacted.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {listen} (metrics.listen): {source}")]
pub struct HttpError {
    listen: SocketAddr,
    #[source]
    source: std::io::Error,
}

struct Shared {
    metrics: PrometheusHandle,
    stats: Arc<Stats>,
    store: Arc<dyn Store>,
    ready_lag: u64,
    bearer_token: Option<String>,
}

/// Binds `listen` now (so a taken port fails the start) and serves on
/// `runtime` for as long as it runs; returns the address bound.
pub fn start(
    runtime: &tokio::runtime::Handle,
    listen: SocketAddr,
    config: &MetricsConfig,
    metrics: PrometheusHandle,
    stats: Arc<Stats>,
    store: Arc<dyn Store>,
) -> Result<SocketAddr, HttpError> {
    let err = |source| HttpError { listen, source };
    let listener = std::net::TcpListener::bind(listen).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    if !bound.ip().is_loopback() && config.bearer_token.is_none() {
        tracing::warn!(%bound, "the HTTP server is reachable from other hosts without a token (metrics.bearer_token)");
    }
    let listener = {
        let _entered = runtime.enter();
        tokio::net::TcpListener::from_std(listener).map_err(err)?
    };
    let upkeep = metrics.clone();
    runtime.spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = router(Arc::new(Shared {
        metrics,
        stats,
        store,
        ready_lag: config.ready_lag,
        bearer_token: config.bearer_token.clone(),
    }));
    runtime.spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

fn router(shared: Arc<Shared>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/keys/{*key}", get(key))
        .route("/v1/entities/{table}/{*pk}", get(entity))
        .route("/v1/storms", get(storms))
        .route("/v1/incidents", get(incidents))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&shared), auth));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(shared)
}

async fn auth(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    if let Some(token) = &shared.bearer_token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_secret(g.as_bytes(), token.as_bytes())) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "this path asks for Authorization: Bearer <metrics.bearer_token>\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares secrets in a time that depends on their lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

/// A JSON error with its status.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn key(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    match inspect::key_view(&*shared.store, &key) {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no state for key {key:?}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn entity(
    State(shared): State<Arc<Shared>>,
    Path((table, pk)): Path<(String, String)>,
) -> Response {
    match inspect::entity_view(&*shared.store, &table, &pk) {
        Ok(Some(view)) => Json(view).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no state for row {pk} of {table:?}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn storms(State(shared): State<Arc<Shared>>) -> Response {
    match inspect::storms_view(&*shared.store) {
        Ok(storms) => Json(serde_json::json!({ "storms": storms })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn incidents(State(shared): State<Arc<Shared>>) -> Response {
    match inspect::incidents_view(&*shared.store) {
        Ok(incidents) => Json(serde_json::json!({ "incidents": incidents })).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let readiness = Readiness::of(shared.stats.progress(), shared.ready_lag);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

/// The answer of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Readiness {
    ready: bool,
    /// Why not, when not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(flatten)]
    progress: Progress,
    ready_lag: u64,
}

impl Readiness {
    fn of(progress: Progress, ready_lag: u64) -> Self {
        let reason = if progress.assigned == 0 {
            Some("no input partition is assigned yet")
        } else if progress.lag_known < progress.assigned {
            Some("the end of an assigned partition is not known yet")
        } else if progress.lag > i64::try_from(ready_lag).unwrap_or(i64::MAX) {
            Some("the consumer is more than metrics.ready_lag records behind")
        } else {
            None
        };
        Readiness {
            ready: reason.is_none(),
            reason,
            progress,
            ready_lag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(assigned: u64, lag_known: u64, lag: i64) -> Progress {
        Progress {
            assigned,
            lag_known,
            lag,
        }
    }

    #[test]
    fn ready_once_assigned_known_and_caught_up() {
        assert!(!Readiness::of(progress(0, 0, 0), 10).ready);
        assert!(!Readiness::of(progress(4, 3, 0), 10).ready);
        assert!(!Readiness::of(progress(4, 4, 11), 10).ready);
        let ready = Readiness::of(progress(4, 4, 10), 10);
        assert!(ready.ready);
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({"ready": true, "assigned": 4, "lag_known": 4, "lag": 10, "ready_lag": 10})
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        assert!(!same_secret(b"s3cret", b"s3cre"));
        assert!(!same_secret(b"s3cret", b"s3creT"));
    }
}
