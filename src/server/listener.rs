//! Accepting connections (docs/protocol.md, "Limits"): every TCP connection, HTTP or WebSocket,
//! holds one of `server.max_open_connections` places (kept below the process's descriptor limit)
//! from accept to close, and optionally one of its IP's (`max_connections_per_ip`, with a
//! connect rate per IP). HTTP/1.1 only, served by hyper with a header-read time-out that also
//! ends idle keep-alive connections, so a request that sends half its headers, or a connection
//! that sends nothing, is closed. When every place is taken, the connection that has waited
//! longest without a request in progress (still sending its first request, or idle between
//! requests) is closed to make room for the new one, so that sockets that send nothing keep no
//! one out for a whole header time-out. On shutdown the listener stops accepting, asks every
//! connection to finish, and gives up on them at the grace period's end: no client can hold
//! the process open.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
use tokio_util::sync::CancellationToken;
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

/// The `shed_connections` reason for an idle connection closed to make room.
pub const EVICTED: &str = "evicted_idle";

/// Counts a connection waiting for a freed place while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(n: &Arc<AtomicUsize>) -> Waiting {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

/// The connections that hold a place with no request in progress, oldest first: the ones
/// that may be closed to make room. A connection is entered at accept and after each response
/// (keep-alive), and leaves when a request's head has arrived or when it closes.
pub struct Idle {
    clock: Clock,
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, (i64, CancellationToken)>>,
}

/// One connection's entry in [`Idle`]; dropping it takes the connection out.
pub struct IdleEntry {
    idle: Arc<Idle>,
    key: AtomicU64,
    evict: CancellationToken,
}

