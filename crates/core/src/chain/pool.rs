//! One pool as the chain source keeps it (docs/sources.md, "The chain"): its tokens, its exact
//! state (V2 reserves; V3 balances, price and active liquidity), a minute-by-minute record of
//! its trades and prices for the rolling windows, the LP burns of the last day, and an undo
//! log per block so that a reorganisation can put it back as it was. Events come in decoded
//! and in chain order, with their block's time; a [`Snapshot`] comes out on demand. Pure: no
//! I/O, no clock.

use std::collections::VecDeque;

use alloy_primitives::{Address, I256, U256};
use serde::{Deserialize, Serialize};

use crate::model::{PairKey, Price, Snapshot, Source, Token, Txns, Windows};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V2,
    V3,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V2 => "v2",
            Version::V3 => "v3",
        }
    }
}

/// What a pool's log says, decoded (amounts in raw token units).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    V2Sync {
        reserve0: U256,
        reserve1: U256,
    },
    V2Swap {
        in0: U256,
        in1: U256,
        out0: U256,
        out1: U256,
    },
    V2Mint,
    V2Burn {
        amount0: U256,
        amount1: U256,
    },
    V3Initialize {
        sqrt_price_x96: U256,
    },
    V3Swap {
        amount0: I256,
        amount1: I256,
        sqrt_price_x96: U256,
        liquidity: u128,
    },
    V3Mint {
        amount0: U256,
        amount1: U256,
    },
    V3Burn {
        amount0: U256,
        amount1: U256,
    },
    V3Collect {
        amount0: U256,
        amount1: U256,
    },
}

/// One minute of a pool's trading and price (base in quote units, decimals applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Minute {
    minute: i64,
    buys: u64,
    sells: u64,
    volume_usd: f64,
    /// Every trade of the minute had a USD price.
    usd_known: bool,
    open: f64,
    close: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Burn {
    t_ms: i64,
    block: u64,
    share: f64,
}

/// The pool as it was before a block first touched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Undo {
    block: u64,
    reserves: [U256; 2],
    sqrt_price_x96: Option<U256>,
    liquidity: u128,
    initialized: bool,
    minutes_pushed: u64,
    last_minute: Option<Minute>,
    burns_pushed: u64,
}

const MINUTE_MS: i64 = 60_000;
/// The longest window (h24), in minutes, and one more for its boundary.
const KEEP_MINUTES: i64 = 24 * 60 + 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    pub address: Address,
    pub version: Version,
    /// The DEX's name, from the factory that made it (`uniswap_v2` when not configured).
    pub dex: String,
    pub tokens: [Address; 2],
    /// Which of the tokens is the base (the other prices it).
    pub base: usize,
    /// Token decimals, once known.
    pub decimals: Option<[u8; 2]>,
    /// Creation time (the factory's event), or the earliest block the source read (a lower
    /// bound of the pool's age).
    pub created_ms: Option<i64>,
    /// V2 reserves; V3 token balances (tracked from the logs after one read).
    pub reserves: [U256; 2],
    pub sqrt_price_x96: Option<U256>,
    /// V3 active liquidity after the last swap.
    pub liquidity: u128,
    /// The state is known (read at the start, or built from the pool's first events).
    pub initialized: bool,
    minutes: VecDeque<Minute>,
    minutes_pushed: u64,
    /// The close of the newest minute dropped for age: the price before the window.
    evicted_close: Option<f64>,
    burns: VecDeque<Burn>,
    burns_pushed: u64,
    undo: VecDeque<Undo>,
    /// The block that last touched it.
    pub touched: Option<u64>,
    pub last_snapshot_ms: Option<i64>,
}

/// What a snapshot needs that the pool does not hold.
pub struct SnapCtx<'a> {
    pub chain: &'a str,
    pub t_ms: i64,
    /// The quote token's USD price now (`None`: not a priced quote token).
    pub quote_usd: Option<f64>,
    pub symbols: [Option<String>; 2],
    /// The base token's total supply, in whole units (its FDV is this at the price).
    pub base_supply: Option<f64>,
    /// LP burns are summed over this window.
    pub burn_window_ms: i64,
}

