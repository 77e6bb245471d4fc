//! The watchlist and its policy (docs/sources.md, "The watchlist"): which pairs are polled, which
//! discovered pairs are adopted, which are dropped (not found, dead, refused) and which are hot.
//! Pure: the live driver hands it what upstream said, with the time; it answers with what
//! changed, so that the driver only logs and counts.

use std::collections::BTreeMap;

use rand::Rng;

use super::budget::Backoff;
use crate::model::{PairKey, Snapshot};

/// Which upstream polls a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Via {
    Dex,
    Gecko,
}

/// The watchlist's rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub max_pairs: usize,
    /// Discovery adopts pairs on these chains ...
    pub discovery_chains: Vec<String>,
    /// ... with at least this much liquidity.
    pub min_liquidity_usd: f64,
    /// A tracked pair whose liquidity falls below this fraction of `min_liquidity_usd` is dead.
    pub dead_liquidity_fraction: f64,
    /// Polls a discovered pair may be asked for and not returned before it is dropped.
    pub evict_after_misses: u32,
    /// A pair is hot (polled twice as often) while its last snapshot shows this much activity:
    /// trades in 5 minutes, or an absolute 5-minute price change in %.
    pub hot_txns_m5: u64,
    pub hot_abs_pc_m5: f64,
    /// A pair upstream refuses (a 4xx on a request for it alone) waits this long, doubling ...
    pub refusal_backoff_base_ms: i64,
    pub refusal_backoff_max_ms: i64,
    /// ... and is dropped after this many refusals in a row.
    pub drop_after_refusals: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_pairs: 2_000,
            discovery_chains: vec!["solana".to_string()],
            min_liquidity_usd: 10_000.0,
            dead_liquidity_fraction: 0.1,
            evict_after_misses: 3,
            hot_txns_m5: 10,
            hot_abs_pc_m5: 3.0,
            refusal_backoff_base_ms: 60_000,
            refusal_backoff_max_ms: 3_600_000,
            drop_after_refusals: 3,
        }
    }
}

/// Why a pair left the watchlist.
#[derive(Debug, Clone, PartialEq)]
pub enum DropReason {
    /// Asked for this many times in a row and not returned.
    NotFound { misses: u32 },
    /// Liquidity gone, or no trade in 24 h.
    Dead { liquidity_usd: Option<f64> },
    /// Upstream refused a request for it alone this many times (the last status).
    Refused { status: u16, times: u32 },
}

/// What changed in the watchlist.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A discovered pair is tracked now.
    Added(PairKey),
    /// A pair left; `pinned` if it came from the configuration.
    Dropped {
        key: PairKey,
        why: DropReason,
        pinned: bool,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub via: Via,
    pub last_polled_ms: i64,
    /// From the configuration: never dropped as not found or dead.
    pub pinned: bool,
    pub hot: bool,
    pub misses: u32,
    pub refusals: u32,
    pub refusal_backoff: Backoff,
    /// Not polled before this (after a refusal).
    pub blocked_until_ms: i64,
}

#[derive(Debug, Clone)]
pub struct Watchlist {
    policy: Policy,
    pub(super) pairs: BTreeMap<PairKey, Tracked>,
}

