//! The fan-out room: one broadcast channel per canonical filter set, so that a session is woken
//! only by frames it wants and each frame is matched once per filter set, not once per session.
//!
//! Filter sets are interned: sessions with the same set (in any order) share one channel, which
//! is freed when the last of them lets go (a [`Subscription`] gives its place back on drop),
//! whether or not anything is published. Publishing takes a snapshot of the channel list (an
//! `Arc` clone under a short lock) and matches and sends outside any lock, so subscribing never
//! waits for a publish and a publish never waits for matching.
//!
//! Beyond `max_filter_sets` distinct sets (and for any set that matches everything), sessions
//! share the channel of every event and filter for themselves: clients cannot make the hub
//! allocate channels without bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};

use dexpulse_core::protocol::FilterSet;

use super::history::Frame;

struct Topic {
    set: FilterSet,
    tx: broadcast::Sender<Arc<Frame>>,
}

#[derive(Default)]
struct Registry {
    /// Each distinct set's channel and how many subscriptions hold it.
    topics: HashMap<FilterSet, (Arc<Topic>, usize)>,
    /// What publishers iterate: rebuilt when a channel opens or closes.
    list: Arc<[Arc<Topic>]>,
}

pub struct Fanout {
    registry: Mutex<Registry>,
    everything_capacity: usize,
    topic_capacity: usize,
    max_filter_sets: usize,
    /// Bumped after every send: what the session writers wait on (a few tasks, instead of every
    /// session on its channel).
    sent: watch::Sender<u64>,
}

/// A session's place on a channel. Dropping it leaves the channel (and closes it when it was
/// the last).
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<Frame>>,
    key: FilterSet,
    fanout: Arc<Fanout>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.fanout.leave(&self.key);
    }
}

impl Fanout {
    pub fn new(
        everything_capacity: usize,
        topic_capacity: usize,
        max_filter_sets: usize,
    ) -> Fanout {
        Fanout {
            registry: Mutex::new(Registry::default()),
            everything_capacity,
            topic_capacity,
            max_filter_sets,
            sent: watch::Sender::new(0),
        }
    }