/// `x` raw units of a token with `decimals`, as a float.
pub fn units(x: U256, decimals: u8) -> f64 {
    let v: f64 = x.into();
    v / 10f64.powi(i32::from(decimals))
}

fn signed_units(x: I256, decimals: u8) -> f64 {
    let (sign, abs) = x.into_sign_and_abs();
    let v = units(abs, decimals);
    if sign.is_negative() {
        -v
    } else {
        v
    }
}

impl Pool {
    pub fn new(
        address: Address,
        version: Version,
        dex: String,
        tokens: [Address; 2],
        base: usize,
    ) -> Pool {
        Pool {
            address,
            version,
            dex,
            tokens,
            base,
            decimals: None,
            created_ms: None,
            reserves: [U256::ZERO; 2],
            sqrt_price_x96: None,
            liquidity: 0,
            initialized: false,
            minutes: VecDeque::new(),
            minutes_pushed: 0,
            evicted_close: None,
            burns: VecDeque::new(),
            burns_pushed: 0,
            undo: VecDeque::new(),
            touched: None,
            last_snapshot_ms: None,
        }
    }

    fn quote(&self) -> usize {
        1 - self.base
    }

    /// The base token's price in quote units now, when the state tells it.
    pub fn price(&self) -> Option<f64> {
        let d = self.decimals?;
        if !self.initialized {
            return None;
        }
        let p = match self.version {
            Version::V2 => {
                let (b, q) = (self.reserves[self.base], self.reserves[self.quote()]);
                if b.is_zero() || q.is_zero() {
                    return None;
                }
                units(q, d[self.quote()]) / units(b, d[self.base])
            }
            Version::V3 => {
                let s: f64 = self.sqrt_price_x96?.into();
                if s <= 0.0 {
                    return None;
                }
                let ratio = s / 2f64.powi(96);
                // token1 per token0, in whole units.
                let p10 = ratio * ratio * 10f64.powi(i32::from(d[0]) - i32::from(d[1]));
                if self.base == 0 {
                    p10
                } else {
                    1.0 / p10
                }
            }
        };
        (p.is_finite() && p > 0.0).then_some(p)
    }

    /// What the pool holds, in quote units at the current price.
    fn value_in_quote(&self, amounts: [f64; 2], price: f64) -> f64 {
        amounts[self.base] * price + amounts[self.quote()]
    }

    fn amounts(&self, raw: [U256; 2]) -> Option<[f64; 2]> {
        let d = self.decimals?;
        Some([units(raw[0], d[0]), units(raw[1], d[1])])
    }

    /// Saves what a block about to touch the pool may change, once per block.
    fn begin(&mut self, block: u64) {
        if self.touched == Some(block) {
            return;
        }
        self.undo.push_back(Undo {
            block,
            reserves: self.reserves,
            sqrt_price_x96: self.sqrt_price_x96,
            liquidity: self.liquidity,
            initialized: self.initialized,
            minutes_pushed: self.minutes_pushed,
            last_minute: self.minutes.back().cloned(),
            burns_pushed: self.burns_pushed,
        });
        self.touched = Some(block);
    }

    /// Forgets undo entries older than `keep_from` (beyond any reorganisation followed).
    pub fn settle(&mut self, keep_from: u64) {
        while self.undo.front().is_some_and(|u| u.block < keep_from) {
            self.undo.pop_front();
        }
    }

    /// Puts the pool back as it was after block `fork`.
    pub fn roll_back(&mut self, fork: u64) {
        while let Some(u) = self.undo.back() {
            if u.block <= fork {
                break;
            }
            let Some(u) = self.undo.pop_back() else { break };
            while self.minutes_pushed > u.minutes_pushed {
                self.minutes.pop_back();
                self.minutes_pushed -= 1;
            }
            if let (Some(saved), Some(back)) = (u.last_minute, self.minutes.back_mut()) {
                if back.minute == saved.minute {
                    *back = saved;
                }
            }
            while self.burns_pushed > u.burns_pushed {
                self.burns.pop_back();
                self.burns_pushed -= 1;
            }
            self.reserves = u.reserves;
            self.sqrt_price_x96 = u.sqrt_price_x96;
            self.liquidity = u.liquidity;
            self.initialized = u.initialized;
            self.touched = self.undo.back().map(|u| u.block);
        }
    }

