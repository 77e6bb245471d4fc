//! The session as a state machine (docs/protocol.md): subscriptions, where the session stands in
//! the stream, what it owes a resumed subscription, what it could not deliver, the inbound rate
//! limit, liveness. No I/O, no clock: every input carries the time (ms since the session
//! began). Every handler puts what to send into the [`Outbox`] and returns one [`Effects`]
//! (channels to join or leave, how the session ends); [`Session::wants`] says what to read
//! next. The shell only moves bytes and time.
//!
//! The stream. The session delivers frames in seq order from one position, `pos`. While it is
//! *live* it takes them from its hub channel; while it is *catching up* (its channel lagged, its
//! outbox filled, or it changed channels) it reads them from the hub's history, in chunks, only
//! as fast as its outbox drains: a slow client loses nothing the history still holds, and a
//! resume larger than the outbox is streamed, never overflowed. What the history no longer holds
//! is reported with `lagged` (the seq range) as soon as the outbox has room.
//!
//! Each event once. A frame is delivered when a signal subscription matches it and came after
//! that subscription's start (`from`: the head when it subscribed, or the seq it resumed from).
//! A resumed subscription's past before `pos` (its backlog) is replayed first, skipping what the
//! subscriptions that existed then already matched.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use dexpulse_core::model::PairKey;
use dexpulse_core::protocol::{
    self, Channel, ClientOp, CloseCode, Epoch, ErrorCode, Filter, FilterSet, OpError, ServerMsg,
};
use dexpulse_core::schedule::TokenBucket;

use super::outbox::Outbox;
use super::{FilterBudget, Settings};
use crate::hub::{Frame, PairFrame, Since};

/// What a session reads of the hub when a client subscribes.
pub trait HubView {
    fn epoch(&self) -> Epoch;
    fn head(&self) -> u64;
    /// The oldest retained seq (head + 1 when nothing is retained).
    fn oldest(&self) -> u64;
}

/// What a session counts (the shell binds it to the server's metrics).
pub trait Tally {
    /// Seqs reported missing in a `lagged` notice.
    fn missed(&self, n: u64);
    fn lagged_notice(&self);
    /// Frames discarded from a slow consumer's outbox at its 4008 close.
    fn dropped(&self, n: u64);
    /// From the outbox filling to the slow consumer's close.
    fn stall_to_close(&self, seconds: f64);
}

/// One read of the session's hub channel, as the shell found it.
pub enum Recv {
    Frame(Arc<Frame>),
    /// The channel dropped frames this session had not taken.
    Lagged,
    /// Nothing more now (or the channel is gone).
    Empty,
}

/// What the client sent, or what became of the connection, as the shell read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inbound<'a> {
    Text(&'a str),
    Binary,
    Ping,
    Pong,
    /// The client's close frame, or the end of the stream.
    Closed,
    /// The connection is gone (reset, I/O error): nobody to tell.
    Gone,
    /// Nothing the protocol reads (a raw frame, which a WebSocket reader never yields).
    Nothing,
    /// The client broke the WebSocket protocol: close with this code; the read side is out of
    /// step, so the closing handshake cannot complete.
    Broken(CloseCode),
}

/// How the session ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The client closed (`answer`: its close frame is owed the WebSocket layer's answer) or
    /// is gone.
    Peer { answer: bool },
    /// The server closes.
    Server(Close),
}

/// A close the server makes: what is owed, then `notice` (if any), then the close frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Close {
    pub code: CloseCode,
    pub notice: Option<Bytes>,
    /// The read side is out of step: the handshake cannot be completed on the WebSocket.
    pub read_broken: bool,
}

impl End {
    pub fn close(code: CloseCode) -> End {
        End::Server(Close {
            code,
            notice: None,
            read_broken: false,
        })
    }
}

/// What the shell must do after any input: the state machine's one output besides the outbox
/// (what to send) and [`Wants`] (what to read).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// The signal filter set changed: join its channel and hand the old one to
    /// [`Session::rejoin`].
    pub rejoin: bool,
    /// Join (`true`) or leave (`false`) the pairs channel.
    pub pairs: Option<bool>,
    /// A pairs subscription began: after joining the pairs channel, hand the keys of every
    /// pair the hub knows to [`Session::pairs_known`].
    pub pair_states: bool,
    pub end: Option<End>,
}

impl Effects {
    pub fn end(end: End) -> Effects {
        Effects {
            end: Some(end),
            ..Effects::default()
        }
    }
}

/// What the session wants to read before its next input.
#[derive(Debug, Clone, PartialEq)]
pub struct Wants {
    /// From the history: `(after, limit)`.
    pub history: Option<(u64, usize)>,
    /// The current states of these pairs, in this order.
    pub pair_states: Option<Vec<PairKey>>,
    /// Frames from the hub channel.
    pub live: bool,
    /// When the session is closed as a slow consumer if its outbox stays full (ms).
    pub stall_at: Option<i64>,
}

struct Sub {
    id: String,
    channel: Channel,
    filter: Arc<Filter>,
    /// Frames after this seq are this subscription's.
    from: u64,
}

