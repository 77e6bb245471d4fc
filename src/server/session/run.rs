//! The session's driver: its state, its inputs and the steps that feed one to the other. A
//! session has no task of its own: its shard's writer ([`super::shard`]) runs its delivery step
//! after every send of the hub, drives it when its waker fires (the socket, a history read, the
//! stall timer) and gives it its heartbeat; only the closing steps get a task, made when the
//! session ends. It reads the clocks and does the I/O; every decision is the [`Session`]'s.
//! Written against `Sink`/`Stream` of tungstenite messages, so it runs on any transport: a
//! socket, or channels in a unit test.
//!
//! The delivery step (`Conn::work`: take what the hub channel holds, up to `flush_batch`, and
//! write the outbox with one flush) runs under the session's lock with the session's waker. In
//! a drive the inputs are polled in a fixed order (the epoch's end, the delivery step, history
//! reads, pair states, the pairs channel, the client, the stall timer), so a steady stream of
//! frames cannot starve the socket. Read errors are classified by their type: a message over the
//! size limit is 1009, invalid UTF-8 1007, any other protocol violation 1002; an I/O error means
//! the peer is gone. Every server-initiated close sends what is owed, then the close frame, then
//! reads until the client's close (the closing handshake) or `close_linger`, so that the close
//! frame is never lost to a reset.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode as WsCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use dexpulse_core::protocol::{CloseCode, Epoch};

use super::outbox::{Out, Outbox};
use super::shard::{Place, Pump, Queue, Writers};
use super::state::{Close, Effects, End, HubView, Inbound, Recv, Session, Tally, Wants};
use super::{FilterBudget, Settings};
use crate::hub::{Hub, PairFrame, Since, Subscription};
use crate::metrics::{Metrics, SessionMetrics};
use crate::time::Clock;

/// What a session needs from the server.
pub struct SessionCtx {
    pub id: String,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    /// How long the last messages (notices, close) may take to leave.
    pub grace: Duration,
    pub metrics: Arc<Metrics>,
    /// The wall clock, for the publish-to-send latency.
    pub clock: Clock,
    /// The server's shutdown: tells a shutdown (1001) from an epoch's end (1012). The session
    /// waits on the hub's epoch token, which [`Hub::end_sessions_with`] made a child of it.
    pub shutdown: CancellationToken,
    /// The filter entries of all sessions (`session.max_total_filter_entries`).
    pub filter_budget: Arc<FilterBudget>,
    /// The writer tasks that run the sessions.
    pub writers: Arc<Writers>,
    /// The server's sessions: it waits for them at shutdown.
    pub tracker: TaskTracker,
}

impl HubView for Hub {
    fn epoch(&self) -> Epoch {
        Hub::epoch(self)
    }

    fn head(&self) -> u64 {
        self.head_seq()
    }

    fn oldest(&self) -> u64 {
        self.oldest_seq()
    }
}

impl Tally for SessionMetrics {
    fn missed(&self, n: u64) {
        self.missed_seqs.inc_by(n);
    }

    fn lagged_notice(&self) {
        self.lagged_notices.inc();
    }

    fn dropped(&self, n: u64) {
        self.queue_drops.inc_by(n);
    }

    fn stall_to_close(&self, seconds: f64) {
        self.stall_to_close.observe(seconds);
    }
}

/// A session counted in `sessions_connected` for as long as it runs, whichever way it ends.
struct Connected(Arc<Metrics>);

impl Connected {
    fn new(m: Arc<Metrics>) -> Connected {
        m.session.sessions.inc();
        Connected(m)
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.session.sessions.dec();
    }
}

/// How a session ended, for the transport to finish the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client closed, or is gone.
    Peer,
    /// The server closed with this code. `linger`: the closing handshake did not complete on
    /// the WebSocket (the read side is out of step after a bad frame, or the client did not
    /// answer), so the transport should half-close and drain the socket before dropping it.
    Closed { code: CloseCode, linger: bool },
}

/// How a read error ends the session.
pub fn classify(e: &WsError) -> Option<CloseCode> {
    match e {
        WsError::Capacity(_) => Some(CloseCode::TooBig),
        WsError::Utf8(_) => Some(CloseCode::InvalidData),
        WsError::Protocol(_) | WsError::AttackAttempt => Some(CloseCode::Protocol),
        // The connection is gone (reset, closed, I/O): nobody to tell.
        _ => None,
    }
}

/// A text frame around bytes that are UTF-8 by construction (the hub's frames, our replies),
/// without checking them again for every subscriber.
fn text_frame(b: Bytes) -> Message {
    Message::Frame(WsFrame::message(b, OpCode::Data(Data::Text), true))
}

/// The writer's side of the outbox: hands queued messages to the sink while it is ready, then
/// flushes once. Cancel-safe: its state is the outbox and the sink, so `select!` may drop it
/// at any `Pending`. `Err` means the peer is gone.
struct Writer {
    unflushed: bool,
}