    /// Records the price move and the trade (if any) of one event in its minute.
    fn record(&mut self, t_ms: i64, before: Option<f64>, trade: Option<(bool, Option<f64>)>) {
        let Some(after) = self.price() else { return };
        let minute = t_ms.div_euclid(MINUTE_MS);
        let fresh = self.minutes.back().is_none_or(|m| m.minute < minute);
        if fresh {
            let open = before.unwrap_or(after);
            self.minutes.push_back(Minute {
                minute,
                buys: 0,
                sells: 0,
                volume_usd: 0.0,
                usd_known: true,
                open,
                close: after,
            });
            self.minutes_pushed += 1;
        }
        let Some(m) = self.minutes.back_mut() else {
            return;
        };
        m.close = after;
        if let Some((buy, usd)) = trade {
            if buy {
                m.buys += 1;
            } else {
                m.sells += 1;
            }
            match usd {
                Some(v) => m.volume_usd += v,
                None => m.usd_known = false,
            }
        }
    }

    /// Applies one event of block `block` at `t_ms`; `quote_usd` prices its trade.
    pub fn apply(&mut self, block: u64, t_ms: i64, event: &Event, quote_usd: Option<f64>) {
        self.begin(block);
        let before = self.price();
        let d = self.decimals.unwrap_or([18, 18]);
        let q = self.quote();
        let mut trade = None;
        match event {
            Event::V2Sync { reserve0, reserve1 } => {
                self.reserves = [*reserve0, *reserve1];
                self.initialized = true;
            }
            Event::V2Swap {
                in0,
                in1,
                out0,
                out1,
            } => {
                let ins = [*in0, *in1];
                let outs = [*out0, *out1];
                // Base leaving the pool is someone buying it.
                let buy = !outs[self.base].is_zero();
                let quote_amount = units(ins[q], d[q]) + units(outs[q], d[q]);
                trade = Some((buy, quote_usd.map(|u| quote_amount * u)));
            }
            Event::V2Mint => {}
            Event::V2Burn { amount0, amount1 } => {
                // Emitted after its Sync: the reserves are those left.
                let taken = units([*amount0, *amount1][q], d[q]);
                let left = units(self.reserves[q], d[q]);
                if taken > 0.0 {
                    self.burn(t_ms, block, taken / (left + taken));
                }
            }
            Event::V3Initialize { sqrt_price_x96 } => {
                self.sqrt_price_x96 = Some(*sqrt_price_x96);
                self.initialized = true;
            }
            Event::V3Swap {
                amount0,
                amount1,
                sqrt_price_x96,
                liquidity,
            } => {
                let deltas = [*amount0, *amount1];
                for (r, delta) in self.reserves.iter_mut().zip(deltas) {
                    let (sign, abs) = delta.into_sign_and_abs();
                    *r = if sign.is_negative() {
                        r.saturating_sub(abs)
                    } else {
                        r.saturating_add(abs)
                    };
                }
                self.sqrt_price_x96 = Some(*sqrt_price_x96);
                self.liquidity = *liquidity;
                self.initialized = true;
                let buy = deltas[self.base].is_negative();
                let quote_amount = signed_units(deltas[q], d[q]).abs();
                trade = Some((buy, quote_usd.map(|u| quote_amount * u)));
            }
            Event::V3Mint { amount0, amount1 } => {
                self.reserves[0] = self.reserves[0].saturating_add(*amount0);
                self.reserves[1] = self.reserves[1].saturating_add(*amount1);
            }
            Event::V3Burn { amount0, amount1 } => {
                // The burned tokens stay in the pool, owed, until collected: what the pool
                // holds is what the liquidity was before it left.
                if let (Some(price), Some(taken), Some(held)) = (
                    self.price(),
                    self.amounts([*amount0, *amount1]),
                    self.amounts(self.reserves),
                ) {
                    let taken = self.value_in_quote(taken, price);
                    let held = self.value_in_quote(held, price);
                    if taken > 0.0 && held > 0.0 {
                        self.burn(t_ms, block, (taken / held).min(1.0));
                    }
                }
            }
            Event::V3Collect { amount0, amount1 } => {
                self.reserves[0] = self.reserves[0].saturating_sub(*amount0);
                self.reserves[1] = self.reserves[1].saturating_sub(*amount1);
            }
        }
        self.record(t_ms, before, trade);
    }

