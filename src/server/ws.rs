//! A WebSocket session: the upgrade (auth and limits before it), then one `select!` loop over
//! client messages, hub frames, the heartbeat, the stall timer and shutdown. A writer task owns
//! the socket's sink and drains a bounded queue (messages and bytes), feeding every queued
//! frame and flushing once per batch.
//!
//! The session never blocks the hub: frames go into its queue with `try_send`; what does not fit
//! is dropped for this session only, the client is told with `lagged` (the seq range) when the
//! queue has room again, and a queue that stays full past `stall_close_seconds` ends the session
//! with `lagged` then close 4008. Written against `Sink`/`Stream`, so it runs on any transport.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::{broadcast, mpsc, oneshot};
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

enum Out {
    /// A message and, for hub frames, when the hub published it.
    Text(Utf8Bytes, Option<i64>),
    Ping,
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

/// The outgoing queue's producer side: bounded in messages (the channel) and bytes.
struct Queue {
    tx: mpsc::Sender<Out>,
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Queue {
    /// Enqueues unless the queue is full; never waits.
    fn try_push(&self, text: Utf8Bytes, published_at_us: Option<i64>) -> bool {
        let len = text.len();
        if self.bytes.load(Ordering::Acquire) + len > self.max_bytes {
            return false;
        }
        self.bytes.fetch_add(len, Ordering::AcqRel);
        if self.tx.try_send(Out::Text(text, published_at_us)).is_err() {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Runs one session to its end. `permit` holds the connection's place until then.
pub async fn run_session<S, R, E>(sink: S, mut stream: R, ctx: SessionCtx, permit: Permit)
where
    S: Sink<Message> + Send + Unpin + 'static,
    R: Stream<Item = Result<Message, E>> + Unpin,
    E: std::fmt::Display,
{
    let _permit = permit;
    let cfg = &ctx.cfg;
    ctx.metrics.sessions.inc();
    ctx.metrics.sessions_opened.inc();
    // Subscribe before the welcome: every event after `head_seq` reaches this receiver, so a
    // resume can stitch the ring and the live stream with no gap.
    let mut signals = ctx.hub.subscribe_signals();
    let mut pairs = ctx.hub.subscribe_pairs();

    let (tx, rx) = mpsc::channel(cfg.queue_max_messages);
    let bytes = Arc::new(AtomicUsize::new(0));
    let (final_tx, final_rx) = oneshot::channel::<Final>();
    let writer = tokio::spawn(writer(
        sink,
        rx,
        final_rx,
        bytes.clone(),
        ctx.metrics.clone(),
        cfg.flush_batch,
        ctx.grace,
    ));
    let queue = Queue {
        tx,
        bytes,
        max_bytes: cfg.queue_max_bytes,
    };

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
        subs: Vec::new(),
        next_sub: 1,
        last_seq: ctx.hub.head_seq(),
        missed: None,
        stall_since: None,
        tokens: cfg.inbound_burst,
        refilled: Instant::now(),
    };
    queue.try_push(welcome.into(), None);

    let mut last_heard = Instant::now();
    let mut ticker = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let stall_limit = Duration::from_secs_f64(cfg.stall_close_seconds);
    let mut last_words: Option<Final> = None;

    loop {
        let stall_deadline = st.stall_since.map(|s| s + stall_limit);
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled() => {
                last_words = Some(Final::close(close::GOING_AWAY, "server shutting down"));
                break;
            }
            _ = async { tokio::time::sleep_until(stall_deadline.unwrap_or_else(Instant::now)).await }, if stall_deadline.is_some() => {
                last_words = Some(Final { notice: st.lagged_notice(), code: close::SLOW_CONSUMER, reason: "slow consumer", discard: true });
                break;
            }
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
                        st.handle(text.as_str(), &ctx, &queue);
                    }
                    Some(Ok(Message::Binary(_))) => {
                        if !st.take_token(cfg) {
                            last_words = Some(Final::close(close::POLICY, "rate limit exceeded"));
                            break;
                        }
                        let e = OpError::new(None, code::BAD_REQUEST, "binary messages are not supported; send JSON text");
                        queue.try_push(protocol::error_json(&e).into(), None);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            r = signals.recv() => match r {
                Ok(frame) => st.on_signal(&frame, &queue, &ctx.metrics),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // This session fell behind the hub's channel itself: the next frame it
                    // gets tells where the gap ends.
                    tracing::debug!(session = %ctx.id, skipped = n, "behind the hub");
                    st.note_missed(st.last_seq + 1, st.last_seq + n, &ctx.metrics);
                    st.last_seq += n;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            r = pairs.recv() => match r {
                Ok(p) => st.on_pair(&p, &queue, &ctx.metrics),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    last_words = Some(Final::close(close::HEARTBEAT, "heartbeat timeout"));
                    break;
                }
                let _ = queue.tx.try_send(Out::Ping);
            }
        }
    }

    if let Some(f) = last_words {
        ctx.metrics.close(f.code);
        tracing::debug!(session = %ctx.id, code = f.code, reason = f.reason, "closing");
        let _ = final_tx.send(f);
    } else {
        drop(final_tx);
    }
    drop(queue);
    let _ = writer.await;
    ctx.metrics.sessions.dec();
}

struct Session {
    subs: Vec<Sub>,
    next_sub: u64,
    /// The highest seq this session has delivered, dropped or skipped: frames at or below it
    /// are never sent (no duplicates across a resume).
    last_seq: u64,
    /// Seq range dropped since the last `lagged` notice.
    missed: Option<(u64, u64)>,
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
    fn deliver(&mut self, frame: &Frame, queue: &Queue, metrics: &Metrics) {
        if self.missed.is_some() {
            if let Some(notice) = self.lagged_notice() {
                if !queue.try_push(notice, None) {
                    self.note_missed(frame.seq, frame.seq, metrics);
                    self.stall_since.get_or_insert_with(Instant::now);
                    return;
                }
                metrics.lagged_notices.inc();
                self.missed = None;
            }
        }
        if queue.try_push(frame.text.clone(), Some(frame.published_at_us)) {
            self.stall_since = None;
        } else {
            self.note_missed(frame.seq, frame.seq, metrics);
            self.stall_since.get_or_insert_with(Instant::now);
        }
    }

    fn on_signal(&mut self, frame: &Frame, queue: &Queue, metrics: &Metrics) {
        if frame.seq <= self.last_seq {
            return;
        }
        self.last_seq = frame.seq;
        if self.signal_subs().any(|s| s.filter.matches_signal(frame)) {
            self.deliver(frame, queue, metrics);
        }
    }

    fn on_pair(&mut self, p: &PairFrame, queue: &Queue, metrics: &Metrics) {
        let wanted = self
            .subs
            .iter()
            .any(|s| s.channel == Channel::Pairs && s.filter.matches_pair(p));
        // Pair states supersede each other: one that does not fit is dropped, not owed.
        if wanted && !queue.try_push(p.text.clone(), None) {
            metrics.queue_drops.inc();
        }
    }

    fn reply(&self, queue: &Queue, json: String) {
        // A control reply that does not fit is lost like a frame: the stall timer will close a
        // session that stays full.
        queue.try_push(json.into(), None);
    }

    fn handle(&mut self, text: &str, ctx: &SessionCtx, queue: &Queue) {
        match protocol::parse(text) {
            Err(e) => self.reply(queue, protocol::error_json(&e)),
            Ok(ClientOp::Ping { id }) => {
                self.reply(queue, ServerMsg::Pong { id: id.as_ref() }.to_json())
            }
            Ok(ClientOp::Unsubscribe { id, subscription }) => {
                let before = self.subs.len();
                self.subs.retain(|s| s.id != subscription);
                if self.subs.len() == before {
                    let e = OpError::new(
                        id,
                        code::UNKNOWN_SUBSCRIPTION,
                        format!("no subscription `{subscription}`"),
                    );
                    self.reply(queue, protocol::error_json(&e));
                } else {
                    self.reply(
                        queue,
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
                    return self.reply(queue, protocol::error_json(&e));
                }
                let sub_id = format!("s{}", self.next_sub);
                self.next_sub += 1;
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
                    queue,
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
                    self.deliver(f, queue, &ctx.metrics);
                }
            }
        }
    }
}

/// Owns the sink: feeds every queued message and flushes once per batch; on the final word,
/// discards what is still queued and sends the notice and the close frame.
async fn writer<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Out>,
    mut final_rx: oneshot::Receiver<Final>,
    queued: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    batch: usize,
    grace: Duration,
) where
    S: Sink<Message> + Unpin,
{
    let last_words = loop {
        let first = tokio::select! {
            biased;
            f = &mut final_rx => break f.ok(),
            m = rx.recv() => match m {
                Some(m) => m,
                None => break (&mut final_rx).await.ok(),
            },
        };
        let work = async {
            let mut n = 0u64;
            let mut oldest: Option<i64> = None;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                let msg = match item {
                    Out::Text(t, published) => {
                        queued.fetch_sub(t.len(), Ordering::AcqRel);
                        if oldest.is_none() {
                            oldest = published;
                        }
                        n += 1;
                        Message::Text(t)
                    }
                    Out::Ping => Message::Ping(bytes::Bytes::new()),
                };
                sink.feed(msg).await.map_err(|_| ())?;
                if (n as usize) < batch {
                    next = rx.try_recv().ok();
                }
            }
            sink.flush().await.map_err(|_| ())?;
            Ok::<_, ()>((n, oldest))
        };
        tokio::select! {
            biased;
            f = &mut final_rx => break f.ok(),
            r = work => match r {
                Ok((n, oldest)) => {
                    metrics.messages_sent.inc_by(n);
                    if let Some(p) = oldest {
                        metrics.publish_to_send.observe((now_us() - p).max(0) as f64 / 1e6);
                    }
                }
                // The peer is gone.
                Err(()) => return,
            },
        }
    };
    let Some(f) = last_words else {
        let _ = tokio::time::timeout(grace, sink.close()).await;
        return;
    };
    rx.close();
    let mut rest = Vec::new();
    while let Ok(m) = rx.try_recv() {
        if let Out::Text(t, _) = m {
            queued.fetch_sub(t.len(), Ordering::AcqRel);
            if !f.discard {
                rest.push(t);
            }
        }
    }
    let bye = async {
        for t in rest {
            sink.feed(Message::Text(t)).await.map_err(|_| ())?;
        }
        if let Some(n) = f.notice {
            sink.feed(Message::Text(n)).await.map_err(|_| ())?;
            metrics.lagged_notices.inc();
        }
        sink.send(Message::Close(Some(CloseFrame {
            code: f.code,
            reason: f.reason.into(),
        })))
        .await
        .map_err(|_| ())?;
        sink.close().await.map_err(|_| ())
    };
    let _ = tokio::time::timeout(grace, bye).await;
}