impl Writer {
    fn has_work(&self, out: &Outbox) -> bool {
        !out.is_empty() || self.unflushed
    }

    fn poll_drive<S: Sink<Message> + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outbox,
        sink: &mut S,
        m: &Metrics,
        clock: &Clock,
    ) -> Poll<Result<(), ()>> {
        let mut sent = 0u64;
        let mut oldest: Option<i64> = None;
        let result = loop {
            if out.is_empty() {
                if !self.unflushed {
                    break Poll::Ready(Ok(()));
                }
                match Pin::new(&mut *sink).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        m.session.flushes.inc();
                        break Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Err(_)) => break Poll::Ready(Err(())),
                    Poll::Pending => break Poll::Pending,
                }
            }
            match Pin::new(&mut *sink).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => break Poll::Ready(Err(())),
                Poll::Pending => break Poll::Pending,
            }
            let msg = match out.pop() {
                Some(Out::Frame {
                    text,
                    published_at_us,
                    ..
                }) => {
                    oldest.get_or_insert(published_at_us);
                    sent += 1;
                    text_frame(text)
                }
                Some(Out::Text(text)) => {
                    sent += 1;
                    text_frame(text)
                }
                Some(Out::Ping) => Message::Ping(Bytes::new()),
                None => continue,
            };
            if Pin::new(&mut *sink).start_send(msg).is_err() {
                break Poll::Ready(Err(()));
            }
            self.unflushed = true;
        };
        if sent > 0 {
            m.session.messages_sent.inc_by(sent);
        }
        if let Some(p) = oldest {
            m.session
                .publish_to_send
                .observe((clock.now_us() - p).max(0) as f64 / 1e6);
        }
        result
    }
}

/// The slow-consumer timer, on the heap only while the outbox is full: a `Sleep` is 100-odd
/// bytes that every idle session would otherwise carry (BENCHMARKS.md, P3).
#[derive(Default)]
struct StallTimer(Option<Pin<Box<tokio::time::Sleep>>>);

impl StallTimer {
    fn arm(&mut self, deadline: Option<Instant>) {
        match (deadline, &mut self.0) {
            (None, t) => *t = None,
            (Some(d), Some(s)) if s.deadline() == d => {}
            (Some(d), Some(s)) => s.as_mut().reset(d),
            (Some(d), t) => *t = Some(Box::pin(tokio::time::sleep_until(d))),
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            Some(s) => std::future::Future::poll(s.as_mut(), cx),
            None => Poll::Pending,
        }
    }
}

type PairRecv = (
    Result<Arc<PairFrame>, broadcast::error::RecvError>,
    broadcast::Receiver<Arc<PairFrame>>,
);

/// The pairs channel as something to poll: one boxed receive, reused (made only for a
/// session that subscribed to pairs).
struct PairsRx(ReusableBoxFuture<'static, PairRecv>);

async fn next_pair(mut rx: broadcast::Receiver<Arc<PairFrame>>) -> PairRecv {
    let r = rx.recv().await;
    (r, rx)
}

impl PairsRx {
    fn new(rx: broadcast::Receiver<Arc<PairFrame>>) -> PairsRx {
        PairsRx(ReusableBoxFuture::new(next_pair(rx)))
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Arc<PairFrame>, broadcast::error::RecvError>> {
        let (r, rx) = std::task::ready!(self.0.poll(cx));
        self.0.set(next_pair(rx));
        Poll::Ready(r)
    }
}

/// A read from the history (the archive, for older frames), kept while the session wants the
/// same range.
struct Reading {
    from: (u64, usize),
    read: Pin<Box<dyn Future<Output = Since> + Send>>,
}

/// The next frame already waiting on a hub channel.
fn try_next(link: &mut Option<Subscription>) -> Recv {
    match link.as_mut().map(|l| l.rx.try_recv()) {
        Some(Ok(f)) => Recv::Frame(f),
        Some(Err(broadcast::error::TryRecvError::Lagged(_))) => Recv::Lagged,
        _ => Recv::Empty,
    }
}

/// What the client sent, for the state machine; read errors are classified by their type.
fn inbound<'a>(msg: &'a Option<Result<Message, WsError>>, id: &str) -> Inbound<'a> {
    match msg {
        None | Some(Ok(Message::Close(_))) => Inbound::Closed,
        Some(Ok(Message::Text(text))) => Inbound::Text(text.as_str()),
        Some(Ok(Message::Binary(_))) => Inbound::Binary,
        Some(Ok(Message::Ping(_))) => Inbound::Ping,
        Some(Ok(Message::Pong(_))) => Inbound::Pong,
        Some(Ok(Message::Frame(_))) => Inbound::Nothing,
        Some(Err(e)) => match classify(e) {
            Some(code) => Inbound::Broken(code),
            None => {
                tracing::debug!(session = %id, error = %e, "read error; the client is gone");
                Inbound::Gone
            }
        },
    }
}

