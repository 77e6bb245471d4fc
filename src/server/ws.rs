//! A WebSocket session: the upgrade (auth and limits before it), then one task per session
//! running one `select!` loop over the outbox's writes, hub frames, client messages, the
//! heartbeat, the stall timer and shutdown.
//!
//! The session never blocks the hub and never waits on its client while holding frames back
//! from the others: frames go into the session's own outbox (bounded in messages and bytes);
//! what does not fit is dropped for this session only, the client is told with `lagged` (the
//! seq range) when the outbox has room again, and an outbox that stays full past
//! `stall_close_seconds` ends the session with `lagged` then close 4008. A wake-up takes every
//! frame the hub has ready, so a busy session writes many frames per flush (one syscall).
//! Written against `Sink`/`Stream`, so it runs on any transport.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{http, AppState, Permit, Refusal};
use crate::config;
use crate::hub::{now_us, Frame, Hub, PairFrame};
use crate::metrics::Metrics;
use crate::protocol::{self, close, code, Channel, ClientOp, Filter, OpError, ServerMsg};

pub async fn upgrade(
    ws: WebSocketUpgrade,
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let key = match http::authenticate(&state, &headers, &q) {
        Ok(k) => k,
        Err(r) => return r.into_response(),
    };
    let (key_name, key_max) = match &key {
        Some((k, m)) => (Some(k.as_str()), *m),
        None => (None, usize::MAX),
    };
    let permit = match state
        .limits
        .acquire(key_name, key_max, state.cfg.server.max_connections)
    {
        Ok(p) => p,
        Err(Refusal::KeyLimit) => {
            state.metrics.rejected(429);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections for this API key\n",
            )
                .into_response();
        }
        Err(Refusal::Full) => {
            state.metrics.rejected(503);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at max_connections\n",
            )
                .into_response();
        }
    };
    let s = &state.cfg.session;
    let tracker = state.sessions.clone();
    ws.read_buffer_size(s.read_buffer_bytes)
        .write_buffer_size(s.write_buffer_bytes)
        .max_write_buffer_size(
            s.write_buffer_bytes.max(s.max_message_bytes) * 4 + s.queue_max_bytes,
        )
        .max_message_size(s.max_message_bytes)
        .max_frame_size(s.max_message_bytes)
        .on_upgrade(move |socket: WebSocket| {
            tracker.track_future(async move {
                let (sink, stream) = socket.split();
                let ctx = SessionCtx {
                    id: state.session_id(),
                    hub: state.hub.clone(),
                    cfg: state.cfg.session.clone(),
                    grace: Duration::from_secs_f64(
                        state.cfg.server.shutdown_grace_seconds.max(0.1),
                    ),
                    metrics: state.metrics.clone(),
                    shutdown: state.shutdown.clone(),
                };
                run_session(sink, stream, ctx, permit).await;
            })
        })
}

