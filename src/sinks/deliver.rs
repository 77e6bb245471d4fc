//! One sink's loop: read the frames after its cursor from the hub (memory, then the archive),
//! keep those its filter matches, post them in seq order, and move the cursor past each one
//! only when it was delivered or given up on (dead-lettered), so that a restart continues
//! where the last delivery ended: at least once, a duplicate only for the delivery in flight,
//! with the same `webhook-id`.
//!
//! A chat sink takes a token from its rate before each message; the events that arrived while
//! it waited go out as one digest (up to `digest_max`), so a burst becomes a few messages
//! rather than a growing delay.

use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use dexpulse_core::protocol::{Epoch, FilterSet};
use dexpulse_core::schedule::budget::{Backoff, TokenBucket};
use dexpulse_core::sink::chat::{digest, Brief, Service};
use dexpulse_core::sink::reply::Verdict;

use super::post::Poster;
use super::settings::Target;
use super::{Ctx, Shown};
use crate::hub::Frame;
use crate::metrics::SinkMetrics;

/// Frames read from the hub at a time.
const READ_CHUNK: usize = 256;
/// How often an idle sink refreshes its lag figures.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Shutdown came: the loop ends where it is (the cursor already saved).
struct Stopped;

/// One event as the sink sends it.
struct Item {
    frame: Arc<Frame>,
    event_id: String,
}

fn event_id(frame: &Frame) -> String {
    #[derive(serde::Deserialize)]
    struct F<'a> {
        #[serde(borrow)]
        event: E<'a>,
    }
    #[derive(serde::Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        event_id: std::borrow::Cow<'a, str>,
    }
    match serde_json::from_slice::<F<'_>>(&frame.text) {
        Ok(f) if !f.event.event_id.is_empty() => f.event.event_id.into_owned(),
        // Every engine event has an id; anything else is keyed by where it is.
        _ => format!("seq-{}", frame.seq),
    }
}

/// A blocking file call on the blocking pool; its panic goes on in the sink's task.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, crate::store::StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(crate::store::StoreError::Io {
            path: Default::default(),
            detail: e.to_string(),
        }),
    }
}

struct Loop {
    ctx: Ctx,
    poster: Poster,
    labels: Vec<(&'static str, String)>,
    epoch: Epoch,
    cursor: u64,
    /// The cursor as last saved (or read at start), of whichever epoch.
    saved: Option<(Epoch, u64)>,
    /// No cursor was saved and nothing has been read yet: a new sink, which starts at the head
    /// of the first epoch it really reads.
    fresh: bool,
    bucket: TokenBucket,
    rng: ChaCha8Rng,
}

/// Why a sink cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {source}")]
    Store {
        sink: String,
        source: crate::store::StoreError,
    },
    #[error("sink {sink}: the HTTP client cannot be built: {detail}")]
    Client { sink: String, detail: String },
    #[error("sink {sink}: rate_per_minute and burst make no usable rate")]
    Rate { sink: String },
}

/// Runs one sink until shutdown. Fails only when it cannot start: its HTTP client, or its
/// cursor in the data directory unreadable or unwritable.
pub async fn run(ctx: Ctx) -> Result<(), SinkError> {
    let s = ctx.settings.clone();
    let sink = || s.name.clone();
    let poster = Poster::new(s.timeout).map_err(|e| SinkError::Client {
        sink: sink(),
        detail: e.to_string(),
    })?;
    let now_ms = ctx.clock.now_ms();
    let bucket = TokenBucket::try_full(s.rate_per_minute, s.burst, now_ms)
        .map_err(|_| SinkError::Rate { sink: sink() })?;
    let saved = match &ctx.files {
        None => {
            tracing::warn!(sink = %s.name, "no data directory: the sink starts at the head, and a restart loses its backlog");
            None
        }
        Some(files) => {
            let f = files.clone();
            blocking(move || f.cursor())
                .await
                .map_err(|source| SinkError::Store {
                    sink: sink(),
                    source,
                })?
        }
    };
    let mut l = Loop {
        labels: SinkMetrics::labels(&s.name),
        rng: ChaCha8Rng::seed_from_u64(u64::from(std::process::id())),
        epoch: ctx.hub.epoch(),
        fresh: saved.is_none(),
        saved,
        ctx,
        poster,
        cursor: 0,
        bucket,
    };
    l.adopt(l.ctx.hub.epoch());
    // A cursor of another epoch is kept until this one is delivered from: an edge starts in a
    // placeholder epoch and adopts the stream's (the saved one) when it connects.
    if l.saved.as_ref().is_none_or(|(e, _)| *e == l.epoch) {
        l.save().await.map_err(|source| SinkError::Store {
            sink: sink(),
            source,
        })?;
    }
    let _ = l.run().await;
    l.status(|st| st.state = "stopped");
    Ok(())
}