/// What a session's drive and its shard's writer share: everything a delivery touches.
struct Shared<S> {
    st: Session,
    out: Outbox,
    writer: Writer,
    sink: S,
    link: Option<Subscription>,
    /// What the last drive waited for: a writer that changes it queues a drive.
    want: Waits,
    /// How a writer's delivery ended (the connection gone), for the next drive to act on.
    /// Boxed: rare, and every session carries the slot (BENCHMARKS.md, P3).
    pending: Option<Box<Effects>>,
    /// The session's waker: a writer writes with it, so that a socket that would block queues
    /// the session for a drive.
    waker: Option<Waker>,
    /// A writer queued the session: its next drive starts over (what it waits for changed).
    recheck: bool,
    /// When the next heartbeat is due (ms).
    next_ping: i64,
}

impl<S> Shared<S> {
    /// What the closing steps need; the rest (the channel's place among them) goes.
    fn into_parts(self) -> (S, Outbox, Writer) {
        (self.sink, self.out, self.writer)
    }
}

/// Which of [`Wants`] a drive waits for: what a writer's delivery can change (it never
/// touches what the history reads start from, nor the pairs owed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Waits {
    history: bool,
    pair_states: bool,
    live: bool,
    stall_at: Option<i64>,
}

impl From<&Wants> for Waits {
    fn from(w: &Wants) -> Waits {
        Waits {
            history: w.history.is_some(),
            pair_states: w.pair_states.is_some(),
            live: w.live,
            stall_at: w.stall_at,
        }
    }
}

/// A session's state behind its lock, with what a delivery needs to know. `None` once the
/// session ended and its closing steps took the state.
struct Conn<S> {
    shared: Mutex<Option<Shared<S>>>,
    start: Instant,
    metrics: Arc<Metrics>,
    clock: Clock,
    flush_batch: u32,
    chunk: u32,
    heartbeat_ms: i64,
}

impl<S: Sink<Message> + Unpin> Conn<S> {
    fn lock(&self) -> MutexGuard<'_, Option<Shared<S>>> {
        // Every step under the lock leaves the state whole: a panic in one leaves it usable.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Milliseconds since the session began: the state machine's time.
    fn now(&self) -> i64 {
        self.ms(Instant::now())
    }

    fn ms(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.start).as_millis()).unwrap_or(i64::MAX)
    }

    /// The instant of a session time.
    fn at(&self, ms: i64) -> Instant {
        self.start + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    }

    /// One step of the state machine under the lock.
    fn with(&self, f: impl FnOnce(&mut Shared<S>, i64) -> Effects) -> Effects {
        let now = self.now();
        match self.lock().as_mut() {
            Some(sh) => f(sh, now),
            None => Effects::end(End::Peer { answer: false }),
        }
    }

    /// What the drive waits for next (recorded for the writer), and what a writer left for it.
    fn begin(&self) -> (Wants, Option<Effects>) {
        match self.lock().as_mut() {
            Some(sh) => {
                let want = sh.st.wants(&sh.out, self.chunk as usize);
                sh.want = Waits::from(&want);
                (want, sh.pending.take().map(|e| *e))
            }
            None => (
                Wants {
                    history: None,
                    pair_states: None,
                    live: false,
                    stall_at: None,
                },
                Some(Effects::end(End::Peer { answer: false })),
            ),
        }
    }

    /// Takes the frames waiting on the channel (while live) and writes what the outbox holds.
    /// `Ready` when anything moved.
    fn work(&self, sh: &mut Shared<S>, cx: &mut Context<'_>, now: i64) -> Poll<Effects> {
        let mut moved = false;
        if sh.st.is_live() {
            let Shared { st, out, link, .. } = sh;
            let first = try_next(link);
            if !matches!(first, Recv::Empty) {
                let e = st.on_channel(
                    first,
                    &mut || try_next(link),
                    self.flush_batch as usize,
                    out,
                    now,
                );
                if e != Effects::default() {
                    return Poll::Ready(e);
                }
                moved = true;
            }
        }
        if sh.writer.has_work(&sh.out) {
            let m = &self.metrics;
            match sh
                .writer
                .poll_drive(cx, &mut sh.out, &mut sh.sink, m, &self.clock)
            {
                Poll::Ready(Ok(())) => {
                    return Poll::Ready(sh.st.after_write(&mut sh.out, now, &m.session))
                }
                Poll::Ready(Err(())) => {
                    return Poll::Ready(Effects::end(End::Peer { answer: false }))
                }
                Poll::Pending => {}
            }
        }
        if moved {
            Poll::Ready(Effects::default())
        } else {
            Poll::Pending
        }
    }

    /// A drive's delivery step: as a writer's, and `Ready` as well when a writer changed
    /// what the drive should wait for.
    fn poll_deliver(&self, cx: &mut Context<'_>) -> Poll<Effects> {
        let mut g = self.lock();
        let Some(sh) = g.as_mut() else {
            return Poll::Ready(Effects::end(End::Peer { answer: false }));
        };
        if !sh.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            sh.waker = Some(cx.waker().clone());
        }
        let r = self.work(sh, cx, self.now());
        let recheck = std::mem::take(&mut sh.recheck);
        match r {
            Poll::Pending if recheck => Poll::Ready(Effects::default()),
            r => r,
        }
    }
}