    /// Changes after every send.
    pub fn sent(&self) -> watch::Receiver<u64> {
        self.sent.subscribe()
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Map inserts and removals only: a panic under the lock leaves it consistent.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the channel of `set` and reads the head inside the same critical section that a
    /// publisher takes its snapshot in (the publisher moves the head before that): every frame
    /// after the returned head reaches the subscription, and the ones up to it are in the
    /// history. An empty set joins nothing.
    pub fn join(
        self: &Arc<Self>,
        set: &FilterSet,
        head: impl FnOnce() -> u64,
    ) -> (Option<Subscription>, u64) {
        let mut reg = self.registry();
        if set.is_empty() {
            return (None, head());
        }
        let key = if reg.topics.contains_key(set) {
            set.clone()
        } else if *set != FilterSet::Everything && reg.topics.len() >= self.max_filter_sets {
            FilterSet::Everything
        } else {
            set.clone()
        };
        let rx = match reg.topics.get_mut(&key) {
            Some((topic, holders)) => {
                *holders += 1;
                topic.tx.subscribe()
            }
            None => {
                let capacity = if key == FilterSet::Everything {
                    self.everything_capacity
                } else {
                    self.topic_capacity
                };
                let (tx, rx) = broadcast::channel(capacity);
                let topic = Arc::new(Topic {
                    set: key.clone(),
                    tx,
                });
                reg.topics.insert(key.clone(), (topic, 1));
                reg.list = reg.topics.values().map(|(t, _)| t.clone()).collect();
                rx
            }
        };
        let h = head();
        drop(reg);
        (
            Some(Subscription {
                rx,
                key,
                fanout: self.clone(),
            }),
            h,
        )
    }

    fn leave(&self, key: &FilterSet) {
        let mut reg = self.registry();
        let last = match reg.topics.get_mut(key) {
            Some((_, holders)) => {
                *holders -= 1;
                *holders == 0
            }
            None => false,
        };
        if last {
            reg.topics.remove(key);
            reg.list = reg.topics.values().map(|(t, _)| t.clone()).collect();
        }
    }

    /// Sends each frame to every channel whose set matches it. Never waits: a receiver that
    /// fell behind its channel lags (its session recovers from the history).
    pub fn send(&self, frames: &[Arc<Frame>]) {
        let list = self.registry().list.clone();
        for frame in frames {
            for topic in list.iter() {
                if topic.set.matches(&frame.meta) {
                    // No receiver left since the snapshot: nobody to tell.
                    let _ = topic.tx.send(frame.clone());
                }
            }
        }
        self.sent.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Distinct filter sets open (one channel each).
    pub fn channels(&self) -> usize {
        self.registry().topics.len()
    }

    /// Subscriptions held, over all channels.
    pub fn subscriptions(&self) -> usize {
        self.registry().topics.values().map(|(_, n)| *n).sum()
    }

    /// Filter entries held by the open channels (what they cost to keep and to match).
    pub fn filter_entries(&self) -> usize {
        self.registry().topics.keys().map(FilterSet::size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use dexpulse_core::model::{Direction, EventMeta, Kind, PairKey};
    use dexpulse_core::protocol::Filter;

    fn frame(seq: u64, chain: &str) -> Arc<Frame> {
        Arc::new(Frame {
            seq,
            published_at_us: 0,
            meta: EventMeta {
                pair: PairKey::new(chain, "p"),
                kind: Kind::VolumeSurge,
                direction: Direction::Bullish,
                score: 70,
            },
            text: Bytes::new(),
        })
    }

    fn set(chains: &[&[&str]]) -> FilterSet {
        let fs: Vec<Arc<Filter>> = chains
            .iter()
            .map(|c| Arc::new(Filter::chains(c.iter().copied())))
            .collect();
        FilterSet::new(fs.iter())
    }

    #[test]
    fn frames_go_only_to_the_sets_that_match_and_sets_are_shared_and_freed() {
        let f = Arc::new(Fanout::new(16, 16, 16));
        let (all, _) = f.join(&FilterSet::Everything, || 0);
        let (a, _) = f.join(&set(&[&["sim"], &["base"]]), || 0);
        let (b, _) = f.join(&set(&[&["base"], &["sim"]]), || 0);
        let (eth, _) = f.join(&set(&[&["eth"]]), || 0);
        assert_eq!(
            f.channels(),
            3,
            "the same set in another order shares a channel"
        );
        assert_eq!(f.subscriptions(), 4);
        f.send(&[frame(1, "sim"), frame(2, "eth")]);
        let mut all = all.unwrap();
        let (mut a, mut b, mut eth) = (a.unwrap(), b.unwrap(), eth.unwrap());
        assert_eq!(all.rx.try_recv().unwrap().seq, 1);
        assert_eq!(all.rx.try_recv().unwrap().seq, 2);
        assert_eq!(a.rx.try_recv().unwrap().seq, 1);
        assert!(a.rx.try_recv().is_err());
        assert_eq!(b.rx.try_recv().unwrap().seq, 1);
        assert_eq!(eth.rx.try_recv().unwrap().seq, 2);
        drop(a);
        assert_eq!(f.channels(), 3, "one holder left");
        drop(b);
        drop(eth);
        assert_eq!(f.channels(), 1, "freed without any publish");
        assert_eq!(f.filter_entries(), 1);
        let (none, head) = f.join(&FilterSet::new([]), || 7);
        assert!(none.is_none());
        assert_eq!(head, 7);
    }

    #[test]
    fn sets_beyond_the_cap_share_the_channel_of_every_event() {
        let f = Arc::new(Fanout::new(16, 16, 2));
        let (_x, _) = f.join(&set(&[&["base"]]), || 0);
        let (_y, _) = f.join(&set(&[&["sim"]]), || 0);
        let (third, _) = f.join(&set(&[&["eth"]]), || 0);
        assert_eq!(f.channels(), 3, "two sets and the channel of every event");
        let (fourth, _) = f.join(&set(&[&["bsc"]]), || 0);
        assert_eq!(f.channels(), 3);
        f.send(&[frame(1, "sim")]);
        let (mut third, mut fourth) = (third.unwrap(), fourth.unwrap());
        assert_eq!(
            third.rx.try_recv().unwrap().seq,
            1,
            "more than asked for, never less"
        );
        assert_eq!(fourth.rx.try_recv().unwrap().seq, 1);
    }
}
