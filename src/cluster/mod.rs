//! The cluster room: the only module that speaks NATS (docs/cluster.md). A JetStream stream is
//! the event log of several nodes: an ingest (sources and engine) publishes every event to it,
//! in order and acknowledged ([`ingest`]); edges (no source, no engine) follow it into their
//! hub and serve clients exactly as a single process does ([`edge`]). The stream sequence is
//! the protocol's `seq`, the stream's identity the `epoch`, the event id its `Nats-Msg-Id`
//! ([`stream`]). Pair states travel in a key-value bucket beside it.
//!
//! This room never decides what an event is and never talks to a client: it moves frames
//! between the hub and the stream.

pub mod edge;
pub mod ingest;
pub mod retry;
pub mod stream;
pub mod trust;

pub use stream::{Cause, ClusterError, EventStream, Outgoing, Pending, Published, Stored};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dexpulse_core::settings::{hours, in_range, seconds, FieldError};

/// What an edge (or an ingest reading where to continue) does with a message the ingest did
/// not sign: counts it, says so in readiness for `forged_alarm`, and logs it once per burst.
pub struct ForgeryAlarm {
    metrics: crate::metrics::ClusterMetrics,
    health: Arc<crate::health::Health>,
    clock: crate::time::Clock,
    alarm: Duration,
    burst: std::sync::Mutex<Burst>,
}

#[derive(Default)]
struct Burst {
    total: u64,
    unlogged: u64,
    last_log_ms: Option<i64>,
}

/// At most one log line about forged data this often.
const FORGERY_LOG_EVERY_MS: i64 = 10_000;

impl ForgeryAlarm {
    pub fn new(
        metrics: crate::metrics::ClusterMetrics,
        health: Arc<crate::health::Health>,
        clock: crate::time::Clock,
        alarm: Duration,
    ) -> ForgeryAlarm {
        ForgeryAlarm {
            metrics,
            health,
            clock,
            alarm,
            burst: std::sync::Mutex::default(),
        }
    }

    /// `what` (`event` or `pair`) at `at` (a seq or a bucket key) was refused.
    pub fn refused(&self, what: &'static str, at: &str, why: &trust::Forgery) {
        self.metrics.forged(what, why.label());
        let now = self.clock.now_ms();
        let mut b = self.burst.lock().unwrap_or_else(|p| p.into_inner());
        b.total += 1;
        self.health.set_forged(
            format!(
                "{} messages refused since start; the last: {what} at {at} ({why})",
                b.total
            ),
            now.saturating_add(i64::try_from(self.alarm.as_millis()).unwrap_or(i64::MAX)),
        );
        if b.last_log_ms
            .is_some_and(|t| now - t < FORGERY_LOG_EVERY_MS)
        {
            b.unlogged += 1;
            return;
        }
        let more = std::mem::take(&mut b.unlogged);
        b.last_log_ms = Some(now);
        drop(b);
        tracing::error!(what, at, reason = %why, refused_since_last_line = more, "refused a message the ingest did not sign: someone with access to NATS is writing to the stream (docs/cluster.md, \"Trust\")");
    }
}

/// What this process is (`--role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// One process: sources, engine, history and clients (the default).
    #[default]
    All,
    /// Sources and engine; every event goes to the stream. Serves only `/healthz`, `/readyz`
    /// and `/metrics`.
    Ingest,
    /// No source, no engine: follows the stream and serves clients.
    Edge,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingest => "ingest",
            Role::Edge => "edge",
        }
    }
}