impl<S: Sink<Message> + Unpin> Conn<S> {
    /// A writer's step, under the lock: deliver with the session's waker, and queue the session
    /// for a drive if something is left for it.
    fn deliver(&self, sh: &mut Shared<S>, at: Instant) {
        // Not driven yet: its first drive delivers. Taken out and put back rather than cloned:
        // a pass does this for every session.
        let Some(waker) = sh.waker.take() else {
            return;
        };
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(e) = self.work(sh, &mut cx, self.ms(at)) {
            if e != Effects::default() {
                sh.pending = Some(Box::new(e));
            }
        }
        let more = sh.st.is_live() && sh.link.as_ref().is_some_and(|l| !l.rx.is_empty());
        let changed = sh.want != Waits::from(&sh.st.wants(&sh.out, self.chunk as usize));
        if (sh.pending.is_some() || more || changed) && !sh.recheck {
            sh.recheck = true;
            waker.wake_by_ref();
        }
        sh.waker = Some(waker);
    }
}

/// The session's sending half, as a server socket or a test's channel.
pub trait WsSink: Sink<Message> + Unpin + Send + 'static {}
impl<T: Sink<Message> + Unpin + Send + 'static> WsSink for T {}

/// The session's receiving half.
pub trait WsStream: Stream<Item = Result<Message, WsError>> + Unpin + Send + 'static {}
impl<T: Stream<Item = Result<Message, WsError>> + Unpin + Send + 'static> WsStream for T {}

/// What gets the transport back, with how the session ended, after its closing steps.
pub trait Done<S, R>: Send + 'static {
    fn call(self, sink: S, stream: R, ending: Ending) -> impl Future<Output = ()> + Send + 'static;
}

impl<S, R, F, Fut> Done<S, R> for F
where
    F: FnOnce(S, R, Ending) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn call(self, sink: S, stream: R, ending: Ending) -> impl Future<Output = ()> + Send + 'static {
        self(sink, stream, ending)
    }
}

