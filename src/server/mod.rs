//! The server: HTTP routes and WebSocket sessions on one listener. It owns authentication and
//! connection limits; it never does signal logic and never publishes (the engine task does).
//! It takes an already-bound listener and a shutdown token, so tests bind 127.0.0.1:0 and pull
//! their own trigger.

pub mod http;
pub mod ws;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// What `/readyz` reads: the pipeline's liveness, written by the engine task.
#[derive(Debug, Default)]
pub struct Health {
    /// Unix ms of the last input (snapshots or tick) the engine received.
    pub last_input_ms: AtomicI64,
    pub engine_running: AtomicBool,
    /// The source has nothing more to send (a replay reached the end of its tape).
    pub source_ended: AtomicBool,
}

/// Connections at once, in all and per API key. A `Permit` gives its place back on drop.
#[derive(Debug, Default)]
pub struct Limits {
    total: AtomicUsize,
    per_key: Mutex<HashMap<String, usize>>,
}

#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    key: Option<String>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(k) = &self.key {
            let mut map = self
                .limits
                .per_key
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Over the key's own limit (429).
    KeyLimit,
    /// Over `max_connections` (503).
    Full,
}

impl Limits {
    pub fn acquire(
        self: &Arc<Self>,
        key: Option<&str>,
        key_max: usize,
        total_max: usize,
    ) -> Result<Permit, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if let Some(k) = key {
            let mut map = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(k.to_string()).or_insert(0);
            if *n >= key_max {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::KeyLimit);
            }
            *n += 1;
        }
        Ok(Permit {
            limits: self.clone(),
            key: key.map(str::to_string),
        })
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub limits: Arc<Limits>,
    pub shutdown: CancellationToken,
    /// Every session task, so that shutdown can wait for their close frames.
    pub sessions: TaskTracker,
    next_session: Arc<AtomicU64>,
}

impl AppState {
    pub fn new(
        cfg: Arc<Config>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> AppState {
        AppState {
            cfg,
            hub,
            metrics,
            health,
            limits: Arc::new(Limits::default()),
            shutdown,
            sessions: TaskTracker::new(),
            next_session: Arc::new(AtomicU64::new(1)),
        }
    }

    fn session_id(&self) -> String {
        format!("c{}", self.next_session.fetch_add(1, Ordering::Relaxed))
    }
}

pub fn router(state: AppState) -> Router {
    let data = Router::new()
        .route("/v1/pairs", get(http::pairs))
        .route("/v1/signals", get(http::signals))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::require_key,
        ));
    Router::new()
        .route("/", get(http::index))
        .route("/v1/ws", get(ws::upgrade))
        .merge(data)
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics))
        .with_state(state)
}

/// Serves until the shutdown token fires, then closes every session (1001) and waits for them
/// up to the grace period.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let sessions = state.sessions.clone();
    let grace = std::time::Duration::from_secs_f64(state.cfg.server.shutdown_grace_seconds);
    let send_buffer = state.cfg.server.send_buffer_bytes;
    let app = router(state);
    // Frames are small and latency is the product: Nagle would hold a frame back until the
    // previous one is acknowledged (up to a delayed ACK, 40 ms).
    let listener =
        axum::serve::ListenerExt::tap_io(listener, move |tcp: &mut tokio::net::TcpStream| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY");
            }
            if send_buffer > 0 {
                if let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer) {
                    tracing::debug!(error = %e, "SO_SNDBUF");
                }
            }
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!("sessions still open after the shutdown grace period");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_and_give_back() {
        let l = Arc::new(Limits::default());
        let a = l.acquire(Some("k"), 1, 3).unwrap();
        assert_eq!(l.acquire(Some("k"), 1, 3).unwrap_err(), Refusal::KeyLimit);
        let b = l.acquire(None, 1, 3).unwrap();
        let c = l.acquire(Some("j"), 1, 3).unwrap();
        assert_eq!(l.acquire(None, 1, 3).unwrap_err(), Refusal::Full);
        drop(a);
        assert_eq!(l.total(), 2);
        let _d = l.acquire(Some("k"), 1, 3).unwrap();
        drop((b, c));
        assert_eq!(l.total(), 1);
    }
}
