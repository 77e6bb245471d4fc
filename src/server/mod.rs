//! The server: HTTP routes and WebSocket sessions on one listener. It owns authentication,
//! connection limits and the WebSocket handshake; it never does signal logic, never polls an
//! upstream and never publishes (the engine task does). It takes an already-bound listener and
//! a shutdown token, so tests bind 127.0.0.1:0 and pull their own trigger.

pub mod auth;
pub mod dashboard;
pub mod guard;
pub mod http;
pub mod listener;
pub mod raw_errors;
pub mod session;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use dexpulse_core::settings::{at_least, in_range, seconds, FieldError};

use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::time::Clock;

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// Address for WebSocket and HTTP (one port).
    pub bind: String,
    /// WebSocket sessions at once, over all keys; more get 503 before the upgrade.
    pub max_connections: usize,
    /// TCP connections at once, HTTP and WebSocket; more are closed at accept. Kept below the
    /// descriptor limit (a warning at start-up names both numbers when it has to be).
    pub max_open_connections: usize,
    /// Per client IP: connections at once, and new connections a minute (0: no limit). Behind a
    /// proxy every client has the proxy's address: leave them at 0 there.
    pub max_connections_per_ip: usize,
    pub connects_per_ip_per_minute: f64,
    /// A request must send its headers within this time, and an idle keep-alive connection is
    /// closed after it.
    pub header_read_timeout_seconds: f64,
    /// Browser origins that may open a WebSocket (`Origin` header), besides the server's own;
    /// `["*"]` allows any. Clients that send no `Origin` (bots) are not affected.
    pub allowed_origins: Vec<String>,
    /// Names a request's `Host` may carry (DNS rebinding): an IP literal always may, and
    /// `localhost` names when bound to loopback; others must be listed (`*.example.com`
    /// covers the names under it, `"*"` allows any).
    pub allowed_hosts: Vec<String>,
    /// How long shutdown waits for sessions to take their close frames.
    pub shutdown_grace_seconds: f64,
    /// `/readyz` fails when the source has delivered no data for this long.
    pub ready_max_silence_seconds: f64,
    /// SO_SNDBUF of accepted connections (0: the kernel's autotuning, up to several MiB).
    /// Bounded, a stalled client's backlog moves into its session queue soon, where it is
    /// counted and closed with 4008, instead of sitting in the kernel.
    pub send_buffer_bytes: usize,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            bind: "127.0.0.1:8080".to_string(),
            max_connections: 10_000,
            max_open_connections: 10_240,
            max_connections_per_ip: 0,
            connects_per_ip_per_minute: 0.0,
            header_read_timeout_seconds: 10.0,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            shutdown_grace_seconds: 5.0,
            ready_max_silence_seconds: 120.0,
            send_buffer_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub bind: SocketAddr,
    pub max_connections: usize,
    pub max_open_connections: usize,
    pub max_connections_per_ip: usize,
    /// `None`: no limit.
    pub connects_per_ip: Option<dexpulse_core::schedule::Rate>,
    pub header_read_timeout: Duration,
    pub allowed_origins: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub shutdown_grace: Duration,
    pub ready_max_silence: Duration,
    /// `None`: the kernel's autotuning.
    pub send_buffer_bytes: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// Field names are relative to `[server]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let bind = raw.bind.parse::<SocketAddr>().map_err(|_| {
            FieldError::new(
                "bind",
                "is not an address like 127.0.0.1:8080",
                format!("{:?}", raw.bind),
            )
        })?;
        let send_buffer_bytes = match raw.send_buffer_bytes {
            0 => None,
            n if (4096..=64 << 20).contains(&n) => Some(n),
            n => {
                return Err(FieldError::new(
                    "send_buffer_bytes",
                    "must be 0 (the kernel's autotuning) or between 4096 and 67108864",
                    n,
                ))
            }
        };
        let max_connections = at_least("max_connections", raw.max_connections, 1)?;
        let rate = in_range(
            "connects_per_ip_per_minute",
            raw.connects_per_ip_per_minute,
            0.0,
            1e9,
        )?;
        Ok(Settings {
            bind,
            max_connections,
            max_open_connections: at_least(
                "max_open_connections",
                raw.max_open_connections,
                max_connections,
            )?,
            max_connections_per_ip: raw.max_connections_per_ip,
            connects_per_ip: if rate > 0.0 {
                Some(
                    dexpulse_core::schedule::Rate::try_new(rate, rate.clamp(1.0, 1e9)).map_err(
                        |e| FieldError::new("connects_per_ip_per_minute", e.to_string(), rate),
                    )?,
                )
            } else {
                None
            },
            header_read_timeout: seconds(
                "header_read_timeout_seconds",
                raw.header_read_timeout_seconds,
                0.1,
                3_600.0,
            )?,
            allowed_origins: raw
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            allowed_hosts: {
                for (i, h) in raw.allowed_hosts.iter().enumerate() {
                    if h.trim().is_empty() || h.contains(['/', ' ']) {
                        return Err(FieldError::new(
                            &format!("allowed_hosts[{i}]"),
                            "must be a host name, with or without a port (no scheme, no path)",
                            h,
                        ));
                    }
                }
                raw.allowed_hosts.clone()
            },
            shutdown_grace: seconds(
                "shutdown_grace_seconds",
                raw.shutdown_grace_seconds,
                0.0,
                600.0,
            )?,
            ready_max_silence: seconds(
                "ready_max_silence_seconds",
                raw.ready_max_silence_seconds,
                1.0,
                86_400.0,
            )?,
            send_buffer_bytes,
        })
    }
}

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub session: Arc<session::Settings>,
    pub auth: Arc<auth::Settings>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clock: Clock,
    pub limits: Arc<auth::Limits>,
    /// Failed API key attempts per IP (`auth.failed_keys_per_ip_per_minute`).
    pub failed_keys: Arc<auth::FailedKeys>,
    pub shutdown: CancellationToken,
    /// Every session task, so that shutdown can wait for their close frames.
    pub sessions: TaskTracker,
    /// Filter entries over all sessions.
    pub filter_budget: Arc<session::FilterBudget>,
    /// The tasks that write the hub's frames to the sessions' sockets.
    pub writers: Arc<session::shard::Writers>,
    /// Which `Host` values are ours.
    pub allowed_hosts: Arc<guard::AllowedHosts>,
    /// The alert sinks' statuses (`GET /v1/sinks`).
    pub sinks: Arc<crate::sinks::Board>,
    next_session: Arc<AtomicU64>,
    operations_only: bool,
}