/// What a session keeps of its [`SessionCtx`] (the rest served its start): every session
/// carries it.
struct Ctx {
    id: Box<str>,
    hub: Arc<Hub>,
    settings: Arc<Settings>,
    grace: Duration,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// What only a drive touches: the session's inputs besides the hub's frames, and what its
/// closing steps take.
struct Inputs<R, F> {
    stream: R,
    ctx: Ctx,
    /// Gets the transport back after the closing steps.
    done: F,
    /// The epoch's token: cancelled when the epoch ends and at shutdown; the shard drives every
    /// session then.
    epoch: CancellationToken,
    /// Boxed: made only while the session reads the history.
    history: Option<Box<Reading>>,
    pairs: Option<PairsRx>,
    stall: StallTimer,
    /// Its place in the shard: dropped when the session ends.
    place: Option<Place>,
    connected: Connected,
    /// The server waits for the session at shutdown, until its closing steps are done.
    tracked: TaskTrackerToken,
}

/// A session: its state (shared with the writer's delivery) and its inputs, with the waker
/// that queues it for a drive.
struct Driver<S, R, F> {
    conn: Conn<S>,
    inputs: Mutex<Option<Inputs<R, F>>>,
    queued: AtomicBool,
    queue: Queue,
}

/// How many inputs one drive takes before letting the shard's other sessions go first.
const DRIVE_STEPS: usize = 64;

impl<S, R, F> Driver<S, R, F>
where
    S: WsSink,
    R: WsStream,
    F: Done<S, R>,
{
    fn inputs(&self) -> MutexGuard<'_, Option<Inputs<R, F>>> {
        // Every step under the lock leaves the inputs whole: a panic in one leaves them usable.
        self.inputs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session's steps until every input waits (`Pending`) or the session ends.
    fn steps(&self, cx: &mut Context<'_>) -> Poll<End> {
        let mut g = self.inputs();
        let Some(inp) = g.as_mut() else {
            return Poll::Pending;
        };
        for _ in 0..DRIVE_STEPS {
            let (want, left) = self.conn.begin();
            let effects = match left {
                Some(e) => e,
                None => match self.poll_inputs(inp, &want, cx) {
                    Poll::Ready(e) => e,
                    Poll::Pending => return Poll::Pending,
                },
            };
            let now = self.conn.now();
            match self.conn.lock().as_mut() {
                Some(sh) => {
                    if let Some(end) = apply(effects, sh, &inp.ctx.hub, &mut inp.pairs, now) {
                        return Poll::Ready(end);
                    }
                }
                None => return Poll::Ready(End::Peer { answer: false }),
            }
        }
        // Still busy: the shard's other sessions first, then this one again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// The first input that is ready, in a fixed order; each one polled registers the waker.
    fn poll_inputs(
        &self,
        inp: &mut Inputs<R, F>,
        want: &Wants,
        cx: &mut Context<'_>,
    ) -> Poll<Effects> {
        let conn = &self.conn;
        if inp.epoch.is_cancelled() || inp.ctx.shutdown.is_cancelled() {
            let code = if inp.ctx.shutdown.is_cancelled() {
                CloseCode::GoingAway
            } else {
                CloseCode::Restart
            };
            return Poll::Ready(Effects::end(End::close(code)));
        }
        // Frames from the channel and writes first: a steady stream of frames cannot starve
        // the socket. Usually the shard's writer has done this already.
        if let Poll::Ready(e) = conn.poll_deliver(cx) {
            return Poll::Ready(e);
        }
        let hub = &inp.ctx.hub;
        let tally = &conn.metrics.session;
        match want.history {
            // From memory at once; older frames are awaited from the archive, the read kept
            // while the session wants the same range.
            Some(from) => {
                let reading = match &mut inp.history {
                    Some(r) if r.from == from => r,
                    slot => {
                        let (hub, (after, limit)) = (hub.clone(), from);
                        slot.insert(Box::new(Reading {
                            from,
                            read: Box::pin(async move { hub.read_since(after, limit).await }),
                        }))
                    }
                };
                if let Poll::Ready(since) = reading.read.as_mut().poll(cx) {
                    inp.history = None;
                    return Poll::Ready(
                        conn.with(|sh, now| {
                            sh.st.on_history(since, from.1, &mut sh.out, now, tally)
                        }),
                    );
                }
            }
            None => inp.history = None,
        }
        if let Some(keys) = &want.pair_states {
            let p = hub.pairs();
            let states = keys.iter().map(|k| p.message(k)).collect();
            return Poll::Ready(conn.with(|sh, _| sh.st.on_pair_states(states, &mut sh.out)));
        }
        if let Some(rx) = &mut inp.pairs {
            match rx.poll(cx) {
                Poll::Ready(Ok(p)) => {
                    return Poll::Ready(conn.with(|sh, _| sh.st.on_pair(&p, &mut sh.out)))
                }
                // Pair states supersede each other: missing some is harmless.
                Poll::Ready(Err(broadcast::error::RecvError::Lagged(_))) => {
                    return Poll::Ready(Effects::default())
                }
                Poll::Ready(Err(broadcast::error::RecvError::Closed)) => {
                    inp.pairs = None;
                    return Poll::Ready(Effects::default());
                }
                Poll::Pending => {}
            }
        }
        if let Poll::Ready(msg) = Pin::new(&mut inp.stream).poll_next(cx) {
            let id = &inp.ctx.id;
            return Poll::Ready(conn.with(|sh, now| {
                sh.st
                    .on_inbound(inbound(&msg, id), now, &**hub, &mut sh.out)
            }));
        }
        inp.stall.arm(want.stall_at.map(|ms| conn.at(ms)));
        if want.stall_at.is_some() && inp.stall.poll(cx).is_ready() {
            return Poll::Ready(
                conn.with(|sh, now| sh.st.on_stalled(hub.head_seq(), now, &mut sh.out, tally)),
            );
        }
        Poll::Pending
    }

    /// The session ended: out of its shard, and its closing steps in a task of their own (they
    /// hold timers and awaits an open session does not need).
    fn end(&self, end: End) {
        let Some(inp) = self.inputs().take() else {
            return;
        };
        let Some(sh) = self.conn.lock().take() else {
            return;
        };
        let Inputs {
            stream,
            ctx,
            done,
            place,
            connected,
            tracked,
            ..
        } = inp;
        drop(place);
        let (sink, out, writer) = sh.into_parts();
        let (metrics, clock) = (self.conn.metrics.clone(), self.conn.clock.clone());
        let tracker = ctx.tracker.clone();
        tracker.spawn(async move {
            let (sink, stream, ending) = match end {
                End::Peer { answer } => {
                    let mut sink = sink;
                    if answer {
                        // tungstenite queued its answer to the client's close: send it.
                        let _ = tokio::time::timeout(ctx.grace, sink.close()).await;
                    }
                    (sink, stream, Ending::Peer)
                }
                End::Server(last) => {
                    finish(sink, stream, last, (out, writer), &ctx, (&metrics, &clock)).await
                }
            };
            drop(connected);
            done.call(sink, stream, ending).await;
            drop(tracked);
        });
    }
}

impl<S, R, F> Wake for Driver<S, R, F>
where
    S: WsSink,
    R: WsStream,
    F: Done<S, R>,
{
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.clone());
        }
    }
}

