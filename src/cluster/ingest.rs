//! The ingest's side of the stream (docs/cluster.md, "Ingest"): every event its hub publishes
//! goes to the stream in seq order, exactly once. Up to `WINDOW` events are in flight at once;
//! each names the one before it (`Nats-Expected-Last-Msg-Id`), so the server refuses an event
//! whose predecessor was lost rather than storing it out of order, and every resend is
//! deduplicated by its message id. After any failure the ingest waits for what is in flight,
//! then sends again from the first event not acknowledged, that one alone, so the stream's
//! order is the engine's. The local history is the buffer: while the
//! stream is away, events wait there (held against eviction by age, up to the history's hard
//! cap, or on disk with a data directory), `/readyz` says how many, and they go out in order
//! when it is back; what the history had to drop before the stream took it is counted and
//! logged, never skipped silently.
//!
//! Where to start: the last message in the stream names the local history epoch and seq it
//! came from. An ingest restarted on the same log continues after it, so a restart neither
//! repeats nor skips an event; a republish inside the duplicate window would be dropped by
//! the server anyway (`Nats-Msg-Id`). Only an origin this ingest's key signed is believed:
//! messages others slipped in after it are passed over (and counted as forged).
//!
//! Pair states go to the pairs bucket every `pairs_seconds`, only those that changed.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use dexpulse_core::model::PairKey;
use dexpulse_core::protocol::{Epoch, FilterSet};

use super::retry::Retry;
use super::stream::{pair_key, EventStream, Outgoing, Pending};
use super::ClusterError;
use super::{ForgeryAlarm, Keys, Settings};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::ClusterMetrics;

/// Frames read from the local history at once.
const CHUNK: usize = 256;
/// Events sent and not yet acknowledged, at most: enough to cover the round trip at 50,000
/// events/s many times over, few enough that a failure resends little.
const WINDOW: usize = 1_024;

/// What the forwarding task works with.
pub struct Ctx {
    pub hub: Arc<Hub>,
    pub settings: Settings,
    pub metrics: ClusterMetrics,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
    /// The local head when the process started: with no trace of this history in the stream,
    /// what came before was published by an earlier process (or never will be).
    pub start_head: u64,
    pub alarm: Arc<ForgeryAlarm>,
}

/// Messages looked at, newest first, for the last one this ingest signed.
const LOOK_BACK: u64 = 10_000;

/// Connects, retrying until it works or shutdown (`None`).
async fn connect(
    settings: &Settings,
    health: &Health,
    metrics: &ClusterMetrics,
    shutdown: &CancellationToken,
) -> Option<EventStream> {
    let mut retry = Retry::here();
    loop {
        match EventStream::connect(settings).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's stream is out of reach; retrying");
                health.set_cluster_fault(Some(e.to_string()));
                metrics.reconnects.inc();
            }
        }
        if !retry.pause(shutdown).await {
            return None;
        }
    }
}

/// The last local seq the stream already holds: the origin of the newest message this ingest's
/// key signed (without a key, of the newest message), if it is of this history's epoch.
async fn published_up_to(
    stream: &EventStream,
    settings: &Settings,
    alarm: &ForgeryAlarm,
    epoch: &Epoch,
    start_head: u64,
    head: u64,
) -> Result<u64, ClusterError> {
    let (first, last) = stream.bounds().await?;
    if last == 0 || first > last {
        return Ok(start_head);
    }
    let verifier = match &settings.keys {
        Keys::Sign(s) => Some(s.verifier()),
        _ => None,
    };
    let floor = last.saturating_sub(LOOK_BACK).max(first);
    let mut to = last;
    loop {
        let from = to.saturating_sub(CHUNK as u64 - 1).max(floor);
        let page = stream.range(from, to).await?;
        for m in page.iter().rev() {
            if let Some(v) = &verifier {
                if let Err(why) = m.verify(&settings.subject, v) {
                    alarm.refused("event", &format!("seq {}", m.seq), &why);
                    continue;
                }
            }
            return Ok(match &m.origin {
                Some((e, seq)) if epoch.is(e) && *seq <= head => *seq,
                _ => start_head,
            });
        }
        if from <= floor {
            return Ok(start_head);
        }
        to = from - 1;
    }
}