/// What the server is built from.
pub struct Parts {
    pub settings: Settings,
    pub session: session::Settings,
    pub auth: auth::Settings,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub clock: Clock,
    pub shutdown: CancellationToken,
    /// An ingest: only `/healthz`, `/readyz` and `/metrics` (its events reach clients
    /// through the edges).
    pub operations_only: bool,
    pub sinks: Arc<crate::sinks::Board>,
}

impl AppState {
    pub fn new(p: Parts) -> AppState {
        let failed_keys = Arc::new(auth::FailedKeys::new(
            p.auth.failed_keys_per_ip,
            p.clock.clone(),
        ));
        let filter_budget = Arc::new(session::FilterBudget::new(
            p.session.max_total_filter_entries,
        ));
        // A session watches one token: the epoch's, which shutdown cancels too.
        p.hub.end_sessions_with(&p.shutdown);
        let epochs_of = p.hub.clone();
        let writers = Arc::new(session::shard::Writers::new(
            p.hub.fanout().sent(),
            p.shutdown.clone(),
            session::shard::Config {
                count: p.session.writers,
                tick: session::shard::tick_for(p.session.heartbeat),
                epochs: Arc::new(move || epochs_of.epoch_over()),
            },
        ));
        let allowed_hosts = Arc::new(guard::AllowedHosts::new(
            &p.settings.allowed_hosts,
            p.settings.bind,
        ));
        AppState {
            allowed_hosts,
            settings: Arc::new(p.settings),
            session: Arc::new(p.session),
            auth: Arc::new(p.auth),
            hub: p.hub,
            metrics: p.metrics,
            health: p.health,
            clock: p.clock,
            limits: Arc::new(auth::Limits::default()),
            failed_keys,
            shutdown: p.shutdown,
            sessions: TaskTracker::new(),
            filter_budget,
            writers,
            next_session: Arc::new(AtomicU64::new(1)),
            operations_only: p.operations_only,
            sinks: p.sinks,
        }
    }

    fn session_id(&self) -> String {
        format!("c{}", self.next_session.fetch_add(1, Ordering::Relaxed))
    }
}

pub fn router(state: AppState) -> Router {
    let guard = axum::middleware::from_fn_with_state(state.clone(), guard::guard);
    let operations = Router::new()
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/metrics", get(http::metrics));
    if state.operations_only {
        return operations
            .fallback(http::not_found)
            .method_not_allowed_fallback(http::method_not_allowed)
            .layer(guard)
            .with_state(state);
    }
    let data = Router::new()
        .route("/v1/pairs", get(http::pairs))
        .route("/v1/pairs/{chain}/{address}", get(http::pair))
        .route("/v1/signals", get(http::signals))
        .route("/v1/sinks", get(http::sinks))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::require_key,
        ));
    Router::new()
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/v1/asyncapi.json", get(dashboard::asyncapi))
        .route("/v1/openapi.json", get(dashboard::openapi))
        .route("/v1/ws", get(upgrade::upgrade))
        .merge(data)
        .merge(operations)
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(guard)
        .with_state(state)
}

/// Serves until the shutdown token fires, then closes every session (1001) and waits for them
/// and the connections up to the grace period.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let sessions = state.sessions.clone();
    let grace = state.settings.shutdown_grace;
    let app = router(state.clone());
    listener::accept_loop(listener, state, app).await;
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
    fn settings_parse_the_address_and_the_buffer() {
        let s = Settings::default();
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.send_buffer_bytes, Some(256 * 1024));
        let bad = |f: fn(&mut RawSettings)| {
            let mut raw = RawSettings::default();
            f(&mut raw);
            Settings::parse(&raw).unwrap_err().field
        };
        assert_eq!(bad(|r| r.bind = "nowhere".into()), "bind");
        assert_eq!(bad(|r| r.send_buffer_bytes = 100), "send_buffer_bytes");
        assert_eq!(bad(|r| r.max_connections = 0), "max_connections");
        let raw = RawSettings {
            send_buffer_bytes: 0,
            ..RawSettings::default()
        };
        assert_eq!(Settings::parse(&raw).unwrap().send_buffer_bytes, None);
    }
}