impl<S, R, F> Pump for Driver<S, R, F>
where
    S: WsSink,
    R: WsStream,
    F: Done<S, R>,
{
    fn pump(&self, at: Instant) {
        if let Some(sh) = self.conn.lock().as_mut() {
            self.conn.deliver(sh, at);
        }
    }

    fn tick(&self, at: Instant) {
        let now = self.conn.ms(at);
        let mut g = self.conn.lock();
        let Some(sh) = g.as_mut() else {
            return;
        };
        if now >= sh.next_ping {
            sh.next_ping = now.saturating_add(self.conn.heartbeat_ms);
            let e = sh.st.on_heartbeat(now, &mut sh.out);
            if e != Effects::default() {
                sh.pending = Some(Box::new(e));
            }
            self.conn.deliver(sh, at);
        }
        sh.out.release();
    }

    fn drive(self: Arc<Self>) {
        self.queued.store(false, Ordering::Release);
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        if let Poll::Ready(end) = self.steps(&mut cx) {
            self.end(end);
        }
    }

    fn fail(&self) {
        let mut g = self.conn.lock();
        let Some(sh) = g.as_mut() else {
            return;
        };
        sh.pending = Some(Box::new(Effects::end(End::close(CloseCode::Internal))));
        sh.recheck = true;
        if let Some(w) = &sh.waker {
            w.wake_by_ref();
        }
    }
}

/// Starts a session: its state goes into a writer's shard, which runs it from then on. `done`
/// gets the transport back with how the session ended, after the closing steps.
pub fn start<S, R, F, Fut>(sink: S, stream: R, ctx: SessionCtx, done: F)
where
    S: WsSink,
    R: WsStream,
    // Spelled out here, not as `Done`, so that a closure's argument types are inferred.
    F: FnOnce(S, R, Ending) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let m = ctx.metrics.clone();
    let connected = Connected::new(m.clone());
    m.session.sessions_opened.inc();
    let s = ctx.settings.clone();
    let hub = ctx.hub.clone();
    let mut out = Outbox::new(s.queue_max_messages, s.queue_max_bytes);
    let st = Session::new(s.clone(), ctx.filter_budget.clone(), hub.head_seq(), 0);
    out.push_control(st.welcome(&ctx.id, &*hub));
    let heartbeat_ms = i64::try_from(s.heartbeat.as_millis()).unwrap_or(i64::MAX);
    let slot = ctx.writers.slot();
    let tracked = ctx.tracker.token();
    let clock = ctx.clock.clone();
    let ctx = Ctx {
        id: ctx.id.into_boxed_str(),
        hub: ctx.hub,
        settings: ctx.settings,
        grace: ctx.grace,
        shutdown: ctx.shutdown,
        tracker: ctx.tracker,
    };
    let driver = Arc::new(Driver {
        conn: Conn {
            shared: Mutex::new(Some(Shared {
                st,
                out,
                writer: Writer { unflushed: false },
                sink,
                link: None,
                want: Waits::default(),
                pending: None,
                waker: None,
                recheck: false,
                next_ping: heartbeat_ms,
            })),
            start: Instant::now(),
            metrics: m,
            clock,
            flush_batch: u32::try_from(s.flush_batch).unwrap_or(u32::MAX),
            chunk: s.queue_max_messages.clamp(16, 1024) as u32,
            heartbeat_ms,
        },
        inputs: Mutex::new(Some(Inputs {
            stream,
            epoch: hub.epoch_over(),
            ctx,
            done,
            history: None,
            pairs: None,
            stall: StallTimer::default(),
            place: None,
            connected,
            tracked,
        })),
        queued: AtomicBool::new(false),
        queue: slot.queue(),
    });
    match slot.place(driver.clone()) {
        Some(place) => {
            if let Some(inp) = driver.inputs().as_mut() {
                inp.place = Some(place);
            }
            driver.wake_by_ref();
        }
        // The writers have ended: the server is shutting down.
        None => driver.end(End::close(CloseCode::GoingAway)),
    }
}

/// Does what the state machine asked after an input: joins the channels it named (the old
/// signal channel handed to it to drain), hands it the pairs the hub knows. `Some`: the end.
fn apply<S>(
    effects: Effects,
    sh: &mut Shared<S>,
    hub: &Hub,
    pairs: &mut Option<PairsRx>,
    now: i64,
) -> Option<End> {
    if effects.end.is_some() {
        return effects.end;
    }
    let Shared { st, out, link, .. } = sh;
    if effects.rejoin {
        let (sub, head) = hub.join_signals(&st.signal_set());
        let had = link.is_some();
        let mut drain = || try_next(link);
        let old: Option<&mut dyn FnMut() -> Recv> = had.then_some(&mut drain);
        st.rejoin(head, HubView::oldest(hub), old, out, now);
        *link = sub;
    }
    match effects.pairs {
        Some(true) => *pairs = Some(PairsRx::new(hub.pairs().subscribe())),
        Some(false) => *pairs = None,
        None => {}
    }
    // After joining the channel: a change from now on comes live as well.
    if effects.pair_states {
        st.pairs_known(hub.pairs().keys());
    }
    None
}

