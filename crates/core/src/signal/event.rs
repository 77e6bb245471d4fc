//! Event building (docs/signals.md, "The event"): what the state machine decided ([`Emit`]),
//! with the snapshot and features it was decided on, into the deterministic
//! `dexpulse.event/v1` object: ids, severity, rounded metrics, flags and reasons.

use sha2::{Digest, Sha256};

use super::kinds::{self, Features, RiskFlags};
use super::params::Params;
use crate::model::{
    format_ms, CloseReason, Components, Direction, EngineInfo, Kind, KindSet, Metrics, Phase,
    Severity, SignalEvent, Snapshot, TxnWindows, Windows, EVENT_SCHEMA,
};

/// One event to build, decided by the state machine.
#[derive(Debug, Clone, Copy)]
pub(super) struct Emit {
    pub(super) kind: Kind,
    pub(super) phase: Phase,
    pub(super) dir: Direction,
    pub(super) score: u8,
    pub(super) e: f64,
    pub(super) q: f64,
    pub(super) p: u32,
    pub(super) start_ms: i64,
    pub(super) at_ms: i64,
    pub(super) close_reason: Option<CloseReason>,
    /// `stance`: the open kinds behind it.
    pub(super) basis: KindSet,
}

fn stance_reasons(e: &Emit, cfg: &Params) -> Vec<String> {
    let kinds: Vec<&str> = e.basis.iter().map(Kind::as_str).collect();
    vec![match e.dir {
        Direction::Bearish => format!("bearish: {} open", kinds.join(", ")),
        Direction::Bullish => format!(
            "bullish: {} open with a score of at least {}",
            kinds.join(", "),
            cfg.fsm.stance_min_bullish_score
        ),
        Direction::Neutral => format!(
            "neutral: no bearish episode and no bullish one of a score of at least {} open",
            cfg.fsm.stance_min_bullish_score
        ),
    }]
}

fn sha_hex32(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b"|");
        }
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

pub(super) fn round_to(x: Option<f64>, decimals: i32) -> Option<f64> {
    let m = 10f64.powi(decimals);
    x.map(|v| (v * m).round() / m).filter(|v| v.is_finite())
}

fn round_windows(w: Windows<f64>, decimals: i32) -> Windows<f64> {
    Windows {
        m5: round_to(w.m5, decimals),
        h1: round_to(w.h1, decimals),
        h6: round_to(w.h6, decimals),
        h24: round_to(w.h24, decimals),
    }
}

pub(super) fn build(
    e: &Emit,
    snap: &Snapshot,
    f: &Features,
    cfg: &Params,
    params_hash: &str,
    related: &[String],
) -> SignalEvent {
    let chain = &snap.key.chain;
    let pair = &snap.key.address;
    let start = e.start_ms.to_string();
    let at = e.at_ms.to_string();
    let episode_id = sha_hex32(&["v1", chain, pair, e.kind.as_str(), &start]);
    let event_id = sha_hex32(&[
        "v1",
        chain,
        pair,
        e.kind.as_str(),
        e.phase.as_str(),
        &start,
        &at,
    ]);
    let (flags, _) = kinds::risk(f, cfg);
    let mut flags = flags;
    if e.kind == Kind::VolumeSurge && e.dir == Direction::Neutral {
        flags.set(RiskFlags::FLAT_HIGH_VOLUME);
    }
    if e.close_reason == Some(CloseReason::WashSuspected) {
        flags.set(RiskFlags::WASH_SUSPECTED);
    }
    let severity = if e.kind == Kind::RugWarning {
        Severity::Critical
    } else {
        Severity::from_score(e.score)
    };
    let reasons = match e.phase {
        Phase::Closed => vec![match e.close_reason {
            Some(CloseReason::DataGap) => format!(
                "no fresh snapshot for {} min",
                crate::settings::as_minutes(cfg.fsm.data_gap_close)
            ),
            Some(CloseReason::Superseded) => "superseded by the opposite signal".to_string(),
            Some(CloseReason::FamilyFlip) => "volume surge changed direction".to_string(),
            Some(CloseReason::WashSuspected) => {
                "suspected wash trading: volume that moves no price".to_string()
            }
            _ => "exit condition held".to_string(),
        }],
        _ if e.kind == Kind::Stance => stance_reasons(e, cfg),
        _ => kinds::reasons(e.kind, e.dir, f, cfg),
    };
    SignalEvent {
        schema: EVENT_SCHEMA.to_string(),
        event_id,
        episode_id,
        phase: e.phase,
        close_reason: e.close_reason,
        kind: e.kind,
        direction: e.dir,
        score: e.score,
        severity,
        confidence: None,
        observed_at: format_ms(e.at_ms),
        episode_started_at: format_ms(e.start_ms),
        chain: chain.clone(),
        pair_address: pair.clone(),
        dex_id: snap.dex_id.clone(),
        base_token: snap.base_token.clone(),
        quote_token: snap.quote_token.clone(),
        source: snap.source,
        snapshot_fingerprint: snap.fingerprint(),
        metrics: Metrics {
            price_usd: snap.price_usd.as_ref().map(|p| p.raw.clone()),
            price_change_pct: round_windows(snap.price_change_pct, 2),
            volume_usd: round_windows(snap.volume_usd, 2),
            txns: TxnWindows::from(&snap.txns),
            liquidity_usd: round_to(snap.liquidity_usd, 2),
            fdv_usd: round_to(snap.fdv_usd, 2),
            market_cap_usd: round_to(snap.market_cap_usd, 2),
            age_minutes: f.age_min.map(|a| a.floor() as i64),
            r5: round_to(f.r5, 4),
            r60: round_to(f.r60, 4),
            r6h: round_to(f.r6h, 4),
            z_vol: round_to(f.z_vol, 4),
            bp_h1: round_to(f.bp_h1, 4),
            bp_m5: round_to(f.bp_m5, 4),
            lvr: round_to(f.lvr, 4),
            lp_removed: round_to(f.lp_removed, 4),
            dd30: round_to(f.dd30, 4),
        },
        components: Components {
            e: round_to(Some(e.e), 4).unwrap_or(0.0),
            q: round_to(Some(e.q), 4).unwrap_or(0.0),
            p: e.p,
        },
        risk_flags: flags.names(),
        reasons,
        related_pairs: if e.kind.is_market() {
            related.to_vec()
        } else {
            Vec::new()
        },
        engine: EngineInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            params_hash: params_hash.to_string(),
        },
        observed_at_ms: e.at_ms,
    }
}