impl Idle {
    pub fn new(clock: Clock) -> Arc<Idle> {
        Arc::new(Idle {
            clock,
            next: AtomicU64::new(1),
            map: Mutex::new(BTreeMap::new()),
        })
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<u64, (i64, CancellationToken)>> {
        // Entries only: a panic under the lock leaves them usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection, idle until its first request's head arrives.
    pub fn enter(self: &Arc<Self>) -> Arc<IdleEntry> {
        let e = Arc::new(IdleEntry {
            idle: self.clone(),
            key: AtomicU64::new(0),
            evict: CancellationToken::new(),
        });
        e.idle();
        e
    }

    /// Closes the connection idle longest, if it has been idle `at_least_ms`; whether one was.
    pub fn evict_oldest(&self, at_least_ms: i64) -> bool {
        let now = self.clock.now_ms();
        let mut map = self.map();
        let Some(oldest) = map.first_entry() else {
            return false;
        };
        if now - oldest.get().0 < at_least_ms {
            return false;
        }
        let (_, token) = oldest.remove();
        drop(map);
        token.cancel();
        true
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl IdleEntry {
    /// Between requests (or before the first): may be closed to make room.
    pub fn idle(&self) {
        let key = self.idle.next.fetch_add(1, Ordering::Relaxed);
        let old = self.key.swap(key, Ordering::Relaxed);
        let mut map = self.idle.map();
        if old != 0 {
            map.remove(&old);
        }
        map.insert(key, (self.idle.clock.now_ms(), self.evict.clone()));
    }

    /// A request is in progress: not to be closed.
    pub fn busy(&self) {
        let old = self.key.swap(0, Ordering::Relaxed);
        if old != 0 {
            self.idle.map().remove(&old);
        }
    }

    /// Fires when the connection was chosen to make room.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for IdleEntry {
    fn drop(&mut self) {
        self.busy();
    }
}

/// Connections accepted while full that wait for the place an eviction frees: few, since each
/// holds a descriptor beyond the cap.
const MAX_WAITING: usize = 32;

/// How long a waiting connection waits for the freed place.
const WAIT_FOR_PLACE: Duration = Duration::from_secs(1);

/// How long a connection must have been idle before it may be closed to make room: long enough
/// that a client that has just connected can send its request.
fn evict_after(header_read_timeout: Duration) -> i64 {
    let ms = i64::try_from(header_read_timeout.as_millis()).unwrap_or(i64::MAX);
    (ms / 2).min(1_000)
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
    let idle = Idle::new(state.clock.clone());
    let waiting = Arc::new(AtomicUsize::new(0));
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
                    state.metrics.session.accept_errors.inc();
                    if last_error_log.elapsed() >= Duration::from_secs(1) {
                        tracing::warn!(error = %e, "accept failed");
                        last_error_log = tokio::time::Instant::now();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let ip_place = match per_ip.admit(peer.ip()) {
            Ok(p) => p,
            Err(why) => {
                state.metrics.session.shed(why.as_str());
                drop(tcp);
                continue;
            }
        };
        let place = match open.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Full: make room by closing the connection idle longest, if there is one
                // and few are already waiting; this one then waits for that place.
                if waiting.load(Ordering::Relaxed) >= MAX_WAITING
                    || !idle.evict_oldest(evict_after(s.header_read_timeout))
                {
                    state.metrics.session.shed(Shed::Full.as_str());
                    drop(tcp);
                    continue;
                }
                state.metrics.session.shed(EVICTED);
                None
            }
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
        let header_timeout = s.header_read_timeout;
        let grace = s.shutdown_grace;
        let stop = shutdown.clone();
        let app = app.clone();
        let open = open.clone();
        let idle = idle.clone();
        let metrics = state.metrics.clone();
        let wait_guard = place.is_none().then(|| Waiting::new(&waiting));
        conns.spawn(async move {
            let place = match place {
                Some(p) => p,
                None => {
                    let got = tokio::time::timeout(WAIT_FOR_PLACE, open.acquire_owned()).await;
                    drop(wait_guard);
                    match got {
                        Ok(Ok(p)) => p,
                        _ => {
                            metrics.session.shed(Shed::Full.as_str());
                            return;
                        }
                    }
                }
            };
            let permit = ConnPermit {
                _open: Arc::new(place),
                _ip: ip_place,
            };
            let entry = idle.enter();
            let for_requests = permit.clone();
            let (on_request, on_response) = (entry.clone(), entry.clone());
            let dispatched = Arc::new(super::raw_errors::Dispatched::default());
            let answered = dispatched.clone();
            let svc = app
                .map_request(move |req: Request<Incoming>| {
                    on_request.busy();
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                    // An upgrade takes it with the session.
                    req.extensions_mut().insert(for_requests.clone());
                    req
                })
                .map_response(move |res: axum::response::Response| {
                    answered.responses.fetch_add(1, Ordering::AcqRel);
                    // After an upgrade the connection is the session's, never idle here.
                    if res.status() != axum::http::StatusCode::SWITCHING_PROTOCOLS {
                        on_response.idle();
                    }
                    res
                });
            let hyper_svc = TowerToHyperService::new(svc);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder
                .serve_connection(
                    TokioIo::new(super::raw_errors::JsonErrorIo::new(tcp, dispatched)),
                    hyper_svc,
                )
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = entry.evicted().cancelled() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn.as_mut()).await;
                }
            }
            drop(entry);
            drop(permit);
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
    fn the_connection_idle_longest_is_closed_to_make_room_and_a_busy_one_never() {
        let clock = Clock::manual(0);
        let idle = Idle::new(clock.clone());
        let a = idle.enter();
        clock.advance(Duration::from_millis(300));
        let b = idle.enter();
        let c = idle.enter();
        assert!(!idle.evict_oldest(1_000), "none idle for a second yet");
        clock.advance(Duration::from_millis(800));
        a.busy();
        assert!(
            !idle.evict_oldest(1_000),
            "the oldest is busy; the others are too young"
        );
        clock.advance(Duration::from_millis(200));
        assert!(idle.evict_oldest(1_000));
        assert!(b.evicted().is_cancelled() && !c.evicted().is_cancelled());
        assert!(!a.evicted().is_cancelled());
        // After its response a connection is idle again, from then.
        a.idle();
        assert!(idle.evict_oldest(0));
        assert!(c.evicted().is_cancelled() && !a.evicted().is_cancelled());
        assert_eq!(idle.len(), 1);
        drop(a);
        assert!(idle.is_empty() && !idle.evict_oldest(0));
        assert_eq!(evict_after(Duration::from_secs(10)), 1_000);
        assert_eq!(evict_after(Duration::from_millis(300)), 150);
    }

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(open_connection_cap(10_000, None), 10_000);
        assert_eq!(open_connection_cap(10_000, Some(1_024)), 960);
        assert_eq!(open_connection_cap(500, Some(1_024)), 500);
        assert!(descriptor_limit().is_some_and(|n| n > 0));
    }
}
