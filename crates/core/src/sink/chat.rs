//! Chat messages for people (Telegram, Discord): one short message per event, or one digest for
//! several when the service's rate would otherwise make them queue (docs/sinks.md). Plain text:
//! no markup to escape, so an upstream symbol cannot break or inject formatting.

use serde::Deserialize;

use crate::model::{Direction, Kind, Phase, Severity, Source, Token};

/// What a chat message says of one event, read from the frame the WebSocket clients get.
#[derive(Debug, Clone, PartialEq)]
pub struct Brief {
    pub seq: u64,
    pub event_id: String,
    pub kind: Kind,
    pub direction: Direction,
    pub phase: Phase,
    pub score: u8,
    pub severity: Severity,
    pub chain: String,
    pub pair_address: String,
    pub base: Option<String>,
    pub quote: Option<String>,
    pub source: Source,
    pub reasons: Vec<String>,
    pub risk_flags: Vec<String>,
}

#[derive(Deserialize)]
struct FrameIn {
    seq: u64,
    event: EventIn,
}

#[derive(Deserialize)]
struct EventIn {
    event_id: String,
    kind: Kind,
    direction: Direction,
    phase: Phase,
    score: u8,
    severity: Severity,
    chain: String,
    pair_address: String,
    base_token: Token,
    quote_token: Token,
    source: Source,
    #[serde(default)]
    reasons: Vec<String>,
    #[serde(default)]
    risk_flags: Vec<String>,
}

/// The longest message each service takes (Telegram 4,096 characters, Discord 2,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Telegram,
    Discord,
}

impl Service {
    pub fn max_chars(self) -> usize {
        match self {
            Service::Telegram => 4_096,
            Service::Discord => 2_000,
        }
    }
}

/// Reasons shown per event, the most important first (the engine's order).
const TOP_REASONS: usize = 3;

impl Brief {
    /// From a signal frame (`{"type":"signal","seq":…,"event":{…}}`).
    pub fn from_frame(text: &[u8]) -> Result<Brief, serde_json::Error> {
        let f: FrameIn = serde_json::from_slice(text)?;
        let e = f.event;
        Ok(Brief {
            seq: f.seq,
            event_id: e.event_id,
            kind: e.kind,
            direction: e.direction,
            phase: e.phase,
            score: e.score,
            severity: e.severity,
            chain: e.chain,
            pair_address: e.pair_address,
            base: e.base_token.symbol,
            quote: e.quote_token.symbol,
            source: e.source,
            reasons: e.reasons,
            risk_flags: e.risk_flags,
        })
    }

    /// Simulated and synthetic data is said to be so in every message.
    pub fn simulated(&self) -> bool {
        matches!(self.source, Source::Simulator | Source::Bench)
    }

    /// The pair on DexScreener, for the data that comes from a real pool.
    pub fn link(&self) -> Option<String> {
        if self.simulated() {
            return None;
        }
        Some(format!(
            "https://dexscreener.com/{}/{}",
            self.chain, self.pair_address
        ))
    }

    fn pair_name(&self) -> String {
        match (&self.base, &self.quote) {
            (Some(b), Some(q)) => format!("{b}/{q}"),
            _ => short(&self.pair_address),
        }
    }

    fn headline(&self) -> String {
        let dir = match self.direction {
            Direction::Bullish => "BULLISH",
            Direction::Bearish => "BEARISH",
            Direction::Neutral => "NEUTRAL",
        };
        let phase = match self.phase {
            Phase::Opened => "",
            other => other.as_str(),
        };
        let sim = if self.simulated() { "[SIMULATED] " } else { "" };
        format!(
            "{sim}{dir} {}{}{} on {} ({})",
            self.kind.as_str(),
            if phase.is_empty() { "" } else { " " },
            phase,
            self.pair_name(),
            self.chain
        )
    }
}

