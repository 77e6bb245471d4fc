//! API keys and connection limits (docs/protocol.md, "Connecting"). With no key configured the
//! server is open. A key is never compared byte by byte as given: both sides are hashed and the
//! digests compared in constant time against every configured key, so neither the timing nor
//! the length of a guess tells anything; and an address that keeps guessing wrong keys gets
//! 429 for its wrong keys. A right key is never refused because of wrong ones from the same
//! address (a proxy, a NAT or a load balancer puts many clients behind one): the throttle
//! makes guessing cost a refusal and a log line, and a key's length is what makes it
//! unguessable (docs/hardening.md).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::{header, HeaderMap};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use dexpulse_core::schedule::{Rate, TokenBucket};
use dexpulse_core::settings::{at_least, in_range, FieldError};

use crate::time::Clock;

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub keys: Vec<RawKey>,
    /// Wrong keys an address may present a minute; beyond, its attempts get 429 until the
    /// budget refills (0: no limit).
    pub failed_keys_per_ip_per_minute: f64,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            keys: Vec::new(),
            failed_keys_per_ip_per_minute: 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub key: String,
    #[serde(default = "default_key_connections")]
    pub max_connections: usize,
}

fn default_key_connections() -> usize {
    100
}

#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    pub max_connections: usize,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key, not even in a debug dump.
        f.debug_struct("ApiKey")
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub keys: Vec<ApiKey>,
    pub failed_keys_per_ip: Option<Rate>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Settings {
    /// Field names are relative to `[auth]`.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let mut keys: Vec<ApiKey> = Vec::new();
        for (i, k) in raw.keys.iter().enumerate() {
            let field = format!("keys[{i}].key");
            // Printable ASCII only: it travels in a header and in `?token=`, and a key that
            // only one of them can carry would work in one client and not another.
            if !k.key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(FieldError::new(
                    &field,
                    "must be printable ASCII (no spaces, no other characters)",
                    "a key with other characters (not shown)",
                ));
            }
            if k.key.len() < 8 {
                return Err(FieldError::new(
                    &field,
                    "must be at least 8 characters (32 random ones are better)",
                    format!("{} characters", k.key.len()),
                ));
            }
            let d = digest(&k.key);
            if let Some(j) = keys.iter().position(|o| o.digest == d) {
                return Err(FieldError::new(
                    &field,
                    format!("is the same key as keys[{j}]"),
                    "a duplicate (not shown)",
                ));
            }
            keys.push(ApiKey {
                digest: d,
                max_connections: at_least(
                    &format!("keys[{i}].max_connections"),
                    k.max_connections,
                    1,
                )?,
            });
        }
        let per_min = in_range(
            "failed_keys_per_ip_per_minute",
            raw.failed_keys_per_ip_per_minute,
            0.0,
            1e9,
        )?;
        let failed_keys_per_ip = if per_min > 0.0 {
            Some(Rate::try_new(per_min, per_min.max(1.0)).map_err(|e| {
                FieldError::new("failed_keys_per_ip_per_minute", e.to_string(), per_min)
            })?)
        } else {
            None
        };
        Ok(Settings {
            keys,
            failed_keys_per_ip,
        })
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// The index of the key `presented` is, checked against every key in constant time.
    fn find(&self, presented: &str) -> Option<usize> {
        let d = digest(presented);
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found
    }
}

/// The API key a request carries: `Authorization: Bearer KEY` (the scheme is case-insensitive,
/// as HTTP says) or `?token=KEY` (browsers cannot set headers on a WebSocket).
pub fn presented_key<'a>(
    headers: &'a HeaderMap,
    query: &'a HashMap<String, String>,
) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .or_else(|| query.get("token").map(String::as_str))
}

/// Why a request was refused before it was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or an unknown one (401).
    Unauthorized { presented: bool },
    /// The address presented too many wrong keys lately (429).
    Throttled,
    /// Over the key's own connection limit (429).
    KeyLimit,
    /// Over `max_connections` (503).
    Full,
}