/// Runs until shutdown: the local history into the stream.
pub async fn forward(ctx: Ctx) -> Result<(), ClusterError> {
    let Ctx {
        hub,
        settings,
        metrics,
        health,
        shutdown,
        start_head,
        alarm,
    } = ctx;
    hub.hold_after(start_head);
    let epoch = hub.epoch();
    // Every published frame wakes the loop; what it reads comes from the history.
    let (wake, _) = hub.join_signals(&FilterSet::Everything);
    let Some(stream) = connect(&settings, &health, &metrics, &shutdown).await else {
        return Ok(());
    };
    let mut retry = Retry::here();
    let done = loop {
        match published_up_to(
            &stream,
            &settings,
            &alarm,
            &epoch,
            start_head,
            hub.head_seq(),
        )
        .await
        {
            Ok(d) => break d,
            Err(e) => {
                health.set_cluster_fault(Some(e.to_string()));
                tracing::warn!(error = %e, "cannot read where the stream stopped; retrying");
                if !retry.pause(&shutdown).await {
                    return Ok(());
                }
            }
        }
    };
    tracing::info!(epoch = %epoch, after = done, head = hub.head_seq(), "publishing to the cluster's stream");
    hub.hold_after(done);
    retry.reset();
    // The signatures are made ahead, on the blocking pool, while this task sends: the two
    // halves run side by side, joined here so that no task outlives `forward`.
    let (tx, rx) = tokio::sync::mpsc::channel(2 * WINDOW);
    let prepare = prepare(Preparer {
        hub: &hub,
        settings: &settings,
        metrics: &metrics,
        epoch: &epoch,
        after: done,
        wake,
        tx,
    });
    let send = Sender {
        hub: &hub,
        settings: &settings,
        metrics: &metrics,
        health: &health,
        shutdown: &shutdown,
        retry,
        done,
    }
    .run(stream, rx);
    tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        () = prepare => Ok(()),
        r = send => r,
    }
}

/// What the preparing half works with.
struct Preparer<'a> {
    hub: &'a Hub,
    settings: &'a Settings,
    metrics: &'a ClusterMetrics,
    epoch: &'a Epoch,
    /// The last seq handed on.
    after: u64,
    wake: Option<crate::hub::fanout::Subscription>,
    tx: tokio::sync::mpsc::Sender<(u64, Outgoing)>,
}

