//! Freshness and validity (docs/signals.md, "Freshness"): which snapshots may advance a pair's
//! state. A snapshot with the numeric payload of the pair's previous one is stale; a feed whose
//! non-zero `V_m5` stays frozen for minutes is proven stale; windows that are not monotonic,
//! a price that is not positive, or a time before the last fresh snapshot are invalid; a ≥ 10×
//! price jump is suspect until the next fresh snapshot confirms it.

use serde::{Deserialize, Serialize};

use super::params::Params;
use super::Verdict;
use crate::model::{Snapshot, NUMERIC_FIELDS};

/// What one pair's freshness checks remember.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct State {
    last_fields: [u64; NUMERIC_FIELDS],
    pub(super) has_fresh: bool,
    pub(super) last_fresh_ms: i64,
    last_price: Option<f64>,
    suspect: Option<f64>,
    m5_since: Option<(u64, i64)>,
}

impl State {
    pub(super) fn new() -> State {
        State {
            last_fields: [0; NUMERIC_FIELDS],
            has_fresh: false,
            last_fresh_ms: i64::MIN / 2,
            last_price: None,
            suspect: None,
            m5_since: None,
        }
    }

    /// `Ok` when the snapshot is fresh and valid, else the verdict that stops it.
    pub(super) fn check(&mut self, snap: &Snapshot, cfg: &Params) -> Result<(), Verdict> {
        let fields = snap.numeric_fields();
        if self.last_fields == fields {
            return Err(Verdict::Stale);
        }
        self.last_fields = fields;
        validate(snap, self, cfg).map_err(Verdict::Invalid)?;
        let t = snap.observed_at_ms;
        let price = snap.price_usd.as_ref().map(|p| p.value);
        if let (Some(p), Some(last)) = (price, self.last_price) {
            let factor = cfg.freshness.price_jump_suspect_factor;
            let recent = t - self.last_fresh_ms <= cfg.ms.price_jump_window;
            let jump = p >= last * factor || p * factor <= last;
            if recent && jump {
                // Confirmed when the next fresh snapshot stays near the jumped-to price.
                let confirmed = self.suspect.is_some_and(|s| p <= s * 2.0 && p * 2.0 >= s);
                if !confirmed {
                    self.suspect = Some(p);
                    return Err(Verdict::Suspect);
                }
            }
        }
        self.suspect = None;

        // Upstream-stale proof: a non-zero V_m5 that does not move for minutes is a frozen feed.
        if let Some(v) = snap.volume_usd.m5.filter(|v| *v > 0.0) {
            match self.m5_since {
                Some((bits, since)) if bits == v.to_bits() => {
                    if t - since >= cfg.ms.stale_m5_proof {
                        return Err(Verdict::Stale);
                    }
                }
                _ => self.m5_since = Some((v.to_bits(), t)),
            }
        } else {
            self.m5_since = None;
        }
        Ok(())
    }

    /// The snapshot `check` passed has been taken in.
    pub(super) fn taken(&mut self, snap: &Snapshot) {
        self.has_fresh = true;
        self.last_fresh_ms = snap.observed_at_ms;
        if let Some(p) = snap.price_usd.as_ref().map(|p| p.value) {
            self.last_price = Some(p);
        }
    }

    /// The chain the pair continues on forked at `at_ms`: its blocks may be older than the
    /// replaced ones, and may repeat a replaced block's payload.
    pub(super) fn rewind(&mut self, at_ms: i64) {
        self.last_fresh_ms = self.last_fresh_ms.min(at_ms);
        self.last_fields = [0; NUMERIC_FIELDS];
    }
}

fn validate(snap: &Snapshot, st: &State, cfg: &Params) -> Result<(), &'static str> {
    if st.has_fresh && snap.observed_at_ms < st.last_fresh_ms {
        return Err("observed before the pair's last fresh snapshot");
    }
    if snap.price_usd.as_ref().is_some_and(|p| p.value <= 0.0) {
        return Err("price not positive");
    }
    let tol = 1.0 + cfg.freshness.window_monotonic_tolerance;
    let monotonic = |w: [Option<f64>; 4]| {
        let mut prev: Option<f64> = None;
        for x in w.into_iter().flatten() {
            if let Some(p) = prev {
                // A small absolute slack keeps dust-sized windows from failing on rounding.
                if p > x * tol + 1e-6 {
                    return false;
                }
            }
            prev = Some(x);
        }
        true
    };
    if !monotonic(snap.volume_usd.as_array()) {
        return Err("volume windows not monotonic");
    }
    let t = snap.txns.as_array();
    if !monotonic(t.map(|x| x.map(|x| x.total() as f64))) {
        return Err("txn windows not monotonic");
    }
    Ok(())
}
