//! The only HTTP to upstream in the program: DexScreener and GeckoTerminal over reqwest with
//! rustls (time-outs, gzip, a descriptive User-Agent). A request becomes a [`Fetched`]: the
//! status, `Retry-After` in either of its forms, the body (read in chunks and cut off past
//! `max_body_bytes`, counted after decompression, so a compressed bomb cannot take the memory),
//! or the cause when there was no usable response.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use dexpulse_core::model::Source;
use dexpulse_core::schedule::{Class, Request};
use dexpulse_core::source::geckoterminal::network_of_chain;

use super::Settings;
use crate::time::Clock;

pub const USER_AGENT: &str = concat!(
    "dexpulse/",
    env!("CARGO_PKG_VERSION"),
    " (real-time DEX signal streamer; polls within documented rate limits)"
);

/// The path (and query) of a request, as the tape records it.
pub fn path(req: &Request) -> String {
    match req {
        Request::DexPairs { chain, ids } => format!("/latest/dex/pairs/{chain}/{}", ids.join(",")),
        Request::DexTokens { chain, tokens } => format!("/tokens/v1/{chain}/{}", tokens.join(",")),
        Request::DexProfiles => "/token-profiles/latest/v1".to_string(),
        Request::DexBoosts => "/token-boosts/latest/v1".to_string(),
        Request::DexSearch { query } => format!("/latest/dex/search?q={}", encode_query(query)),
        Request::GeckoPools { chain, addresses } => {
            format!(
                "/networks/{}/pools/multi/{}",
                network_of_chain(chain),
                addresses.join(",")
            )
        }
        Request::GeckoNewPools { chain } => {
            format!("/networks/{}/new_pools", network_of_chain(chain))
        }
        Request::GeckoTrending { chain } => {
            format!("/networks/{}/trending_pools", network_of_chain(chain))
        }
    }
}

/// Percent-encodes a query value (unreserved characters pass).
fn encode_query(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn source_of(req: &Request) -> Source {
    match req.class() {
        Class::Gecko => Source::Geckoterminal,
        _ => Source::Dexscreener,
    }
}

/// One HTTP exchange as the driver sees it.
#[derive(Debug)]
pub struct Fetched {
    pub req: Request,
    pub path: String,
    pub t_ms: i64,
    /// `None`: no usable response (time-out, connection error, a body cut short or too big).
    pub status: Option<u16>,
    pub retry_after_ms: Option<i64>,
    pub body: Bytes,
    /// Why there is no usable response (DNS, refused, time-out, ...).
    pub error: Option<String>,
}

/// `Retry-After`: delay-seconds or an HTTP-date, as ms from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then_some((s * 1000.0) as i64);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    Some((at.timestamp_millis() - now_ms).max(0))
}

/// What went wrong with a request, in words an operator acts on.
pub fn cause(e: &reqwest::Error) -> String {
    use std::error::Error;
    if e.is_timeout() {
        return "time-out".to_string();
    }
    let mut root: &dyn Error = e;
    let mut chain = Vec::new();
    let mut refused = false;
    while let Some(next) = root.source() {
        if let Some(io) = next.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        chain.push(next.to_string());
        root = next;
    }
    let detail = root.to_string();
    if e.is_connect() {
        if refused {
            return "connection refused".to_string();
        }
        // hyper-util's resolver error has no public type; its message says "dns error".
        if chain.iter().any(|c| c.contains("dns error")) {
            return format!("DNS lookup failed: {detail}");
        }
        return format!("cannot connect: {detail}");
    }
    if e.is_body() || e.is_decode() {
        return format!("body cut short: {detail}");
    }
    detail
}

pub struct Upstreams {
    http: reqwest::Client,
    dex_base: String,
    gecko_base: String,
    max_body_bytes: usize,
    clock: Clock,
}

impl Upstreams {
    pub fn new(s: &Settings, clock: Clock) -> Result<Upstreams, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(s.timeout)
            .connect_timeout(s.timeout.min(Duration::from_secs(5)))
            .gzip(true)
            .build()?;
        Ok(Upstreams {
            http,
            dex_base: s.dexscreener.base_url.trim_end_matches('/').to_string(),
            gecko_base: s.geckoterminal.base_url.trim_end_matches('/').to_string(),
            max_body_bytes: s.max_body_bytes,
            clock,
        })
    }

    pub async fn fetch(&self, req: Request) -> Fetched {
        let path = path(&req);
        let is_gecko = source_of(&req) == Source::Geckoterminal;
        let base = if is_gecko {
            &self.gecko_base
        } else {
            &self.dex_base
        };
        let accept = if is_gecko {
            "application/json;version=20230302"
        } else {
            "application/json"
        };
        let mut out = Fetched {
            req,
            path,
            t_ms: 0,
            status: None,
            retry_after_ms: None,
            body: Bytes::new(),
            error: None,
        };
        let sent = self
            .http
            .get(format!("{base}{}", out.path))
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await;
        match sent {
            Ok(mut resp) => {
                let now = self.clock.now_ms();
                out.status = Some(resp.status().as_u16());
                out.retry_after_ms = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after_ms(v, now));
                let mut body = BytesMut::new();
                loop {
                    match resp.chunk().await {
                        Ok(Some(c)) => {
                            if body.len() + c.len() > self.max_body_bytes {
                                out.error = Some(format!(
                                    "body over {} bytes (source.live.max_body_bytes)",
                                    self.max_body_bytes
                                ));
                                out.status = None;
                                break;
                            }
                            body.extend_from_slice(&c);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            out.error = Some(cause(&e));
                            out.status = None;
                            break;
                        }
                    }
                }
                if out.error.is_none() {
                    out.body = body.freeze();
                }
            }
            Err(e) => out.error = Some(cause(&e)),
        }
        out.t_ms = self.clock.now_ms();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_paths() {
        let check = |req: Request, want: &str| assert_eq!(path(&req), want);
        check(
            Request::DexPairs {
                chain: "solana".into(),
                ids: vec!["A".into(), "b".into()],
            },
            "/latest/dex/pairs/solana/A,b",
        );
        check(
            Request::DexTokens {
                chain: "bsc".into(),
                tokens: vec!["0x1".into()],
            },
            "/tokens/v1/bsc/0x1",
        );
        check(
            Request::DexSearch {
                query: "USD1/USDC x".into(),
            },
            "/latest/dex/search?q=USD1%2FUSDC%20x",
        );
        check(
            Request::GeckoPools {
                chain: "ethereum".into(),
                addresses: vec!["0xa".into(), "0xb".into()],
            },
            "/networks/eth/pools/multi/0xa,0xb",
        );
        check(
            Request::GeckoTrending {
                chain: "polygon".into(),
            },
            "/networks/polygon_pos/trending_pools",
        );
    }

    #[test]
    fn retry_after_in_both_forms() {
        let now = chrono::DateTime::parse_from_rfc2822("Tue, 01 Dec 2026 20:00:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(retry_after_ms("7", now), Some(7_000));
        assert_eq!(retry_after_ms(" 1.5 ", now), Some(1_500));
        assert_eq!(
            retry_after_ms("Tue, 01 Dec 2026 20:00:30 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            retry_after_ms("Tue, 01 Dec 2026 19:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(retry_after_ms("-3", now), None);
        assert_eq!(retry_after_ms("soon", now), None);
    }
}