/// Reads the local history in order and hands each event on, signed; returns when the sending
/// half is gone.
async fn prepare(mut p: Preparer<'_>) {
    loop {
        let since = p.hub.read_since(p.after, CHUNK).await;
        let Some(first) = since.frames.first() else {
            let woke = async {
                match p.wake.as_mut() {
                    Some(w) => {
                        // Lagging is fine: the history has the frames.
                        let _ = w.rx.recv().await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tokio::select! {
                _ = woke => {}
                // The hub's channel is only a wake-up: a periodic look covers anything missed.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        if first.seq > p.after + 1 {
            let lost = first.seq - p.after - 1;
            p.metrics.unpublished_dropped.inc_by(lost);
            tracing::error!(
                from = p.after + 1,
                to = first.seq - 1,
                lost,
                "the local history dropped events before the stream took them"
            );
        }
        let Some(signed) = sign(since.frames, p.settings, p.epoch).await else {
            // Only a panic in the signing ends it there: the process is failing anyway.
            return;
        };
        for (seq, out) in signed {
            if p.tx.send((seq, out)).await.is_err() {
                return;
            }
            p.after = seq;
        }
    }
}

/// The frames made ready to send, on the blocking pool: a long run in two halves at once, since
/// the signatures are most of an ingest's work (BENCHMARKS.md, C4).
async fn sign(
    mut frames: Vec<Arc<crate::hub::history::Frame>>,
    settings: &Settings,
    epoch: &Epoch,
) -> Option<Vec<(u64, Outgoing)>> {
    let job = |frames: Vec<Arc<crate::hub::history::Frame>>| {
        let settings = settings.clone();
        let epoch = epoch.clone();
        tokio::task::spawn_blocking(move || {
            frames
                .iter()
                .map(|f| {
                    let payload = f.event_json();
                    let out = Outgoing::new(
                        &settings,
                        event_id(&payload).unwrap_or_default(),
                        f.published_at_us,
                        (epoch.clone(), f.seq),
                        payload.clone(),
                    );
                    (f.seq, out)
                })
                .collect::<Vec<_>>()
        })
    };
    if frames.len() < 64 {
        return job(frames).await.ok();
    }
    let back = frames.split_off(frames.len() / 2);
    let (a, b) = tokio::join!(job(frames), job(back));
    let mut a = a.ok()?;
    a.extend(b.ok()?);
    Some(a)
}

/// The sending half: a window of events in flight, acknowledged in order.
struct Sender<'a> {
    hub: &'a Hub,
    settings: &'a Settings,
    metrics: &'a ClusterMetrics,
    health: &'a Health,
    shutdown: &'a CancellationToken,
    retry: Retry,
    /// The last seq acknowledged in order.
    done: u64,
}

impl Sender<'_> {
    async fn run(
        mut self,
        mut stream: EventStream,
        mut rx: tokio::sync::mpsc::Receiver<(u64, Outgoing)>,
    ) -> Result<(), ClusterError> {
        let mut flight: VecDeque<Flight> = VecDeque::with_capacity(WINDOW);
        // Sent again before anything new: what a failure left unacknowledged, in order.
        let mut again: VecDeque<(u64, Outgoing)> = VecDeque::new();
        // The message id of the last event sent, which the next one names; none after a
        // failure, when the next goes alone.
        let mut last_id: Option<String> = None;
        loop {
            let mut failed = None;
            while flight.len() < WINDOW && (last_id.is_some() || flight.is_empty()) {
                let next = match again.pop_front() {
                    Some(n) => n,
                    None => match rx.try_recv() {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                };
                match stream.send(&next.1, last_id.as_deref()).await {
                    Ok(pending) => {
                        last_id = Some(next.1.msg_id());
                        flight.push_back(Flight {
                            seq: next.0,
                            out: next.1,
                            sent: Instant::now(),
                            pending,
                        });
                    }
                    Err(e) => {
                        failed = Some((next.0, e));
                        again.push_front(next);
                        break;
                    }
                }
            }
            if failed.is_none() {
                self.metrics.unpublished_events.set(
                    i64::try_from(self.hub.head_seq().saturating_sub(self.done))
                        .unwrap_or(i64::MAX),
                );
                let Some(front) = flight.pop_front() else {
                    self.health.set_cluster_fault(None);
                    match rx.recv().await {
                        Some(n) => again.push_back(n),
                        None => return Ok(()),
                    }
                    continue;
                };
                let seq = front.seq;
                match front.pending.acked().await {
                    Ok(p) => {
                        self.acked(seq, front.sent, p);
                        self.retry.reset();
                        continue;
                    }
                    Err(e) => {
                        failed = Some((seq, e));
                        again.push_front((seq, front.out));
                    }
                }
            }
            let Some((seq, e)) = failed else { continue };
            // What is still in flight was stored after the failed one or refused: what is
            // acknowledged in order from the front counts; the rest goes again, in order.
            let mut in_order = flight.front().is_some_and(|f| f.seq < seq);
            let mut unacked = VecDeque::new();
            for f in flight.drain(..) {
                let r = f.pending.acked().await;
                in_order &= f.seq < seq;
                match r {
                    Ok(p) if in_order => self.acked(f.seq, f.sent, p),
                    _ => {
                        in_order = false;
                        unacked.push_back((f.seq, f.out));
                    }
                }
            }
            // Everything left behind the failed event is after it.
            unacked.extend(again.drain(..));
            let mut ordered: Vec<_> = unacked.into_iter().collect();
            ordered.sort_by_key(|(s, _)| *s);
            again = ordered.into();
            last_id = None;
            self.metrics.publish_failures.inc();
            if matches!(e, ClusterError::NoStream { .. }) {
                // Deleted, or a server on a new store: created again, a new epoch for the edges.
                tracing::warn!("the cluster's stream is gone; creating it again");
                let Some(s) =
                    connect(self.settings, self.health, self.metrics, self.shutdown).await
                else {
                    return Ok(());
                };
                stream = s;
                continue;
            }
            let waiting = self.hub.head_seq().saturating_sub(self.done);
            self.health
                .set_cluster_fault(Some(format!("{waiting} events wait to be published: {e}")));
            tracing::warn!(error = %e, seq, waiting, "publish failed; sent again from the first event not acknowledged");
            if !self.retry.pause(self.shutdown).await {
                return Ok(());
            }
        }
    }

    /// One event acknowledged in order: counted, and the history may let go of it.
    fn acked(&mut self, seq: u64, sent: Instant, p: super::Published) {
        self.metrics
            .publish_seconds
            .observe(sent.elapsed().as_secs_f64());
        self.metrics.publish_acks.inc();
        if p.duplicate {
            self.metrics.publish_duplicates.inc();
        }
        self.done = seq;
        self.hub.hold_after(seq);
    }
}

/// One event in flight.
struct Flight {
    seq: u64,
    out: Outgoing,
    sent: Instant,
    pending: Pending,
}

/// The event id of an event's JSON (the payload the engine serialized), borrowed from it.
fn event_id(event_json: &[u8]) -> Option<&str> {
    #[derive(serde::Deserialize)]
    struct Id<'a> {
        #[serde(borrow)]
        event_id: &'a str,
    }
    // Not an engine event, or an id with escapes: the origin is the message id instead.
    serde_json::from_slice::<Id<'_>>(event_json)
        .ok()
        .map(|i| i.event_id)
}

/// What the pairs task works with.
pub struct PairsCtx {
    pub hub: Arc<Hub>,
    pub settings: Settings,
    pub metrics: ClusterMetrics,
    pub health: Arc<Health>,
    pub shutdown: CancellationToken,
}

/// Runs until shutdown: the pair states that changed into the bucket, every `pairs_every`.
pub async fn share_pairs(ctx: PairsCtx) -> Result<(), ClusterError> {
    let PairsCtx {
        hub,
        settings,
        metrics,
        health,
        shutdown,
    } = ctx;
    let mut seen: HashMap<PairKey, u64> = HashMap::new();
    let mut bucket = None;
    let mut every = tokio::time::interval(settings.pairs_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        if bucket.is_none() {
            let Some(stream) = connect(&settings, &health, &metrics, &shutdown).await else {
                return Ok(());
            };
            match stream.pairs(true).await {
                Ok(b) => bucket = Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, "the pairs bucket is out of reach; retrying");
                    continue;
                }
            }
        }
        let Some(kv) = bucket.as_ref() else { continue };
        let (changed, gone) = hub.pairs().changed(&mut seen);
        let mut failed = None;
        for (key, json) in changed {
            let name = pair_key(&key.chain, &key.address);
            let value = match &settings.keys {
                Keys::Sign(s) => s.seal_pair(&settings.pairs_bucket, &name, &json),
                _ => json,
            };
            match kv.put(name, value.into()).await {
                Ok(_) => {
                    metrics.pair_updates.inc();
                }
                Err(e) => {
                    // Sent again next time.
                    seen.remove(&key);
                    failed = Some(e.to_string());
                }
            }
        }
        for key in gone {
            if let Err(e) = kv.delete(pair_key(&key.chain, &key.address)).await {
                failed = Some(e.to_string());
            }
        }
        if let Some(e) = failed {
            tracing::warn!(error = %e, "pair states not all shared; the rest go next time");
            seen.clear();
            bucket = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_id_is_read_from_the_payload() {
        assert_eq!(
            event_id(br#"{"schema":"x","event_id":"ab12","kind":"new_pair"}"#),
            Some("ab12")
        );
        assert_eq!(event_id(b"{\"n\":1}"), None);
    }
}
