//! `[[sinks]]`: each table checked into a sink's [`Settings`], the field named on error
//! (`sinks[1].url`); the webhook secret and the bot token read from their files here, once,
//! and never printed (`Debug` redacts them). The list may also come whole from the environment
//! as TOML (`DEXPULSE_SINKS='[{name = "hook", kind = "webhook", …}]'`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use dexpulse_core::protocol::filter::{Filter, FilterLimits, RawFilter};
use dexpulse_core::settings::{at_least, in_range, seconds, FieldError};
use dexpulse_core::sink::webhook::Secret;

/// A Telegram chat: its number, or `@channelname`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ChatId {
    Id(i64),
    Name(String),
}

/// One `[[sinks]]` table as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSink {
    pub name: String,
    /// `webhook`, `telegram` or `discord`.
    pub kind: String,
    /// The webhook's or the Discord webhook's URL.
    pub url: Option<String>,
    /// Webhook: a file holding the `whsec_…` signing secret.
    pub secret_file: Option<PathBuf>,
    /// Telegram: a file holding the bot token.
    pub bot_token_file: Option<PathBuf>,
    pub chat_id: Option<ChatId>,
    /// Telegram's Bot API (tests point it at a local server).
    pub api_base_url: Option<String>,
    /// A subscription's filter (docs/protocol.md): `kinds`, `directions`, `min_score`, `chains`,
    /// `pairs`. Absent: every event.
    pub filter: Option<toml::Value>,
    /// Attempts of one event before it is dead-lettered.
    pub max_attempts: Option<u32>,
    /// Age (from its first attempt) after which a failing event is dead-lettered.
    pub max_age_seconds: Option<f64>,
    /// One request's time-out.
    pub timeout_seconds: Option<f64>,
    /// The wait after a first failure; it doubles (with jitter) up to `retry_max_seconds`.
    pub retry_min_seconds: Option<f64>,
    pub retry_max_seconds: Option<f64>,
    /// Requests per minute to the receiver, and how many may go at once.
    pub rate_per_minute: Option<f64>,
    pub burst: Option<f64>,
    /// Telegram, Discord: at most this many events in one digest message.
    pub digest_max: Option<usize>,
}

/// A secret from a file, never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Where a sink posts.
#[derive(Debug, Clone)]
pub enum Target {
    Webhook {
        url: String,
        secret: Secret,
    },
    Telegram {
        api_base_url: String,
        token: Token,
        chat_id: ChatId,
    },
    Discord {
        url: String,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Telegram { .. } => "telegram",
            Target::Discord { .. } => "discord",
        }
    }

    /// The receiver without anything secret: a webhook's URL without its credentials and
    /// query, Telegram's API base, a Discord webhook's host only (its path is its token).
    pub fn shown(&self) -> String {
        match self {
            Target::Webhook { url, .. } => match url::Url::parse(url) {
                Ok(mut u) => {
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    u.set_query(None);
                    u.to_string()
                }
                Err(_) => String::new(),
            },
            Target::Telegram { api_base_url, .. } => api_base_url.clone(),
            Target::Discord { url } => match url::Url::parse(url) {
                Ok(u) => format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default()),
                Err(_) => String::new(),
            },
        }
    }

    /// Chat services get one message per event or a digest; a webhook gets the event's JSON.
    pub fn is_chat(&self) -> bool {
        !matches!(self, Target::Webhook { .. })
    }
}

/// One sink, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub target: Target,
    pub filter: Arc<Filter>,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub timeout: Duration,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub rate_per_minute: f64,
    pub burst: f64,
    pub digest_max: usize,
}

fn http_url(field: &str, url: &Option<String>) -> Result<String, FieldError> {
    let Some(u) = url.as_deref().filter(|u| !u.is_empty()) else {
        return Err(FieldError::new(
            field,
            "is required for this kind",
            "nothing",
        ));
    };
    match url::Url::parse(u) {
        Ok(p) if matches!(p.scheme(), "http" | "https") && p.host_str().is_some() => {
            Ok(u.trim_end_matches('/').to_string())
        }
        // The value is not echoed: a webhook URL may carry a token.
        _ => Err(FieldError::new(
            field,
            "must be an http(s) URL",
            "(not shown)",
        )),
    }
}