/// A resumed subscription's past: frames in `(next_after, until]` it matches and the
/// subscriptions before it (`prior`, with their starts) did not.
struct Backlog {
    sub: String,
    filter: Arc<Filter>,
    prior: Vec<(Arc<Filter>, u64)>,
    next_after: u64,
    until: u64,
}

pub struct Session {
    settings: Arc<Settings>,
    /// Shared with every session: entries taken here are given back on unsubscribe and drop.
    budget: Arc<FilterBudget>,
    subs: Vec<Sub>,
    next_sub: u64,
    filter_entries: usize,
    /// Every frame up to here has been delivered, skipped or reported missing.
    pos: u64,
    catching_up: bool,
    backlogs: VecDeque<Backlog>,
    /// Seqs the history no longer held, not yet reported.
    missed: Option<(u64, u64)>,
    /// When the outbox last filled (ms); cleared when it drains.
    full_since: Option<i64>,
    /// Since the last join, a subscription was added that wants frames after this seq which the
    /// old channel (filtered for the old set) may not carry: the old channel is read only up to
    /// here, the rest comes from the history.
    drain_cut: Option<u64>,
    inbound: TokenBucket,
    last_pong_ms: i64,
    /// Pairs whose current state is owed to a new `pairs` subscription, sent as the outbox
    /// drains (rendered when sent, so never staler than a live update sent before them).
    pair_backlog: VecDeque<PairKey>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.budget.give(self.filter_entries);
    }
}

fn bytes(s: String) -> Bytes {
    Bytes::from(s)
}

impl Session {
    pub fn new(
        settings: Arc<Settings>,
        budget: Arc<FilterBudget>,
        head: u64,
        now_ms: i64,
    ) -> Session {
        let inbound = settings.inbound.full_bucket(now_ms);
        Session {
            settings,
            budget,
            subs: Vec::new(),
            next_sub: 1,
            filter_entries: 0,
            pos: head,
            catching_up: false,
            backlogs: VecDeque::new(),
            missed: None,
            full_since: None,
            drain_cut: None,
            inbound,
            last_pong_ms: now_ms,
            pair_backlog: VecDeque::new(),
        }
    }

    /// The keys of every pair the hub knows, read after joining the pairs channel so that no
    /// change falls between: the newest pairs subscription is owed the state of each pair its
    /// filter matches, in key order.
    pub fn pairs_known(&mut self, mut keys: Vec<PairKey>) {
        let Some(sub) = self.subs.iter().rev().find(|s| s.channel == Channel::Pairs) else {
            return;
        };
        keys.retain(|k| sub.filter.matches_pair(k));
        keys.sort_unstable();
        self.pair_backlog.extend(keys);
    }

    /// What to read next, `chunk` items at most a read. Nothing is read while the outbox is
    /// full: the session takes only what it can hold.
    pub fn wants(&self, out: &Outbox, chunk: usize) -> Wants {
        Wants {
            history: self.history_wanted(out, chunk),
            pair_states: self.pair_states_wanted(out, chunk),
            live: self.is_live(),
            stall_at: self.stall_deadline(),
        }
    }

    /// The next pairs whose state the shell should render, when the outbox has room.
    fn pair_states_wanted(&self, out: &Outbox, chunk: usize) -> Option<Vec<PairKey>> {
        if !out.has_room() || self.pair_backlog.is_empty() {
            return None;
        }
        Some(self.pair_backlog.iter().take(chunk).cloned().collect())
    }

    /// The states of the pairs [`Wants::pair_states`] named, in its order (`None`: no longer
    /// tracked). What does not fit stays owed.
    pub fn on_pair_states(&mut self, states: Vec<Option<Bytes>>, out: &mut Outbox) -> Effects {
        for state in states {
            let Some(key) = self.pair_backlog.front() else {
                break;
            };
            if let Some(text) = state {
                let wanted = self
                    .subs
                    .iter()
                    .any(|s| s.channel == Channel::Pairs && s.filter.matches_pair(key));
                if wanted && !out.push_droppable(text) {
                    break;
                }
            }
            self.pair_backlog.pop_front();
        }
        Effects::default()
    }

    /// The `welcome` message.
    pub fn welcome(&self, id: &str, hub: &dyn HubView) -> Bytes {
        bytes(
            ServerMsg::Welcome {
                protocol: protocol::PROTOCOL_VERSION,
                server: concat!("dexpulse/", env!("CARGO_PKG_VERSION")),
                session: id,
                epoch: hub.epoch().as_str(),
                head_seq: hub.head(),
                heartbeat_s: self.settings.heartbeat.as_secs_f64(),
            }
            .to_json(),
        )
    }

    /// The filter set of the signal subscriptions: the hub channel to be on.
    pub fn signal_set(&self) -> FilterSet {
        FilterSet::new(self.signal_subs().map(|s| &s.filter))
    }

    fn signal_subs(&self) -> impl Iterator<Item = &Sub> {
        self.subs.iter().filter(|s| s.channel == Channel::Signals)
    }

    /// Whether frames are taken from the hub channel now (not from the history).
    pub fn is_live(&self) -> bool {
        !self.catching_up && self.backlogs.is_empty()
    }

    /// Whether a live frame is for this session (some subscription that began before it
    /// matches it).
    fn wanted(&self, f: &Frame) -> bool {
        self.signal_subs()
            .any(|s| f.seq > s.from && s.filter.matches(&f.meta))
    }

