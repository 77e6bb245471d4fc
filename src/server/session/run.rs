//! The session's shell: one task, one `select!` over shutdown, the delivery step, history
//! reads, the pairs channel, client messages, the stall timer and the heartbeat. It reads the
//! clocks and does the I/O; every decision is the [`Session`]'s. Written against `Sink`/`Stream`
//! of tungstenite messages, so it runs on any transport: a socket, or channels in a unit test.
//!
//! The delivery step (`Conn::work`: take what the hub channel holds, up to `flush_batch`, and
//! write the outbox with one flush) is shared with the session's writer ([`super::shard`]),
//! which runs it after every send of the hub with the task's waker, under the session's lock:
//! the task wakes only when something is left for it. In the task the step comes first, so a
//! steady stream of frames cannot starve the socket. Read errors are classified by their type: a message over the size limit is
//! 1009, invalid UTF-8 1007, any other protocol violation 1002; an I/O error means the peer is
//! gone. Every server-initiated close sends what is owed, then the close frame, then reads
//! until the client's close (the closing handshake) or `close_linger`, so that the close frame
//! is never lost to a reset.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode as WsCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use dexpulse_core::protocol::{CloseCode, Epoch};

use super::outbox::{Out, Outbox};
use super::shard::{Pump, Writers};
use super::state::{Close, Effects, End, HubView, Inbound, Recv, Session, Tally, Wants};
use super::{FilterBudget, Settings};
use crate::hub::{Hub, PairFrame, Subscription};
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
    /// The writer tasks that deliver the hub's frames to the sessions.
    pub writers: Arc<Writers>,
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
struct Connected<'a>(&'a SessionMetrics);