impl Watchlist {
    pub fn new(policy: Policy) -> Watchlist {
        Watchlist {
            policy,
            pairs: BTreeMap::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adds a pair; `false` when the list is full (pinned pairs always fit).
    pub fn track(&mut self, key: PairKey, via: Via, pinned: bool) -> bool {
        if self.pairs.contains_key(&key) {
            return true;
        }
        if !pinned && self.pairs.len() >= self.policy.max_pairs {
            return false;
        }
        self.pairs.insert(
            key,
            Tracked {
                via,
                last_polled_ms: i64::MIN / 2,
                pinned,
                hot: false,
                misses: 0,
                refusals: 0,
                refusal_backoff: Backoff::new(
                    self.policy.refusal_backoff_base_ms,
                    self.policy.refusal_backoff_max_ms,
                ),
                blocked_until_ms: i64::MIN,
            },
        );
        true
    }

    pub fn untrack(&mut self, key: &PairKey) -> bool {
        self.pairs.remove(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn contains(&self, key: &PairKey) -> bool {
        self.pairs.contains_key(key)
    }

    pub fn is_hot(&self, key: &PairKey) -> bool {
        self.pairs.get(key).is_some_and(|t| t.hot)
    }

    /// A snapshot upstream returned (by `via`): adopts an eligible discovered pair when `adopt`
    /// (the answer to a discovery request), drops a dead tracked one, marks activity. Returns
    /// whether the snapshot is for a tracked pair (the engine gets only those) and what
    /// changed.
    pub fn observe(&mut self, s: &Snapshot, via: Via, adopt: bool) -> (bool, Option<Change>) {
        let p = &self.policy;
        let mut change = None;
        if !self.pairs.contains_key(&s.key) {
            let eligible = adopt
                && p.discovery_chains.contains(&s.key.chain)
                && s.liquidity_usd.is_some_and(|l| l >= p.min_liquidity_usd);
            if !(eligible && self.track(s.key.clone(), via, false)) {
                return (false, None);
            }
            change = Some(Change::Added(s.key.clone()));
        }
        let p = &self.policy;
        let dead_liq = s
            .liquidity_usd
            .is_some_and(|l| l < p.min_liquidity_usd * p.dead_liquidity_fraction);
        let no_trades = s.txns.h24.is_some_and(|t| t.total() == 0);
        let hot = s.txns.m5.is_some_and(|t| t.total() >= p.hot_txns_m5)
            || s.price_change_pct
                .m5
                .is_some_and(|x| x.abs() >= p.hot_abs_pc_m5);
        let Some(t) = self.pairs.get_mut(&s.key) else {
            return (false, change);
        };
        t.hot = hot;
        t.refusals = 0;
        t.refusal_backoff.succeed();
        if (dead_liq || no_trades) && !t.pinned && change.is_none() {
            self.pairs.remove(&s.key);
            return (
                true,
                Some(Change::Dropped {
                    key: s.key.clone(),
                    why: DropReason::Dead {
                        liquidity_usd: s.liquidity_usd,
                    },
                    pinned: false,
                }),
            );
        }
        (true, change)
    }

    /// A polling request for `asked` succeeded and returned `found`: the rest missed.
    pub fn found(&mut self, asked: &[PairKey], found: &[PairKey]) -> Vec<Change> {
        let mut out = Vec::new();
        for k in asked {
            let Some(t) = self.pairs.get_mut(k) else {
                continue;
            };
            if found.contains(k) {
                t.misses = 0;
            } else {
                t.misses += 1;
                if !t.pinned && t.misses >= self.policy.evict_after_misses {
                    let misses = t.misses;
                    self.pairs.remove(k);
                    out.push(Change::Dropped {
                        key: k.clone(),
                        why: DropReason::NotFound { misses },
                        pinned: false,
                    });
                }
            }
        }
        out
    }

    /// Upstream refused a request for `asked` with `status` (a 4xx that is not about access):
    /// the pairs wait. A pair refused when asked for alone counts a refusal; after
    /// `drop_after_refusals` of them it is dropped, pinned or not (it takes budget for
    /// nothing, and a configured one is most likely a typo).
    pub fn refused(
        &mut self,
        asked: &[PairKey],
        status: u16,
        now_ms: i64,
        rng: &mut impl Rng,
    ) -> Vec<Change> {
        let alone = asked.len() == 1;
        let mut out = Vec::new();
        for k in asked {
            let Some(t) = self.pairs.get_mut(k) else {
                continue;
            };
            if alone {
                t.refusals += 1;
                if t.refusals >= self.policy.drop_after_refusals {
                    let (times, pinned) = (t.refusals, t.pinned);
                    self.pairs.remove(k);
                    out.push(Change::Dropped {
                        key: k.clone(),
                        why: DropReason::Refused { status, times },
                        pinned,
                    });
                    continue;
                }
                t.refusal_backoff.fail(now_ms, None, rng);
                t.blocked_until_ms = t.refusal_backoff.blocked_until();
            } else {
                // The batch may be what was refused (the scheduler halves it): try again soon in
                // a smaller one, not at once.
                t.blocked_until_ms = now_ms + self.policy.refusal_backoff_base_ms / 60;
            }
        }
        out
    }

    pub(super) fn mark_polled(&mut self, keys: &[PairKey], at_ms: i64) {
        for k in keys {
            if let Some(t) = self.pairs.get_mut(k) {
                t.last_polled_ms = at_ms;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn snap(addr: &str, liq: Option<f64>, txns_m5: u64, txns_h24: u64) -> Snapshot {
        let mut s = crate::source::simulator::example_snapshot();
        s.key = PairKey::new("solana", addr);
        s.liquidity_usd = liq;
        s.txns.m5 = Some(crate::model::Txns {
            buys: txns_m5,
            sells: 0,
            buyers: None,
            sellers: None,
        });
        s.txns.h24 = Some(crate::model::Txns {
            buys: txns_h24,
            sells: 0,
            buyers: None,
            sellers: None,
        });
        s.price_change_pct.m5 = Some(0.0);
        s
    }

    #[test]
    fn discovery_adopts_eligible_pairs_and_drops_dead_ones() {
        let mut w = Watchlist::new(Policy::default());
        let (keep, c) = w.observe(&snap("A", Some(50_000.0), 1, 100), Via::Dex, true);
        assert!(keep);
        assert_eq!(c, Some(Change::Added(PairKey::new("solana", "A"))));
        assert_eq!(
            w.observe(&snap("B", Some(500.0), 1, 100), Via::Dex, true),
            (false, None)
        );
        let mut other = snap("C", Some(50_000.0), 1, 100);
        other.key.chain = "base".into();
        assert_eq!(
            w.observe(&other, Via::Dex, true),
            (false, None),
            "not a discovery chain"
        );
        assert_eq!(
            w.observe(&snap("D", Some(50_000.0), 1, 100), Via::Dex, false),
            (false, None),
            "not an answer to a discovery request: never adopted"
        );
        let (_, c) = w.observe(&snap("A", Some(900.0), 1, 100), Via::Dex, true);
        assert!(matches!(
            c,
            Some(Change::Dropped {
                why: DropReason::Dead { .. },
                ..
            })
        ));
        w.track(PairKey::new("solana", "P"), Via::Dex, true);
        let (keep, c) = w.observe(&snap("P", Some(900.0), 0, 0), Via::Dex, true);
        assert!(keep && c.is_none(), "pinned pairs are never dead");
    }

    #[test]
    fn activity_makes_a_pair_hot() {
        let mut w = Watchlist::new(Policy::default());
        let k = PairKey::new("solana", "A");
        w.track(k.clone(), Via::Dex, true);
        w.observe(&snap("A", Some(50_000.0), 12, 100), Via::Dex, true);
        assert!(w.is_hot(&k));
        w.observe(&snap("A", Some(50_000.0), 2, 100), Via::Dex, true);
        assert!(!w.is_hot(&k));
    }

    #[test]
    fn a_pair_refused_alone_waits_longer_each_time_then_is_dropped() {
        let mut w = Watchlist::new(Policy::default());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let k = PairKey::new("solana", "A");
        w.track(k.clone(), Via::Dex, true);
        assert!(w
            .refused(std::slice::from_ref(&k), 400, 0, &mut rng)
            .is_empty());
        let first = w.pairs[&k].blocked_until_ms;
        assert!(first >= 30_000, "{first}");
        assert!(w
            .refused(std::slice::from_ref(&k), 400, first, &mut rng)
            .is_empty());
        assert!(w.pairs[&k].blocked_until_ms - first >= 60_000);
        let c = w.refused(std::slice::from_ref(&k), 400, 0, &mut rng);
        assert_eq!(
            c,
            [Change::Dropped {
                key: k.clone(),
                why: DropReason::Refused {
                    status: 400,
                    times: 3
                },
                pinned: true
            }]
        );
        assert!(!w.contains(&k));
    }

    proptest! {
        #[test]
        fn the_list_never_outgrows_its_cap_and_pinned_pairs_stay(
            ops in proptest::collection::vec((0u8..4, 0usize..40, 0f64..100_000.0), 1..300),
        ) {
            let policy = Policy { max_pairs: 10, ..Policy::default() };
            let mut w = Watchlist::new(policy);
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            let pinned = PairKey::new("solana", "PIN");
            w.track(pinned.clone(), Via::Dex, true);
            for (op, i, liq) in ops {
                let s = snap(&format!("P{i}"), Some(liq), 1, 10);
                match op {
                    0 => { w.observe(&s, Via::Dex, true); }
                    1 => { w.found(&[s.key.clone(), pinned.clone()], &[]); }
                    2 => { w.refused(&[s.key.clone(), pinned.clone()], 400, 0, &mut rng); }
                    _ => { w.observe(&snap("PIN", Some(liq), 0, 0), Via::Dex, true); }
                }
                prop_assert!(w.len() <= 11, "{}", w.len());
                prop_assert!(w.contains(&pinned));
            }
        }
    }
}
