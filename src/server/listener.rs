//! Accepting connections (docs/protocol.md, "Limits"): every TCP connection, HTTP or WebSocket,
//! holds one of `server.max_open_connections` places (kept below the process's descriptor limit)
//! from accept to close, and optionally one of its IP's (`max_connections_per_ip`, with a
//! connect rate per IP). HTTP/1.1 only, served by hyper with a header-read time-out that also
//! ends idle keep-alive connections, so a request that sends half its headers, or a connection
//! that sends nothing, is closed. On shutdown the listener stops accepting, asks every
//! connection to finish, and gives up on them at the grace period's end: no client can hold
//! the process open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;

use dexpulse_core::schedule::{Rate, TokenBucket};

use super::AppState;
use crate::time::Clock;

/// A connection's place among the open ones. The HTTP connection holds it, and a WebSocket
/// session takes a clone with it after the upgrade, so the place is given back only when both
/// have let go.
#[derive(Clone)]
pub struct ConnPermit {
    _open: Arc<OwnedSemaphorePermit>,
    _ip: Option<Arc<IpPermit>>,
}

/// Per-IP connections at once and connects per minute (each 0 for no limit).
pub struct IpLimits {
    max_open: usize,
    rate: Option<Rate>,
    clock: Clock,
    map: Mutex<HashMap<IpAddr, IpState>>,
}

struct IpState {
    open: usize,
    bucket: Option<TokenBucket>,
    last_ms: i64,
}

pub struct IpPermit {
    limits: Arc<IpLimits>,
    ip: IpAddr,
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        if let Some(s) = self.limits.map().get_mut(&self.ip) {
            s.open = s.open.saturating_sub(1);
        }
    }
}

/// Why an accepted connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// `server.max_open_connections` are open.
    Full,
    /// The IP has `server.max_connections_per_ip` open.
    IpFull,
    /// The IP connects faster than `server.connects_per_ip_per_minute`.
    IpRate,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::Full => "max_open_connections",
            Shed::IpFull => "max_connections_per_ip",
            Shed::IpRate => "connects_per_ip_per_minute",
        }
    }
}

impl IpLimits {
    pub fn new(max_open: usize, per_minute: Option<Rate>, clock: Clock) -> IpLimits {
        IpLimits {
            max_open,
            rate: per_minute,
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, IpState>> {
        // Counters only: a panic under the lock leaves them usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enabled(&self) -> bool {
        self.max_open > 0 || self.rate.is_some()
    }

    /// A place for a connection from `ip`, or why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Option<Arc<IpPermit>>, Shed> {
        if !self.enabled() {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let mut map = self.map();
        // Forget quiet addresses now and then, so that the map stays as small as the set of
        // addresses connected in the last minute.
        if map.len() > 4096 {
            map.retain(|_, s| s.open > 0 || now - s.last_ms < 60_000);
        }
        let s = map.entry(ip).or_insert_with(|| IpState {
            open: 0,
            bucket: self.rate.map(|r| r.full_bucket(now)),
            last_ms: now,
        });
        s.last_ms = now;
        if self.max_open > 0 && s.open >= self.max_open {
            return Err(Shed::IpFull);
        }
        if let Some(b) = s.bucket.as_mut() {
            if !b.try_take(now) {
                return Err(Shed::IpRate);
            }
        }
        s.open += 1;
        drop(map);
        Ok(Some(Arc::new(IpPermit {
            limits: self.clone(),
            ip,
        })))
    }
}

/// The soft limit on open descriptors, where the system says (Linux: /proc/self/limits).
pub fn descriptor_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Descriptors kept for what is not a client: the listener, upstream connections, files.
const RESERVED_DESCRIPTORS: u64 = 64;

/// The cap on open connections: the configured one, or less when the descriptor limit would
/// not allow it (with a warning naming both numbers).
pub fn open_connection_cap(configured: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else {
        return configured;
    };
    let room = usize::try_from(limit.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if room < configured {
        tracing::warn!(
            configured,
            descriptor_limit = limit,
            using = room,
            "server.max_open_connections is above what the descriptor limit allows; raise \
             `ulimit -n` or lower the setting"
        );
        room.max(1)
    } else {
        configured
    }
}

/// Serves connections from `listener` until the shutdown token fires; then stops accepting,
/// asks the connections to finish, and returns by the grace period's end.
pub async fn accept_loop(listener: TcpListener, state: AppState, app: axum::Router) {
    let s = state.settings.clone();
    let cap = open_connection_cap(s.max_open_connections, descriptor_limit());
    let open = Arc::new(Semaphore::new(cap));
    let per_ip = Arc::new(IpLimits::new(
        s.max_connections_per_ip,
        s.connects_per_ip,
        state.clock.clone(),
    ));
    let shutdown = state.shutdown.clone();
    let mut conns: JoinSet<()> = JoinSet::new();
    let mut last_error_log = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, mostly: say so once a second, and do not spin.
                    state.metrics.accept_errors.inc();
                    if last_error_log.elapsed() >= Duration::from_secs(1) {
                        tracing::warn!(error = %e, "accept failed");
                        last_error_log = tokio::time::Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(place) = open.clone().try_acquire_owned() else {
            state.metrics.shed(Shed::Full.as_str());
            drop(tcp);
            continue;
        };
        let ip_place = match per_ip.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                state.metrics.shed(why.as_str());
                drop(tcp);
                continue;
            }
        };
        let permit = ConnPermit {
            _open: Arc::new(place),
            _ip: ip_place,
        };
        // Frames are small and latency is the product: Nagle would hold a frame back until the
        // previous one is acknowledged (up to a delayed ACK, 40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        if let Some(n) = s.send_buffer_bytes {
            if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(n) {
                tracing::debug!(error = %e, "SO_SNDBUF");
            }
        }
        let for_requests = permit.clone();
        let svc = app.clone().map_request(move |req: Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            // An upgrade takes it with the session.
            req.extensions_mut().insert(for_requests.clone());
            req
        });
        let hyper_svc = TowerToHyperService::new(svc);
        let header_timeout = s.header_read_timeout;
        let grace = s.shutdown_grace;
        let stop = shutdown.clone();
        conns.spawn(async move {
            let keep = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let svc = hyper_svc;
            let conn = builder
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                }
            }
            drop(keep);
        });
    }
    drop(listener);
    // What is still open when the grace period ends is dropped with its task.
    let _ = tokio::time::timeout(s.shutdown_grace, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limits_count_connections_and_connects() {
        let clock = Clock::manual(0);
        let l = Arc::new(IpLimits::new(
            2,
            Some(Rate::try_new(3.0, 3.0).unwrap()),
            clock.clone(),
        ));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).err(), Some(Shed::IpFull));
        assert!(
            l.admit(other).unwrap().is_some(),
            "another address has its own"
        );
        drop(a);
        assert!(l.admit(ip).unwrap().is_some());
        drop(b);
        assert_eq!(
            l.admit(ip).err(),
            Some(Shed::IpRate),
            "three connects a minute"
        );
        clock.advance(Duration::from_secs(20));
        assert!(l.admit(ip).is_ok());
        let off = Arc::new(IpLimits::new(0, None, clock));
        assert!(off.admit(ip).unwrap().is_none());
    }

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(open_connection_cap(10_000, None), 10_000);
        assert_eq!(open_connection_cap(10_000, Some(1_024)), 960);
        assert_eq!(open_connection_cap(500, Some(1_024)), 500);
        assert!(descriptor_limit().is_some_and(|n| n > 0));
    }
}