/// What a session needs from the server.
pub struct SessionCtx {
    pub id: String,
    pub hub: Arc<Hub>,
    pub cfg: config::Session,
    /// How long the last messages (lagged, close) may take to leave.
    pub grace: Duration,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

/// The session's last words: an optional notice, then the close frame.
struct Final {
    notice: Option<Utf8Bytes>,
    code: u16,
    reason: &'static str,
    /// Drop what is still queued (a slow consumer would never take it); otherwise it is sent
    /// before the close frame.
    discard: bool,
}

impl Final {
    fn close(code: u16, reason: &'static str) -> Final {
        Final {
            notice: None,
            code,
            reason,
            discard: false,
        }
    }
}

struct Sub {
    id: String,
    channel: Channel,
    filter: Filter,
}

enum Out {
    /// A message and, for hub frames, when the hub published it.
    Text(Utf8Bytes, Option<i64>),
    Ping,
}

/// What waits to be written, bounded in messages and bytes. Frames share the hub's bytes, so
/// a queued frame costs a reference count, not a copy.
struct Outbox {
    items: VecDeque<Out>,
    bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Frames were handed to the sink since its last flush.
    unflushed: bool,
}

impl Outbox {
    fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            items: VecDeque::new(),
            bytes: 0,
            max_messages,
            max_bytes,
            unflushed: false,
        }
    }

    /// Enqueues unless the outbox is full; never waits.
    fn try_push(&mut self, text: Utf8Bytes, published_at_us: Option<i64>) -> bool {
        let len = text.len();
        if self.items.len() >= self.max_messages || self.bytes + len > self.max_bytes {
            return false;
        }
        self.bytes += len;
        self.items.push_back(Out::Text(text, published_at_us));
        true
    }

    /// Enqueues past the limits: the session's last word is owed.
    fn push_owed(&mut self, text: Utf8Bytes) {
        self.bytes += text.len();
        self.items.push_back(Out::Text(text, None));
    }

    fn ping(&mut self) {
        self.items.push_back(Out::Ping);
    }

    fn has_work(&self) -> bool {
        !self.items.is_empty() || self.unflushed
    }

    /// Drops what is queued (a stalled client's backlog).
    fn discard(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }

    /// Hands queued messages to the sink while it is ready, then flushes once. Cancel-safe:
    /// its state is the outbox and the sink, so a `select!` may drop it at any `Pending`.
    /// `Err` means the peer is gone.
    fn poll_drive<S>(
        &mut self,
        cx: &mut Context<'_>,
        sink: &mut S,
        metrics: &Metrics,
    ) -> Poll<Result<(), ()>>
    where
        S: Sink<Message> + Unpin,
    {
        let mut sent = 0u64;
        let mut oldest: Option<i64> = None;
        let result = loop {
            if self.items.is_empty() {
                if !self.unflushed {
                    break Poll::Ready(Ok(()));
                }
                match Pin::new(&mut *sink).poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.unflushed = false;
                        metrics.flushes.inc();
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
            let msg = match self.items.pop_front() {
                Some(Out::Text(t, published)) => {
                    self.bytes -= t.len();
                    if oldest.is_none() {
                        oldest = published;
                    }
                    sent += 1;
                    Message::Text(t)
                }
                Some(Out::Ping) => Message::Ping(bytes::Bytes::new()),
                None => continue,
            };
            if Pin::new(&mut *sink).start_send(msg).is_err() {
                break Poll::Ready(Err(()));
            }
            self.unflushed = true;
        };
        if sent > 0 {
            metrics.messages_sent.inc_by(sent);
        }
        if let Some(p) = oldest {
            metrics
                .publish_to_send
                .observe((now_us() - p).max(0) as f64 / 1e6);
        }
        result
    }

    /// Writes everything queued and flushes.
    async fn drain<S>(&mut self, sink: &mut S, metrics: &Metrics) -> Result<(), ()>
    where
        S: Sink<Message> + Unpin,
    {
        std::future::poll_fn(|cx| self.poll_drive(cx, sink, metrics)).await
    }
}