    fn after_push(&mut self, out: &Outbox, now: i64) {
        if !out.has_room() {
            self.full_since.get_or_insert(now);
        }
    }

    fn deliver(&mut self, f: &Frame, out: &mut Outbox, now: i64) {
        out.push_frame(f.text.clone(), f.seq, f.published_at_us);
        self.after_push(out, now);
    }

    fn reply(&mut self, out: &mut Outbox, json: String, now: i64) {
        out.push_control(bytes(json));
        self.after_push(out, now);
    }

    /// Frames from the hub channel (while live): `first`, then more from `next` while the
    /// session stays live, `batch` in all at most (they are written with one flush).
    pub fn on_channel(
        &mut self,
        first: Recv,
        next: &mut dyn FnMut() -> Recv,
        batch: usize,
        out: &mut Outbox,
        now: i64,
    ) -> Effects {
        let mut r = first;
        for taken in 1.. {
            match r {
                Recv::Frame(f) => self.on_live(&f, out, now),
                // Read the dropped frames from the history.
                Recv::Lagged => self.catching_up = true,
                Recv::Empty => break,
            }
            if taken >= batch || !self.is_live() {
                break;
            }
            r = next();
        }
        Effects::default()
    }

    /// A frame from the hub channel (only while live).
    fn on_live(&mut self, f: &Frame, out: &mut Outbox, now: i64) {
        if f.seq <= self.pos {
            return;
        }
        if !out.has_room() {
            // Not taken: it stays in the history, where catching up will find it.
            self.catching_up = true;
            return;
        }
        self.pos = f.seq;
        if self.wanted(f) {
            self.deliver(f, out, now);
        }
    }

    /// The shell joined the channel of [`Session::signal_set`] (after [`Effects::rejoin`]):
    /// every frame after `head` comes through it. What the old channel still holds (read with
    /// `old`) is taken in order now, up to the new head and up to where a subscription added
    /// since the last join starts (the old channel was filtered without it); the rest is on the
    /// new channel or in the history.
    pub fn rejoin(
        &mut self,
        head: u64,
        oldest: u64,
        old: Option<&mut dyn FnMut() -> Recv>,
        out: &mut Outbox,
        now: i64,
    ) {
        let mut clean = !self.catching_up;
        if let Some(next) = old {
            let cut = head.min(self.drain_cut.unwrap_or(u64::MAX));
            loop {
                match next() {
                    Recv::Empty => break,
                    // Left on the old channel: the history has it.
                    _ if !self.is_live() => {
                        clean = false;
                        break;
                    }
                    Recv::Frame(f) if f.seq <= cut => self.on_live(&f, out, now),
                    Recv::Frame(_) => clean = false,
                    // What it dropped is read from the history, not skipped over.
                    Recv::Lagged => {
                        clean = false;
                        self.catching_up = true;
                    }
                }
            }
        }
        self.joined(head, oldest, clean);
    }

    /// `clean`: the previous channel was drained whole, without lagging, so frames the history
    /// has since dropped (before `oldest`) had all reached this session through it.
    fn joined(&mut self, head: u64, oldest: u64, clean: bool) {
        self.drain_cut = None;
        let start = self.signal_subs().map(|s| s.from).min().unwrap_or(head);
        // Frames no subscription is owed are nobody's: skip them.
        self.pos = self.pos.max(start);
        if clean {
            self.pos = self.pos.max(oldest.saturating_sub(1).min(head));
        }
        if self.pos < head {
            self.catching_up = true;
        }
    }

    /// What to read from the history now, if anything: `(after, limit)`.
    fn history_wanted(&self, out: &Outbox, chunk: usize) -> Option<(u64, usize)> {
        if !out.has_room() {
            return None;
        }
        if let Some(b) = self.backlogs.front() {
            return Some((b.next_after, chunk));
        }
        self.catching_up.then_some((self.pos, chunk))
    }

    /// A read of the history asked for by [`Wants::history`] with `limit`.
    pub fn on_history(
        &mut self,
        s: Since,
        limit: usize,
        out: &mut Outbox,
        now: i64,
        m: &dyn Tally,
    ) -> Effects {
        if let Some(mut b) = self.backlogs.pop_front() {
            if s.oldest_seq > b.next_after.saturating_add(1) {
                let to = (s.oldest_seq - 1).min(b.until);
                self.note_missed(b.next_after + 1, to, out, now, m);
                b.next_after = to;
            }
            let got = s.frames.len();
            for f in &s.frames {
                if f.seq > b.until {
                    break;
                }
                if f.seq <= b.next_after {
                    continue;
                }
                if !out.has_room() {
                    break;
                }
                b.next_after = f.seq;
                let prior_had_it = b
                    .prior
                    .iter()
                    .any(|(pf, from)| f.seq > *from && pf.matches(&f.meta));
                if b.filter.matches(&f.meta) && !prior_had_it {
                    self.deliver(f, out, now);
                }
            }
            let exhausted = got < limit && b.next_after < b.until && out.has_room();
            if exhausted {
                // The history ends before the backlog does: nothing more to find.
                self.note_missed(b.next_after + 1, b.until, out, now, m);
                b.next_after = b.until;
            }
            if b.next_after < b.until {
                self.backlogs.push_front(b);
            }
            return Effects::default();
        }
        if !self.catching_up {
            return Effects::default();
        }
        if s.oldest_seq > self.pos.saturating_add(1) {
            let to = s.oldest_seq - 1;
            self.note_missed(self.pos + 1, to, out, now, m);
            self.pos = to;
        }
        let got = s.frames.len();
        for f in &s.frames {
            if f.seq <= self.pos {
                continue;
            }
            if !out.has_room() {
                return Effects::default();
            }
            self.pos = f.seq;
            if self.wanted(f) {
                self.deliver(f, out, now);
            }
        }
        if got < limit {
            // Caught up with the head of that read; newer frames are in the channel.
            self.pos = self.pos.max(s.head);
            self.catching_up = false;
        }
        Effects::default()
    }

