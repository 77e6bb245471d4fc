//! What a receiver's answer means for a delivery: delivered (perhaps with a pause the service
//! asked for before the next request), or to be tried again (after the wait the service named,
//! if it named one). Each service says "slow down" its own way: `Retry-After` (seconds or an
//! HTTP date), Telegram's `parameters.retry_after`, Discord's `retry_after` and its
//! `X-RateLimit-*` headers. Every failure is retried; the sink gives up on an event only after
//! its attempts or its age (docs/sinks.md), so a receiver's mistake never drops an event silently.

use serde::Deserialize;

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiver {
    Webhook,
    Telegram,
    Discord,
}

/// The parts of an HTTP answer that decide (header values as received).
#[derive(Debug, Default, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub retry_after: Option<&'a str>,
    /// `X-RateLimit-Remaining` (Discord).
    pub remaining: Option<&'a str>,
    /// `X-RateLimit-Reset-After`, seconds (Discord).
    pub reset_after: Option<&'a str>,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered; `pause_ms`: the service's bucket is empty, wait this long before the next.
    Delivered { pause_ms: Option<u64> },
    /// Not delivered; try again, not before `after_ms` when the service said so.
    Retry { after_ms: Option<u64>, why: String },
}

/// Longest wait a receiver can ask for: a wrong header cannot park a sink for days.
pub const MAX_WAIT_MS: u64 = 3_600_000;

#[derive(Deserialize)]
struct TelegramReply {
    ok: bool,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<TelegramParameters>,
}

#[derive(Deserialize)]
struct TelegramParameters {
    retry_after: Option<f64>,
}

#[derive(Deserialize)]
struct DiscordLimited {
    retry_after: Option<f64>,
}

fn seconds_ms(s: f64) -> Option<u64> {
    (s.is_finite() && s >= 0.0).then(|| ((s * 1000.0).ceil() as u64).min(MAX_WAIT_MS))
}

/// `Retry-After`: delay-seconds, or an HTTP date measured from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<u64> {
    let v = value.trim();
    if let Ok(s) = v.parse::<f64>() {
        return seconds_ms(s);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis().saturating_sub(now_ms).max(0);
    Some((ms as u64).min(MAX_WAIT_MS))
}

/// A body excerpt for `last_error` and the dead-letter file: short, one line, printable.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

pub fn judge(receiver: Receiver, a: &Answer<'_>, now_ms: i64) -> Verdict {
    let header_wait = a.retry_after.and_then(|v| retry_after_ms(v, now_ms));
    let reset_wait = a
        .reset_after
        .and_then(|v| v.trim().parse::<f64>().ok())
        .and_then(seconds_ms);
    if (200..300).contains(&a.status) {
        if receiver == Receiver::Telegram {
            match serde_json::from_slice::<TelegramReply>(a.body) {
                Ok(r) if r.ok => {}
                Ok(r) => {
                    return Verdict::Retry {
                        after_ms: None,
                        why: format!(
                            "Telegram answered ok=false: {}",
                            excerpt(r.description.unwrap_or_default().as_bytes())
                        ),
                    }
                }
                Err(_) => {
                    return Verdict::Retry {
                        after_ms: None,
                        why: format!("Telegram's answer is not its JSON: {}", excerpt(a.body)),
                    }
                }
            }
        }
        let empty = a.remaining.is_some_and(|r| r.trim() == "0");
        return Verdict::Delivered {
            pause_ms: if empty { reset_wait } else { None },
        };
    }
    let body_wait = match receiver {
        Receiver::Telegram => serde_json::from_slice::<TelegramReply>(a.body)
            .ok()
            .and_then(|r| r.parameters)
            .and_then(|p| p.retry_after)
            .and_then(seconds_ms),
        Receiver::Discord => serde_json::from_slice::<DiscordLimited>(a.body)
            .ok()
            .and_then(|r| r.retry_after)
            .and_then(seconds_ms),
        Receiver::Webhook => None,
    };
    let after_ms = if a.status == 429 {
        body_wait.or(header_wait).or(reset_wait)
    } else {
        header_wait
    };
    Verdict::Retry {
        after_ms,
        why: format!("HTTP {}: {}", a.status, excerpt(a.body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(receiver: Receiver, a: Answer<'_>, want: Verdict) {
        // 2026-12-03T00:00:00Z
        let now_ms = 1_796_256_000_000;
        let got = judge(receiver, &a, now_ms);
        match (&got, &want) {
            (Verdict::Retry { after_ms: g, .. }, Verdict::Retry { after_ms: w, .. }) => {
                assert_eq!(g, w, "{a:?}")
            }
            _ => assert_eq!(got, want, "{a:?}"),
        }
    }

    fn retry(after_ms: Option<u64>) -> Verdict {
        Verdict::Retry {
            after_ms,
            why: String::new(),
        }
    }

    const DELIVERED: Verdict = Verdict::Delivered { pause_ms: None };

    #[test]
    fn each_service_says_slow_down_its_own_way() {
        use Receiver::*;
        let a = |status, body: &'static str| Answer {
            status,
            body: body.as_bytes(),
            ..Answer::default()
        };
        check(Webhook, a(200, ""), DELIVERED);
        check(Webhook, a(204, ""), DELIVERED);
        check(Webhook, a(500, "oops"), retry(None));
        check(Webhook, a(400, "no"), retry(None));
        check(
            Webhook,
            Answer {
                retry_after: Some("7"),
                ..a(429, "")
            },
            retry(Some(7_000)),
        );
        check(
            Webhook,
            Answer {
                retry_after: Some("Thu, 03 Dec 2026 00:00:30 GMT"),
                ..a(503, "")
            },
            retry(Some(30_000)),
        );
        check(
            Webhook,
            Answer {
                retry_after: Some("999999999"),
                ..a(429, "")
            },
            retry(Some(MAX_WAIT_MS)),
        );
        check(Telegram, a(200, r#"{"ok":true,"result":{}}"#), DELIVERED);
        check(
            Telegram,
            a(200, r#"{"ok":false,"description":"x"}"#),
            retry(None),
        );
        check(Telegram, a(200, "<html>"), retry(None));
        check(
            Telegram,
            a(
                429,
                r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 3","parameters":{"retry_after":3}}"#,
            ),
            retry(Some(3_000)),
        );
        check(
            Discord,
            a(
                429,
                r#"{"message":"You are being rate limited.","retry_after":0.25,"global":false}"#,
            ),
            retry(Some(250)),
        );
        check(
            Discord,
            Answer {
                reset_after: Some("1.5"),
                ..a(429, "")
            },
            retry(Some(1_500)),
        );
        check(
            Discord,
            Answer {
                remaining: Some("0"),
                reset_after: Some("2"),
                ..a(204, "")
            },
            Verdict::Delivered {
                pause_ms: Some(2_000),
            },
        );
    }

    #[test]
    fn a_failure_is_described_in_one_short_line() {
        let body = format!("line one\nline two {}", "x".repeat(500));
        let Verdict::Retry { why, .. } = judge(
            Receiver::Webhook,
            &Answer {
                status: 502,
                body: body.as_bytes(),
                ..Answer::default()
            },
            0,
        ) else {
            panic!("a 502 is retried")
        };
        assert!(why.starts_with("HTTP 502: line one line two"), "{why}");
        assert!(!why.contains('\n') && why.chars().count() < 220, "{why}");
    }
}