/// Which key a request authenticated with (`None` when the server is open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated(Option<usize>);

/// Checks the key a request presents. `from` is the client's address, for the throttle on
/// wrong keys.
pub fn authenticate(
    auth: &Settings,
    failed: &FailedKeys,
    from: Option<IpAddr>,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Authenticated, Refusal> {
    if auth.is_open() {
        return Ok(Authenticated(None));
    }
    let presented = presented_key(headers, query);
    match presented.and_then(|p| auth.find(p)) {
        Some(i) => Ok(Authenticated(Some(i))),
        None => match (from, presented) {
            (Some(ip), Some(_)) if !failed.may_try(ip) => Err(Refusal::Throttled),
            (Some(ip), Some(_)) => {
                failed.failed(ip);
                Err(Refusal::Unauthorized { presented: true })
            }
            _ => Err(Refusal::Unauthorized {
                presented: presented.is_some(),
            }),
        },
    }
}

/// Wrong keys per address: a token bucket each, forgotten when quiet.
pub struct FailedKeys {
    rate: Option<Rate>,
    clock: Clock,
    map: Mutex<HashMap<IpAddr, (TokenBucket, i64)>>,
}

impl FailedKeys {
    pub fn new(rate: Option<Rate>, clock: Clock) -> FailedKeys {
        FailedKeys {
            rate,
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<IpAddr, (TokenBucket, i64)>> {
        // Buckets only: a panic under the lock leaves them usable.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `ip` has wrong guesses left.
    pub fn may_try(&self, ip: IpAddr) -> bool {
        if self.rate.is_none() {
            return true;
        }
        let now = self.clock.now_ms();
        self.map()
            .get(&ip)
            .is_none_or(|(b, _)| b.ready_at(now) <= now)
    }

    /// `ip` presented a wrong key.
    pub fn failed(&self, ip: IpAddr) {
        let Some(rate) = self.rate else { return };
        let now = self.clock.now_ms();
        let mut map = self.map();
        if map.len() > 4096 {
            map.retain(|_, (_, last)| now - *last < 600_000);
        }
        let (bucket, last) = map
            .entry(ip)
            .or_insert_with(|| (rate.full_bucket(now), now));
        *last = now;
        bucket.try_take(now);
    }
}

/// Sessions at once, in all and per API key. A [`Permit`] gives its place back on drop.
#[derive(Debug, Default)]
pub struct Limits {
    total: AtomicUsize,
    per_key: Mutex<HashMap<usize, usize>>,
}

#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    key: Option<usize>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(k) = self.key {
            let mut map = self
                .limits
                .per_key
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&k) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

impl Limits {
    pub fn acquire(
        self: &Arc<Self>,
        who: Authenticated,
        auth: &Settings,
        total_max: usize,
    ) -> Result<Permit, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= total_max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if let Some(k) = who.0 {
            let key_max = auth.keys.get(k).map_or(0, |k| k.max_connections);
            let mut map = self.per_key.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(k).or_insert(0);
            if *n >= key_max {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::KeyLimit);
            }
            *n += 1;
        }
        Ok(Permit {
            limits: self.clone(),
            key: who.0,
        })
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(keys: &[(&str, usize)]) -> Settings {
        Settings::parse(&RawSettings {
            keys: keys
                .iter()
                .map(|(k, n)| RawKey {
                    key: k.to_string(),
                    max_connections: *n,
                })
                .collect(),
            ..RawSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn keys_are_found_by_header_or_query_and_bearer_is_case_insensitive() {
        let auth = settings(&[("key-one-1", 1), ("key-two-2", 2)]);
        let check =
            |header: Option<&str>, token: Option<&str>, want: Result<Option<usize>, bool>| {
                let mut h = HeaderMap::new();
                if let Some(v) = header {
                    h.insert(header::AUTHORIZATION, v.parse().unwrap());
                }
                let mut q = HashMap::new();
                if let Some(t) = token {
                    q.insert("token".to_string(), t.to_string());
                }
                let got = authenticate(&auth, &FailedKeys::new(None, Clock::System), None, &h, &q)
                    .map(|a| a.0)
                    .map_err(|r| matches!(r, Refusal::Unauthorized { presented: true }));
                assert_eq!(got, want, "{header:?} {token:?}");
            };
        check(Some("Bearer key-two-2"), None, Ok(Some(1)));
        check(Some("bearer key-one-1"), None, Ok(Some(0)));
        check(Some("BEARER  key-one-1 "), None, Ok(Some(0)));
        check(None, Some("key-two-2"), Ok(Some(1)));
        check(Some("Bearer nope-nope"), None, Err(true));
        check(Some("Basic key-one-1"), None, Err(false));
        check(None, None, Err(false));
        assert!(format!("{:?}", auth.keys[0]).find("key-one").is_none());
    }

    #[test]
    fn an_address_that_keeps_guessing_is_throttled_but_a_right_key_is_never_refused() {
        let auth = settings(&[("key-one-1", 1)]);
        let clock = Clock::manual(0);
        let failed = FailedKeys::new(Some(Rate::try_new(3.0, 3.0).unwrap()), clock.clone());
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let try_key = |k: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                format!("Bearer {k}").parse().unwrap(),
            );
            authenticate(&auth, &failed, Some(ip), &h, &HashMap::new())
        };
        for _ in 0..3 {
            assert!(matches!(
                try_key("wrong-guess"),
                Err(Refusal::Unauthorized { .. })
            ));
        }
        assert_eq!(try_key("wrong-guess"), Err(Refusal::Throttled));
        assert!(
            try_key("key-one-1").is_ok(),
            "another client behind the same address, with the right key"
        );
        assert_eq!(
            try_key("wrong-guess"),
            Err(Refusal::Throttled),
            "until the budget refills"
        );
        clock.advance(std::time::Duration::from_secs(20));
        assert!(matches!(
            try_key("wrong-guess"),
            Err(Refusal::Unauthorized { .. })
        ));
    }

    #[test]
    fn keys_are_printable_ascii_long_enough_and_distinct() {
        let bad = |keys: &[&str]| {
            Settings::parse(&RawSettings {
                keys: keys
                    .iter()
                    .map(|k| RawKey {
                        key: k.to_string(),
                        max_connections: 1,
                    })
                    .collect(),
                ..RawSettings::default()
            })
            .err()
            .map(|e| (e.field, e.message))
        };
        assert_eq!(bad(&["key-one-1", "key-two-2"]), None);
        let (field, _) = bad(&["key-one-1", "clé-unique-2"]).unwrap();
        assert_eq!(field, "keys[1].key");
        assert_eq!(bad(&["has space 1"]).unwrap().0, "keys[0].key");
        assert_eq!(bad(&["short"]).unwrap().0, "keys[0].key");
        let (field, why) = bad(&["key-one-1", "key-two-2", "key-one-1"]).unwrap();
        assert_eq!(field, "keys[2].key");
        assert!(why.contains("keys[0]"), "{why}");
    }

    #[test]
    fn limits_count_and_give_back() {
        let auth = settings(&[("key-one-1", 1), ("key-two-2", 1)]);
        let l = Arc::new(Limits::default());
        let k = Authenticated(Some(0));
        let a = l.acquire(k, &auth, 3).unwrap();
        assert_eq!(l.acquire(k, &auth, 3).unwrap_err(), Refusal::KeyLimit);
        let b = l.acquire(Authenticated(None), &auth, 3).unwrap();
        let c = l.acquire(Authenticated(Some(1)), &auth, 3).unwrap();
        assert_eq!(
            l.acquire(Authenticated(None), &auth, 3).unwrap_err(),
            Refusal::Full
        );
        drop(a);
        assert_eq!(l.total(), 2);
        let _d = l.acquire(k, &auth, 3).unwrap();
        drop((b, c));
        assert_eq!(l.total(), 1);
    }
}