/// `[cluster]`: the role, where the NATS server is, how to prove who we are to it, what the
/// stream keeps, and the keys that make the stream trustworthy.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub role: Role,
    /// `nats://host:port` or `tls://host:port`; required by `ingest` and `edge`. May carry
    /// `user:password@` or `token@` (never printed).
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain_hours: f64,
    pub max_megabytes: f64,
    /// How long the server remembers an event id to drop a republish of it.
    pub duplicate_window_seconds: f64,
    /// NATS user and password (or in the URL); the password inline or from a file.
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// A NATS token, inline or from a file (or `nats://TOKEN@host`).
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// A file holding an NKey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a user JWT and its NKey seed).
    pub credentials: Option<PathBuf>,
    /// TLS: the CA that signed the server's certificate, and this node's client certificate
    /// and key when the server asks for one. Any of them (or a `tls://` URL) requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// The ingest's Ed25519 signing key (`dexpulse keygen`): every event and pair state it
    /// publishes is signed with it.
    pub signing_key_file: Option<PathBuf>,
    /// An edge's verify key: nothing unsigned by the ingest reaches its clients.
    pub verify_key_file: Option<PathBuf>,
    /// Runs an ingest without a signing key, or an edge without a verify key (and then serves
    /// whatever the stream holds). Logged as a warning at every start.
    pub insecure: bool,
    /// An edge reports not ready for this long after it last refused a forged message.
    pub forged_alarm_seconds: f64,
    /// The key-value bucket of pair states.
    pub pairs_bucket: String,
    /// How often an ingest writes the pair states that changed.
    pub pairs_seconds: f64,
    /// How long one publish may wait for its acknowledgement before it is sent again.
    pub publish_timeout_seconds: f64,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            role: Role::All,
            url: None,
            stream: "DEXPULSE_EVENTS".into(),
            subject: "dexpulse.events".into(),
            retain_hours: 168.0,
            max_megabytes: 1024.0,
            duplicate_window_seconds: 120.0,
            user: None,
            password: None,
            password_file: None,
            token: None,
            token_file: None,
            nkey_seed_file: None,
            credentials: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            signing_key_file: None,
            verify_key_file: None,
            insecure: false,
            forged_alarm_seconds: 300.0,
            pairs_bucket: "DEXPULSE_PAIRS".into(),
            pairs_seconds: 1.0,
            publish_timeout_seconds: 5.0,
        }
    }
}

/// A value that is never printed: `Debug` and errors show `<redacted>`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How this node proves who it is to the NATS server.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    /// An NKey seed.
    NKey(Secret),
    /// A `.creds` file, read by the client at connect time.
    Credentials(PathBuf),
}

/// TLS towards the NATS server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tls {
    pub required: bool,
    pub ca: Option<PathBuf>,
    /// Certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// The keys of the cluster's trust (docs/cluster.md, "Trust").
#[derive(Debug, Clone)]
pub enum Keys {
    /// An ingest signs.
    Sign(Arc<trust::Signer>),
    /// An edge verifies.
    Verify(Arc<trust::Verifier>),
    /// `insecure = true`, or the role needs none (`all`).
    None,
}