impl Loop {
    fn status(&self, f: impl FnOnce(&mut Shown)) {
        f(&mut self.ctx.status.lock());
    }

    fn sink(&self) -> &str {
        &self.ctx.settings.name
    }

    /// Where to read from in `epoch`: the saved cursor if it is of this epoch, the head for a
    /// new sink, else the start (a new numbering: all of it is new).
    fn adopt(&mut self, epoch: Epoch) {
        // An edge catching up with its stream: its head is behind what the stream holds.
        let head = self.ctx.hub.known_head();
        self.cursor = match &self.saved {
            Some((e, seq)) if *e == epoch => {
                tracing::info!(sink = %self.sink(), cursor = seq, head, epoch = %epoch, "continuing from the saved cursor");
                // Not clamped to the head: an edge's head is still catching up with the stream
                // when it adopts the stream's epoch; the sink waits until it passes the cursor.
                *seq
            }
            _ if self.fresh => {
                let from = match &self.ctx.start {
                    (e, h) if *e == epoch => *h,
                    _ => head,
                };
                tracing::info!(sink = %self.sink(), from, epoch = %epoch, "a new sink: delivering what comes after this");
                from
            }
            Some((e, seq)) => {
                tracing::warn!(sink = %self.sink(), saved_epoch = %e, saved = seq, epoch = %epoch, "the saved cursor is of another epoch; delivering this one from its start");
                0
            }
            None => 0,
        };
        self.epoch = epoch;
        let (e, c) = (self.epoch.to_string(), self.cursor);
        self.status(|st| {
            st.epoch = e;
            st.cursor = c;
        });
    }

    async fn save(&mut self) -> Result<(), crate::store::StoreError> {
        let (epoch, cursor) = (self.epoch.clone(), self.cursor);
        self.status(|st| {
            st.cursor = cursor;
            st.epoch = epoch.to_string();
        });
        let Some(files) = self.ctx.files.clone() else {
            return Ok(());
        };
        let e = epoch.clone();
        blocking(move || files.save_cursor(&e, cursor)).await?;
        self.saved = Some((epoch, cursor));
        Ok(())
    }

    /// Saves the cursor; a failure is said (log, `/v1/sinks`) and delivery goes on: at least
    /// once still holds, and a restart repeats what was delivered since the last save.
    async fn save_or_say(&mut self) {
        if let Err(e) = self.save().await {
            let at = self.ctx.clock.now_us();
            tracing::error!(sink = %self.sink(), error = %e, "the sink's cursor cannot be saved; delivering on (a restart would repeat since the last save)");
            self.status(|st| {
                st.last_error = Some(format!("cursor not saved: {e}"));
                st.last_error_at_us = Some(at);
            });
        }
    }

