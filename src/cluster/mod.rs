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
pub mod stream;

pub use stream::{ClusterError, EventStream, Published, Stored};

use std::path::PathBuf;
use std::time::Duration;

use dexpulse_core::settings::{hours, in_range, seconds, FieldError};

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

/// `[cluster]`: the role, where the NATS server is and what the stream keeps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    pub role: Role,
    /// `nats://host:port`; required by `ingest` and `edge`.
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain_hours: f64,
    pub max_megabytes: f64,
    /// How long the server remembers an event id to drop a republish of it.
    pub duplicate_window_seconds: f64,
    /// A NATS credentials file (`.creds`), when the server asks for one.
    pub credentials: Option<PathBuf>,
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
            credentials: None,
            pairs_bucket: "DEXPULSE_PAIRS".into(),
            pairs_seconds: 1.0,
            publish_timeout_seconds: 5.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub role: Role,
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain: Duration,
    pub max_bytes: i64,
    pub duplicate_window: Duration,
    pub credentials: Option<PathBuf>,
    pub pairs_bucket: String,
    pub pairs_every: Duration,
    pub publish_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings::parse(&RawSettings::default()).unwrap_or_else(|e| unreachable!("defaults: {e}"))
    }
}

impl Settings {
    /// Field names are relative to `[cluster]`.
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
        if let Some(u) = &raw.url {
            if !u.starts_with("nats://") && !u.starts_with("tls://") {
                return Err(FieldError::new(
                    "url",
                    "must start with nats:// or tls://",
                    u,
                ));
            }
        }
        let url = raw.url.clone().filter(|u| !u.is_empty());
        if raw.role != Role::All && url.is_none() {
            return Err(FieldError::new(
                "url",
                "is required when role is ingest or edge",
                "nothing",
            ));
        }
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
            credentials: raw.credentials.clone(),
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