    fn burn(&mut self, t_ms: i64, block: u64, share: f64) {
        self.burns.push_back(Burn { t_ms, block, share });
        self.burns_pushed += 1;
    }

    /// Drops what no window reaches any more.
    pub fn prune(&mut self, now_ms: i64) {
        let oldest = now_ms.div_euclid(MINUTE_MS) - KEEP_MINUTES;
        while self.minutes.front().is_some_and(|m| m.minute < oldest) {
            self.evicted_close = self.minutes.pop_front().map(|m| m.close);
        }
        while self
            .burns
            .front()
            .is_some_and(|b| b.t_ms < now_ms - 24 * 60 * MINUTE_MS)
        {
            self.burns.pop_front();
        }
    }

    /// The price at `t_ms`: the close of the last minute before `t_ms`'s minute; else the open
    /// of the first minute from it (the pool had no earlier price it kept); else now.
    fn price_at(&self, t_ms: i64, now: f64) -> f64 {
        let minute = t_ms.div_euclid(MINUTE_MS);
        let mut before = self.evicted_close;
        for m in &self.minutes {
            if m.minute < minute {
                before = Some(m.close);
            } else {
                return before.unwrap_or(m.open);
            }
        }
        before.unwrap_or(now)
    }

    /// The pool as a snapshot at `ctx.t_ms`; `None` while its state or tokens are unknown.
    pub fn snapshot(&self, ctx: &SnapCtx<'_>) -> Option<Snapshot> {
        let price = self.price()?;
        let d = self.decimals?;
        let t = ctx.t_ms;
        let now_minute = t.div_euclid(MINUTE_MS);
        const WINDOWS: [i64; 4] = [5, 60, 360, 1440];
        let mut pc = [None; 4];
        let mut vol = [None; 4];
        let mut tx = [None; 4];
        for (i, w) in WINDOWS.into_iter().enumerate() {
            let from_ms = t - w * MINUTE_MS;
            let then = self.price_at(from_ms, price);
            if then > 0.0 {
                pc[i] = Some(round(((price / then) - 1.0) * 100.0, 4));
            }
            let from_minute = now_minute - w + 1;
            let (mut buys, mut sells, mut usd, mut known) = (0u64, 0u64, 0.0, true);
            for m in self.minutes.iter().filter(|m| m.minute >= from_minute) {
                buys += m.buys;
                sells += m.sells;
                usd += m.volume_usd;
                known &= m.usd_known;
            }
            tx[i] = Some(Txns {
                buys,
                sells,
                buyers: None,
                sellers: None,
            });
            vol[i] = (ctx.quote_usd.is_some() && known).then_some(round(usd, 2));
        }
        let q = self.quote();
        let amounts = [units(self.reserves[0], d[0]), units(self.reserves[1], d[1])];
        let liquidity_usd = ctx
            .quote_usd
            .map(|u| round(self.value_in_quote(amounts, price) * u, 2));
        let burned = self
            .burns
            .iter()
            .filter(|b| b.t_ms > t - ctx.burn_window_ms && b.t_ms <= t)
            .fold(1.0, |left, b| left * (1.0 - b.share));
        let token = |i: usize| Token {
            address: format!("{:#x}", self.tokens[i]),
            symbol: ctx.symbols[i].clone(),
        };
        Some(Snapshot {
            key: PairKey::new(ctx.chain, format!("{:#x}", self.address)),
            source: Source::Evm,
            observed_at_ms: t,
            source_ts_ms: Some(t),
            dex_id: Some(self.dex.clone()),
            labels: vec![self.version.label().to_string()],
            base_token: token(self.base),
            quote_token: token(q),
            price_usd: ctx.quote_usd.and_then(|u| price_of(price * u)),
            price_change_pct: Windows {
                m5: pc[0],
                h1: pc[1],
                h6: pc[2],
                h24: pc[3],
            },
            volume_usd: Windows {
                m5: vol[0],
                h1: vol[1],
                h6: vol[2],
                h24: vol[3],
            },
            txns: Windows {
                m5: tx[0],
                h1: tx[1],
                h6: tx[2],
                h24: tx[3],
            },
            liquidity_usd,
            liquidity_base: Some(amounts[self.base]),
            liquidity_quote: Some(amounts[q]),
            fdv_usd: match (ctx.base_supply, ctx.quote_usd) {
                (Some(supply), Some(u)) => Some(round(supply * price * u, 2)),
                _ => None,
            },
            market_cap_usd: None,
            pair_created_at_ms: self.created_ms,
            lp_burned: Some(round(1.0 - burned, 6)),
            quote_usd: ctx.quote_usd,
        })
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// A USD price as a decimal string of eight significant digits, as DexScreener writes them.
fn price_of(p: f64) -> Option<Price> {
    if !(p.is_finite() && p > 0.0) {
        return None;
    }
    let magnitude = p.log10().floor() as i32;
    let decimals = (7 - magnitude).clamp(0, 30) as usize;
    let mut raw = format!("{p:.decimals$}");
    if raw.contains('.') {
        while raw.ends_with('0') {
            raw.pop();
        }
        if raw.ends_with('.') {
            raw.pop();
        }
    }
    Price::parse(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2() -> Pool {
        let mut p = Pool::new(
            Address::repeat_byte(1),
            Version::V2,
            "uniswap_v2".into(),
            [Address::repeat_byte(2), Address::repeat_byte(3)],
            0,
        );
        p.decimals = Some([18, 6]);
        p
    }

    fn e18(x: u64) -> U256 {
        U256::from(x) * U256::from(10u64).pow(U256::from(18))
    }

    fn e6(x: u64) -> U256 {
        U256::from(x) * U256::from(1_000_000u64)
    }

    fn ctx(t_ms: i64) -> SnapCtx<'static> {
        SnapCtx {
            chain: "base",
            t_ms,
            quote_usd: Some(1.0),
            symbols: [Some("TKN".into()), Some("USDC".into())],
            base_supply: None,
            burn_window_ms: 30 * MINUTE_MS,
        }
    }

    #[test]
    fn a_v2_pool_counts_its_swaps_and_prices_from_its_reserves() {
        let mut p = v2();
        let t0 = 1_800_000_000_000;
        p.apply(
            1,
            t0,
            &Event::V2Sync {
                reserve0: e18(1_000),
                reserve1: e6(2_000),
            },
            Some(1.0),
        );
        p.apply(1, t0, &Event::V2Mint, Some(1.0));
        assert_eq!(p.price(), Some(2.0));
        // Someone buys 10 TKN for about 20 USDC.
        p.apply(
            2,
            t0 + 60_000,
            &Event::V2Sync {
                reserve0: e18(990),
                reserve1: e6(2_020),
            },
            Some(1.0),
        );
        p.apply(
            2,
            t0 + 60_000,
            &Event::V2Swap {
                in0: U256::ZERO,
                in1: e6(20),
                out0: e18(10),
                out1: U256::ZERO,
            },
            Some(1.0),
        );
        let s = p.snapshot(&ctx(t0 + 120_000)).unwrap();
        assert_eq!(s.txns.m5.unwrap().buys, 1);
        assert_eq!(s.txns.m5.unwrap().sells, 0);
        assert_eq!(s.volume_usd.m5, Some(20.0));
        let price = 2020.0 / 990.0;
        assert!((s.price_usd.unwrap().value - price).abs() < 1e-6);
        assert_eq!(
            s.price_change_pct.m5,
            Some(round((price / 2.0 - 1.0) * 100.0, 4))
        );
        assert_eq!(s.liquidity_usd, Some(4040.0));
        assert_eq!(s.lp_burned, Some(0.0));
        assert_eq!(s.key.address, format!("{:#x}", Address::repeat_byte(1)));
    }

    #[test]
    fn an_lp_burn_is_measured_exactly_and_a_reorg_puts_it_back() {
        let mut p = v2();
        let t0 = 1_800_000_000_000;
        p.apply(
            1,
            t0,
            &Event::V2Sync {
                reserve0: e18(1_000),
                reserve1: e6(2_000),
            },
            Some(1.0),
        );
        let before = p.clone();
        // 90 % of the liquidity leaves: Sync to what is left, then Burn with what left.
        p.apply(
            5,
            t0 + 600_000,
            &Event::V2Sync {
                reserve0: e18(100),
                reserve1: e6(200),
            },
            Some(1.0),
        );
        p.apply(
            5,
            t0 + 600_000,
            &Event::V2Burn {
                amount0: e18(900),
                amount1: e6(1_800),
            },
            Some(1.0),
        );
        let s = p.snapshot(&ctx(t0 + 600_000)).unwrap();
        assert_eq!(s.lp_burned, Some(0.9));
        assert_eq!(
            s.price_change_pct.h1,
            Some(0.0),
            "a burn does not move the price"
        );
        // After the window the burn no longer counts.
        let later = p.snapshot(&ctx(t0 + 600_000 + 31 * MINUTE_MS)).unwrap();
        assert_eq!(later.lp_burned, Some(0.0));
        p.roll_back(4);
        assert_eq!(p.reserves, before.reserves);
        assert_eq!(p.snapshot(&ctx(t0 + 600_000)).unwrap().lp_burned, Some(0.0));
        assert_eq!(p.minutes, before.minutes);
    }

    #[test]
    fn a_v3_pool_prices_from_its_square_root_and_a_sell_off_burns_nothing() {
        let mut p = Pool::new(
            Address::repeat_byte(9),
            Version::V3,
            "uniswap_v3".into(),
            [Address::repeat_byte(2), Address::repeat_byte(3)],
            0,
        );
        p.decimals = Some([18, 18]);
        // sqrt(4) * 2^96: 4 token1 per token0.
        let sqrt = U256::from(2u64) << 96;
        p.apply(
            1,
            0,
            &Event::V3Initialize {
                sqrt_price_x96: sqrt,
            },
            Some(1.0),
        );
        p.apply(
            1,
            0,
            &Event::V3Mint {
                amount0: e18(100),
                amount1: e18(400),
            },
            Some(1.0),
        );
        assert_eq!(p.price(), Some(4.0));
        // A sell of token0 halves the price.
        p.apply(
            2,
            60_000,
            &Event::V3Swap {
                amount0: I256::try_from(e18(40)).unwrap(),
                amount1: -I256::try_from(e18(110)).unwrap(),
                sqrt_price_x96: (U256::from(2u64) << 96) * U256::from(7071u64)
                    / U256::from(10_000u64),
                liquidity: 1,
            },
            Some(1.0),
        );
        let s = p.snapshot(&ctx(120_000)).unwrap();
        assert_eq!(s.txns.m5.unwrap().sells, 1);
        assert_eq!(s.lp_burned, Some(0.0));
        assert!(s.price_change_pct.m5.unwrap() < -49.0);
        assert_eq!(s.liquidity_base, Some(140.0));
        assert_eq!(s.liquidity_quote, Some(290.0));
    }

    #[test]
    fn prices_are_written_with_eight_significant_digits() {
        let check = |p: f64, want: &str| assert_eq!(price_of(p).unwrap().raw, want, "{p}");
        check(2.0, "2");
        check(2.040404040404, "2.040404");
        check(0.000_012_345_678_9, "0.000012345679");
        check(31_234.567_89, "31234.568");
        assert!(price_of(0.0).is_none() && price_of(f64::NAN).is_none());
    }
}