/// A session the server ends: what is owed, the close frame, the closing handshake.
async fn finish<S, R>(
    mut sink: S,
    mut stream: R,
    last: Close,
    (mut out, mut writer): (Outbox, Writer),
    ctx: &Ctx,
    (m, clock): (&Metrics, &Clock),
) -> (S, R, Ending)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let s = &ctx.settings;
    m.session.close(last.code.code());
    tracing::debug!(session = %ctx.id, code = last.code.code(), reason = last.code.reason(), "closing");
    let bye = async {
        if let Some(n) = last.notice {
            out.push_control(n);
        }
        std::future::poll_fn(|cx| writer.poll_drive(cx, &mut out, &mut sink, m, clock)).await?;
        sink.send(Message::Close(Some(CloseFrame {
            code: WsCode::from(last.code.code()),
            reason: last.code.reason().into(),
        })))
        .await
        .map_err(|_| ())
    };
    // At shutdown the grace period bounds everything; a client closed for its own conduct gets
    // the close time-out to read what it is owed (a stalled client may start reading again).
    let deadline = if last.code == CloseCode::GoingAway {
        ctx.grace
    } else {
        s.close_timeout
    };
    let sent = matches!(tokio::time::timeout(deadline, bye).await, Ok(Ok(())));
    // The closing handshake: the client's close frame, after whatever it was still sending.
    let mut answered = false;
    if sent && !last.read_broken {
        let until_close = async {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Close(_)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            false
        };
        answered = tokio::time::timeout(s.close_linger, until_close)
            .await
            .unwrap_or(false);
    }
    (
        sink,
        stream,
        Ending::Closed {
            code: last.code,
            linger: sent && !answered,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub;
    use futures_channel::mpsc;
    use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

    type ClientTx = mpsc::Sender<Result<Message, WsError>>;
    type ClientRx = mpsc::Receiver<Message>;

    struct Client {
        tx: ClientTx,
        rx: ClientRx,
        task: tokio::task::JoinHandle<Ending>,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        writers: Arc<Writers>,
    }

    fn spawn(settings: Settings) -> Client {
        let hub = Arc::new(Hub::new(hub::Settings::default(), Clock::System));
        let shutdown = CancellationToken::new();
        hub.end_sessions_with(&shutdown);
        let writers = Arc::new(Writers::new(
            hub.fanout().sent(),
            shutdown.clone(),
            super::super::shard::Config {
                count: None,
                tick: super::super::shard::tick_for(settings.heartbeat),
                epochs: Arc::new({
                    let hub = hub.clone();
                    move || hub.epoch_over()
                }),
            },
        ));
        join(settings, hub, shutdown, writers)
    }

    /// Another session of the same hub and writers.
    fn join(
        settings: Settings,
        hub: Arc<Hub>,
        shutdown: CancellationToken,
        writers: Arc<Writers>,
    ) -> Client {
        let (client_tx, server_rx) = mpsc::channel(1024);
        let (server_tx, client_rx) = mpsc::channel(1024);
        let ctx = SessionCtx {
            id: "c1".into(),
            hub: hub.clone(),
            settings: Arc::new(settings),
            grace: Duration::from_secs(1),
            metrics: Arc::new(Metrics::new()),
            clock: Clock::System,
            shutdown: shutdown.clone(),
            filter_budget: Arc::new(FilterBudget::new(1_000_000)),
            writers: writers.clone(),
            tracker: TaskTracker::new(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        start(server_tx, server_rx, ctx, move |_, _, ending| async move {
            let _ = tx.send(ending);
        });
        let task = tokio::spawn(async move { rx.await.expect("the session ended") });
        Client {
            tx: client_tx,
            rx: client_rx,
            task,
            hub,
            shutdown,
            writers,
        }
    }

    fn text_of(m: &Message) -> Option<String> {
        match m {
            Message::Text(t) => Some(t.as_str().to_string()),
            Message::Frame(f) => std::str::from_utf8(f.payload()).ok().map(str::to_string),
            _ => None,
        }
    }

    impl Client {
        async fn send(&mut self, text: &str) {
            self.tx.send(Ok(Message::Text(text.into()))).await.unwrap();
        }

        /// The next text message (pings skipped).
        async fn next(&mut self) -> serde_json::Value {
            loop {
                let m = self.rx.next().await.expect("the session ended");
                if let Some(t) = text_of(&m) {
                    return serde_json::from_str(&t).unwrap();
                }
            }
        }

        async fn close_code(&mut self) -> u16 {
            loop {
                match self
                    .rx
                    .next()
                    .await
                    .expect("the session ended without a close")
                {
                    Message::Close(Some(c)) => return u16::from(c.code),
                    _ => continue,
                }
            }
        }
    }

    fn publish(hub: &Hub, n: usize) {
        let meta = dexpulse_core::model::EventMeta {
            pair: dexpulse_core::model::PairKey::new("sim", "p"),
            kind: dexpulse_core::model::Kind::NewPair,
            direction: dexpulse_core::model::Direction::Neutral,
            score: 50,
        };
        hub.publish_serialized((0..n).map(|_| (meta.clone(), "{}".to_string())).collect());
    }

    #[tokio::test(start_paused = true)]
    async fn subscribe_receive_and_shutdown_with_1001() {
        let mut c = spawn(Settings::default());
        assert_eq!(c.next().await["type"], "welcome");
        c.send(r#"{"op":"subscribe","id":1,"channel":"signals"}"#)
            .await;
        assert_eq!(c.next().await["type"], "subscribed");
        publish(&c.hub, 3);
        for seq in 1..=3 {
            assert_eq!(c.next().await["seq"], seq);
        }
        c.shutdown.cancel();
        assert_eq!(c.close_code().await, 1001);
        // The client answers the close: the handshake completes.
        c.tx.send(Ok(Message::Close(None))).await.unwrap();
        assert_eq!(
            c.task.await.unwrap(),
            Ending::Closed {
                code: CloseCode::GoingAway,
                linger: false
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn read_errors_close_by_their_type() {
        for (err, code) in [
            (
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 1 << 20,
                    max_size: 1 << 16,
                }),
                1009,
            ),
            (WsError::Utf8("bad".into()), 1007),
            (WsError::Protocol(ProtocolError::ControlFrameTooBig), 1002),
        ] {
            let mut c = spawn(Settings::default());
            c.next().await;
            c.tx.send(Err(err)).await.unwrap();
            assert_eq!(c.close_code().await, code);
            assert!(matches!(
                c.task.await.unwrap(),
                Ending::Closed { linger: true, .. }
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_gets_1008_after_what_it_was_owed_and_the_handshake_completes() {
        let mut c = spawn(Settings {
            inbound: dexpulse_core::schedule::Rate::try_new(1200.0, 3.0).unwrap(),
            ..Settings::default()
        });
        c.next().await;
        for _ in 0..10 {
            c.send(r#"{"op":"ping"}"#).await;
        }
        for _ in 0..3 {
            assert_eq!(c.next().await["type"], "pong");
        }
        assert_eq!(c.close_code().await, 1008);
        // The client was still sending when the close came: the session reads on until the
        // client's close instead of dropping the connection with unread data.
        c.send(r#"{"op":"ping"}"#).await;
        c.tx.send(Ok(Message::Close(None))).await.unwrap();
        assert!(matches!(
            c.task.await.unwrap(),
            Ending::Closed {
                code: CloseCode::Policy,
                linger: false
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_answers_pings_is_closed_with_4000() {
        let mut c = spawn(Settings::default());
        c.next().await;
        // Other messages are not pongs.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(20)).await;
            c.send(r#"{"op":"ping"}"#).await;
        }
        assert_eq!(c.close_code().await, 4000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_client_is_told_what_it_missed_then_closed_with_4008() {
        let mut c = spawn(Settings {
            queue_max_messages: 8,
            ..Settings::default()
        });
        c.next().await;
        c.send(r#"{"op":"subscribe","channel":"signals"}"#).await;
        c.next().await;
        // The client stops reading: the session's sink is a bounded channel that fills, then its
        // outbox; 4 s later it is a slow consumer. It starts reading again before the close
        // frame's grace period is over.
        publish(&c.hub, 3000);
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        let mut msgs = Vec::new();
        let code = loop {
            match c.rx.next().await.expect("closed without a close frame") {
                Message::Close(Some(cf)) => break u16::from(cf.code),
                m => msgs.extend(text_of(&m)),
            }
        };
        assert_eq!(code, 4008);
        let last: serde_json::Value = serde_json::from_str(msgs.last().unwrap()).unwrap();
        assert_eq!(last["type"], "lagged");
        let seqs: Vec<u64> = msgs
            .iter()
            .filter_map(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        // Everything not delivered is inside the final notice.
        let from = last["missed_from"].as_u64().unwrap();
        assert_eq!(last["missed_to"], 3000);
        assert_eq!(seqs, (1..from).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_comes_after_the_writers_ended_gets_its_welcome_then_1001() {
        let mut c = spawn(Settings::default());
        c.next().await;
        c.shutdown.cancel();
        assert_eq!(c.close_code().await, 1001);
        c.tx.send(Ok(Message::Close(None))).await.unwrap();
        c.task.await.unwrap();
        // The shard is empty: its writer has ended, and a late session is closed at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut late = join(
            Settings::default(),
            c.hub.clone(),
            c.shutdown.clone(),
            c.writers.clone(),
        );
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            assert_eq!(late.next().await["type"], "welcome");
            late.close_code().await
        });
        assert_eq!(
            closed.await.expect("a late session is not left hanging"),
            1001
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_pings_on_its_tick_and_a_pong_keeps_the_session() {
        let mut c = spawn(Settings::default());
        c.next().await;
        // Five heartbeats (25 s each), each answered: the session stays open.
        for _ in 0..5 {
            loop {
                match c.rx.next().await.expect("open") {
                    Message::Ping(_) => break,
                    Message::Close(cf) => panic!("closed: {cf:?}"),
                    _ => {}
                }
            }
            c.tx.send(Ok(Message::Pong(Bytes::new()))).await.unwrap();
        }
        c.send(r#"{"op":"ping"}"#).await;
        assert_eq!(c.next().await["type"], "pong");
    }
}