    fn note_missed(&mut self, from: u64, to: u64, out: &mut Outbox, now: i64, m: &dyn Tally) {
        if from > to {
            return;
        }
        m.missed(to - from + 1);
        self.missed = Some(match self.missed {
            Some((f, t)) => (f.min(from), t.max(to)),
            None => (from, to),
        });
        if out.has_room() {
            self.send_lagged(out, now, m);
        }
    }

    fn lagged_json(&self, from: u64, to: u64) -> String {
        let sub = self.signal_subs().next().map_or("", |s| s.id.as_str());
        ServerMsg::Lagged {
            subscription: sub,
            missed_from: from,
            missed_to: to,
        }
        .to_json()
    }

    fn send_lagged(&mut self, out: &mut Outbox, now: i64, m: &dyn Tally) {
        if let Some((from, to)) = self.missed.take() {
            let json = self.lagged_json(from, to);
            self.reply(out, json, now);
            m.lagged_notice();
        }
    }

    /// After the shell wrote from the outbox: when it has drained to its low watermark, the
    /// stall timer stops and what was missed is reported at once, before any newer frame.
    pub fn after_write(&mut self, out: &mut Outbox, now: i64, m: &dyn Tally) -> Effects {
        if out.take_drained() || (self.full_since.is_some() && out.has_room()) {
            self.full_since = None;
            self.send_lagged(out, now, m);
        }
        Effects::default()
    }

    /// When the session is closed as a slow consumer if its outbox stays full.
    fn stall_deadline(&self) -> Option<i64> {
        let stall = i64::try_from(self.settings.stall_close.as_millis()).unwrap_or(i64::MAX);
        self.full_since.map(|t| t.saturating_add(stall))
    }

    /// The outbox stayed full past the stall time: its frames are discarded and the session
    /// ends with 4008, after a notice covering every seq the client has not received, up to
    /// `head`, so that a resume from `missed_from − 1` loses nothing.
    pub fn on_stalled(&mut self, head: u64, now: i64, out: &mut Outbox, m: &dyn Tally) -> Effects {
        if let Some(since) = self.full_since {
            m.stall_to_close((now - since).max(0) as f64 / 1e3);
        }
        let (discarded, lowest) = out.discard_frames();
        m.dropped(discarded);
        let mut from = self.pos + 1;
        if let Some(l) = lowest {
            from = from.min(l);
        }
        if let Some((f, _)) = self.missed.take() {
            from = from.min(f);
        }
        for b in &self.backlogs {
            from = from.min(b.next_after + 1);
        }
        self.backlogs.clear();
        let notice = (from <= head).then(|| {
            m.lagged_notice();
            bytes(self.lagged_json(from, head))
        });
        Effects::end(End::Server(Close {
            code: CloseCode::SlowConsumer,
            notice,
            read_broken: false,
        }))
    }

    /// The heartbeat: a ping, or the close when no pong came for two intervals. Only pongs
    /// count as an answer: a client that sends other messages but never answers pings is
    /// not alive to the protocol.
    pub fn on_heartbeat(&mut self, now: i64, out: &mut Outbox) -> Effects {
        let limit = i64::try_from(self.settings.heartbeat.as_millis() * 2).unwrap_or(i64::MAX);
        if now - self.last_pong_ms > limit {
            return Effects::end(End::close(CloseCode::Heartbeat));
        }
        out.push_ping();
        Effects::default()
    }

    /// A pair's new state from the pairs channel.
    pub fn on_pair(&mut self, p: &PairFrame, out: &mut Outbox) -> Effects {
        let wanted = self
            .subs
            .iter()
            .any(|s| s.channel == Channel::Pairs && s.filter.matches_pair(&p.key));
        // Pair states supersede each other: one that does not fit is dropped, not owed.
        if wanted {
            out.push_droppable(p.text.clone());
        }
        Effects::default()
    }