/// Runs one session to its end. `permit` holds the connection's place until then.
pub async fn run_session<S, R, E>(mut sink: S, mut stream: R, ctx: SessionCtx, permit: Permit)
where
    S: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let _permit = permit;
    let cfg = &ctx.cfg;
    ctx.metrics.sessions.inc();
    ctx.metrics.sessions_opened.inc();
    let mut out = Outbox::new(cfg.queue_max_messages, cfg.queue_max_bytes);

    let heartbeat = Duration::from_secs_f64(cfg.heartbeat_seconds);
    let welcome = ServerMsg::Welcome {
        protocol: protocol::PROTOCOL_VERSION,
        server: concat!("dexpulse/", env!("CARGO_PKG_VERSION")),
        session: &ctx.id,
        epoch: ctx.hub.epoch(),
        head_seq: ctx.hub.head_seq(),
        heartbeat_s: cfg.heartbeat_seconds,
    }
    .to_json();
    let mut st = Session {
        signals: None,
        pairs: None,
        subs: Vec::new(),
        next_sub: 1,
        last_seq: ctx.hub.head_seq(),
        missed: None,
        behind_after: None,
        stall_since: None,
        tokens: cfg.inbound_burst,
        refilled: Instant::now(),
    };
    out.try_push(welcome.into(), None);

    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let stall_limit = Duration::from_secs_f64(cfg.stall_close_seconds);
    // A child token has its own waiter list: thousands of sessions polling the server's token
    // would contend on its lock at every wake-up.
    let shutdown = ctx.shutdown.child_token();
    let stopped = shutdown.cancelled();
    tokio::pin!(stopped);
    let mut last_words: Option<Final> = None;

    loop {
        let stall_deadline = st.stall_since.map(|s| s + stall_limit);
        let writing = out.has_work();
        // Writes come before new frames, so that a steady stream cannot starve the socket.
        tokio::select! {
            biased;
            _ = &mut stopped => {
                last_words = Some(Final::close(close::GOING_AWAY, "server shutting down"));
                break;
            }
            w = std::future::poll_fn(|cx| out.poll_drive(cx, &mut sink, &ctx.metrics)), if writing => {
                if w.is_err() {
                    // The peer is gone: nobody is left to say anything to.
                    ctx.metrics.sessions.dec();
                    return;
                }
            }
            r = recv(&mut st.signals), if st.signals.is_some() => {
                let mut next = Some(r);
                let mut taken = 0;
                while let Some(r) = next.take() {
                    match r {
                        Ok(frame) => st.on_signal(&frame, &mut out, &ctx.metrics),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            // This session fell behind the hub's channel itself: the next frame
                            // it gets tells where the gap ends.
                            tracing::debug!(session = %ctx.id, skipped = n, "behind the hub");
                            st.behind_hub();
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            st.signals = None;
                            break;
                        }
                    }
                    taken += 1;
                    // Take what else is ready: one flush (one syscall) for the lot.
                    if taken < cfg.flush_batch {
                        next = match st.signals.as_mut().map(|rx| rx.try_recv()) {
                            Some(Ok(f)) => Some(Ok(f)),
                            Some(Err(broadcast::error::TryRecvError::Lagged(n))) => Some(Err(broadcast::error::RecvError::Lagged(n))),
                            _ => None,
                        };
                    }
                }
            }
            r = recv(&mut st.pairs), if st.pairs.is_some() => match r {
                Ok(p) => st.on_pair(&p, &mut out, &ctx.metrics),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(e)) => {
                        let text = e.to_string();
                        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
                            last_words = Some(Final::close(close::TOO_BIG, "message too big"));
                        } else {
                            tracing::debug!(session = %ctx.id, error = %text, "read error");
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) => {
                        if !st.take_token(cfg) {
                            last_words = Some(Final::close(close::POLICY, "rate limit exceeded"));
                            break;
                        }
                        st.handle(text.as_str(), &ctx, &mut out);
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !st.take_token(cfg) {
                            last_words = Some(Final::close(close::POLICY, "rate limit exceeded"));
                            break;
                        }
                        let e = OpError::new(None, code::BAD_REQUEST, "binary messages are not supported; send JSON text");
                        out.try_push(protocol::error_json(&e).into(), None);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = async { tokio::time::sleep_until(stall_deadline.unwrap_or_else(Instant::now)).await }, if stall_deadline.is_some() => {
                if let Some(since) = st.stall_since {
                    ctx.metrics.stall_to_close.observe(since.elapsed().as_secs_f64());
                }
                last_words = Some(Final { notice: st.lagged_notice(), code: close::SLOW_CONSUMER, reason: "slow consumer", discard: true });
                break;
            }
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    last_words = Some(Final::close(close::HEARTBEAT, "heartbeat timeout"));
                    break;
                }
                out.ping();
            }
        }
    }

    match last_words {
        Some(f) => {
            ctx.metrics.close(f.code);
            tracing::debug!(session = %ctx.id, code = f.code, reason = f.reason, "closing");
            let bye = async {
                if f.discard {
                    out.discard();
                }
                if let Some(n) = f.notice {
                    out.push_owed(n);
                    ctx.metrics.lagged_notices.inc();
                }
                out.drain(&mut sink, &ctx.metrics).await?;
                sink.send(Message::Close(Some(CloseFrame {
                    code: f.code,
                    reason: f.reason.into(),
                })))
                .await
                .map_err(|_| ())?;
                sink.close().await.map_err(|_| ())
            };
            let _ = tokio::time::timeout(ctx.grace, bye).await;
        }
        None => {
            let _ = tokio::time::timeout(ctx.grace, sink.close()).await;
        }
    }
    ctx.metrics.sessions.dec();
}

