//! The ingest's side of the stream (docs/cluster.md, "Ingest"): every event its hub publishes
//! goes to the stream, one at a time and in seq order, each acknowledged before the next is
//! sent, so the stream's order is the engine's. The local history is the buffer: while the
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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use dexpulse_core::model::PairKey;
use dexpulse_core::protocol::FilterSet;

use super::stream::{pair_key, EventStream};
use super::{ForgeryAlarm, Keys, Settings};
use crate::health::Health;
use crate::hub::Hub;
use crate::metrics::ClusterMetrics;

/// Frames read from the local history at once.
const CHUNK: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

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
    let mut backoff = BACKOFF_MIN;
    loop {
        match EventStream::connect(settings).await {
            Ok(s) => return Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's stream is out of reach; retrying");
                health.set_cluster_fault(Some(e.to_string()));
                metrics.reconnects.inc();
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The last local seq the stream already holds: the origin of the newest message this ingest's
/// key signed (without a key, of the newest message), if it is of this history's epoch.
async fn published_up_to(
    stream: &EventStream,
    settings: &Settings,
    alarm: &ForgeryAlarm,
    epoch: &str,
    start_head: u64,
    head: u64,
) -> Result<u64, String> {
    let (first, last) = stream.bounds().await.map_err(|e| e.to_string())?;
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
        let page = stream.range(from, to).await.map_err(|e| e.to_string())?;
        for m in page.iter().rev() {
            if let Some(v) = &verifier {
                if let Err(why) = m.verify(&settings.subject, v) {
                    alarm.refused("event", &format!("seq {}", m.seq), &why);
                    continue;
                }
            }
            return Ok(match &m.origin {
                Some((e, seq)) if e == epoch && *seq <= head => *seq,
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
pub async fn forward(ctx: Ctx) -> Result<(), String> {
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
    let (mut wake, _) = hub.join_signals(&FilterSet::Everything);
    let Some(mut stream) = connect(&settings, &health, &metrics, &shutdown).await else {
        return Ok(());
    };
    let mut done = loop {
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
                health.set_cluster_fault(Some(e.clone()));
                tracing::warn!(error = %e, "cannot read where the stream stopped; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(BACKOFF_MAX) => {}
                }
            }
        }
    };
    tracing::info!(epoch = %epoch, after = done, head = hub.head_seq(), "publishing to the cluster's stream");
    hub.hold_after(done);
    let mut backoff = BACKOFF_MIN;
    loop {
        let since = hub.since(done, CHUNK);
        let waiting = since.head.saturating_sub(done);
        metrics
            .unpublished_events
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
        let Some(first) = since.frames.first() else {
            health.set_cluster_fault(None);
            let woke = async {
                match wake.as_mut() {
                    Some(w) => {
                        // Lagging is fine: the history has the frames.
                        let _ = w.rx.recv().await;
                    }
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = woke => {}
                // The hub's channel is only a wake-up: a periodic look covers anything missed.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        if first.seq > done + 1 {
            let lost = first.seq - done - 1;
            metrics.unpublished_dropped.inc_by(lost);
            tracing::error!(
                from = done + 1,
                to = first.seq - 1,
                lost,
                "the local history dropped events before the stream took them"
            );
        }
        for f in &since.frames {
            let payload = f.event_json();
            let id = event_id(&payload);
            loop {
                let sent = Instant::now();
                let r = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = stream.publish(&id, f.published_at_us, (&epoch, f.seq), payload.clone()) => r,
                };
                match r {
                    Ok(p) => {
                        metrics
                            .publish_seconds
                            .observe(sent.elapsed().as_secs_f64());
                        metrics.publish_acks.inc();
                        if p.duplicate {
                            metrics.publish_duplicates.inc();
                        }
                        backoff = BACKOFF_MIN;
                        break;
                    }
                    Err(e) => {
                        metrics.publish_failures.inc();
                        if matches!(e, super::ClusterError::NoStream { .. }) {
                            // Deleted, or a server on a new store: created again, a new epoch
                            // for the edges.
                            tracing::warn!("the cluster's stream is gone; creating it again");
                            let Some(s) = connect(&settings, &health, &metrics, &shutdown).await
                            else {
                                return Ok(());
                            };
                            stream = s;
                            continue;
                        }
                        let waiting = hub.head_seq().saturating_sub(done);
                        health.set_cluster_fault(Some(format!(
                            "{waiting} events wait to be published: {e}"
                        )));
                        tracing::warn!(error = %e, seq = f.seq, waiting, "publish failed; the same event is sent again");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            done = f.seq;
            hub.hold_after(done);
        }
    }
}

/// The event id of an event's JSON (the payload the engine serialized).
fn event_id(event_json: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Id {
        event_id: String,
    }
    serde_json::from_slice::<Id>(event_json)
        .map(|i| i.event_id)
        // Not an engine event (the bench source's are): the server cannot deduplicate it.
        .unwrap_or_default()
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
pub async fn share_pairs(ctx: PairsCtx) -> Result<(), String> {
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
            "ab12"
        );
        assert_eq!(event_id(b"{\"n\":1}"), "");
    }
}