impl PartialEq for Keys {
    fn eq(&self, other: &Keys) -> bool {
        match (self, other) {
            (Keys::Sign(a), Keys::Sign(b)) => a.id() == b.id(),
            (Keys::Verify(a), Keys::Verify(b)) => a.id() == b.id(),
            (Keys::None, Keys::None) => true,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub role: Role,
    /// Without its user information (which is in `auth`): safe to print.
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain: Duration,
    pub max_bytes: i64,
    pub duplicate_window: Duration,
    pub auth: Auth,
    pub tls: Tls,
    pub keys: Keys,
    pub insecure: bool,
    pub forged_alarm: Duration,
    pub pairs_bucket: String,
    pub pairs_every: Duration,
    pub publish_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

/// Why `[cluster] url` was refused; the text is the config error's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error("is not a URL ({0})")]
    Parse(#[from] url::ParseError),
    #[error("must start with nats:// or tls://")]
    Scheme,
    #[error("names no host")]
    NoHost,
}

/// A NATS URL without its user information, and that information.
pub fn split_url(raw: &str) -> Result<(String, Option<String>, Option<Secret>), BadUrl> {
    let u = url::Url::parse(raw)?;
    if !matches!(u.scheme(), "nats" | "tls") {
        return Err(BadUrl::Scheme);
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(BadUrl::NoHost);
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    let user = (!u.username().is_empty()).then(|| decode(u.username()));
    let password = u.password().map(|p| Secret(decode(p)));
    let mut bare = u.clone();
    let _ = bare.set_username("");
    let _ = bare.set_password(None);
    let mut bare = bare.to_string();
    if bare.ends_with('/') && !raw.ends_with('/') {
        bare.pop();
    }
    Ok((bare, user, password))
}

pub use dexpulse_core::settings::redact_url as redact;

fn read_secret(field: &str, path: &Path) -> Result<Secret, FieldError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FieldError::new(field, format!("cannot be read ({e})"), path.display()))?;
    let s = text.trim();
    if s.is_empty() {
        return Err(FieldError::new(field, "is empty", path.display()));
    }
    Ok(Secret(s.to_string()))
}

fn existing(field: &str, path: &Option<PathBuf>) -> Result<Option<PathBuf>, FieldError> {
    match path {
        Some(p) if p.as_os_str().is_empty() => Ok(None),
        Some(p) if !p.is_file() => Err(FieldError::new(
            field,
            "is not a readable file",
            p.display(),
        )),
        other => Ok(other.clone()),
    }
}

impl Settings {
    /// Field names are relative to `[cluster]`. Reads the files it names (secrets, keys), so
    /// that a node that could not prove itself or sign refuses to start.
    pub fn parse(raw: &RawSettings) -> Result<Settings, FieldError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !name_ok(&raw.pairs_bucket) {
            return Err(FieldError::new(
                "pairs_bucket",
                "must be letters, digits, `_` or `-`",
                &raw.pairs_bucket,
            ));
        }
        if !name_ok(&raw.stream) {
            return Err(FieldError::new(
                "stream",
                "must be letters, digits, `_` or `-`",
                &raw.stream,
            ));
        }
        if raw.subject.is_empty() || raw.subject.contains(['*', '>', ' ']) {
            return Err(FieldError::new(
                "subject",
                "must be a plain subject (no wildcards, no spaces)",
                &raw.subject,
            ));
        }
        let (url, url_user, url_password) = match raw.url.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => {
                let (bare, user, pass) = split_url(u)
                    .map_err(|why| FieldError::new("url", why.to_string(), redact(u)))?;
                (Some(bare), user, pass)
            }
            None => (None, None, None),
        };
        if raw.role != Role::All && url.is_none() {
            return Err(FieldError::new(
                "url",
                "is required when role is ingest or edge",
                "nothing",
            ));
        }
        let auth = Settings::auth(raw, url_user, url_password)?;
        let tls = Tls {
            required: url.as_deref().is_some_and(|u| u.starts_with("tls://"))
                || raw.tls_ca_file.is_some()
                || raw.tls_cert_file.is_some(),
            ca: existing("tls_ca_file", &raw.tls_ca_file)?,
            client: match (
                existing("tls_cert_file", &raw.tls_cert_file)?,
                existing("tls_key_file", &raw.tls_key_file)?,
            ) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(FieldError::new(
                        "tls_key_file",
                        "is required with tls_cert_file",
                        "nothing",
                    ))
                }
                (None, Some(_)) => {
                    return Err(FieldError::new(
                        "tls_cert_file",
                        "is required with tls_key_file",
                        "nothing",
                    ))
                }
            },
        };
        let keys = Settings::keys(raw)?;
        let mb = in_range("max_megabytes", raw.max_megabytes, 1.0, 1e9)?;
        Ok(Settings {
            role: raw.role,
            url,
            stream: raw.stream.clone(),
            subject: raw.subject.clone(),
            retain: hours("retain_hours", raw.retain_hours, 0.001, 24.0 * 3650.0)?,
            max_bytes: (mb * 1024.0 * 1024.0) as i64,
            duplicate_window: seconds(
                "duplicate_window_seconds",
                raw.duplicate_window_seconds,
                1.0,
                86_400.0,
            )?,
            auth,
            tls,
            keys,
            insecure: raw.insecure,
            forged_alarm: seconds(
                "forged_alarm_seconds",
                raw.forged_alarm_seconds,
                0.0,
                86_400.0 * 30.0,
            )?,
            pairs_bucket: raw.pairs_bucket.clone(),
            pairs_every: seconds("pairs_seconds", raw.pairs_seconds, 0.05, 3600.0)?,
            publish_timeout: seconds(
                "publish_timeout_seconds",
                raw.publish_timeout_seconds,
                0.1,
                600.0,
            )?,
        })
    }

    /// One way of proving who we are: more than one set is a mistake worth refusing.
    fn auth(
        raw: &RawSettings,
        url_user: Option<String>,
        url_password: Option<Secret>,
    ) -> Result<Auth, FieldError> {
        let mut ways: Vec<(&str, Auth)> = Vec::new();
        let password = match (&raw.password, &raw.password_file) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "password_file",
                    "cannot be set with password",
                    "both",
                ))
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(f)) => Some(read_secret("password_file", f)?),
            (None, None) => None,
        };
        match (&raw.user, password) {
            (Some(u), Some(p)) if !u.is_empty() => ways.push((
                "user",
                Auth::UserPassword {
                    user: u.clone(),
                    password: p,
                },
            )),
            (Some(_), _) => {
                return Err(FieldError::new(
                    "password",
                    "(or password_file) is required with user",
                    "nothing",
                ))
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "user",
                    "is required with a password",
                    "nothing",
                ))
            }
            (None, None) => {}
        }
        match (url_user, url_password) {
            (Some(u), Some(p)) => ways.push((
                "url",
                Auth::UserPassword {
                    user: u,
                    password: p,
                },
            )),
            // `nats://TOKEN@host`, as the other NATS clients read it.
            (Some(t), None) => ways.push(("url", Auth::Token(Secret(t)))),
            _ => {}
        }
        let token = match (&raw.token, &raw.token_file) {
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    "token_file",
                    "cannot be set with token",
                    "both",
                ))
            }
            (Some(t), None) => Some(t.clone()),
            (None, Some(f)) => Some(read_secret("token_file", f)?),
            (None, None) => None,
        };
        if let Some(t) = token {
            ways.push(("token", Auth::Token(t)));
        }
        if let Some(f) = &raw.nkey_seed_file {
            let seed = read_secret("nkey_seed_file", f)?;
            if !seed.expose().starts_with("SU") {
                return Err(FieldError::new(
                    "nkey_seed_file",
                    "does not hold a user NKey seed (SU…)",
                    f.display(),
                ));
            }
            ways.push(("nkey_seed_file", Auth::NKey(seed)));
        }
        if let Some(c) = existing("credentials", &raw.credentials)? {
            ways.push(("credentials", Auth::Credentials(c)));
        }
        match ways.len() {
            0 => Ok(Auth::None),
            1 => Ok(ways.remove(0).1),
            _ => Err(FieldError::new(
                ways[1].0,
                "is one way too many to authenticate: set only one of user and password (or in the url), token, nkey_seed_file, credentials",
                ways.iter().map(|(w, _)| *w).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    fn keys(raw: &RawSettings) -> Result<Keys, FieldError> {
        let (field, file) = match raw.role {
            Role::All => return Ok(Keys::None),
            Role::Ingest => ("signing_key_file", &raw.signing_key_file),
            Role::Edge => ("verify_key_file", &raw.verify_key_file),
        };
        let Some(path) = file.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
            return if raw.insecure {
                Ok(Keys::None)
            } else {
                Err(FieldError::new(
                    field,
                    format!(
                        "is required for role {} (dexpulse keygen makes a key pair; insecure = true runs without, unsafely)",
                        raw.role.as_str()
                    ),
                    "nothing",
                ))
            };
        };
        let bad = |e: trust::KeyError| FieldError::new(field, e.to_string(), path.display());
        Ok(match raw.role {
            Role::Ingest => Keys::Sign(Arc::new(trust::Signer::from_file(path).map_err(bad)?)),
            _ => Keys::Verify(Arc::new(trust::Verifier::from_file(path).map_err(bad)?)),
        })
    }

    /// The URL to show: never with user information.
    pub fn shown_url(&self) -> String {
        self.url.clone().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_their_fields() {
        assert_eq!(Settings::default().stream, "DEXPULSE_EVENTS");
        let bad = |f: fn(&mut RawSettings)| {
            let mut raw = RawSettings::default();
            f(&mut raw);
            Settings::parse(&raw).unwrap_err().field
        };
        assert_eq!(bad(|r| r.stream = "a.b".into()), "stream");
        assert_eq!(bad(|r| r.subject = "dexpulse.>".into()), "subject");
        assert_eq!(bad(|r| r.url = Some("http://x".into())), "url");
        assert_eq!(bad(|r| r.max_megabytes = 0.0), "max_megabytes");
        assert_eq!(
            bad(|r| r.duplicate_window_seconds = 0.0),
            "duplicate_window_seconds"
        );
        assert_eq!(bad(|r| r.role = Role::Edge), "url");
        assert_eq!(bad(|r| r.pairs_bucket = "a b".into()), "pairs_bucket");
        assert_eq!(bad(|r| r.pairs_seconds = 0.0), "pairs_seconds");
    }
}