    /// Sleeps, or learns that shutdown came first.
    async fn pause(&self, d: Duration) -> Result<(), Stopped> {
        tokio::select! {
            _ = self.ctx.shutdown.cancelled() => Err(Stopped),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    async fn run(&mut self) -> Result<(), Stopped> {
        let set = FilterSet::new([&self.ctx.settings.filter]);
        // Only a wake-up: what to send is read from the history, in order.
        let (mut wake, _) = self.ctx.hub.join_signals(&set);
        loop {
            if self.ctx.shutdown.is_cancelled() {
                return Err(Stopped);
            }
            let epoch = self.ctx.hub.epoch();
            if epoch != self.epoch {
                tracing::info!(sink = %self.sink(), was = %self.epoch, now = %epoch, "the history numbers in a new epoch");
                self.adopt(epoch);
            }
            let since = self.ctx.hub.read_since(self.cursor, READ_CHUNK).await;
            self.note_lag(since.head, since.frames.first().map(|f| f.published_at_us));
            let Some(first) = since.frames.first() else {
                // Caught up in this epoch: a new sink has found where it starts.
                if self.fresh && self.ctx.hub.epoch() == self.epoch && since.head > 0 {
                    self.fresh = false;
                }
                self.status(|st| st.state = "idle");
                let rx = wake.as_mut().map(|w| &mut w.rx);
                tokio::select! {
                    _ = self.ctx.shutdown.cancelled() => return Err(Stopped),
                    _ = async { match rx { Some(rx) => { let _ = rx.recv().await; } None => std::future::pending().await } } => {}
                    _ = tokio::time::sleep(IDLE_TICK) => {}
                }
                continue;
            };
            self.fresh = false;
            if first.seq > self.cursor + 1 {
                if self.ctx.hub.oldest_seq() <= self.cursor + 1 {
                    // The history still holds them: a read of the archive failed and was
                    // answered from memory (logged there). Read again rather than skip.
                    self.pause(IDLE_TICK).await?;
                    continue;
                }
                self.missed(self.cursor + 1, first.seq - 1).await?;
            }
            let mut items: Vec<Item> = Vec::new();
            let mut passed = self.cursor;
            for f in &since.frames {
                items.extend(self.item(f));
                passed = f.seq;
                if self.ctx.settings.target.is_chat() && items.len() >= self.ctx.settings.digest_max
                {
                    break;
                }
            }
            if items.is_empty() {
                self.cursor = passed;
                self.save_or_say().await;
                continue;
            }
            if self.ctx.settings.target.is_chat() {
                self.take_token().await?;
                // What arrived while waiting for the token joins this message.
                if items.len() < self.ctx.settings.digest_max {
                    let more = self.ctx.hub.read_since(passed, READ_CHUNK).await;
                    for f in &more.frames {
                        if items.len() >= self.ctx.settings.digest_max {
                            break;
                        }
                        items.extend(self.item(f));
                        passed = f.seq;
                    }
                }
                self.deliver(&items).await?;
                self.cursor = passed;
                self.save_or_say().await;
            } else {
                // A webhook: one event per request, the cursor saved after each.
                for item in &items {
                    self.take_token().await?;
                    self.deliver(std::slice::from_ref(item)).await?;
                    self.cursor = item.frame.seq;
                    self.save_or_say().await;
                }
                self.cursor = passed;
                self.save_or_say().await;
            }
        }
    }

    /// The frame as this sink sends it, if its filter takes it.
    fn item(&self, f: &Arc<Frame>) -> Option<Item> {
        self.ctx.settings.filter.matches(&f.meta).then(|| Item {
            event_id: event_id(f),
            frame: f.clone(),
        })
    }

    fn note_lag(&self, head: u64, oldest_pending_us: Option<i64>) {
        let m = &self.ctx.metrics;
        let lag = head.saturating_sub(self.cursor);
        m.lag_seqs
            .get_or_create(&self.labels)
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
        let now = self.ctx.clock.now_us();
        let secs = oldest_pending_us.map_or(0.0, |p| (now - p).max(0) as f64 / 1e6);
        m.lag_seconds.get_or_create(&self.labels).set(secs);
        self.status(|st| {
            st.head = head;
            st.pending_since_us = oldest_pending_us;
        });
    }

    /// Waits for the receiver's rate (a chat service's limit, a webhook's configured one).
    async fn take_token(&mut self) -> Result<(), Stopped> {
        loop {
            let now = self.ctx.clock.now_ms();
            if self.bucket.try_take(now) {
                return Ok(());
            }
            self.status(|st| st.state = "waiting");
            let per_token_ms = (60_000.0 / self.ctx.settings.rate_per_minute).ceil() as u64;
            self.pause(Duration::from_millis(per_token_ms.clamp(1, 1_000)))
                .await?;
        }
    }

    /// Posts `items` (one event, or a digest) until delivered or given up on.
    async fn deliver(&mut self, items: &[Item]) -> Result<(), Stopped> {
        let s = self.ctx.settings.clone();
        let first_ms = self.ctx.clock.now_ms();
        let mut backoff = Backoff::new(
            i64::try_from(s.retry_min.as_millis()).unwrap_or(i64::MAX),
            i64::try_from(s.retry_max.as_millis()).unwrap_or(i64::MAX),
        );
        let text = match s.target {
            Target::Webhook { .. } => None,
            Target::Telegram { .. } | Target::Discord { .. } => {
                let service = if matches!(s.target, Target::Telegram { .. }) {
                    Service::Telegram
                } else {
                    Service::Discord
                };
                let briefs: Vec<Brief> = items
                    .iter()
                    .filter_map(|i| Brief::from_frame(&i.frame.text).ok())
                    .collect();
                Some(digest(&briefs, service))
            }
        };
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            self.status(|st| st.state = "delivering");
            let now = self.ctx.clock.now_ms();
            let verdict = match (&text, items) {
                (Some(t), _) => self.poster.chat(&s.target, t, now).await,
                (None, [one]) => {
                    self.poster
                        .webhook(&s.target, &one.event_id, one.frame.text.clone(), now)
                        .await
                }
                (None, _) => unreachable!("a webhook posts one event at a time"),
            };
            match verdict {
                Verdict::Delivered { pause_ms } => {
                    let n = items.len() as u64;
                    self.ctx
                        .metrics
                        .delivered
                        .get_or_create(&self.labels)
                        .inc_by(n);
                    let at = self.ctx.clock.now_us();
                    self.status(|st| {
                        st.delivered += n;
                        st.last_delivered_at_us = Some(at);
                    });
                    if let Some(p) = pause_ms {
                        self.status(|st| st.state = "waiting");
                        self.pause(Duration::from_millis(p)).await?;
                    }
                    return Ok(());
                }
                Verdict::Retry { after_ms, why } => {
                    let at = self.ctx.clock.now_us();
                    tracing::warn!(sink = %s.name, attempt = attempts, seq = items[0].frame.seq, error = %why, "delivery failed");
                    self.status(|st| {
                        st.last_error = Some(why.clone());
                        st.last_error_at_us = Some(at);
                    });
                    let age = Duration::from_millis(
                        u64::try_from(self.ctx.clock.now_ms() - first_ms).unwrap_or(0),
                    );
                    if attempts >= s.max_attempts || age >= s.max_age {
                        self.dead_letter(items, attempts, &why).await?;
                        return Ok(());
                    }
                    self.ctx.metrics.retries.get_or_create(&self.labels).inc();
                    self.status(|st| {
                        st.retried += 1;
                        st.state = "retrying";
                    });
                    let wait = backoff.fail(
                        0,
                        after_ms.map(|a| i64::try_from(a).unwrap_or(i64::MAX)),
                        &mut self.rng,
                    );
                    self.pause(Duration::from_millis(u64::try_from(wait).unwrap_or(0)))
                        .await?;
                }
            }
        }
    }

    /// Writes each event to the dead-letter file (or, without a data directory, the log) and
    /// counts it: given up on, never dropped silently.
    async fn dead_letter(&self, items: &[Item], attempts: u32, why: &str) -> Result<(), Stopped> {
        let n = items.len() as u64;
        self.ctx
            .metrics
            .dead_lettered
            .get_or_create(&self.labels)
            .inc_by(n);
        self.status(|st| st.dead_lettered += n);
        let lines: Vec<String> = items
            .iter()
            .map(|i| {
                let event: serde_json::Value =
                    serde_json::from_slice(&i.frame.text).unwrap_or(serde_json::Value::Null);
                serde_json::json!({
                    "sink": self.sink(),
                    "seq": i.frame.seq,
                    "event_id": i.event_id,
                    "attempts": attempts,
                    "last_error": why,
                    "at_us": self.ctx.clock.now_us(),
                    "message": event,
                })
                .to_string()
            })
            .collect();
        tracing::error!(sink = %self.sink(), events = n, first_seq = items[0].frame.seq, attempts, error = %why, "given up on: dead-lettered");
        self.write_dead(lines).await
    }

    /// Seqs the history no longer held when the sink reached them (behind the retention).
    async fn missed(&self, from: u64, to: u64) -> Result<(), Stopped> {
        let n = to - from + 1;
        self.ctx
            .metrics
            .missed
            .get_or_create(&self.labels)
            .inc_by(n);
        let why = format!("seqs {from}..={to} were no longer in the log when the sink reached them (its retention)");
        let at = self.ctx.clock.now_us();
        self.status(|st| {
            st.missed += n;
            st.last_error = Some(why.clone());
            st.last_error_at_us = Some(at);
        });
        tracing::error!(sink = %self.sink(), from, to, "the sink fell behind the log's retention: events missed");
        let line = serde_json::json!({
            "sink": self.sink(),
            "missed_from": from,
            "missed_to": to,
            "last_error": why,
            "at_us": at,
        })
        .to_string();
        self.write_dead(vec![line]).await
    }

    async fn write_dead(&self, lines: Vec<String>) -> Result<(), Stopped> {
        let Some(files) = self.ctx.files.clone() else {
            for l in &lines {
                tracing::error!(sink = %self.sink(), dead_letter = %l, "no data directory: the dead letter is only in the log");
            }
            return Ok(());
        };
        let kept = lines.clone();
        let written = tokio::task::spawn_blocking(move || {
            lines.iter().try_for_each(|l| files.dead_letter(l))
        })
        .await;
        let failed = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(e) = failed {
            for l in &kept {
                tracing::error!(sink = %self.sink(), error = %e, dead_letter = %l, "the dead-letter file cannot be written: the dead letter is only in the log");
            }
        }
        Ok(())
    }
}