    /// What came from the client.
    pub fn on_inbound(
        &mut self,
        msg: Inbound<'_>,
        now: i64,
        hub: &dyn HubView,
        out: &mut Outbox,
    ) -> Effects {
        match msg {
            Inbound::Text(text) => self.on_text(text, now, hub, out),
            Inbound::Binary => self.on_binary(now, out),
            Inbound::Pong => {
                self.last_pong_ms = now;
                self.on_control(now)
            }
            // The WebSocket layer answers pings itself; they count towards the inbound rate.
            Inbound::Ping => self.on_control(now),
            Inbound::Closed => Effects::end(End::Peer { answer: true }),
            Inbound::Gone => Effects::end(End::Peer { answer: false }),
            Inbound::Nothing => Effects::default(),
            Inbound::Broken(code) => Effects::end(End::Server(Close {
                code,
                notice: None,
                read_broken: true,
            })),
        }
    }

    /// A control frame from the client (ping or pong): counted by the inbound rate like any
    /// message, so that a flood of pings (each of which the WebSocket layer answers) closes
    /// with 1008 as a flood of text does.
    fn on_control(&mut self, now: i64) -> Effects {
        if self.inbound.try_take(now) {
            Effects::default()
        } else {
            Effects::end(End::close(CloseCode::Policy))
        }
    }

    /// A binary message: not part of the protocol, answered with an error (and rate limited).
    fn on_binary(&mut self, now: i64, out: &mut Outbox) -> Effects {
        if !self.inbound.try_take(now) {
            return Effects::end(End::close(CloseCode::Policy));
        }
        let e = OpError::new(
            None,
            ErrorCode::BadRequest,
            "binary messages are not supported; send JSON text",
        );
        self.reply(out, e.to_json(), now);
        Effects::default()
    }