/// A hub receiver, or forever pending without one (`select!` disables that branch anyway).
async fn recv<T: Clone>(
    rx: &mut Option<broadcast::Receiver<T>>,
) -> Result<T, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

struct Session {
    /// The hub's channels, joined at the first subscription to each and left with the last:
    /// a session that wants nothing from a channel is never woken by it. The signals channel
    /// is the one for this session's filter set, so it carries only frames the session wants.
    signals: Option<broadcast::Receiver<Arc<Frame>>>,
    pairs: Option<broadcast::Receiver<Arc<PairFrame>>>,
    subs: Vec<Sub>,
    next_sub: u64,
    /// The highest seq this session has delivered, dropped or skipped: frames at or below it
    /// are never sent (no duplicates across a resume).
    last_seq: u64,
    /// Seq range dropped since the last `lagged` notice.
    missed: Option<(u64, u64)>,
    /// The session fell behind its hub channel after this seq: the next frame it gets ends the
    /// gap (a filtered channel's seqs are not contiguous, so the gap's end is not known before).
    behind_after: Option<u64>,
    stall_since: Option<Instant>,
    tokens: f64,
    refilled: Instant,
}

impl Session {
    fn take_token(&mut self, cfg: &config::Session) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + dt * cfg.inbound_per_second).min(cfg.inbound_burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Joins a hub channel at its first subscription. Receiver first, then the head: every
    /// event after that head reaches the receiver, and the ring holds the ones before, so a
    /// resume stitches the two with no gap (duplicates are dropped by seq).
    /// Moves the session to the hub channel of `filters` (its signal subscriptions' filters
    /// after a subscribe or unsubscribe; none: it leaves) without losing or repeating a frame
    /// that the subscriptions it already had want.
    ///
    /// New receiver first, then the head H: every frame after H reaches the new receiver.
    /// Frames up to H that the old subscriptions want are in the old receiver, or, if they were
    /// being published during the switch, at the ring's tail: both are read in seq order
    /// before the session continues from H on the new receiver.
    fn switch_signals(&mut self, filters: &[Filter], hub: &Hub, out: &mut Outbox, m: &Metrics) {
        let new = (!filters.is_empty()).then(|| hub.subscribe_signals(filters));
        let head = hub.head_seq();
        if let Some(mut old) = self.signals.take() {
            loop {
                match old.try_recv() {
                    Ok(f) if f.seq <= head => self.on_signal(&f, out, m),
                    Ok(_) => {}
                    Err(broadcast::error::TryRecvError::Lagged(_)) => self.behind_hub(),
                    Err(_) => break,
                }
            }
            if self.last_seq < head {
                for f in hub.since(self.last_seq).frames {
                    if f.seq <= head {
                        self.on_signal(&f, out, m);
                    }
                }
            }
        }
        self.last_seq = self.last_seq.max(head);
        self.signals = new;
    }

    fn signal_filters(&self) -> Vec<Filter> {
        self.signal_subs().map(|s| s.filter.clone()).collect()
    }

    fn behind_hub(&mut self) {
        self.behind_after.get_or_insert(self.last_seq);
    }

    fn signal_subs(&self) -> impl Iterator<Item = &Sub> {
        self.subs.iter().filter(|s| s.channel == Channel::Signals)
    }

    fn lagged_notice(&self) -> Option<Utf8Bytes> {
        let (from, to) = self.missed?;
        let sub = self.signal_subs().next().map_or("", |s| s.id.as_str());
        Some(
            ServerMsg::Lagged {
                subscription: sub,
                missed_from: from,
                missed_to: to,
            }
            .to_json()
            .into(),
        )
    }

    fn note_missed(&mut self, from: u64, to: u64, metrics: &Metrics) {
        if from > to {
            return;
        }
        metrics.queue_drops.inc_by(to - from + 1);
        self.missed = Some(match self.missed {
            Some((f, _)) => (f, to),
            None => (from, to),
        });
    }

    /// Queues a frame this session wants, after any pending `lagged` notice.
    fn deliver(&mut self, frame: &Frame, out: &mut Outbox, metrics: &Metrics) {
        if self.missed.is_some() {
            if let Some(notice) = self.lagged_notice() {
                if !out.try_push(notice, None) {
                    self.note_missed(frame.seq, frame.seq, metrics);
                    self.stall_since.get_or_insert_with(Instant::now);
                    return;
                }
                metrics.lagged_notices.inc();
                self.missed = None;
            }
        }
        if out.try_push(frame.text.clone(), Some(frame.published_at_us)) {
            self.stall_since = None;
        } else {
            self.note_missed(frame.seq, frame.seq, metrics);
            self.stall_since.get_or_insert_with(Instant::now);
        }
    }

    fn on_signal(&mut self, frame: &Frame, out: &mut Outbox, metrics: &Metrics) {
        if frame.seq <= self.last_seq {
            return;
        }
        if let Some(after) = self.behind_after.take() {
            self.note_missed(after + 1, frame.seq - 1, metrics);
        }
        self.last_seq = frame.seq;
        if self.signal_subs().any(|s| s.filter.matches_signal(frame)) {
            self.deliver(frame, out, metrics);
        }
    }

    fn on_pair(&mut self, p: &PairFrame, out: &mut Outbox, metrics: &Metrics) {
        let wanted = self
            .subs
            .iter()
            .any(|s| s.channel == Channel::Pairs && s.filter.matches_pair(p));
        // Pair states supersede each other: one that does not fit is dropped, not owed.
        if wanted && !out.try_push(p.text.clone(), None) {
            metrics.queue_drops.inc();
        }
    }

    fn reply(&self, out: &mut Outbox, json: String) {
        // A control reply that does not fit is lost like a frame: the stall timer will close a
        // session that stays full.
        out.try_push(json.into(), None);
    }

    fn handle(&mut self, text: &str, ctx: &SessionCtx, out: &mut Outbox) {
        match protocol::parse(text) {
            Err(e) => self.reply(out, protocol::error_json(&e)),
            Ok(ClientOp::Ping { id }) => {
                self.reply(out, ServerMsg::Pong { id: id.as_ref() }.to_json())
            }
            Ok(ClientOp::Unsubscribe { id, subscription }) => {
                let before = self.subs.len();
                let was_signals = self
                    .subs
                    .iter()
                    .any(|s| s.id == subscription && s.channel == Channel::Signals);
                self.subs.retain(|s| s.id != subscription);
                if was_signals {
                    self.switch_signals(&self.signal_filters(), &ctx.hub, out, &ctx.metrics);
                }
                if !self.subs.iter().any(|s| s.channel == Channel::Pairs) {
                    self.pairs = None;
                }
                if self.subs.len() == before {
                    let e = OpError::new(
                        id,
                        code::UNKNOWN_SUBSCRIPTION,
                        format!("no subscription `{subscription}`"),
                    );
                    self.reply(out, protocol::error_json(&e));
                } else {
                    self.reply(
                        out,
                        ServerMsg::Unsubscribed {
                            id: id.as_ref(),
                            subscription: &subscription,
                        }
                        .to_json(),
                    );
                }
            }
            Ok(ClientOp::Subscribe {
                id,
                channel,
                filter,
                resume_from,
            }) => {
                if self.subs.len() >= ctx.cfg.max_subscriptions {
                    let e = OpError::new(
                        id,
                        code::TOO_MANY_SUBSCRIPTIONS,
                        format!("at most {} subscriptions", ctx.cfg.max_subscriptions),
                    );
                    return self.reply(out, protocol::error_json(&e));
                }
                let sub_id = format!("s{}", self.next_sub);
                self.next_sub += 1;
                match channel {
                    Channel::Signals => {
                        let mut filters = self.signal_filters();
                        filters.push(filter.clone());
                        self.switch_signals(&filters, &ctx.hub, out, &ctx.metrics);
                    }
                    Channel::Pairs => {
                        if self.pairs.is_none() {
                            self.pairs = Some(ctx.hub.subscribe_pairs());
                        }
                    }
                }
                let head = ctx.hub.head_seq();
                let mut replay = Vec::new();
                let (recovered, oldest) = match &resume_from {
                    None => (None, None),
                    Some(r) => {
                        let since = ctx.hub.since(r.seq);
                        if r.epoch == ctx.hub.epoch() && since.complete {
                            replay = since.frames;
                            (Some(true), None)
                        } else {
                            (Some(false), Some(since.oldest_seq))
                        }
                    }
                };
                self.reply(
                    out,
                    ServerMsg::Subscribed {
                        id: id.as_ref(),
                        subscription: &sub_id,
                        channel,
                        head_seq: head,
                        recovered,
                        oldest_seq: oldest,
                    }
                    .to_json(),
                );
                // Frames this session skipped before subscribing (seq ≤ last_seq) are replayed
                // from the ring; later ones come from the live receiver, deduplicated by seq.
                // ... except what an existing subscription already took: each event once.
                let sent_up_to = self.last_seq;
                let wanted: Vec<_> = replay
                    .into_iter()
                    .filter(|f| f.seq <= sent_up_to && filter.matches_signal(f))
                    .filter(|f| !self.signal_subs().any(|s| s.filter.matches_signal(f)))
                    .collect();
                self.subs.push(Sub {
                    id: sub_id,
                    channel,
                    filter,
                });
                for f in &wanted {
                    self.deliver(f, out, &ctx.metrics);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Meta;
    use crate::model::{Direction, Kind};

    fn session() -> Session {
        Session {
            signals: None,
            pairs: None,
            subs: Vec::new(),
            next_sub: 1,
            last_seq: 0,
            missed: None,
            behind_after: None,
            stall_since: None,
            tokens: 1.0,
            refilled: Instant::now(),
        }
    }

    fn chain(c: &str) -> Filter {
        Filter {
            chains: Some(vec![c.to_string()]),
            ..Filter::default()
        }
    }

    fn subscribe(st: &mut Session, c: &str, hub: &Hub, out: &mut Outbox, m: &Metrics) {
        let mut filters = st.signal_filters();
        filters.push(chain(c));
        st.switch_signals(&filters, hub, out, m);
        st.subs.push(Sub {
            id: format!("s{}", st.subs.len() + 1),
            channel: Channel::Signals,
            filter: chain(c),
        });
    }

    fn publish(hub: &Hub, c: &str) {
        let meta = Meta {
            chain: c,
            pair_address: "p",
            kind: Kind::VolumeSurge,
            direction: Direction::Bullish,
            score: 70,
        };
        hub.publish_raw(meta, "{}");
    }

    /// What the session takes from its hub channel now, then the seqs in its outbox.
    fn delivered(st: &mut Session, out: &mut Outbox, m: &Metrics) -> Vec<u64> {
        while let Some(r) = st.signals.as_mut().map(|rx| rx.try_recv()) {
            match r {
                Ok(f) => st.on_signal(&f, out, m),
                Err(broadcast::error::TryRecvError::Lagged(_)) => st.behind_hub(),
                Err(_) => break,
            }
        }
        out.items
            .iter()
            .filter_map(|o| match o {
                Out::Text(t, _) => serde_json::from_str::<serde_json::Value>(t.as_str()).ok(),
                Out::Ping => None,
            })
            .filter_map(|v| v["seq"].as_u64())
            .collect()
    }

    #[test]
    fn a_switch_keeps_what_the_old_channel_still_held() {
        let (hub, m) = (Hub::new(config::Hub::default()), Metrics::new());
        let (mut st, mut out) = (session(), Outbox::new(100, 1 << 20));
        subscribe(&mut st, "sim", &hub, &mut out, &m);
        for c in ["sim", "base", "sim"] {
            publish(&hub, c);
        }
        // 1 and 3 wait in the old channel, unread, when the session subscribes to more.
        subscribe(&mut st, "base", &hub, &mut out, &m);
        publish(&hub, "base");
        publish(&hub, "sim");
        assert_eq!(delivered(&mut st, &mut out, &m), [1, 3, 4, 5]);
        assert_eq!(hub.topics_open(), 1, "the old channel was left");
    }

    #[test]
    fn a_frame_published_during_the_switch_comes_from_the_ring() {
        let (hub, m) = (Hub::new(config::Hub::default()), Metrics::new());
        let (mut st, mut out) = (session(), Outbox::new(100, 1 << 20));
        subscribe(&mut st, "sim", &hub, &mut out, &m);
        // As if 1 had reached the ring and the head but not yet the old channel when the
        // session switched: a channel joined after it was sent never gets it.
        st.signals = None;
        publish(&hub, "sim");
        st.signals = Some(hub.subscribe_signals(&[chain("sim")]));
        subscribe(&mut st, "base", &hub, &mut out, &m);
        publish(&hub, "sim");
        assert_eq!(delivered(&mut st, &mut out, &m), [1, 2]);
    }

    #[test]
    fn leaving_a_subscription_keeps_the_others_frames_and_drops_its_own() {
        let (hub, m) = (Hub::new(config::Hub::default()), Metrics::new());
        let (mut st, mut out) = (session(), Outbox::new(100, 1 << 20));
        subscribe(&mut st, "sim", &hub, &mut out, &m);
        subscribe(&mut st, "base", &hub, &mut out, &m);
        for c in ["sim", "base", "sim", "base"] {
            publish(&hub, c);
        }
        st.subs.retain(|s| s.id != "s2");
        st.switch_signals(&st.signal_filters(), &hub, &mut out, &m);
        publish(&hub, "base");
        publish(&hub, "sim");
        assert_eq!(delivered(&mut st, &mut out, &m), [1, 3, 6]);
        st.subs.clear();
        st.switch_signals(&[], &hub, &mut out, &m);
        assert!(st.signals.is_none());
        publish(&hub, "sim");
        assert_eq!(hub.signal_receivers(), 0);
    }

    #[test]
    fn falling_behind_a_filtered_channel_reports_the_gap_up_to_the_next_frame() {
        let cfg = config::Hub {
            topic_capacity: 16,
            ..config::Hub::default()
        };
        let (hub, m) = (Hub::new(cfg), Metrics::new());
        let (mut st, mut out) = (session(), Outbox::new(100, 1 << 20));
        subscribe(&mut st, "sim", &hub, &mut out, &m);
        for i in 0..40 {
            publish(&hub, if i % 2 == 0 { "sim" } else { "base" });
        }
        let got = delivered(&mut st, &mut out, &m);
        assert_eq!(got.len(), 16, "the channel kept its last 16");
        // The notice goes before the first frame after the gap: from the seq after the last
        // one the session had (none: 1) to the one before that frame.
        let first: serde_json::Value = match &out.items[0] {
            Out::Text(t, _) => serde_json::from_str(t.as_str()).unwrap(),
            Out::Ping => panic!("a ping"),
        };
        assert_eq!(first["type"], "lagged");
        assert_eq!(
            (first["missed_from"].as_u64(), first["missed_to"].as_u64()),
            (Some(1), Some(got[0] - 1))
        );
    }
}
