//! The sinks' HTTP: one request per delivery (an event to a webhook, a message to Telegram or
//! Discord), its answer read (at most 64 KiB) and judged by the core's `sink::reply`. The only
//! code that posts to receivers.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};

use dexpulse_core::sink::reply::{judge, Answer, Receiver, Verdict};

use super::settings::{ChatId, Target};

const MAX_ANSWER: usize = 64 << 10;

/// An HTTP client for one sink.
#[derive(Clone)]
pub struct Poster {
    client: reqwest::Client,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

impl Poster {
    pub fn new(timeout: Duration) -> Result<Poster, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A receiver's redirect is not followed: the signature is for the configured URL.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Poster { client })
    }

    /// One event to a webhook: the frame's bytes as the body, signed for this attempt.
    pub async fn webhook(
        &self,
        target: &Target,
        msg_id: &str,
        body: Bytes,
        now_ms: i64,
    ) -> Verdict {
        let Target::Webhook { url, secret } = target else {
            return not_for(target);
        };
        let ts = now_ms.div_euclid(1000);
        let signature = secret.sign(msg_id, ts, &body);
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("dexpulse/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in [
            ("webhook-id", msg_id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        }
        let req = self.client.post(url).headers(h).body(body);
        self.send(req, Receiver::Webhook, now_ms).await
    }

    /// One message (an event or a digest) to a chat.
    pub async fn chat(&self, target: &Target, text: &str, now_ms: i64) -> Verdict {
        match target {
            Target::Telegram {
                api_base_url,
                token,
                chat_id,
            } => {
                let chat = match chat_id {
                    ChatId::Id(n) => serde_json::Value::from(*n),
                    ChatId::Name(s) => serde_json::Value::from(s.as_str()),
                };
                let body = serde_json::json!({
                    "chat_id": chat,
                    "text": text,
                    "disable_web_page_preview": true,
                });
                let url = format!("{api_base_url}/bot{}/sendMessage", token.expose());
                let req = self
                    .client
                    .post(url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
                self.send(req, Receiver::Telegram, now_ms).await
            }
            Target::Discord { url } => {
                // No mentions: an upstream token symbol cannot ping a channel.
                let body = serde_json::json!({
                    "content": text,
                    "allowed_mentions": { "parse": [] },
                });
                let req = self
                    .client
                    .post(format!("{url}?wait=true"))
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_string());
                self.send(req, Receiver::Discord, now_ms).await
            }
            Target::Webhook { .. } => not_for(target),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder, receiver: Receiver, now_ms: i64) -> Verdict {
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // The error's URL may hold a token (Telegram's path, a Discord webhook's).
                let why = if e.is_timeout() {
                    "timed out".to_string()
                } else if e.is_connect() {
                    "cannot connect".to_string()
                } else {
                    format!("the request failed: {}", e.without_url())
                };
                return Verdict::Retry {
                    after_ms: None,
                    why,
                };
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    let room = MAX_ANSWER.saturating_sub(body.len());
                    body.extend_from_slice(&c[..c.len().min(room)]);
                    if room <= c.len() {
                        break;
                    }
                }
                Ok(None) => break,
                // The status decides; a body cut short only shortens the error text.
                Err(_) => break,
            }
        }
        let answer = Answer {
            status,
            retry_after: header(&headers, "retry-after"),
            remaining: header(&headers, "x-ratelimit-remaining"),
            reset_after: header(&headers, "x-ratelimit-reset-after"),
            body: &body,
        };
        judge(receiver, &answer, now_ms)
    }
}

fn not_for(target: &Target) -> Verdict {
    Verdict::Retry {
        after_ms: None,
        why: format!("a {} sink does not post this", target.kind()),
    }
}
