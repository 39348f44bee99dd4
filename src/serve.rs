//! The HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process answers and
//! no pass is stuck past `deadlines.pass`) and
//! `/readyz` (the first pass has completed); and, on its own port, the ACME HTTP-01
//! answers. Read-only: serving never triggers work.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::daemon::Health;
use crate::issuer::acme::Http01Challenges;
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Health,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.stuck_for() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(idle) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stuck: the pass in progress has made no progress for {}s (deadlines.pass)\n",
                idle.as_secs()
            ),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, &'static str) {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "first pass not complete\n")
    }
}

async fn acme_challenge(
    State(challenges): State<Arc<Http01Challenges>>,
    Path(token): Path<String>,
) -> (StatusCode, String) {
    match challenges.answer(&token) {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (StatusCode::NOT_FOUND, "no such challenge\n".into()),
    }
}

/// The HTTP-01 answer endpoint, started the first time a config needs it (at start or
/// on a reload that adds the first HTTP-01 issuer) and kept until shutdown.
pub struct SolverEndpoint {
    addr: SocketAddr,
    answers: Arc<Http01Challenges>,
    shutdown: CancellationToken,
    bound: Option<SocketAddr>,
}

impl SolverEndpoint {
    pub fn new(addr: SocketAddr, answers: Arc<Http01Challenges>, shutdown: CancellationToken) -> SolverEndpoint {
        SolverEndpoint {
            addr,
            answers,
            shutdown,
            bound: None,
        }
    }

    /// Listens, unless already listening.
    pub async fn ensure(&mut self) -> std::io::Result<SocketAddr> {
        if let Some(bound) = self.bound {
            return Ok(bound);
        }
        let (bound, _) = bind_solver(self.addr, self.answers.clone(), self.shutdown.clone()).await?;
        tracing::info!(listen = %bound, "ACME HTTP-01 answers served");
        self.bound = Some(bound);
        Ok(bound)
    }

    /// The address asked for (for messages).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serves pending HTTP-01 answers at `/.well-known/acme-challenge/<token>` on `addr`
/// until `shutdown` fires.
pub async fn bind_solver(
    addr: SocketAddr,
    challenges: Arc<Http01Challenges>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/.well-known/acme-challenge/{token}", get(acme_challenge))
        .with_state(challenges);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((local, handle))
}

pub fn router(metrics_: Arc<Metrics>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            metrics: metrics_,
            health,
        })
}

/// Binds `addr` and serves until `shutdown` fires.
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = router(metrics, health);
    let handle = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok((local, handle))
}