impl<'a> Connected<'a> {
    fn new(m: &'a SessionMetrics) -> Connected<'a> {
        m.sessions.inc();
        Connected(m)
    }
}

impl Drop for Connected<'_> {
    fn drop(&mut self) {
        self.0.sessions.dec();
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

async fn recv<T: Clone>(
    rx: Option<&mut broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
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

/// What the session's task and its shard's writer share: everything a delivery touches.
struct Shared<S> {
    st: Session,
    out: Outbox,
    writer: Writer,
    sink: S,
    link: Option<Subscription>,
    /// What the task last waited for: a writer that changes it wakes the task.
    want: Waits,
    /// How a writer's delivery ended (the connection gone), for the task to act on. Boxed:
    /// rare, and every session carries the slot (BENCHMARKS.md, P3).
    pending: Option<Box<Effects>>,
    /// The task's waker: a writer writes with it, so that a socket that would block wakes the
    /// task, not the writer.
    waker: Option<Waker>,
    /// A writer woke the task: its next poll starts the loop over (what it waits for changed).
    recheck: bool,
}

impl<S> Shared<S> {
    /// What the closing steps need; the rest (the channel's place among them) goes.
    fn into_parts(self) -> (S, Outbox, Writer) {
        (self.sink, self.out, self.writer)
    }
}

/// Which of [`Wants`] the task waits for: what a writer's delivery can change (it never
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
/// task took the state back to close the connection.
struct Conn<S> {
    shared: Mutex<Option<Shared<S>>>,
    start: Instant,
    metrics: Arc<Metrics>,
    clock: Clock,
    flush_batch: usize,
    chunk: usize,
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

    /// One step of the state machine under the lock.
    fn with(&self, f: impl FnOnce(&mut Shared<S>, i64) -> Effects) -> Effects {
        let now = self.now();
        match self.lock().as_mut() {
            Some(sh) => f(sh, now),
            None => Effects::end(End::Peer { answer: false }),
        }
    }

    /// What the task waits for next (recorded for the writer), and what a writer left for it.
    fn begin(&self) -> (Wants, Option<Effects>) {
        match self.lock().as_mut() {
            Some(sh) => {
                let want = sh.st.wants(&sh.out, self.chunk);
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
                let e = st.on_channel(first, &mut || try_next(link), self.flush_batch, out, now);
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

    /// The task's own delivery step: as a writer's, and `Ready` as well when a writer changed
    /// what the task should wait for.
    fn poll_task(&self, cx: &mut Context<'_>) -> Poll<Effects> {
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

impl<S: Sink<Message> + Unpin + Send> Pump for Conn<S> {
    fn pump(&self, at: Instant) {
        let mut g = self.lock();
        let Some(sh) = g.as_mut() else {
            return;
        };
        // Not polled yet: the task delivers by itself first. Taken out and put back rather
        // than cloned: a pass does this for every session.
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
        let changed = sh.want != Waits::from(&sh.st.wants(&sh.out, self.chunk));
        if (sh.pending.is_some() || more || changed) && !sh.recheck {
            sh.recheck = true;
            waker.wake_by_ref();
        }
        sh.waker = Some(waker);
    }

    fn fail(&self) {
        let mut g = self.lock();
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

/// Runs one session to its end and hands the transport back with how it ended.
pub async fn run<S, R>(sink: S, mut stream: R, ctx: SessionCtx) -> (S, R, Ending)
where
    S: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let m = ctx.metrics.clone();
    let _connected = Connected::new(&m.session);
    m.session.sessions_opened.inc();
    let s = ctx.settings.clone();
    let start = Instant::now();
    let at = |ms: i64| start + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    let hub = ctx.hub.clone();
    let mut out = Outbox::new(s.queue_max_messages, s.queue_max_bytes);
    let st = Session::new(s.clone(), ctx.filter_budget.clone(), hub.head_seq(), 0);
    out.push_control(st.welcome(&ctx.id, &*hub));
    let conn = Arc::new(Conn {
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
        })),
        start,
        metrics: m.clone(),
        clock: ctx.clock.clone(),
        flush_batch: s.flush_batch,
        chunk: s.queue_max_messages.clamp(16, 1024),
    });
    let place = ctx.writers.place(conn.clone());
    let mut pairs: Option<broadcast::Receiver<Arc<PairFrame>>> = None;
    let mut ticker = tokio::time::interval_at(start + s.heartbeat, s.heartbeat);
    // One token for the epoch's end and the server's shutdown (`Hub::end_sessions_with`). A
    // child token has its own waiter list: thousands of sessions polling a shared token would
    // contend on its lock at every wake-up.
    let ended = hub.epoch_over().child_token();
    let ending = ended.cancelled();
    tokio::pin!(ending);
    let tally = &m.session;
    let mut stall = StallTimer::default();

    let end = loop {
        let (want, left) = conn.begin();
        if let Some(effects) = left {
            match conn.lock().as_mut() {
                Some(sh) => match apply(effects, sh, &hub, &mut pairs, conn.now()) {
                    Some(end) => break end,
                    None => continue,
                },
                None => break End::Peer { answer: false },
            }
        }
        let (after, limit) = want.history.unwrap_or((0, 0));
        stall.arm(want.stall_at.map(at));
        let effects = tokio::select! {
            biased;
            _ = &mut ending => {
                let code = if ctx.shutdown.is_cancelled() { CloseCode::GoingAway } else { CloseCode::Restart };
                Effects::end(End::close(code))
            }
            // Frames from the channel and writes first: a steady stream of frames cannot
            // starve the socket. Usually the shard's writer has done this already.
            e = std::future::poll_fn(|cx| conn.poll_task(cx)) => e,
            // From memory at once; older frames are awaited from the archive, and any other
            // arm that is ready first cancels the read (it is asked again).
            since = hub.read_since(after, limit), if want.history.is_some() => conn.with(|sh, now| sh.st.on_history(since, limit, &mut sh.out, now, tally)),
            _ = std::future::ready(()), if want.pair_states.is_some() => {
                let p = hub.pairs();
                let states = want.pair_states.iter().flatten().map(|k| p.message(k)).collect();
                conn.with(|sh, _| sh.st.on_pair_states(states, &mut sh.out))
            }
            r = recv(pairs.as_mut()), if pairs.is_some() => match r {
                Ok(p) => conn.with(|sh, _| sh.st.on_pair(&p, &mut sh.out)),
                // Pair states supersede each other: missing some is harmless.
                Err(broadcast::error::RecvError::Lagged(_)) => Effects::default(),
                Err(broadcast::error::RecvError::Closed) => { pairs = None; Effects::default() }
            },
            msg = stream.next() => conn.with(|sh, now| sh.st.on_inbound(inbound(&msg, &ctx.id), now, &*hub, &mut sh.out)),
            _ = std::future::poll_fn(|cx| stall.poll(cx)), if want.stall_at.is_some() => conn.with(|sh, now| sh.st.on_stalled(hub.head_seq(), now, &mut sh.out, tally)),
            _ = ticker.tick() => conn.with(|sh, now| sh.st.on_heartbeat(now, &mut sh.out)),
        };
        let now = conn.now();
        match conn.lock().as_mut() {
            Some(sh) => {
                if let Some(end) = apply(effects, sh, &hub, &mut pairs, now) {
                    break end;
                }
            }
            None => break End::Peer { answer: false },
        }
    };
    drop(place);
    let taken = conn.lock().take();
    // The rest of the state is dropped here, not carried through the closing awaits.
    let Some((sink, out, writer)) = taken.map(Shared::into_parts) else {
        unreachable!("only the session's task takes its state")
    };
    match end {
        End::Peer { answer } => {
            let mut sink = sink;
            if answer {
                // tungstenite queued its answer to the client's close: send it (boxed, as the
                // closing steps below).
                let _ = Box::pin(tokio::time::timeout(ctx.grace, sink.close())).await;
            }
            (sink, stream, Ending::Peer)
        }
        // The closing steps hold timers and futures of their own: boxed, an open session does
        // not carry their room (BENCHMARKS.md, P3).
        End::Server(last) => Box::pin(finish(sink, stream, last, out, writer, &ctx)).await,
    }
}

/// Does what the state machine asked after an input: joins the channels it named (the old
/// signal channel handed to it to drain), hands it the pairs the hub knows. `Some`: the end.
fn apply<S>(
    effects: Effects,
    sh: &mut Shared<S>,
    hub: &Hub,
    pairs: &mut Option<broadcast::Receiver<Arc<PairFrame>>>,
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
        Some(true) => *pairs = Some(hub.pairs().subscribe()),
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
    mut out: Outbox,
    mut writer: Writer,
    ctx: &SessionCtx,
) -> (S, R, Ending)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let m = &ctx.metrics;
    let s = &ctx.settings;
    m.session.close(last.code.code());
    tracing::debug!(session = %ctx.id, code = last.code.code(), reason = last.code.reason(), "closing");
    let bye = async {
        if let Some(n) = last.notice {
            out.push_control(n);
        }
        std::future::poll_fn(|cx| writer.poll_drive(cx, &mut out, &mut sink, m, &ctx.clock))
            .await?;
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
    }

    fn spawn(settings: Settings) -> Client {
        let hub = Arc::new(Hub::new(hub::Settings::default(), Clock::System));
        let (client_tx, server_rx) = mpsc::channel(1024);
        let (server_tx, client_rx) = mpsc::channel(1024);
        let shutdown = CancellationToken::new();
        hub.end_sessions_with(&shutdown);
        let ctx = SessionCtx {
            id: "c1".into(),
            hub: hub.clone(),
            settings: Arc::new(settings),
            grace: Duration::from_secs(1),
            metrics: Arc::new(Metrics::new()),
            clock: Clock::System,
            shutdown: shutdown.clone(),
            filter_budget: Arc::new(FilterBudget::new(1_000_000)),
            writers: Arc::new(Writers::new(hub.fanout().sent(), shutdown.clone(), None)),
        };
        let task = tokio::spawn(async move {
            let (_, _, ending) = run(server_tx, server_rx, ctx).await;
            ending
        });
        Client {
            tx: client_tx,
            rx: client_rx,
            task,
            hub,
            shutdown,
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
}
