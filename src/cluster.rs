//! The cluster room: the only module that speaks NATS (docs/cluster.md). [`EventStream`] is a
//! JetStream stream used as the event log of several nodes: each event is published with its
//! `event_id` as `Nats-Msg-Id` (so a republish after a crash is deduplicated by the server),
//! the stream sequence is the protocol's `seq`, and the stream's identity (its name and
//! creation time) is the `epoch`.
//!
//! This is the seam's first part: connecting, creating or adopting the stream, publishing with
//! acknowledgement, and reading by seq. The roles (`--role ingest`, `--role edge`) that put it
//! between the engine and the hub are not built yet.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use dexpulse_core::settings::{hours, in_range, seconds, FieldError};

/// `[cluster]`: where the NATS server is and what the stream keeps. No `url`: single process.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawSettings {
    /// `nats://host:port`.
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain_hours: f64,
    pub max_megabytes: f64,
    /// How long the server remembers an event id to drop a republish of it.
    pub duplicate_window_seconds: f64,
    /// A NATS credentials file (`.creds`), when the server asks for one.
    pub credentials: Option<PathBuf>,
}

impl Default for RawSettings {
    fn default() -> Self {
        RawSettings {
            url: None,
            stream: "DEXPULSE_EVENTS".into(),
            subject: "dexpulse.events".into(),
            retain_hours: 168.0,
            max_megabytes: 1024.0,
            duplicate_window_seconds: 120.0,
            credentials: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub url: Option<String>,
    pub stream: String,
    pub subject: String,
    pub retain: Duration,
    pub max_bytes: i64,
    pub duplicate_window: Duration,
    pub credentials: Option<PathBuf>,
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
        let mb = in_range("max_megabytes", raw.max_megabytes, 1.0, 1e9)?;
        Ok(Settings {
            url: raw.url.clone().filter(|u| !u.is_empty()),
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
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster: no [cluster] url is set")]
    NoUrl,
    #[error("cluster: cannot connect to {url}: {detail}")]
    Connect { url: String, detail: String },
    #[error("cluster: stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
    #[error("cluster: publish to {subject}: {detail}")]
    Publish { subject: String, detail: String },
}

/// What the server said of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stream sequence: the event's `seq`.
    pub seq: u64,
    /// The event id was already in the stream (a republish): `seq` is the first one's.
    pub duplicate: bool,
}

/// The events stream on a NATS JetStream server.
pub struct EventStream {
    js: jetstream::Context,
    settings: Settings,
    epoch: String,
}

impl EventStream {
    /// Connects and creates the stream, or adopts it as it is. The stream keeps events by age
    /// and bytes (the oldest are discarded), on file storage.
    pub async fn connect(settings: &Settings) -> Result<EventStream, ClusterError> {
        let url = settings.url.clone().ok_or(ClusterError::NoUrl)?;
        let mut opts = async_nats::ConnectOptions::new()
            .name("dexpulse")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5));
        if let Some(c) = &settings.credentials {
            opts = opts
                .credentials_file(c)
                .await
                .map_err(|e| ClusterError::Connect {
                    url: url.clone(),
                    detail: format!("{}: {e}", c.display()),
                })?;
        }
        // `retry_on_initial_connect` makes `connect` return at once; the first request waits
        // for the connection (bounded by its own time-out).
        let client = opts
            .connect(url.as_str())
            .await
            .map_err(|e| ClusterError::Connect {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let js = jetstream::new(client);
        let stream_err = |detail: String| ClusterError::Stream {
            stream: settings.stream.clone(),
            detail,
        };
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: vec![settings.subject.clone()],
                max_age: settings.retain,
                max_bytes: settings.max_bytes,
                duplicate_window: settings.duplicate_window,
                storage: stream::StorageType::File,
                discard: stream::DiscardPolicy::Old,
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(|e| stream_err(e.to_string()))?;
        let info = stream.info().await.map_err(|e| stream_err(e.to_string()))?;
        let epoch = format!(
            "{}-{:x}",
            settings.stream,
            info.created.unix_timestamp_nanos()
        );
        Ok(EventStream {
            js,
            settings: settings.clone(),
            epoch,
        })
    }

    /// The stream's identity: the same across server restarts with its store, new when the
    /// stream is deleted and created again.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Publishes one event and waits for the server's acknowledgement: when this returns the
    /// event is stored, at `seq`.
    pub async fn publish(&self, event_id: &str, payload: Bytes) -> Result<Published, ClusterError> {
        let err = |detail: String| ClusterError::Publish {
            subject: self.settings.subject.clone(),
            detail,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event_id);
        let ack = self
            .js
            .publish_with_headers(self.settings.subject.clone(), headers, payload)
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(Published {
            seq: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// The event stored at `seq`, or `None` when the stream no longer (or never) held it.
    pub async fn get(&self, seq: u64) -> Result<Option<(String, Bytes)>, ClusterError> {
        let err = |detail: String| ClusterError::Stream {
            stream: self.settings.stream.clone(),
            detail,
        };
        let stream = self
            .js
            .get_stream_no_info(&self.settings.stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                let id = m
                    .headers
                    .get("Nats-Msg-Id")
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default();
                Ok(Some((id, m.payload)))
            }
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// The first and last seqs the stream holds (`first > last` when it is empty).
    pub async fn bounds(&self) -> Result<(u64, u64), ClusterError> {
        let err = |detail: String| ClusterError::Stream {
            stream: self.settings.stream.clone(),
            detail,
        };
        let mut stream = self
            .js
            .get_stream(&self.settings.stream)
            .await
            .map_err(|e| err(e.to_string()))?;
        let info = stream.info().await.map_err(|e| err(e.to_string()))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
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
    }
}
