//! Pair views (docs/protocol.md, "The pairs channel"): a pair's latest state as `pair` messages
//! and `/v1/pairs` show it, rendered from the plain output of the engine (the snapshot as
//! upstream gave it, the derived [`PairMetrics`], the open kinds). Unknown values are `null`.

use serde::Serialize;

use crate::model::{
    format_ms, Direction, Kind, KindSet, PairMetrics, Snapshot, Source, Token, TxnWindows, Windows,
};

#[derive(Serialize)]
struct PairView<'a> {
    chain: &'a str,
    pair_address: &'a str,
    dex_id: Option<&'a str>,
    base_token: &'a Token,
    quote_token: &'a Token,
    source: Source,
    observed_at: String,
    price_usd: Option<&'a str>,
    price_change_pct: Windows<f64>,
    volume_usd: Windows<f64>,
    txns: TxnWindows,
    liquidity_usd: Option<f64>,
    fdv_usd: Option<f64>,
    market_cap_usd: Option<f64>,
    age_minutes: Option<i64>,
    r5: Option<f64>,
    r60: Option<f64>,
    bp_h1: Option<f64>,
    bp_m5: Option<f64>,
    lvr: Option<f64>,
    lp_removed: Option<f64>,
    stance: Option<Direction>,
    trend: Option<Direction>,
    open_signals: Vec<Kind>,
}

/// The pair object, as JSON.
pub fn render_pair(s: &Snapshot, m: &PairMetrics, open: KindSet) -> String {
    let view = PairView {
        chain: &s.key.chain,
        pair_address: &s.key.address,
        dex_id: s.dex_id.as_deref(),
        base_token: &s.base_token,
        quote_token: &s.quote_token,
        source: s.source,
        observed_at: format_ms(s.observed_at_ms),
        price_usd: s.price_usd.as_ref().map(|p| p.raw.as_str()),
        price_change_pct: s.price_change_pct,
        volume_usd: s.volume_usd,
        txns: TxnWindows::from(&s.txns),
        liquidity_usd: s.liquidity_usd,
        fdv_usd: s.fdv_usd,
        market_cap_usd: s.market_cap_usd,
        age_minutes: m.age_minutes,
        r5: m.r5,
        r60: m.r60,
        bp_h1: m.bp_h1,
        bp_m5: m.bp_m5,
        lvr: m.lvr,
        lp_removed: m.lp_removed,
        stance: m.stance,
        trend: m.trend,
        open_signals: open.iter().collect(),
    };
    // Plain strings and numbers (non-finite ones become null): serializing cannot fail.
    serde_json::to_string(&view).unwrap_or_default()
}

/// The `pair` message around a rendered pair object.
pub fn pair_message(pair_json: &str) -> String {
    format!("{{\"type\":\"pair\",\"pair\":{pair_json}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_keeps_unknowns_null_and_lists_open_kinds() {
        let mut s = crate::source::simulator::example_snapshot();
        s.fdv_usd = None;
        let m = PairMetrics {
            r5: Some(4.1201),
            stance: Some(Direction::Neutral),
            trend: Some(Direction::Bearish),
            ..PairMetrics::default()
        };
        let open: KindSet = [Kind::VolumeSurge, Kind::MomentumUp].into_iter().collect();
        let v: serde_json::Value = serde_json::from_str(&render_pair(&s, &m, open)).unwrap();
        assert_eq!(v["chain"], s.key.chain.as_str());
        assert_eq!(v["fdv_usd"], serde_json::Value::Null);
        assert_eq!(v["r5"], 4.1201);
        assert_eq!(v["r60"], serde_json::Value::Null);
        assert_eq!(
            (&v["stance"], &v["trend"]),
            (&serde_json::json!("neutral"), &serde_json::json!("bearish"))
        );
        assert_eq!(
            v["open_signals"],
            serde_json::json!(["momentum_up", "volume_surge"])
        );
        let msg: serde_json::Value = serde_json::from_str(&pair_message("{\"a\":1}")).unwrap();
        assert_eq!(msg, serde_json::json!({"type":"pair","pair":{"a":1}}));
    }
}