    /// A client text message.
    fn on_text(&mut self, text: &str, now: i64, hub: &dyn HubView, out: &mut Outbox) -> Effects {
        if !self.inbound.try_take(now) {
            return Effects::end(End::close(CloseCode::Policy));
        }
        match protocol::parse(text, &self.settings.filter_limits) {
            Err(e) => {
                self.reply(out, e.to_json(), now);
                Effects::default()
            }
            Ok(ClientOp::Ping { id }) => {
                self.reply(out, ServerMsg::Pong { id: id.as_ref() }.to_json(), now);
                Effects::default()
            }
            Ok(ClientOp::Unsubscribe { id, subscription }) => {
                let Some(i) = self.subs.iter().position(|s| s.id == subscription) else {
                    let e = OpError::new(
                        id,
                        ErrorCode::UnknownSubscription,
                        format!("no subscription `{subscription}`"),
                    );
                    self.reply(out, e.to_json(), now);
                    return Effects::default();
                };
                let sub = self.subs.remove(i);
                self.filter_entries -= sub.filter.size();
                self.budget.give(sub.filter.size());
                self.backlogs.retain(|b| b.sub != sub.id);
                let reply = ServerMsg::Unsubscribed {
                    id: id.as_ref(),
                    subscription: &subscription,
                }
                .to_json();
                self.reply(out, reply, now);
                let pairs_left = self.subs.iter().any(|s| s.channel == Channel::Pairs);
                if !pairs_left {
                    self.pair_backlog.clear();
                }
                Effects {
                    rejoin: sub.channel == Channel::Signals,
                    pairs: (sub.channel == Channel::Pairs && !pairs_left).then_some(false),
                    ..Effects::default()
                }
            }
            Ok(ClientOp::Subscribe {
                id,
                channel,
                filter,
                resume_from,
            }) => {
                let s = &self.settings;
                if self.subs.len() >= s.max_subscriptions {
                    let e = OpError::new(
                        id,
                        ErrorCode::TooManySubscriptions,
                        format!(
                            "at most {} subscriptions (session.max_subscriptions)",
                            s.max_subscriptions
                        ),
                    );
                    self.reply(out, e.to_json(), now);
                    return Effects::default();
                }
                if self.filter_entries + filter.size() > s.max_filter_entries {
                    let e = OpError::new(
                        id,
                        ErrorCode::BadRequest,
                        format!(
                            "the session's subscriptions would hold {} filter entries; at most {} \
                             (session.max_filter_entries)",
                            self.filter_entries + filter.size(),
                            s.max_filter_entries
                        ),
                    );
                    self.reply(out, e.to_json(), now);
                    return Effects::default();
                }
                if !self.budget.try_take(filter.size()) {
                    let e = OpError::new(
                        id,
                        ErrorCode::ServerBusy,
                        format!(
                            "the server holds its most filter entries over all sessions ({}, \
                             session.max_total_filter_entries); retry later or with a smaller \
                             filter",
                            self.budget.max()
                        ),
                    );
                    self.reply(out, e.to_json(), now);
                    return Effects::default();
                }
                let sub_id = format!("s{}", self.next_sub);
                self.next_sub += 1;
                let head = hub.head();
                let filter = Arc::new(filter);
                let mut effects = Effects::default();
                let (recovered, oldest_seq, from) = match (&resume_from, channel) {
                    (Some(r), Channel::Signals) => {
                        let oldest = hub.oldest();
                        if hub.epoch().is(&r.epoch)
                            && r.seq.saturating_add(1) >= oldest
                            && r.seq <= head
                        {
                            (Some(true), None, r.seq)
                        } else {
                            (Some(false), Some(oldest), head)
                        }
                    }
                    _ => (None, None, head),
                };
                let reply = ServerMsg::Subscribed {
                    id: id.as_ref(),
                    subscription: &sub_id,
                    channel,
                    head_seq: head,
                    recovered,
                    oldest_seq,
                }
                .to_json();
                self.reply(out, reply, now);
                match channel {
                    Channel::Signals => {
                        let cut = from.max(self.pos);
                        self.drain_cut = Some(self.drain_cut.map_or(cut, |c| c.min(cut)));
                        if from < self.pos {
                            let prior = self
                                .signal_subs()
                                .map(|s| (s.filter.clone(), s.from))
                                .collect();
                            self.backlogs.push_back(Backlog {
                                sub: sub_id.clone(),
                                filter: filter.clone(),
                                prior,
                                next_after: from,
                                until: self.pos,
                            });
                        }
                        effects.rejoin = true;
                    }
                    Channel::Pairs => {
                        if !self.subs.iter().any(|s| s.channel == Channel::Pairs) {
                            effects.pairs = Some(true);
                        }
                        effects.pair_states = true;
                    }
                }
                self.filter_entries += filter.size();
                self.subs.push(Sub {
                    id: sub_id,
                    channel,
                    filter,
                    from,
                });
                effects
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{self, Hub};
    use crate::metrics::Metrics;
    use crate::time::Clock;
    use dexpulse_core::model::{Direction, EventMeta, Kind, PairKey};

    use super::super::outbox::Out;

    struct T {
        hub: Hub,
        st: Session,
        out: Outbox,
        m: Metrics,
        sub: Option<hub::Subscription>,
        now: i64,
    }

    fn t(settings: Settings, hub_settings: hub::Settings) -> T {
        t_sharing(
            settings,
            hub_settings,
            Arc::new(FilterBudget::new(1_000_000)),
        )
    }

    fn t_sharing(settings: Settings, hub_settings: hub::Settings, budget: Arc<FilterBudget>) -> T {
        let hub = Hub::new(hub_settings, Clock::manual(1_000));
        let out = Outbox::new(settings.queue_max_messages, settings.queue_max_bytes);
        T {
            st: Session::new(Arc::new(settings), budget, hub.head_seq(), 0),
            hub,
            out,
            m: Metrics::new(),
            sub: None,
            now: 0,
        }
    }

    fn publish(t: &T, chain: &str) {
        let meta = EventMeta {
            pair: PairKey::new(chain, "p"),
            kind: Kind::VolumeSurge,
            direction: Direction::Bullish,
            score: 70,
        };
        t.hub.publish_serialized(vec![(meta, "{}".into())]);
    }

    impl T {
        fn send(&mut self, text: &str) -> Effects {
            let e = self
                .st
                .on_inbound(Inbound::Text(text), self.now, &self.hub, &mut self.out);
            if e.rejoin {
                self.rejoin();
            }
            e
        }

        /// What the shell does on a rejoin: join the new set's channel, hand the old one over.
        fn rejoin(&mut self) {
            let (sub, head) = self.hub.join_signals(&self.st.signal_set());
            let oldest = HubView::oldest(&self.hub);
            let had = self.sub.is_some();
            let old = &mut self.sub;
            let mut drain = || next(old);
            let old: Option<&mut dyn FnMut() -> Recv> = had.then_some(&mut drain);
            self.st.rejoin(head, oldest, old, &mut self.out, self.now);
            self.sub = sub;
        }

        /// What the shell does between wake-ups: live frames, history reads, until idle.
        fn pump(&mut self) {
            loop {
                let mut progressed = false;
                while let Some((after, limit)) = self.st.history_wanted(&self.out, 4) {
                    let s = self.hub.since(after, limit);
                    self.st
                        .on_history(s, limit, &mut self.out, self.now, &self.m.session);
                    progressed = true;
                    if self.st.history_wanted(&self.out, 4) == Some((after, limit)) {
                        break;
                    }
                }
                while self.st.is_live() {
                    let r = next(&mut self.sub);
                    if matches!(r, Recv::Empty) {
                        break;
                    }
                    self.st
                        .on_channel(r, &mut || Recv::Empty, 1, &mut self.out, self.now);
                    progressed = true;
                }
                if !progressed {
                    break;
                }
            }
        }

        /// Writes everything queued (as a client that reads) and returns the messages.
        fn read(&mut self) -> Vec<serde_json::Value> {
            let mut got = Vec::new();
            loop {
                self.pump();
                let Some(o) = self.out.pop() else { break };
                self.st
                    .after_write(&mut self.out, self.now, &self.m.session);
                if let Out::Frame { text, .. } | Out::Text(text) = o {
                    got.push(serde_json::from_slice(&text).unwrap());
                }
            }
            got
        }
    }

    fn next(sub: &mut Option<hub::Subscription>) -> Recv {
        match sub.as_mut().map(|s| s.rx.try_recv()) {
            Some(Ok(f)) => Recv::Frame(f),
            Some(Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))) => Recv::Lagged,
            _ => Recv::Empty,
        }
    }

    fn seqs(msgs: &[serde_json::Value]) -> Vec<u64> {
        msgs.iter().filter_map(|m| m["seq"].as_u64()).collect()
    }

    fn sub(chain: &str) -> String {
        format!(r#"{{"op":"subscribe","channel":"signals","filter":{{"chains":["{chain}"]}}}}"#)
    }

    #[test]
    fn a_resume_replays_its_backlog_first_then_continues_live_each_event_once() {
        let mut t = t(Settings::default(), hub::Settings::default());
        t.send(&sub("sim"));
        for c in ["sim", "base", "sim", "base"] {
            publish(&t, c);
        }
        let got = t.read();
        assert_eq!(seqs(&got), [1, 3]);
        let epoch = t.hub.epoch().to_string();
        // Resume "base" from 0: its backlog is 2 and 4 (1 and 3 are not base); then live.
        t.send(&format!(
            r#"{{"op":"subscribe","channel":"signals","filter":{{"chains":["base","sim"]}},"resume_from":{{"epoch":"{epoch}","seq":0}}}}"#
        ));
        publish(&t, "sim");
        publish(&t, "base");
        let got = t.read();
        assert_eq!(got[0]["type"], "subscribed");
        assert_eq!(got[0]["recovered"], true);
        assert_eq!(
            seqs(&got),
            [2, 4, 5, 6],
            "backlog without what s1 had, then each once"
        );
    }

    #[test]
    fn a_frame_published_between_a_subscribe_and_its_join_is_not_skipped() {
        let mut t = t(Settings::default(), hub::Settings::default());
        t.send(&sub("sim"));
        t.read();
        // The subscribe is handled (it starts after the head, 0) ...
        let e =
            t.st.on_inbound(Inbound::Text(&sub("base")), t.now, &t.hub, &mut t.out);
        assert!(e.rejoin);
        // ... then, before the session joins the new channel, a base frame and a sim frame are
        // published: the old channel (sim only) holds the second, not the first.
        publish(&t, "base");
        publish(&t, "sim");
        t.rejoin();
        let got = t.read();
        assert_eq!(seqs(&got), [1, 2], "{got:?}");
    }

    #[test]
    fn a_channel_that_lagged_before_a_rejoin_loses_nothing() {
        let h = hub::Settings {
            topic_capacity: 4,
            broadcast_capacity: 4,
            ..hub::Settings::default()
        };
        let mut t = t(Settings::default(), h);
        t.send(&sub("sim"));
        t.read();
        // The session is not woken while ten frames pass its channel of four: it lagged.
        for _ in 0..10 {
            publish(&t, "sim");
        }
        // A second subscription moves it to another channel, draining the old one first.
        t.send(&sub("base"));
        publish(&t, "sim");
        let got = t.read();
        assert_eq!(seqs(&got), (1..=11).collect::<Vec<_>>(), "{got:?}");
    }

    #[test]
    fn a_full_outbox_catches_up_from_the_history_and_loses_nothing() {
        let s = Settings {
            queue_max_messages: 4,
            ..Settings::default()
        };
        let mut t = t(s, hub::Settings::default());
        t.send(r#"{"op":"subscribe","channel":"signals"}"#);
        t.pump();
        for _ in 0..50 {
            publish(&t, "sim");
        }
        t.pump();
        assert!(
            !t.st.is_live(),
            "the outbox filled: catching up from the history"
        );
        assert!(t.out.len() <= 5);
        let got = t.read();
        assert_eq!(seqs(&got), (1..=50).collect::<Vec<_>>());
        assert!(t.st.is_live());
        assert!(!got.iter().any(|m| m["type"] == "lagged"));
    }

    #[test]
    fn what_the_history_no_longer_holds_is_reported_as_lagged_before_the_next_frame() {
        let s = Settings {
            queue_max_messages: 4,
            ..Settings::default()
        };
        let h = hub::Settings {
            retain_events: 10,
            retain_max_events: 10,
            retain: std::time::Duration::ZERO,
            ..hub::Settings::default()
        };
        let mut t = t(s, h);
        t.send(r#"{"op":"subscribe","channel":"signals"}"#);
        t.pump();
        for _ in 0..30 {
            publish(&t, "sim");
        }
        let got = t.read();
        let lagged: Vec<_> = got.iter().filter(|m| m["type"] == "lagged").collect();
        assert_eq!(lagged.len(), 1, "{got:?}");
        let (from, to) = (
            lagged[0]["missed_from"].as_u64().unwrap(),
            lagged[0]["missed_to"].as_u64().unwrap(),
        );
        let delivered = seqs(&got);
        // Every seq is delivered or inside the notice, and the notice precedes what follows it.
        for seq in 1..=30 {
            assert!(
                delivered.contains(&seq) != (from..=to).contains(&seq),
                "seq {seq}"
            );
        }
        let i = got.iter().position(|m| m["type"] == "lagged").unwrap();
        assert!(got[i + 1]["seq"].as_u64().unwrap() == to + 1);
    }

    #[test]
    fn the_stall_timer_stops_when_the_outbox_drains_not_at_the_next_frame() {
        let s = Settings {
            queue_max_messages: 4,
            ..Settings::default()
        };
        let mut t = t(s, hub::Settings::default());
        t.send(r#"{"op":"subscribe","channel":"signals","filter":{"chains":["sim"]}}"#);
        t.pump();
        for _ in 0..8 {
            publish(&t, "sim");
        }
        t.now = 100;
        t.pump();
        assert_eq!(t.st.wants(&t.out, 4).stall_at, Some(100 + 4_000));
        t.now = 200;
        t.read();
        // Drained; no frame since. The old code kept the timer until the next frame came.
        assert_eq!(t.st.wants(&t.out, 4).stall_at, None);
    }

    #[test]
    fn a_stalled_session_is_told_every_seq_it_did_not_get() {
        let s = Settings {
            queue_max_messages: 4,
            ..Settings::default()
        };
        let mut t = t(s, hub::Settings::default());
        t.send(r#"{"op":"subscribe","channel":"signals"}"#);
        t.read();
        for _ in 0..20 {
            publish(&t, "sim");
        }
        t.pump();
        let head = t.hub.head_seq();
        let Some(End::Server(Close {
            code: CloseCode::SlowConsumer,
            notice: Some(notice),
            ..
        })) = t.st.on_stalled(head, 0, &mut t.out, &t.m.session).end
        else {
            panic!("not a 4008 with a notice");
        };
        let v: serde_json::Value = serde_json::from_slice(&notice).unwrap();
        assert_eq!(
            (v["missed_from"].as_u64(), v["missed_to"].as_u64()),
            (Some(1), Some(20))
        );
        assert!(t.out.items().all(|o| !matches!(o, Out::Frame { .. })));
    }

    #[test]
    fn heartbeats_count_pongs_only_and_floods_are_policy_closes() {
        let s = Settings {
            inbound: dexpulse_core::schedule::Rate::try_new(60.0, 2.0).unwrap(),
            ..Settings::default()
        };
        let mut t = t(s, hub::Settings::default());
        let beat = 25_000;
        t.now = beat;
        assert_eq!(t.st.on_heartbeat(t.now, &mut t.out).end, None);
        t.send(r#"{"op":"ping"}"#);
        t.now = 3 * beat;
        t.send(r#"{"op":"ping"}"#);
        assert_eq!(
            t.st.on_heartbeat(t.now, &mut t.out).end,
            Some(End::close(CloseCode::Heartbeat)),
            "messages are not pongs"
        );
        t.st.on_inbound(Inbound::Pong, t.now, &t.hub, &mut t.out);
        assert_eq!(t.st.on_heartbeat(t.now, &mut t.out).end, None);
        // The ping at 75 s and the pong took the burst of 2: pongs count towards the rate.
        assert_eq!(
            t.send(r#"{"op":"ping"}"#).end,
            Some(End::close(CloseCode::Policy))
        );
        t.now += 1_000;
        assert_eq!(t.send(r#"{"op":"ping"}"#).end, None, "a token a second");
    }

    #[test]
    fn subscriptions_are_bounded_by_count_and_by_filter_entries() {
        let s = Settings {
            max_filter_entries: 5,
            ..Settings::default()
        };
        let mut t = t(s, hub::Settings::default());
        t.send(
            r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"chains":["a","b","c"]}}"#,
        );
        t.send(r#"{"op":"subscribe","id":2,"channel":"signals","filter":{"chains":["d","e"]}}"#);
        let got = t.read();
        assert_eq!(got[0]["type"], "subscribed");
        assert_eq!(got[1]["code"], "bad_request");
        assert!(got[1]["message"]
            .as_str()
            .unwrap()
            .contains("session.max_filter_entries"));
        t.send(r#"{"op":"unsubscribe","id":3,"subscription":"s1"}"#);
        t.send(r#"{"op":"subscribe","id":4,"channel":"signals","filter":{"chains":["d","e"]}}"#);
        let got = t.read();
        assert_eq!(got[1]["type"], "subscribed", "{got:?}");
    }

    #[test]
    fn all_sessions_together_hold_at_most_the_total_filter_entries() {
        let budget = Arc::new(FilterBudget::new(7));
        let mut a = t_sharing(
            Settings::default(),
            hub::Settings::default(),
            budget.clone(),
        );
        let mut b = t_sharing(
            Settings::default(),
            hub::Settings::default(),
            budget.clone(),
        );
        a.send(
            r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"chains":["a","b","c"]}}"#,
        );
        b.send(
            r#"{"op":"subscribe","id":1,"channel":"signals","filter":{"chains":["d","e","f"]}}"#,
        );
        assert_eq!(a.read()[0]["type"], "subscribed");
        let got = b.read();
        assert_eq!(got[0]["code"], "server_busy");
        assert!(got[0]["message"]
            .as_str()
            .unwrap()
            .contains("session.max_total_filter_entries"));
        assert_eq!(
            budget.used(),
            4,
            "a refused subscribe takes nothing (1 + 3 a filter)"
        );
        a.send(r#"{"op":"unsubscribe","id":2,"subscription":"s1"}"#);
        assert_eq!(budget.used(), 0);
        b.send(
            r#"{"op":"subscribe","id":2,"channel":"signals","filter":{"chains":["d","e","f"]}}"#,
        );
        assert_eq!(b.read()[0]["type"], "subscribed");
        a.send(r#"{"op":"subscribe","id":3,"channel":"signals","filter":{"chains":["x","y"]}}"#);
        assert_eq!(budget.used(), 7);
        drop(b);
        assert_eq!(budget.used(), 3, "an ending session gives its entries back");
    }
}