fn short(address: &str) -> String {
    if address.chars().count() <= 14 {
        return address.to_string();
    }
    let head: String = address.chars().take(8).collect();
    let tail: String = address
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

/// The message for one event.
pub fn single(b: &Brief, service: Service) -> String {
    let mut lines = vec![
        b.headline(),
        format!("score {} · severity {}", b.score, b.severity.as_str()),
    ];
    if !b.reasons.is_empty() {
        let top: Vec<&str> = b
            .reasons
            .iter()
            .take(TOP_REASONS)
            .map(String::as_str)
            .collect();
        lines.push(format!("why: {}", top.join("; ")));
    }
    if !b.risk_flags.is_empty() {
        lines.push(format!("risk: {}", b.risk_flags.join(", ")));
    }
    if let Some(l) = b.link() {
        lines.push(l);
    }
    lines.push(format!("seq {} · {}", b.seq, b.event_id));
    fit(lines.join("\n"), service)
}

/// One message for several events, in seq order: a line each, cut with a count of the rest
/// when the service's limit is reached.
pub fn digest(briefs: &[Brief], service: Service) -> String {
    let (Some(first), Some(last)) = (briefs.first(), briefs.last()) else {
        return String::new();
    };
    if briefs.len() == 1 {
        return single(first, service);
    }
    let header = format!(
        "dexpulse digest: {} signals, seq {}–{}",
        briefs.len(),
        first.seq,
        last.seq
    );
    let max = service.max_chars();
    let mut out = header;
    for (i, b) in briefs.iter().enumerate() {
        let risk = if b.risk_flags.is_empty() {
            String::new()
        } else {
            format!(" · risk: {}", b.risk_flags.join(", "))
        };
        let line = format!(
            "\n• {} · score {} {}{risk} · seq {}",
            b.headline(),
            b.score,
            b.severity.as_str(),
            b.seq
        );
        // Each line leaves room for the count of the ones after it, which ends the digest
        // when the next does not fit.
        let after = briefs.len() - i - 1;
        let reserve = if after > 0 {
            format!("\n… and {after} more").chars().count()
        } else {
            0
        };
        if out.chars().count() + line.chars().count() + reserve > max {
            out.push_str(&format!("\n… and {} more", briefs.len() - i));
            return out;
        }
        out.push_str(&line);
    }
    out
}

fn fit(text: String, service: Service) -> String {
    let max = service.max_chars();
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, source: &str, symbol: &str) -> String {
        format!(
            r#"{{"type":"signal","seq":{seq},"published_at_us":1,"event":{{"schema":"dexpulse.event/v1","event_id":"ev{seq}","episode_id":"ep","phase":"opened","kind":"momentum_up","direction":"bullish","score":78,"severity":"high","chain":"base","pair_address":"0x1234567890abcdef1234","base_token":{{"address":"0xa","symbol":"{symbol}"}},"quote_token":{{"address":"0xb","symbol":"WETH"}},"source":"{source}","reasons":["r5 +4.2%","buy pressure 0.71","volume 2.3x","fourth"],"risk_flags":["low_liquidity"]}}}}"#
        )
    }

    #[test]
    fn one_event_reads_as_a_short_message() {
        let b = Brief::from_frame(frame(7, "dexscreener", "PEPE").as_bytes()).unwrap();
        let m = single(&b, Service::Telegram);
        assert_eq!(
            m,
            "BULLISH momentum_up on PEPE/WETH (base)\n\
             score 78 · severity high\n\
             why: r5 +4.2%; buy pressure 0.71; volume 2.3x\n\
             risk: low_liquidity\n\
             https://dexscreener.com/base/0x1234567890abcdef1234\n\
             seq 7 · ev7"
        );
    }

    #[test]
    fn simulated_data_says_so_and_links_nowhere() {
        let b = Brief::from_frame(frame(1, "simulator", "SIM").as_bytes()).unwrap();
        let m = single(&b, Service::Discord);
        assert!(m.starts_with("[SIMULATED] BULLISH"), "{m}");
        assert!(!m.contains("https://"), "{m}");
    }

    #[test]
    fn a_digest_lists_every_event_or_counts_the_rest() {
        let briefs: Vec<Brief> = (1..=5)
            .map(|s| Brief::from_frame(frame(s, "dexscreener", "PEPE").as_bytes()).unwrap())
            .collect();
        let d = digest(&briefs, Service::Telegram);
        assert!(d.starts_with("dexpulse digest: 5 signals, seq 1–5"), "{d}");
        for s in 1..=5 {
            assert!(d.contains(&format!("· seq {s}")), "{d}");
        }
        // Past Discord's limit: cut, with the rest counted, never over the limit.
        let many: Vec<Brief> = (1..=100)
            .map(|s| Brief::from_frame(frame(s, "dexscreener", "PEPE").as_bytes()).unwrap())
            .collect();
        let d = digest(&many, Service::Discord);
        assert!(d.chars().count() <= Service::Discord.max_chars());
        let shown = d.matches("\n• ").count();
        assert!(d.ends_with(&format!("… and {} more", 100 - shown)), "{d}");
    }

    #[test]
    fn upstream_strings_cannot_overflow_a_message() {
        let long = "X".repeat(10_000);
        let b = Brief::from_frame(frame(1, "dexscreener", &long).as_bytes()).unwrap();
        assert_eq!(single(&b, Service::Discord).chars().count(), 2_000);
        assert!(Brief::from_frame(b"{}").is_err());
    }
}