fn read_file(field: &str, path: &Option<PathBuf>) -> Result<String, FieldError> {
    let Some(p) = path.as_deref().filter(|p| !p.as_os_str().is_empty()) else {
        return Err(FieldError::new(
            field,
            "is required for this kind",
            "nothing",
        ));
    };
    let text = std::fs::read_to_string(p)
        .map_err(|e| FieldError::new(field, format!("cannot be read ({e})"), shown(p)))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(FieldError::new(field, "is empty", shown(p)));
    }
    Ok(t.to_string())
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

impl Settings {
    /// Field names are relative to the sink's table.
    pub fn parse(raw: &RawSink) -> Result<Settings, FieldError> {
        let name_ok = (1..=64).contains(&raw.name.len())
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(FieldError::new(
                "name",
                "must be 1 to 64 letters, digits, `-` or `_`",
                format!("{:?}", raw.name),
            ));
        }
        let target = match raw.kind.as_str() {
            "webhook" => {
                let url = http_url("url", &raw.url)?;
                let secret =
                    Secret::parse(&read_file("secret_file", &raw.secret_file)?).map_err(|e| {
                        FieldError::new(
                            "secret_file",
                            e.to_string(),
                            raw.secret_file.as_deref().map(shown).unwrap_or_default(),
                        )
                    })?;
                Target::Webhook { url, secret }
            }
            "telegram" => {
                let token = Token(read_file("bot_token_file", &raw.bot_token_file)?);
                let chat_id = match &raw.chat_id {
                    Some(ChatId::Name(n)) if n.is_empty() => None,
                    other => other.clone(),
                }
                .ok_or_else(|| {
                    FieldError::new("chat_id", "is required for this kind", "nothing")
                })?;
                let api_base_url = http_url(
                    "api_base_url",
                    &Some(
                        raw.api_base_url
                            .clone()
                            .unwrap_or_else(|| "https://api.telegram.org".to_string()),
                    ),
                )?;
                Target::Telegram {
                    api_base_url,
                    token,
                    chat_id,
                }
            }
            "discord" => Target::Discord {
                url: http_url("url", &raw.url)?,
            },
            other => {
                return Err(FieldError::new(
                    "kind",
                    "must be webhook, telegram or discord",
                    format!("{other:?}"),
                ))
            }
        };
        let filter = match &raw.filter {
            None => Filter::default(),
            Some(v) => {
                let rf = RawFilter::deserialize(v.clone())
                    .map_err(|e| FieldError::new("filter", e.to_string(), v))?;
                Filter::compile(rf, &FilterLimits::default())
                    .map_err(|e| FieldError::new("filter", e.to_string(), v))?
            }
        };
        // Defaults within each service's published limits: Telegram about 20 messages a
        // minute to one group, Discord 30 a minute to one webhook.
        let (rate, burst) = match target {
            Target::Webhook { .. } => (6_000.0, 50.0),
            Target::Telegram { .. } => (20.0, 3.0),
            Target::Discord { .. } => (30.0, 5.0),
        };
        let retry_min = seconds(
            "retry_min_seconds",
            raw.retry_min_seconds.unwrap_or(1.0),
            0.001,
            3_600.0,
        )?;
        let retry_max = seconds(
            "retry_max_seconds",
            raw.retry_max_seconds.unwrap_or(300.0),
            0.001,
            86_400.0,
        )?;
        if retry_max < retry_min {
            return Err(FieldError::new(
                "retry_max_seconds",
                "must be at least retry_min_seconds",
                retry_max.as_secs_f64(),
            ));
        }
        Ok(Settings {
            name: raw.name.clone(),
            filter: Arc::new(filter),
            max_attempts: at_least("max_attempts", raw.max_attempts.unwrap_or(10), 1)?,
            max_age: seconds(
                "max_age_seconds",
                raw.max_age_seconds.unwrap_or(86_400.0),
                0.001,
                30.0 * 86_400.0,
            )?,
            timeout: seconds(
                "timeout_seconds",
                raw.timeout_seconds.unwrap_or(10.0),
                0.001,
                600.0,
            )?,
            retry_min,
            retry_max,
            rate_per_minute: in_range(
                "rate_per_minute",
                raw.rate_per_minute.unwrap_or(rate),
                0.001,
                1e7,
            )?,
            burst: in_range("burst", raw.burst.unwrap_or(burst), 1.0, 1e6)?,
            digest_max: match raw.digest_max.unwrap_or(25) {
                n @ 1..=100 => n,
                n => return Err(FieldError::new("digest_max", "must be from 1 to 100", n)),
            },
            target,
        })
    }

    /// Every sink, field names as `sinks[i].field`; names unique.
    pub fn parse_all(raw: &[RawSink]) -> Result<Vec<Settings>, FieldError> {
        let mut out: Vec<Settings> = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let s = Settings::parse(r).map_err(|e| e.within(&format!("sinks[{i}]")))?;
            if out.iter().any(|o| o.name == s.name) {
                return Err(FieldError::new(
                    &format!("sinks[{i}].name"),
                    "is used by another sink",
                    &s.name,
                ));
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("dexpulse-sinks-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn check(toml_text: &str, want: Result<&str, &str>) {
        #[derive(Deserialize)]
        struct Doc {
            sinks: Vec<RawSink>,
        }
        let doc: Doc = toml::from_str(toml_text).unwrap();
        match (Settings::parse_all(&doc.sinks), want) {
            (Ok(s), Ok(kinds)) => {
                let got: Vec<&str> = s.iter().map(|s| s.target.kind()).collect();
                assert_eq!(got.join(","), kinds, "{toml_text}");
            }
            (Err(e), Err(field)) => assert_eq!(e.field, field, "{e}"),
            (got, want) => panic!("{toml_text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn each_field_is_checked_and_named() {
        let d = dir();
        let secret = d.join("whsec");
        std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let token = d.join("token");
        std::fs::write(&token, "123:ABC\n").unwrap();
        let s = secret.display();
        let t = token.display();
        check(
            &format!(
                r#"[[sinks]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/x"
secret_file = "{s}"
filter = {{ kinds = ["rug_warning"], min_score = 60 }}
[[sinks]]
name = "tg"
kind = "telegram"
bot_token_file = "{t}"
chat_id = -100123
[[sinks]]
name = "dc"
kind = "discord"
url = "https://discord.com/api/webhooks/1/abc""#
            ),
            Ok("webhook,telegram,discord"),
        );
        check(
            r#"sinks = [{name = "a b", kind = "webhook"}]"#,
            Err("sinks[0].name"),
        );
        check(
            r#"sinks = [{name = "a", kind = "pager"}]"#,
            Err("sinks[0].kind"),
        );
        check(
            r#"sinks = [{name = "a", kind = "webhook", url = "ftp://x"}]"#,
            Err("sinks[0].url"),
        );
        check(
            r#"sinks = [{name = "a", kind = "webhook", url = "http://x", secret_file = "/nonexistent"}]"#,
            Err("sinks[0].secret_file"),
        );
        check(
            &format!(
                r#"sinks = [{{name = "a", kind = "webhook", url = "http://x", secret_file = "{t}"}}]"#
            ),
            Err("sinks[0].secret_file"),
        );
        check(
            &format!(r#"sinks = [{{name = "a", kind = "telegram", bot_token_file = "{t}"}}]"#),
            Err("sinks[0].chat_id"),
        );
        check(
            &format!(
                r#"sinks = [{{name = "a", kind = "discord", url = "http://x"}}, {{name = "b", kind = "webhook", url = "http://y", secret_file = "{s}", filter = {{ kinds = ["moon"] }}}}]"#
            ),
            Err("sinks[1].filter"),
        );
        check(
            r#"sinks = [{name = "a", kind = "discord", url = "http://x"}, {name = "a", kind = "discord", url = "http://y"}]"#,
            Err("sinks[1].name"),
        );
        check(
            r#"sinks = [{name = "a", kind = "discord", url = "http://x", digest_max = 0}]"#,
            Err("sinks[0].digest_max"),
        );
    }

    #[test]
    fn secrets_are_never_shown() {
        let d = dir();
        let token = d.join("token2");
        std::fs::write(&token, "123:SECRET-TOKEN").unwrap();
        let raw = RawSink {
            name: "tg".into(),
            kind: "telegram".into(),
            bot_token_file: Some(token),
            chat_id: Some(ChatId::Id(1)),
            ..RawSink::default()
        };
        let s = Settings::parse(&raw).unwrap();
        assert!(!format!("{s:?}").contains("SECRET"), "{s:?}");
        let dc = Target::Discord {
            url: "https://discord.com/api/webhooks/1/SECRET".into(),
        };
        assert_eq!(dc.shown(), "https://discord.com/…");
        let err = Settings::parse(&RawSink {
            name: "x".into(),
            kind: "discord".into(),
            url: Some("nota url SECRET".into()),
            ..RawSink::default()
        })
        .unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }
}
